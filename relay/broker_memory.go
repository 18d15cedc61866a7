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
	// HistoryMaxBytes caps the size of one room's kept history, counted as
	// the text plus the other fields of each message plus a small envelope
	// (0: DefaultHistoryMaxBytes). The newest message is always kept.
	HistoryMaxBytes int
	// HistoryTTL is how long a room may stay idle (no publish) before its
	// sequence and history are forgotten and it starts a new epoch (0:
	// DefaultHistoryTTL).
	HistoryTTL time.Duration
	// IdempotencyWindow is how long a message's IdemKey is remembered (0:
	// DefaultIdempotencyWindow).
	IdempotencyWindow time.Duration
	// Now is the clock (nil: time.Now). Tests advance it to expire rooms
	// and idempotency records.
	Now func() time.Time
}

// Memory is the in-process Broker: one node, no network. It is the default
// bus of a single node and, wrapped by package relaytest for fault
// injection, the bus of unit tests. Its memory is bounded: a room's history
// by HistorySize and HistoryMaxBytes, idempotency records by the window,
// idle rooms are forgotten after HistoryTTL, presence sets of empty rooms
// are dropped.
type Memory struct {
	size     int
	maxBytes int
	ttl      time.Duration
	window   time.Duration
	now      func() time.Time

	mu        sync.Mutex // guards everything below
	handler   Handler
	rooms     map[string]*memRoom
	presence  map[string][]memNodeSet // room -> one set per node with members there; no empty sets
	subs      map[string]struct{}
	stats     Stats
	closed    bool
	lastSweep time.Time
}

// memRoom is one room's sequence state. Guarded by Memory.mu.
type memRoom struct {
	epoch     string
	seq       uint64
	hist      []Message // ascending seq, at most size entries and maxBytes bytes (but at least one)
	histBytes int       // sum of memSize over hist
	lastUsed  time.Time
	idem      map[string]memIdem // IdemKey -> where it was published
	idemQ     []memIdemExp       // the same keys in expiry order
}

// memIdem is where a message with an idempotency key landed.
type memIdem struct {
	epoch string
	seq   uint64
	exp   time.Time
}

// memIdemExp is one entry of memRoom.idemQ.
type memIdemExp struct {
	key string
	exp time.Time
}

