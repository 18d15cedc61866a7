package netpoll

import (
	"strconv"
	"sync/atomic"

	"github.com/gobwas/ws"
)

// What the poller counts for the node's /debug/stats and /metrics: closes by
// code and who began them, the bytes waiting in outbound queues, and a
// sampled write-completion hook for end-to-end latency. Counting costs one
// atomic add per close; queue bytes are summed only when asked.

// CloseSide says who began a close.
type CloseSide uint8

// Close sides.
const (
	SideServer  CloseSide = iota // we sent the first close frame
	SideClient                   // the peer did; we echoed its code
	SideNetwork                  // no close frame either way (EOF, reset, abort): code 1006
	numSides
)

func (s CloseSide) String() string {
	switch s {
	case SideServer:
		return "server"
	case SideClient:
		return "client"
	}
	return "network"
}

// countedCodes are the close codes counted one by one; any other code is
// counted as "other", so a peer cannot make up label values.
var countedCodes = [...]ws.StatusCode{1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 4001, 4008}

const numCodes = len(countedCodes) + 1 // + other

func codeIndex(code ws.StatusCode) int {
	for i, c := range countedCodes {
		if c == code {
			return i
		}
	}
	return len(countedCodes)
}

// closeCounters counts closes by side and code.
type closeCounters [numSides][numCodes]atomic.Uint64

func (cc *closeCounters) add(side CloseSide, code ws.StatusCode) {
	cc[side][codeIndex(code)].Add(1)
}

// CloseCount is how many connections closed with Code, begun by Side.
type CloseCount struct {
	Side CloseSide
	Code string // "1000", …, "4008", or "other"
	N    uint64
}

// Closes returns the non-zero close counters since New.
func (p *Poller) Closes() []CloseCount {
	var out []CloseCount
	for s := range numSides {
		for i := range numCodes {
			n := p.closes[s][i].Load()
			if n == 0 {
				continue
			}
			code := "other"
			if i < len(countedCodes) {
				code = strconv.Itoa(int(countedCodes[i]))
			}
			out = append(out, CloseCount{Side: s, Code: code, N: n})
		}
	}
	return out
}

// QueuedBytes sums the unwritten bytes of every connection's outbound
// queue. It takes each connection's lock in turn, under the poller's read
// lock (nothing takes the poller's lock while holding a connection's), and
// copies nothing: scraped every few seconds, a snapshot of 100,000
// connections would be 800 KB of garbage each time. An admin call, not a
// hot path.
func (p *Poller) QueuedBytes() int64 {
	var total int64
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, c := range p.slots {
		if c == nil {
			continue
		}
		c.mu.Lock()
		if c.out != nil {
			total += int64(c.out.bytes)
		}
		c.mu.Unlock()
	}
	return total
}

// SendTraced is Send for a frame whose write completion is reported: once
// its last byte is written to the socket, Config.Written is called with at.
// A queue traces one frame at a time; while one is pending, SendTraced is
// plain Send. Fan-out traces one member per message, so the hook costs
// nothing per delivery.
func (c *Conn) SendTraced(frame []byte, at int64) error {
	if c.p.cfg.Written == nil || len(frame) == 0 {
		at = 0
	}
	return c.send(frame, at)
}

// written advances q by n written bytes and reports a traced frame that
// completed. Conn.mu is held.
func (c *Conn) writtenLocked(q *outQueue, n int) {
	q.advance(n)
	if q.traceLeft == 0 {
		return
	}
	if q.traceLeft -= n; q.traceLeft <= 0 {
		at := q.traceAt
		q.traceLeft, q.traceAt = 0, 0
		c.p.cfg.Written(at)
	}
}
