package actors

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/gobwas/ws"

	"parley/auth"
	"parley/relay"
)

// Defaults of Config.
const (
	DefaultMaxRoomsPerConn = 64
	DefaultHistoryLimit    = 100
	DefaultBrokerTimeout   = 5 * time.Second
	DefaultCheckInterval   = 5 * time.Second
	DefaultPublishBatch    = 256
	DefaultHistoryBytes    = 256 << 10
	DefaultAuthTimeout     = 10 * time.Second
)

// LobbyRoom is the room plain (seed mode) connections join.
const LobbyRoom = "lobby"

// Config configures the actor system of one node. NodeID and Broker are
// required; every other zero value means the default.
type Config struct {
	NodeID          string       // required
	Broker          relay.Broker // required (node passes relay.NewMemory(...) without Redis)
	Logger          *slog.Logger // nil: discard
	MaxRoomsPerConn int          // 0: 64
	HistoryLimit    int          // max messages in one history reply (0: 100)
	MaxMessageSize  int          // announced in welcome: the socket's inbound message cap (0: not announced)
	// HistoryBytes caps the encoded messages of one history reply (0: 256
	// KiB); the reply then says more:true and the client pages on with
	// before. The newest message asked for is always sent, so paging
	// progresses. Keep it well under the socket's queue cap, so a reply
	// never gets its asker closed as a slow consumer.
	HistoryBytes  int
	BrokerTimeout time.Duration // per broker call (0: 5s)
	CheckInterval time.Duration // periodic position check per room (0: 5s)
	// PublishBatch caps the messages a room hands to the broker in one
	// batch (0: 256). One batch per room is in flight at a time.
	PublishBatch int
	// Auth verifies the tokens of auth frames (nil: token auth off; see
	// ConnInfo.NeedAuth). AuthTimeout closes (1008) a connection that has
	// not authenticated this long after connecting (0: 10s).
	Auth        *auth.Verifier
	AuthTimeout time.Duration
	// ObservePublish, if set, is called with the duration of every
	// publish call to the broker (one per batch), failed ones included.
	ObservePublish func(time.Duration)

	// Limits against clients that ask for too much (limits.go).
	Limits
}

// ConnInfo describes an upgraded socket.
type ConnInfo struct {
	Name   string // display name, already validated by the node ("": a guest name unique on this node)
	Plain  bool   // seed mode (upgrade at /): raw text in the lobby
	Remote string // the client's address, for logs
	// Identity is the user a ?token= on the upgrade authenticated (nil:
	// none). Its Name is the display name; Name is ignored.
	Identity *auth.Identity
	// NeedAuth: auth is on and the client has not authenticated yet; its
	// first frame must be {"type":"auth","token":…} (see Config.Auth).
	NeedAuth bool
}

// Transport is the actors' view of a socket; *netpoll.Conn implements it.
// All methods are safe for concurrent use: the connection actor queues its
// replies on it, and room actors queue fan-out frames on their members'
// transports directly, so one message reaches a thousand sockets without a
// thousand mailbox hops.
type Transport interface {
	// Send queues one complete, immutable frame (it may be shared with
	// other transports) and has it written soon, coalesced with whatever
	// else is queued. It returns netpoll.ErrQueueFull for a slow consumer
	// (the frame is not queued) and netpoll.ErrClosed once closing.
	Send(frame []byte) error
	// Close sends what is queued, then a close frame, then closes.
	Close(code ws.StatusCode, reason string)
	// Kick drops what is queued and closes at once.
	Kick(code ws.StatusCode, reason string)
}

// Stats is the system's view for /debug/stats.
type Stats struct {
	Connections int         `json:"connections"`
	Rooms       int         `json:"rooms"`
	Broker      relay.Stats `json:"broker"`
	// Room counters since start, summed over rooms.
	Deliveries uint64 `json:"deliveries"` // message frames queued on members' sockets
	GapFills   uint64 `json:"gap_fills"`  // history reads for a gap in the live stream
	Checks     uint64 `json:"checks"`     // history reads for a resync or periodic position check
	Resets     uint64 `json:"resets"`     // resync notices (epoch change or history lost)
	SlowKicks  uint64 `json:"slow_kicks"` // members closed with 4008
	PubErrors  uint64 `json:"pub_errors"` // sends answered with "unavailable"
	Rollovers  uint64 `json:"rollovers"`  // new epochs started because the bus went back in time

	// Connection and message counters (stats.go).
	PlainConnections int               `json:"plain_connections"` // of Connections, in seed mode (the rest speak JSON)
	Received         uint64            `json:"received"`          // data frames received from clients
	Published        uint64            `json:"published"`         // client sends the bus sequenced (acked)
	Repeats          uint64            `json:"repeats"`           // sends acked as repeats of an earlier id
	Refused          map[string]uint64 `json:"refused"`           // error frames sent, by protocol error code
	Members          int64             `json:"members"`           // room memberships on this node (presence entries)
	// RoomSizes[i] counts local rooms whose member count is at most
	// RoomSizeBuckets[i] (and above the previous bound); the last entry
	// counts larger rooms.
	RoomSizes []int64 `json:"room_sizes"`
}

