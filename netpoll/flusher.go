package netpoll

import (
	"sync"
	"time"
)

// flushChunk is how many conns one flusher takes from the queue at a time;
// what is left wakes another flusher, so all of them share a fan-out.
const flushChunk = 128

// flusher writes the queues of conns that Send marked: the write side of
// fan-out. Senders never write to a socket themselves; they queue a frame
// and, if the conn is not marked yet, put it on this list. While a flusher
// works through the list, more frames pile up behind each conn and leave
// in the same writev: coalescing comes from the flushers being busy, not
// from a timer.
//
// Ownership: queue is guarded by mu; each conn's fFlushQueued flag (under
// the conn's mu) says it is on the list, so a conn is listed at most once.
type flusher struct {
	mu    sync.Mutex // guards queue
	queue []*Conn
	wake  chan struct{} // capacity 1: "the queue may be non-empty"
	stop  chan struct{}
	done  sync.WaitGroup
	delay time.Duration // batching window after a wake-up (Config.FlushDelay)
}

func (f *flusher) start(n int) {
	f.wake = make(chan struct{}, 1)
	f.stop = make(chan struct{})
	f.done.Add(n)
	for range n {
		go f.run()
	}
}

// close stops the flushers; frames still listed are left to Poller.Close.
func (f *flusher) close() {
	close(f.stop)
	f.done.Wait()
}

// schedule lists c (whose fFlushQueued the caller has just set).
func (f *flusher) schedule(c *Conn) {
	f.mu.Lock()
	f.queue = append(f.queue, c)
	f.mu.Unlock()
	f.signal()
}

func (f *flusher) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *flusher) run() {
	defer f.done.Done()
	batch := make([]*Conn, 0, flushChunk)
	scratch := newWriteScratch()
	for {
		select {
		case <-f.stop:
			return
		case <-f.wake:
		}
		if f.delay > 0 {
			// A batching window, not synchronisation: let more frames pile
			// up behind each listed socket before writing.
			time.Sleep(f.delay)
		}
		for {
			f.mu.Lock()
			n := min(len(f.queue), flushChunk)
			batch = append(batch[:0], f.queue[:n]...)
			rest := copy(f.queue, f.queue[n:])
			clear(f.queue[rest:])
			f.queue = f.queue[:rest]
			f.mu.Unlock()
			if n == 0 {
				break
			}
			if rest > 0 {
				f.signal() // let another flusher take the next chunk
			}
			for _, c := range batch {
				c.mu.Lock()
				c.flags &^= fFlushQueued
				c.flushWithLocked(scratch)
				c.mu.Unlock()
			}
			clear(batch)
		}
	}
}

// Send queues one complete frame, like Enqueue, and makes sure it is
// written soon by a flusher goroutine, together with every frame queued
// on this conn before the flusher gets to it. It never writes on the
// caller's goroutine and never blocks: fan-out calls it for every member.
// Errors are Enqueue's.
func (c *Conn) Send(frame []byte) error { return c.send(frame, 0) }

// send is Send; at != 0 also traces the frame (SendTraced, stats.go).
func (c *Conn) send(frame []byte, at int64) error {
	c.mu.Lock()
	if c.flags&(fClosing|fFinished) != 0 {
		c.mu.Unlock()
		return ErrClosed
	}
	if err := c.pushLocked(frame, true); err != nil {
		c.mu.Unlock()
		return err
	}
	if q := c.out; at != 0 && q != nil && q.traceLeft == 0 {
		q.traceLeft, q.traceAt = q.bytes, at
	}
	// A conn waiting for EPOLLOUT is flushed by a worker when writable.
	list := c.flags&(fFlushQueued|fWantOut) == 0
	if list {
		c.flags |= fFlushQueued
	}
	c.mu.Unlock()
	if list {
		c.p.flush.schedule(c)
	}
	return nil
}