// NewMemory returns a memory broker.
func NewMemory(cfg MemoryConfig) *Memory {
	m := &Memory{
		size:     cfg.HistorySize,
		maxBytes: cfg.HistoryMaxBytes,
		ttl:      cfg.HistoryTTL,
		window:   cfg.IdempotencyWindow,
		now:      cfg.Now,
		rooms:    make(map[string]*memRoom),
		presence: make(map[string][]memNodeSet),
		subs:     make(map[string]struct{}),
	}
	if m.size <= 0 {
		m.size = DefaultHistorySize
	}
	if m.maxBytes <= 0 {
		m.maxBytes = DefaultHistoryMaxBytes
	}
	if m.ttl <= 0 {
		m.ttl = DefaultHistoryTTL
	}
	if m.window <= 0 {
		m.window = DefaultIdempotencyWindow
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

// memSize is what one message counts against HistoryMaxBytes: its fields
// plus the envelope the Redis broker stores around them.
func memSize(m Message) int {
	const envelope = 40
	return len(m.Text) + len(m.From) + len(m.Node) + len(m.ID) + len(m.User) + envelope
}

// sweepLocked forgets idle rooms and expired idempotency records, at most
// once per quarter of the shorter of TTL and window, so the maps do not
// grow without bound. Lock should be held.
func (m *Memory) sweepLocked(now time.Time) {
	if now.Sub(m.lastSweep) < min(m.ttl, m.window)/4 {
		return
	}
	m.lastSweep = now
	for name, r := range m.rooms {
		_, subscribed := m.subs[name]
		if now.Sub(r.lastUsed) > m.ttl || !subscribed && r.seq == 0 {
			delete(m.rooms, name)
			continue
		}
		r.expireIdem(now)
	}
}

// expireIdem drops the idempotency records whose window has passed.
func (r *memRoom) expireIdem(now time.Time) {
	n := 0
	for n < len(r.idemQ) && !now.Before(r.idemQ[n].exp) {
		e := r.idemQ[n]
		if cur, ok := r.idem[e.key]; ok && cur.exp.Equal(e.exp) {
			delete(r.idem, e.key)
		}
		n++
	}
	if n > 0 {
		clear(r.idemQ[:n])
		r.idemQ = r.idemQ[n:]
		if len(r.idemQ) == 0 {
			r.idemQ = nil
		}
	}
}

// roomLocked returns room's state, or nil if the bus holds nothing of it
// (never used, or idle longer than the TTL). With create it starts the
// room's epoch instead of returning nil. Lock should be held.
func (m *Memory) roomLocked(room string, create bool) *memRoom {
	now := m.now()
	m.sweepLocked(now)
	r := m.rooms[room]
	if r != nil && now.Sub(r.lastUsed) > m.ttl {
		delete(m.rooms, room)
		r = nil
	}
	if r == nil && create {
		r = &memRoom{epoch: memEpoch(), lastUsed: now}
		m.rooms[room] = r
	}
	return r
}

// rolloverLocked starts a new epoch for r if it went back in time relative
// to known. Lock should be held.
func (r *memRoom) rolloverLocked(known Position) {
	if rolledBack(r.epoch, r.seq, known) {
		r.epoch, r.seq = memEpoch(), 0
		clear(r.hist)
		r.hist, r.histBytes = r.hist[:0], 0
	}
}

// memCheckLocked returns an error wrapping ErrUnavailable once the broker
// is closed. Lock should be held.
func (m *Memory) memCheckLocked(op, room string) error {
	if m.closed {
		return fmt.Errorf("relay: memory %s %q: closed: %w", op, room, ErrUnavailable)
	}
	return nil
}

// SetHandler sets the handler deliveries go to.
func (m *Memory) SetHandler(h Handler) {
	m.mu.Lock()
	m.handler = h
	m.mu.Unlock()
}

// Publish is PublishBatch of one message with no known position.
func (m *Memory) Publish(ctx context.Context, msg Message) (Position, error) {
	ps, err := m.PublishBatch(ctx, msg.Room, Position{}, []Message{msg})
	if err != nil {
		return Position{}, err
	}
	return ps[0], nil
}

// PublishBatch sequences msgs, appends them to history and delivers them to
// the handler if the room is subscribed, all under the broker's lock (see
// Broker.PublishBatch for idempotency and the rollback check).
func (m *Memory) PublishBatch(ctx context.Context, room string, known Position, msgs []Message) ([]Position, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("relay: memory publish %q: %w: %w", room, ErrUnavailable, err)
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked("publish", room); err != nil {
		return nil, err
	}
	r := m.roomLocked(room, true)
	r.rolloverLocked(known)
	now := m.now()
	r.lastUsed = now
	r.expireIdem(now)
	_, subscribed := m.subs[room]
	out := make([]Position, len(msgs))
	for i, msg := range msgs {
		key := msg.IdemKey()
		if key != "" {
			if prev, ok := r.idem[key]; ok && prev.epoch == r.epoch {
				out[i] = Position{Seq: prev.seq, Epoch: prev.epoch, Repeat: true}
				continue
			}
		}
		r.seq++
		msg.Room, msg.Seq, msg.Epoch = room, r.seq, r.epoch
		r.append(msg, m.size, m.maxBytes)
		if key != "" {
			exp := now.Add(m.window)
			if r.idem == nil {
				r.idem = make(map[string]memIdem)
			}
			r.idem[key] = memIdem{epoch: r.epoch, seq: r.seq, exp: exp}
			r.idemQ = append(r.idemQ, memIdemExp{key: key, exp: exp})
		}
		m.stats.Publishes++
		if subscribed && m.handler != nil {
			m.stats.Deliveries++
			m.handler.HandleMessage(msg)
		}
		out[i] = Position{Seq: r.seq, Epoch: r.epoch}
	}
	return out, nil
}

// append adds msg to the history window, dropping the oldest messages over
// size or maxBytes (never msg itself).
func (r *memRoom) append(msg Message, size, maxBytes int) {
	r.hist = append(r.hist, msg)
	r.histBytes += memSize(msg)
	drop := 0
	for len(r.hist)-drop > 1 && (len(r.hist)-drop > size || r.histBytes > maxBytes) {
		r.histBytes -= memSize(r.hist[drop])
		drop++
	}
	if drop > 0 {
		n := copy(r.hist, r.hist[drop:])
		clear(r.hist[n:])
		r.hist = r.hist[:n]
	}
}

// Rollover starts a new epoch for room if the bus went back in time
// relative to known or holds nothing of room, and returns its position.
func (m *Memory) Rollover(ctx context.Context, room string, known Position) (Position, error) {
	if err := ctx.Err(); err != nil {
		return Position{}, fmt.Errorf("relay: memory rollover %q: %w: %w", room, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked("rollover", room); err != nil {
		return Position{}, err
	}
	r := m.roomLocked(room, true)
	r.rolloverLocked(known)
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
	r := m.roomLocked(room, true)
	return Position{Seq: r.seq, Epoch: r.epoch}, nil
}

// Unsubscribe stops delivery of room. A room that never had a message is
// forgotten at once.
func (m *Memory) Unsubscribe(ctx context.Context, room string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.subs, room)
	m.stats.Subscribed = len(m.subs)
	if r := m.rooms[room]; r != nil && r.seq == 0 {
		delete(m.rooms, room)
	}
	return nil
}

// Positions reads the position of each of rooms (Broker.Positions).
func (m *Memory) Positions(ctx context.Context, rooms []string) ([]Position, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("relay: memory positions: %w: %w", ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked("positions", ""); err != nil {
		return nil, err
	}
	out := make([]Position, len(rooms))
	for i, room := range rooms {
		if r := m.roomLocked(room, false); r != nil {
			out[i] = Position{Seq: r.seq, Epoch: r.epoch}
		}
	}
	return out, nil
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
	r := m.roomLocked(room, false)
	if r == nil {
		return HistoryResult{}, nil
	}
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
	if add {
		m.addPresenceLocked(room, mem)
	} else if !m.removePresenceLocked(room, mem.Session) {
		return nil
	}
	if _, ok := m.subs[room]; ok && m.handler != nil {
		m.handler.HandlePresence(PresenceEvent{Room: room, Member: mem, Joined: add})
	}
	return nil
}

// memNodeSet is the members of one room connected to one node: session ->
// name. A room's presence is split by node because every member of a node
// has the same node name: a slot then holds two strings, not three (an
// idle node holds one per joined connection). A session is in at most one
// set of a room.
type memNodeSet struct {
	node  string
	names map[string]string
}

// addPresenceLocked records mem in room, replacing the session's earlier
// record, on whatever node it was. Lock should be held.
func (m *Memory) addPresenceLocked(room string, mem Member) {
	sets := m.presence[room]
	at, others := -1, false
	for i := range sets {
		if sets[i].node == mem.Node {
			at = i
		} else {
			delete(sets[i].names, mem.Session)
			others = true
		}
	}
	if at >= 0 && !others {
		sets[at].names[mem.Session] = mem.Name // the common case: one node
		return
	}
	if at < 0 {
		at = len(sets)
		sets = append(sets, memNodeSet{node: mem.Node, names: make(map[string]string)})
	}
	sets[at].names[mem.Session] = mem.Name
	m.presence[room] = dropEmptySets(sets)
}

// removePresenceLocked removes session from room and reports whether it was
// present. Lock should be held.
func (m *Memory) removePresenceLocked(room, session string) bool {
	sets := m.presence[room]
	for i := range sets {
		if _, ok := sets[i].names[session]; ok {
			delete(sets[i].names, session)
			if sets = dropEmptySets(sets); len(sets) == 0 {
				delete(m.presence, room)
			} else {
				m.presence[room] = sets
			}
			return true
		}
	}
	return false
}

// dropEmptySets removes the sets without members, in place.
func dropEmptySets(sets []memNodeSet) []memNodeSet {
	n := 0
	for _, set := range sets {
		if len(set.names) > 0 {
			sets[n] = set
			n++
		}
	}
	clear(sets[n:])
	return sets[:n]
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
	sets := m.presence[room]
	n := 0
	for _, set := range sets {
		n += len(set.names)
	}
	out := make([]Member, 0, n)
	for _, set := range sets {
		for session, name := range set.names {
			out = append(out, Member{Session: session, Name: name, Node: set.node})
		}
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