// System is one node's actor system: the relay actor, the directory with
// its room actors, and one connection actor per socket.
type System struct {
	cfg       Config
	log       *slog.Logger
	as        *actor.ActorSystem
	root      *actor.RootContext
	relayPID  *actor.PID
	dirPID    *actor.PID
	connProps *actor.Props
	prefix    string // session id prefix: node id + random per process
	nextID    atomic.Uint64
	rooms     atomic.Int64 // written by the directory
	count     counters
	tasks     sync.WaitGroup
	closing   atomic.Bool

	mu sync.Mutex // guards conns and every Session.slot
	// conns is the open sessions, in no particular order: each knows its
	// index (Session.slot), so adding and removing one is O(1) and costs a
	// pointer here, not a map slot.
	conns []*Session
}

// Session is the node's handle on one connection actor.
//
// Fields are ordered so it packs into 48 bytes (one per connection): the
// three flags share one word, so the slot fits.
type Session struct {
	sys *System
	pid *actor.PID
	id  string

	// gate orders HandleMessage's posts against stopReading: a frame is
	// posted under it, so once sessStopped is set every frame read is
	// already in the mailbox, ahead of readStopped.
	gate  sync.Mutex
	flags atomic.Uint32 // sessDone, sessStopped, sessPlain
	slot  int32         // guarded by sys.mu: index in sys.conns, -1 once forgotten
}

// Session flags.
const (
	sessDone    = 1 << iota // the actor stopped; later posts are dropped
	sessStopped             // set under gate: frames are no longer read (drain)
	sessPlain               // seed mode, for the plain connection count; set before the session is shared
)

// isDone reports whether the connection actor stopped.
func (s *Session) isDone() bool { return s.flags.Load()&sessDone != 0 }

// stopDecider stops a failing actor instead of restarting it.
func stopDecider(any) actor.Directive { return actor.StopDirective }

// New validates cfg and starts the actor system: the relay actor and the
// directory.
func New(cfg Config) (*System, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("actors: NodeID is required")
	}
	if cfg.Broker == nil {
		return nil, errors.New("actors: Broker is required")
	}
	if cfg.MaxRoomsPerConn < 0 || cfg.HistoryLimit < 0 || cfg.BrokerTimeout < 0 ||
		cfg.CheckInterval < 0 || cfg.PublishBatch < 0 || cfg.HistoryBytes < 0 || cfg.AuthTimeout < 0 || !cfg.Limits.valid() {
		return nil, errors.New("actors: limits must not be negative")
	}
	if cfg.MaxRoomsPerConn == 0 {
		cfg.MaxRoomsPerConn = DefaultMaxRoomsPerConn
	}
	if cfg.HistoryLimit == 0 {
		cfg.HistoryLimit = DefaultHistoryLimit
	}
	if cfg.BrokerTimeout == 0 {
		cfg.BrokerTimeout = DefaultBrokerTimeout
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.PublishBatch == 0 {
		cfg.PublishBatch = DefaultPublishBatch
	}
	if cfg.HistoryBytes == 0 {
		cfg.HistoryBytes = DefaultHistoryBytes
	}
	if cfg.AuthTimeout == 0 {
		cfg.AuthTimeout = DefaultAuthTimeout
	}
	cfg.setLimitDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	s := &System{
		cfg:    cfg,
		log:    log,
		prefix: cfg.NodeID + "." + hex.EncodeToString(rnd[:]) + ".",
	}
	s.as = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		// protoactor logs routine events (dead letters, system start) at
		// Info: keep only its warnings and errors.
		return slog.New(&minLevel{h: log.Handler(), min: slog.LevelWarn}).With("lib", "protoactor")
	}))
	s.root = s.as.Root
	stop := actor.NewOneForOneStrategy(0, 0, stopDecider)
	s.connProps = actor.PropsFromProducer(func() actor.Actor { return &conn{} },
		actor.WithMailbox(newConnMailbox), // mailbox.go: ~90 bytes less per connection
		actor.WithGuardian(stop))
	var err error
	s.relayPID, err = relay.Spawn(s.root, relay.ActorConfig{
		Broker: cfg.Broker, Logger: log, Timeout: cfg.BrokerTimeout, Tasks: &s.tasks,
	})
	if err != nil {
		s.as.Shutdown()
		return nil, fmt.Errorf("actors: %w", err)
	}
	dirProps := actor.PropsFromProducer(func() actor.Actor { return newDirectory(s) },
		actor.WithMailbox(actor.UnboundedLockfree()),
		actor.WithSupervisor(stop))
	s.dirPID, err = s.root.SpawnNamed(dirProps, "directory")
	if err != nil {
		s.as.Shutdown()
		return nil, fmt.Errorf("actors: spawn directory: %w", err)
	}
	return s, nil
}

