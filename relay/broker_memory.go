package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
	"time"
)

// MemoryConfig configures the in-process memory broker. The zero value is
// valid.
type MemoryConfig struct {
	// HistorySize is the number of messages kept per room (0:
	// DefaultHistorySize).
	HistorySize int
	// HistoryTTL is how long a room may stay idle (no publish) before its
	// sequence and history are forgotten and it starts a new epoch (0:
	// DefaultHistoryTTL).
	HistoryTTL time.Duration
	// Now is the clock (nil: time.Now). Test hook.
	Now func() time.Time
}

// Memory is the in-process Broker: one node, no network. It is the default
// bus of a single node and the fake bus of unit tests. See the test hooks
// SetUnavailable, SetDeliveryFilter, Resync and SetState.
type Memory struct {
	size int
	ttl  time.Duration
	now  func() time.Time

	mu          sync.Mutex // guards everything below
	handler     Handler
	rooms       map[string]*memRoom
	presence    map[string]map[string]Member // room -> session -> member
	subs        map[string]struct{}
	stats       Stats
	unavailable bool
	filter      func(Message) int
	closed      bool
	lastSweep   time.Time
}

// memRoom is one room's sequence state. Guarded by Memory.mu.
type memRoom struct {
	epoch    string
	seq      uint64
	hist     []Message // ascending seq, at most size entries
	lastUsed time.Time
}

