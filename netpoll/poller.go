package netpoll

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrPingTimeout is reported to HandleClose for a connection that stayed
// silent for a full PingInterval after being pinged.
var ErrPingTimeout = errors.New("netpoll: ping timeout")

// ErrCloseTimeout is reported to HandleClose for a closing connection whose
// peer did not answer (or whose queue did not drain) within CloseTimeout.
var ErrCloseTimeout = errors.New("netpoll: close timeout")

// Poller watches upgraded WebSocket connections and delivers their messages
// to Handlers. See the package documentation for its goroutines and locks.
type Poller struct {
	cfg   Config
	log   *slog.Logger
	epoch time.Time // origin of the poller clock (now)
	ids   atomic.Uint64

	mu     sync.RWMutex // guards following
	slots  []*Conn      // live conns by slot (the fd on Linux)
	free   []int32      // free slots (non-Linux only)
	n      int          // live conns
	closed bool

	stop      chan struct{} // closed by Close to stop the sweeper
	sweepDone chan struct{}
	closeOnce sync.Once

	closes closeCounters // closes by side and code (stats.go)
	flush  flusher       // writes what Send queued
	sys    pollerSys     // platform part
}

// New validates cfg and starts the poller's goroutines.
func New(cfg Config) (*Poller, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	p := &Poller{
		cfg:       cfg,
		log:       cfg.Logger,
		epoch:     time.Now(),
		stop:      make(chan struct{}),
		sweepDone: make(chan struct{}),
	}
	if err := p.start(); err != nil {
		return nil, err
	}
	p.flush.delay = p.cfg.FlushDelay
	p.flush.start(p.cfg.Flushers)
	go p.sweep()
	return p, nil
}

// now returns the poller clock: monotonic nanoseconds since New, never 0.
func (p *Poller) now() int64 { return int64(time.Since(p.epoch)) + 1 }

// Len returns the number of connections added and not yet finished.
func (p *Poller) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.n
}

// Range calls f for each live connection (a snapshot taken before the first
// call) until f returns false. f may call any Conn method.
func (p *Poller) Range(f func(*Conn) bool) {
	for _, c := range p.appendConns(nil) {
		if !f(c) {
			return
		}
	}
}

func (p *Poller) appendConns(dst []*Conn) []*Conn {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, c := range p.slots {
		if c != nil {
			dst = append(dst, c)
		}
	}
	return dst
}

// insert stores c at slot, or at a free slot when slot < 0.
func (p *Poller) insert(c *Conn, slot int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if slot < 0 {
		if k := len(p.free); k > 0 {
			slot = int(p.free[k-1])
			p.free = p.free[:k-1]
		} else {
			slot = len(p.slots)
		}
	}
	if slot >= len(p.slots) {
		p.slots = append(p.slots, make([]*Conn, max(slot+1, 2*len(p.slots))-len(p.slots))...)
	}
	if p.slots[slot] != nil {
		return errors.New("netpoll: add: descriptor already registered")
	}
	p.slots[slot] = c
	c.slot = int32(slot)
	p.n++
	return nil
}

// remove drops c from its slot. withFree returns the slot to the free list.
func (p *Poller) remove(c *Conn, withFree bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if int(c.slot) < len(p.slots) && p.slots[c.slot] == c {
		p.slots[c.slot] = nil
		p.n--
		if withFree {
			p.free = append(p.free, c.slot)
		}
	}
}

// lookup returns the conn at slot.
func (p *Poller) lookupLocked(slot int) *Conn {
	if slot < 0 || slot >= len(p.slots) {
		return nil
	}
	return p.slots[slot]
}

// sweep is the sweeper goroutine: one for all connections.
func (p *Poller) sweep() {
	defer close(p.sweepDone)
	t := time.NewTicker(p.cfg.sweepTick())
	defer t.Stop()
	var conns []*Conn
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		conns = p.appendConns(conns[:0])
		now := p.now()
		for _, c := range conns {
			c.sweep(now)
		}
		clear(conns)
	}
}