// Connect spawns the connection actor for an upgraded socket. The node calls
// sess.HandleMessage/HandleClose from netpoll's callbacks.
func (s *System) Connect(t Transport, info ConnInfo) (*Session, error) {
	if t == nil {
		return nil, errors.New("actors: connect: nil transport")
	}
	if info.NeedAuth && s.cfg.Auth == nil {
		return nil, errors.New("actors: connect: NeedAuth without Config.Auth")
	}
	if s.closing.Load() {
		return nil, errors.New("actors: connect: system is shutting down")
	}
	n := s.nextID.Add(1)
	sess := &Session{sys: s, id: s.prefix + strconv.FormatUint(n, 36)}
	if info.Plain {
		sess.flags.Store(sessPlain)
	}
	name := info.Name
	if name == "" {
		// Unique on this node (names are unique per room), and unlikely
		// to meet the same guest name from another node.
		name = "guest-" + s.prefix[len(s.cfg.NodeID)+1:len(s.cfg.NodeID)+5] + strconv.FormatUint(n, 36)
	}
	sess.pid = s.root.Spawn(s.connProps)
	s.track(sess)
	s.root.Send(sess.pid, &connInit{t: t, sess: sess, name: name, plain: info.Plain, id: info.Identity, needAuth: info.NeedAuth})
	return sess, nil
}

// HandleMessage posts one data frame to the connection actor and never
// blocks. It takes payload over, as netpoll hands it: the caller must not
// touch it afterwards. Once the connection drains (stopReading) frames are
// no longer read: the client was told to reconnect and retries what it sent
// after that, with the same ids, on the node it reconnects to.
func (s *Session) HandleMessage(op ws.OpCode, payload []byte) {
	if s.isDone() {
		return
	}
	s.sys.count.received.Add(1)
	s.gate.Lock()
	if s.flags.Load()&sessStopped == 0 {
		s.sys.root.Send(s.pid, &inbound{op: op, payload: payload})
	}
	s.gate.Unlock()
}

// stopReading stops taking frames and posts readStopped to the actor,
// behind every frame already taken. Called by the connection actor.
func (s *Session) stopReading() {
	s.gate.Lock()
	s.flags.Or(sessStopped)
	s.sys.root.Send(s.pid, &readStopped{})
	s.gate.Unlock()
}

// HandleClose tells the connection actor its socket is gone; the actor
// stops itself (leaving its rooms).
func (s *Session) HandleClose(err error) {
	if s.isDone() {
		return
	}
	s.sys.root.Send(s.pid, &closed{err: err})
}

// ID returns the session id, unique cluster-wide.
func (s *Session) ID() string { return s.id }

func (s *System) sessions() []*Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Session(nil), s.conns...)
}

// track adds sess to the open sessions.
func (s *System) track(sess *Session) {
	s.mu.Lock()
	sess.slot = int32(len(s.conns)) // a node has far fewer than 2^31 sockets (file descriptors)
	s.conns = append(s.conns, sess)
	s.mu.Unlock()
	if sess.flags.Load()&sessPlain != 0 {
		s.count.plain.Add(1)
	}
}