// NewMemory returns a memory broker.
func NewMemory(cfg MemoryConfig) *Memory {
	m := &Memory{
		size:     cfg.HistorySize,
		ttl:      cfg.HistoryTTL,
		now:      cfg.Now,
		rooms:    make(map[string]*memRoom),
		presence: make(map[string]map[string]Member),
		subs:     make(map[string]struct{}),
	}
	if m.size <= 0 {
		m.size = DefaultHistorySize
	}
	if m.ttl <= 0 {
		m.ttl = DefaultHistoryTTL
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.stats.Kind = "memory"
	m.stats.Up = true
	return m
}

var _ Broker = (*Memory)(nil)

func memEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// memRoomLocked returns room's state, forgetting it first if it has been
// idle longer than the TTL. Lock should be held.
func (m *Memory) memRoomLocked(room string) *memRoom {
	now := m.now()
	if now.Sub(m.lastSweep) > m.ttl {
		// Forget idle rooms so the map does not grow without bound.
		m.lastSweep = now
		for name, r := range m.rooms {
			if now.Sub(r.lastUsed) > m.ttl {
				delete(m.rooms, name)
			}
		}
	}
	r := m.rooms[room]
	if r != nil && now.Sub(r.lastUsed) > m.ttl {
		r = nil
	}
	if r == nil {
		r = &memRoom{epoch: memEpoch(), lastUsed: now}
		m.rooms[room] = r
	}
	return r
}

// memCheckLocked returns an error wrapping ErrUnavailable while the test
// hook SetUnavailable is on. Lock should be held.
func (m *Memory) memCheckLocked(op, room string) error {
	if m.closed {
		return fmt.Errorf("relay: memory %s %q: closed: %w", op, room, ErrUnavailable)
	}
	if m.unavailable {
		m.stats.Errors++
		m.stats.LastErrorAt = m.now().UnixMilli()
		return fmt.Errorf("relay: memory %s %q: %w", op, room, ErrUnavailable)
	}
	return nil
}

// SetHandler sets the handler deliveries go to.
func (m *Memory) SetHandler(h Handler) {
	m.mu.Lock()
	m.handler = h
	m.mu.Unlock()
}

// Publish sequences m, appends it to history and delivers it to the handler
// if the room is subscribed, all under the broker's lock.
func (m *Memory) Publish(ctx context.Context, msg Message) (Position, error) {
	if err := ctx.Err(); err != nil {
		return Position{}, fmt.Errorf("relay: memory publish %q: %w: %w", msg.Room, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked("publish", msg.Room); err != nil {
		return Position{}, err
	}
	r := m.memRoomLocked(msg.Room)
	r.lastUsed = m.now()
	r.seq++
	msg.Seq, msg.Epoch = r.seq, r.epoch
	if len(r.hist) == m.size {
		copy(r.hist, r.hist[1:])
		r.hist = r.hist[:len(r.hist)-1]
	}
	r.hist = append(r.hist, msg)
	m.stats.Publishes++
	if _, ok := m.subs[msg.Room]; ok && m.handler != nil {
		n := 1
		if m.filter != nil {
			n = m.filter(msg)
		}
		for i := 0; i < n; i++ {
			m.stats.Deliveries++
			m.handler.HandleMessage(msg)
		}
	}
	return Position{Seq: r.seq, Epoch: r.epoch}, nil
}

// Subscribe starts delivery of room to the handler; subscribing twice is a
// no-op that returns the current position.
func (m *Memory) Subscribe(ctx context.Context, room string) (Position, error) {
	if err := ctx.Err(); err != nil {
		return Position{}, fmt.Errorf("relay: memory subscribe %q: %w: %w", room, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked("subscribe", room); err != nil {
		return Position{}, err
	}
	m.subs[room] = struct{}{}
	m.stats.Subscribed = len(m.subs)
	r := m.memRoomLocked(room)
	return Position{Seq: r.seq, Epoch: r.epoch}, nil
}

// Unsubscribe stops delivery of room.
func (m *Memory) Unsubscribe(ctx context.Context, room string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.subs, room)
	m.stats.Subscribed = len(m.subs)
	return nil
}

// History reads room's history window.
func (m *Memory) History(ctx context.Context, room string, req HistoryRequest) (HistoryResult, error) {
	if err := ctx.Err(); err != nil {
		return HistoryResult{}, fmt.Errorf("relay: memory history %q: %w: %w", room, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked("history", room); err != nil {
		return HistoryResult{}, err
	}
	r := m.memRoomLocked(room)
	res := HistoryResult{Position: Position{Seq: r.seq, Epoch: r.epoch}}
	if len(r.hist) > 0 {
		res.Earliest = r.hist[0].Seq
	}
	// hist is ascending with consecutive seqs: select by index.
	lo := sort.Search(len(r.hist), func(i int) bool { return r.hist[i].Seq > req.Since })
	hi := len(r.hist)
	if req.Before > 0 {
		hi = sort.Search(len(r.hist), func(i int) bool { return r.hist[i].Seq >= req.Before })
	}
	if hi < lo {
		hi = lo
	}
	limit := req.Limit
	if limit <= 0 || limit > m.size {
		limit = m.size
	}
	if hi-lo > limit {
		if req.Before > 0 {
			lo = hi - limit
		} else {
			hi = lo + limit
		}
	}
	res.Messages = append([]Message(nil), r.hist[lo:hi]...)
	return res, nil
}

// AddPresence records mem in room and announces it to the handler if the
// room is subscribed.
func (m *Memory) AddPresence(ctx context.Context, room string, mem Member) error {
	return m.memPresence(ctx, room, mem, true)
}

// RemovePresence removes mem from room and announces it to the handler if
// the room is subscribed and mem was present.
func (m *Memory) RemovePresence(ctx context.Context, room string, mem Member) error {
	return m.memPresence(ctx, room, mem, false)
}

func (m *Memory) memPresence(ctx context.Context, room string, mem Member, add bool) error {
	op := "remove presence"
	if add {
		op = "add presence"
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("relay: memory %s %q: %w: %w", op, room, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked(op, room); err != nil {
		return err
	}
	set := m.presence[room]
	if add {
		if set == nil {
			set = make(map[string]Member)
			m.presence[room] = set
		}
		set[mem.Session] = mem
	} else {
		if _, ok := set[mem.Session]; !ok {
			return nil
		}
		delete(set, mem.Session)
		if len(set) == 0 {
			delete(m.presence, room)
		}
	}
	if _, ok := m.subs[room]; ok && m.handler != nil {
		m.handler.HandlePresence(PresenceEvent{Room: room, Member: mem, Joined: add})
	}
	return nil
}

// Presence lists room's members, sorted by name then session.
func (m *Memory) Presence(ctx context.Context, room string) ([]Member, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("relay: memory presence %q: %w: %w", room, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked("presence", room); err != nil {
		return nil, err
	}
	out := make([]Member, 0, len(m.presence[room]))
	for _, mem := range m.presence[room] {
		out = append(out, mem)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Session < out[j].Session
	})
	return out, nil
}

// Stats returns the broker's counters.
func (m *Memory) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// Close makes every later call fail with ErrUnavailable. The memory broker
// has no goroutines to stop.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	m.stats.Up = false
	m.mu.Unlock()
	return nil
}

// SetUnavailable is a test hook: while on, every Publish, Subscribe,
// History and presence call fails with an error wrapping ErrUnavailable.
// It does not call HandleState; use SetState for that.
func (m *Memory) SetUnavailable(on bool) {
	m.mu.Lock()
	m.unavailable = on
	m.stats.Up = !on
	m.mu.Unlock()
}

// SetDeliveryFilter is a test hook: f (nil: deliver once) returns how many
// times a published message is handed to the handler: 0 drops it (a gap for
// the subscriber), 2 duplicates it. f runs under the broker's lock.
func (m *Memory) SetDeliveryFilter(f func(Message) int) {
	m.mu.Lock()
	m.filter = f
	m.mu.Unlock()
}

// Resync is a test hook that simulates a re-established subscription: it
// calls the handler's HandleResync.
func (m *Memory) Resync() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats.Resyncs++
	if m.handler != nil {
		m.handler.HandleResync()
	}
}

// SetState is a test hook that reports a bus transition to the handler
// (err != nil: down, nil: up).
func (m *Memory) SetState(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats.Up = err == nil
	if err == nil {
		m.stats.Reconnects++
	}
	if m.handler != nil {
		m.handler.HandleState(err)
	}
}

// ForgetRoom is a test hook: it drops room's sequence and history as if its
// TTL had passed, so the next use starts a new epoch.
func (m *Memory) ForgetRoom(room string) {
	m.mu.Lock()
	delete(m.rooms, room)
	m.mu.Unlock()
}
