package netpoll

import "sync"

// outQueue is a connection's outbound queue. A connection holds one only while
// frames are waiting; it goes back to queuePool when drained. Guarded by the
// owning Conn's mu.
type outQueue struct {
	frames  [][]byte // frames[head:] are unwritten; frames[head] may be a tail
	head    int
	bytes   int  // unwritten bytes
	started bool // frames[head] is partly written
	// traceLeft > 0: a frame queued with SendTraced completes once this
	// many more bytes are written; traceAt is its timestamp.
	traceLeft int
	traceAt   int64
}

var queuePool = sync.Pool{New: func() any { return &outQueue{frames: make([][]byte, 0, 8)} }}

func getQueue() *outQueue { return queuePool.Get().(*outQueue) }

// putQueue returns q to the pool. Only frames[head:] can still hold frames:
// advance, truncate and push clear every slot they give up.
func putQueue(q *outQueue) {
	clear(q.frames[q.head:])
	q.frames, q.head, q.bytes, q.started = q.frames[:0], 0, 0, false
	q.traceLeft, q.traceAt = 0, 0
	queuePool.Put(q)
}

// len returns the number of unwritten (or partly written) frames.
func (q *outQueue) len() int { return len(q.frames) - q.head }

// push appends frame (never modified, may be shared).
func (q *outQueue) push(frame []byte) {
	if q.head > 0 && len(q.frames) == cap(q.frames) {
		n := copy(q.frames, q.frames[q.head:])
		clear(q.frames[n:])
		q.frames, q.head = q.frames[:n], 0
	}
	q.frames = append(q.frames, frame)
	q.bytes += len(frame)
}

// advance marks n bytes written.
func (q *outQueue) advance(n int) {
	q.bytes -= n
	for n > 0 && q.head < len(q.frames) {
		f := q.frames[q.head]
		if n < len(f) {
			q.frames[q.head] = f[n:]
			q.started = true
			return
		}
		n -= len(f)
		q.frames[q.head] = nil
		q.head++
		q.started = false
	}
}

// truncate drops every frame after the first keep ones.
func (q *outQueue) truncate(keep int) {
	end := q.head + keep
	if end >= len(q.frames) {
		return
	}
	q.traceLeft, q.traceAt = 0, 0 // the traced frame may be dropped: trace nothing
	for _, f := range q.frames[end:] {
		q.bytes -= len(f)
	}
	clear(q.frames[end:])
	q.frames = q.frames[:end]
}
