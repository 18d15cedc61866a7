package actors

import (
	"sync"
	"sync/atomic"

	"parley/protocol"
)

// The counters behind Stats (and the node's /debug/stats and /metrics):
// plain atomics that actors add to, read by Stats. Refusals are counted in
// one place: every error frame an actor sends is built by System.errFrame,
// which counts it by its protocol code, so a new refusal (a new error code)
// is counted without anything else to do.

// counters are the system's counters; rooms and connections add to them.
type counters struct {
	deliveries, gapFills, checks, resets, slowKicks, pubErrors, rollovers atomic.Uint64
	received, published, repeats                                          atomic.Uint64
	plain                                                                 atomic.Int64 // plain (seed-mode) sessions alive
	refused                                                               codeCounts
	sizes                                                                 roomSizes
}

// codeCounts counts refusals by protocol error code. Codes are constants
// of package protocol, so the set is small and fixed by the code.
type codeCounts struct {
	mu sync.RWMutex // guards m (the map, not the counters)
	m  map[string]*atomic.Uint64
}

func (c *codeCounts) add(code string) {
	c.mu.RLock()
	n := c.m[code]
	c.mu.RUnlock()
	if n == nil {
		c.mu.Lock()
		if c.m == nil {
			c.m = make(map[string]*atomic.Uint64)
		}
		if n = c.m[code]; n == nil {
			n = new(atomic.Uint64)
			c.m[code] = n
		}
		c.mu.Unlock()
	}
	n.Add(1)
}

func (c *codeCounts) snapshot() map[string]uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]uint64, len(c.m))
	for k, n := range c.m {
		out[k] = n.Load()
	}
	return out
}

// RoomSizeBuckets are the upper bounds (members) of the room size
// histogram: a room with n members is counted in the first bucket >= n.
var RoomSizeBuckets = [...]int{1, 10, 100, 1000, 10000}

// roomSizes is a live histogram of local room sizes (members on this
// node), kept by rooms as members come and go, and their sum.
type roomSizes struct {
	n       [len(RoomSizeBuckets) + 1]atomic.Int64 // last: > the largest bound
	members atomic.Int64
}

func sizeBucket(n int) int {
	for i, b := range RoomSizeBuckets {
		if n <= b {
			return i
		}
	}
	return len(RoomSizeBuckets)
}

// resize moves a room from size from to size to (0: not counted).
func (rs *roomSizes) resize(from, to int) {
	if from == to {
		return
	}
	if from > 0 {
		rs.n[sizeBucket(from)].Add(-1)
	}
	if to > 0 {
		rs.n[sizeBucket(to)].Add(1)
	}
	rs.members.Add(int64(to - from))
}

// errFrame encodes a refusal as an error frame and counts it by its code:
// the one place where actors refuse something.
func (s *System) errFrame(e *protocol.Error) []byte {
	s.count.refused.add(e.Code)
	return frameOf(e.Frame())
}

// tracedSender is implemented by transports that report when a frame is
// written (*netpoll.Conn: its Config.Written gets the timestamp).
type tracedSender interface {
	SendTraced(frame []byte, at int64) error
}

// sendTraced is send for the last member of a fan-out: its transport, if it
// can, reports when the frame is written, with the message's timestamp, so
// the node measures publish-to-socket latency at one sample per message and
// node.
func (o outbox) sendTraced(frame []byte, at int64) error {
	ts, ok := o.t.(tracedSender)
	if !ok || at == 0 {
		return o.send(frame)
	}
	return o.sent(ts.SendTraced(frame, at))
}