// forget removes sess from the open sessions (once; later calls do
// nothing): the last session takes its slot.
func (s *System) forget(sess *Session) {
	s.mu.Lock()
	i := sess.slot
	ok := i >= 0 && int(i) < len(s.conns) && s.conns[i] == sess
	if ok {
		last := len(s.conns) - 1
		s.conns[i] = s.conns[last]
		s.conns[i].slot = i
		s.conns[last] = nil
		s.conns = s.conns[:last]
		sess.slot = -1
		if cap(s.conns) > 1024 && len(s.conns) < cap(s.conns)/4 {
			// Give back what a peak of connections left behind.
			s.conns = append(make([]*Session, 0, 2*len(s.conns)), s.conns...)
		}
	}
	s.mu.Unlock()
	if ok && sess.flags.Load()&sessPlain != 0 {
		s.count.plain.Add(-1)
	}
}

// Drain tells every connection to go (Session.Drain). It returns after
// posting to all.
func (s *System) Drain(reason string, after time.Duration) {
	for _, sess := range s.sessions() {
		sess.Drain(reason, after)
	}
}

// Sessions returns the connections open now, for a caller that drains them
// in batches.
func (s *System) Sessions() []*Session { return s.sessions() }

// Drain tells the connection to go, and returns at once. The connection
// queues reconnect{reason, after_ms} (JSON mode; after_ms is drawn from
// [after, 2*after)), then stops reading frames, answers every frame it had
// read (ack or error; a join gets error "draining"), and once those answers
// are queued closes with 1001: netpoll writes them before the close frame.
// Rooms answer sends only when the bus did, so a drain lasts at most about
// the broker timeout; the node bounds it with its shutdown grace.
func (s *Session) Drain(reason string, after time.Duration) {
	if !s.isDone() {
		s.sys.root.Send(s.pid, &drain{reason: reason, after: after})
	}
}

// Stats returns the current counts.
func (s *System) Stats() Stats {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	c := &s.count
	st := Stats{Connections: n, Rooms: int(s.rooms.Load()), Broker: s.cfg.Broker.Stats(),
		Deliveries: c.deliveries.Load(), GapFills: c.gapFills.Load(), Checks: c.checks.Load(),
		Resets: c.resets.Load(), SlowKicks: c.slowKicks.Load(), PubErrors: c.pubErrors.Load(),
		Rollovers:        c.rollovers.Load(),
		PlainConnections: int(c.plain.Load()), Received: c.received.Load(), Published: c.published.Load(),
		Repeats: c.repeats.Load(), Refused: c.refused.snapshot(), Members: c.sizes.members.Load(),
		RoomSizes: make([]int64, len(c.sizes.n))}
	for i := range c.sizes.n {
		st.RoomSizes[i] = c.sizes.n[i].Load()
	}
	return st
}

// Shutdown stops all actors (connections first, then rooms, then the
// relay) and waits for them and for the broker calls in flight. It does NOT
// close the broker. Connections still open are closed with 1001.
func (s *System) Shutdown(ctx context.Context) error {
	if s.closing.Swap(true) {
		return errors.New("actors: shutdown called twice")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var futs []*actor.Future
		for _, sess := range s.sessions() {
			futs = append(futs, s.root.StopFuture(sess.pid))
		}
		for _, f := range futs {
			_ = f.Wait()
		}
		_ = s.root.StopFuture(s.dirPID).Wait()
		_ = s.root.PoisonFuture(s.relayPID).Wait()
		s.tasks.Wait()
	}()
	select {
	case <-done:
		s.as.Shutdown()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("actors: shutdown: %w", ctx.Err())
	}
}

// outbox returns the outbox of socket t (see outbox.go).
func (s *System) outbox(t Transport) outbox { return outbox{t: t, kicks: &s.count.slowKicks} }

// goTask runs f on a transient goroutine counted for Shutdown.
func (s *System) goTask(f func()) {
	s.tasks.Add(1)
	go func() {
		defer s.tasks.Done()
		f()
	}()
}

// brokerCtx bounds one broker call.
func (s *System) brokerCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.cfg.BrokerTimeout)
}

// minLevel is a slog.Handler that drops records below min.
type minLevel struct {
	h   slog.Handler
	min slog.Level
}

func (m *minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}
func (m *minLevel) Handle(ctx context.Context, r slog.Record) error { return m.h.Handle(ctx, r) }
func (m *minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return &minLevel{h: m.h.WithAttrs(a), min: m.min}
}
func (m *minLevel) WithGroup(g string) slog.Handler {
	return &minLevel{h: m.h.WithGroup(g), min: m.min}
}
