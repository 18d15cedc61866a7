package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"parley/protocol"
)

// Defaults of Config's zero fields.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultMinBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultPingInterval   = 15 * time.Second
	DefaultMaxMessageSize = 64 << 10
)

// Config configures a Client. The zero value of every field but Addrs
// means the default given in its comment.
type Config struct {
	// Addrs are the nodes to use, "host:port" or "ws://host:port[/path]"
	// (path default /ws). The client connects to the first and moves to the
	// next one each time it reconnects; one address behind a load balancer
	// works the same way. At least one is required.
	Addrs []string
	// Name is the user name sent at the upgrade (empty: the node picks one).
	Name string
	// Token is the JSON Web Token for nodes with token auth (empty: none).
	// It is sent as the first frame of every connection
	// ({"type":"auth","token":…}), not in the URL.
	Token string
	// TokenFunc, if set, is called before every connection for a fresh
	// token (it wins over Token). With it, a connection closed with 1008
	// "token expired" is resumed with a new token instead of ending the
	// client.
	TokenFunc func(ctx context.Context) (string, error)
	// DialTimeout bounds one connection attempt: TCP, upgrade and welcome
	// (default 5s).
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered, doubling wait between
	// reconnect attempts and between retries of a refused send (defaults
	// 100ms and 5s).
	MinBackoff, MaxBackoff time.Duration
	// PingInterval is how often the client pings the node; a connection that
	// brings nothing, not even a pong, for three intervals is taken as lost
	// (default 15s).
	PingInterval time.Duration
	// MaxMessageSize caps a send's frame: a larger send fails with
	// ErrTooLarge instead of costing the connection a 1009 close. The
	// node's welcome says its limit (max_message_size); the client uses the
	// smaller of the two (default: the node's, else 64 KiB).
	MaxMessageSize int
	// NetDial, if set, opens the TCP connections (tests use it to cut them).
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives the client's logs (nil: discard).
	Logger *slog.Logger
}

// Errors a Client returns. A refusal is a *RefusedError; a frame the node
// answered with an error is a *ServerError.
var (
	// ErrClosed: the client was closed (Close), or ended after a refusal
	// (then the refusal is returned instead).
	ErrClosed = errors.New("client: closed")
	// ErrTooLarge: the send's frame is larger than Config.MaxMessageSize.
	ErrTooLarge = errors.New("client: message larger than the node accepts")
	// ErrLeft: the room was left while the call was waiting.
	ErrLeft = errors.New("client: room left")
	// ErrConnLost: the connection was lost before the node answered a
	// history or presence request (sends are retried instead).
	ErrConnLost = errors.New("client: connection lost")
)

// RefusedError says the node does not want this client: an HTTP 4xx at the
// upgrade (bad name, authentication, origin), close 1008, or a protocol
// violation the node reported with its close code. The client does not
// retry it.
type RefusedError struct {
	Addr      string
	Status    int // HTTP status at the upgrade (0 if it was a close)
	CloseCode int // WebSocket close code (0 if it was an HTTP status)
	Reason    string
}

func (e *RefusedError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("client: %s refused the upgrade: HTTP %d: %s", e.Addr, e.Status, e.Reason)
	}
	if e.CloseCode != 0 {
		return fmt.Sprintf("client: %s closed the connection with %d: %s", e.Addr, e.CloseCode, e.Reason)
	}
	return fmt.Sprintf("client: %s: %s", e.Addr, e.Reason)
}

// StatusError is an HTTP status at the upgrade that is worth retrying
// (429, 5xx: a draining or overloaded node). The client retries it itself;
// Dial returns it when its context ends first.
type StatusError struct {
	Addr   string
	Status int
	Reason string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("client: %s answered the upgrade with HTTP %d: %s", e.Addr, e.Status, e.Reason)
}

// ServerError is an error frame the node answered a request with, for codes
// the client does not retry itself (bad_room, too_many_rooms, …).
type ServerError struct {
	Code    string
	Message string
	ID      string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("client: node refused %s: %s: %s", e.ID, e.Code, e.Message)
}

// Ack is a send's answer: the message is in the room's history as Seq.
type Ack struct {
	Room   string
	ID     string
	Seq    uint64
	Repeat bool   // the id was already published: Seq is the original's
	Node   string // the node that answered
}

// Message is one chat message.
type Message struct {
	Room  string
	Seq   uint64
	Epoch string
	From  string
	Text  string
	ID    string
	TS    int64 // unix milliseconds, set by the sender's node
}

// Member is one entry of a presence list.
type Member struct {
	Name string `json:"name"`
	Node string `json:"node"`
}

// EventKind says what an Event carries.
type EventKind int

// Event kinds.
const (
	// EventMessage: Message is the next message of its room.
	EventMessage EventKind = iota + 1
	// EventReset: the room's history was lost (a new epoch, or a resume
	// the node could not serve): messages before Seq of Epoch will not come.
	EventReset
	// EventMemberJoined and EventMemberLeft: Member joined or left Room.
	EventMemberJoined
	EventMemberLeft
	// EventRoomLost: the client could not rejoin Room after a reconnect
	// (Err says why); it is no longer joined.
	EventRoomLost
	// EventReconnected: a new connection is up, on node Node.
	EventReconnected
	// EventDisconnected: the connection was lost (Code: the node's close
	// code, 0 without a close frame; Err: what ended it); the client
	// reconnects unless it ended (Done).
	EventDisconnected
	// EventPresenceEvents: the node turned Room's member_joined/member_left
	// off (State "off": the room is large) or on again ("on": ask for
	// Presence to refresh a member list).
	EventPresenceEvents
)

// Event is what the client delivers on Events.
type Event struct {
	Kind    EventKind
	Room    string
	Message Message // EventMessage
	Epoch   string  // EventReset
	Seq     uint64  // EventReset: the last seq of the new epoch before live messages
	Member  Member  // EventMemberJoined, EventMemberLeft
	Node    string  // EventReconnected, EventDisconnected
	Code    int     // EventDisconnected
	State   string  // EventPresenceEvents: "on" or "off"
	Err     error   // EventRoomLost, EventDisconnected
}

// Stats counts what a client did since it was dialled.
type Stats struct {
	Sends      uint64 // Send calls
	Acks       uint64 // sends acked
	Repeats    uint64 // acks marked repeat (the send had been published before)
	Retries    uint64 // sends and joins retried after unavailable, draining, rate_limited, not_joined
	Resent     uint64 // sends written again (after a retry or a reconnect)
	Failed     uint64 // sends answered with an error the client does not retry
	Unanswered uint64 // sends whose context ended before an answer
	Orphaned   uint64 // sends written on a connection that ended before answering them (then sent again)
	Messages   uint64 // messages delivered on Events
	Duplicates uint64 // messages dropped because their seq was delivered already
	Gaps       uint64 // messages whose seq skipped one (never expected)
	Resets     uint64 // resets delivered
	Connects   uint64 // connections established, the first included
	DialErrors uint64 // failed connection attempts
	Notices    uint64 // reconnect notices received
}

// roomState is one room the application joined. Guarded by Client.mu.
type roomState struct {
	name     string
	joined   bool   // joined on the current connection
	joining  bool   // a join is written on the current connection, unanswered
	joinID   string // id of that join
	hasPos   bool   // epoch and last are known
	epoch    string
	last     uint64 // last seq delivered (or the joined seq)
	attempts int    // failed joins since the last success
	retry    *time.Timer
	waiters  []chan error // Join calls waiting for joined
}

// pendingSend is a send waiting for its answer. Guarded by Client.mu.
type pendingSend struct {
	id, room, text string
	n              uint64 // send order
	on             *conn  // connection it was written on last (nil: to write)
	writes         int
	retries        int
	timer          *time.Timer
	res            chan sendResult // capacity 1, written once
}

type sendResult struct {
	ack Ack
	err error
}

// request is a history or presence request waiting for its reply.
type request struct {
	id  string
	on  *conn
	res chan requestResult // capacity 1
}

type requestResult struct {
	f   *frame
	err error
}

// Client is a resuming Parley client. Its methods are safe for concurrent
// use. See the package doc for which goroutine owns what.
type Client struct {
	cfg      Config
	log      *slog.Logger
	idPrefix string
	events   *eventQueue
	out      chan Event
	quit     chan struct{}   // closed by Close or a fatal error
	ctx      context.Context // cancelled with quit: ends a dial in progress
	cancel   context.CancelFunc
	down     chan struct{} // capacity 1: the current connection ended
	wg       sync.WaitGroup

	mu       sync.Mutex // guards the following
	cur      *conn      // current connection; nil while reconnecting
	curSince time.Time  // when cur was installed
	draining bool       // cur sent reconnect (or draining): write nothing new on it
	resumeAt time.Time  // reconnect not before (a notice's after_ms)
	addrIdx  int
	rooms    map[string]*roomState
	sends    map[string]*pendingSend
	reqs     map[string][]*request // key type+" "+room, in request order
	leaves   map[string][]chan error
	n        uint64 // id counter
	closed   bool
	err      error // the refusal that ended the client
	quitOnce sync.Once
	stats    Stats
}

// Dial connects to the first address that accepts (trying each in turn, with
// back-off, until ctx ends) and returns a running client. A refusal is
// returned at once as a *RefusedError.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("client: no address given")
	}
	def(&cfg.DialTimeout, DefaultDialTimeout)
	def(&cfg.MinBackoff, DefaultMinBackoff)
	def(&cfg.MaxBackoff, DefaultMaxBackoff)
	def(&cfg.PingInterval, DefaultPingInterval)
	if cfg.MaxMessageSize < 0 {
		return nil, fmt.Errorf("client: MaxMessageSize %d is negative", cfg.MaxMessageSize)
	}
	if cfg.MinBackoff > cfg.MaxBackoff {
		return nil, fmt.Errorf("client: MinBackoff %v above MaxBackoff %v", cfg.MinBackoff, cfg.MaxBackoff)
	}
	if cfg.Name != "" {
		if err := protocol.CheckName(cfg.Name); err != nil {
			return nil, &RefusedError{Addr: cfg.Addrs[0], Reason: "bad name: " + err.Error()}
		}
	}
	for _, a := range cfg.Addrs {
		if _, err := wsURL(a, ""); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	c := &Client{
		cfg: cfg, log: log, idPrefix: hex.EncodeToString(rb[:]),
		events: newEventQueue(), out: make(chan Event, 64),
		quit: make(chan struct{}), down: make(chan struct{}, 1),
		rooms: map[string]*roomState{}, sends: map[string]*pendingSend{},
		reqs: map[string][]*request{}, leaves: map[string][]chan error{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	var cn *conn
	for attempt := 0; ; attempt++ {
		addr := cfg.Addrs[attempt%len(cfg.Addrs)]
		var err error
		cn, err = dial(ctx, &c.cfg, addr)
		if err == nil {
			c.addrIdx = attempt % len(cfg.Addrs)
			break
		}
		var re *RefusedError
		if errors.As(err, &re) {
			c.cancel()
			return nil, err
		}
		if ctx.Err() != nil {
			c.cancel()
			return nil, fmt.Errorf("client: dial: %w (last: %w)", ctx.Err(), err)
		}
		c.stats.DialErrors++
		select {
		case <-ctx.Done():
			c.cancel()
			return nil, fmt.Errorf("client: dial: %w (last: %w)", ctx.Err(), err)
		case <-time.After(c.backoff(attempt)):
		}
	}
	c.wg.Add(2)
	go c.pump()
	go c.run()
	c.mu.Lock()
	c.install(cn)
	c.mu.Unlock()
	return c, nil
}

func def(d *time.Duration, v time.Duration) {
	if *d == 0 {
		*d = v
	}
}

// backoff is the wait before attempt n (0-based): MinBackoff doubled n
// times, capped at MaxBackoff, drawn from [d/2, d).
func (c *Client) backoff(n int) time.Duration {
	d := c.cfg.MinBackoff
	for i := 0; i < n && d < c.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.cfg.MaxBackoff)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// Events delivers messages (in seq order per room, each once), resets,
// presence changes and reconnects. It is closed when the client ends. The
// client queues events without bound while nobody reads.
func (c *Client) Events() <-chan Event { return c.out }

// Done is closed when the client has ended: Close, or a refusal (Err).
func (c *Client) Done() <-chan struct{} { return c.quit }

// Err returns the refusal that ended the client, or nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Node returns the id of the node the client is connected to ("" while it
// reconnects).
func (c *Client) Node() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.cur.node
}

// Name returns the client's name as the node knows it.
func (c *Client) Name() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil {
		return c.cur.name
	}
	return c.cfg.Name
}

// Position returns the epoch and the last seq delivered of a joined room.
func (c *Client) Position(room string) (epoch string, seq uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.rooms[room]
	if r == nil || !r.hasPos {
		return "", 0, false
	}
	return r.epoch, r.last, true
}

// usable reports whether the client may start a call; the lock must be held.
func (c *Client) usable() error {
	if c.err != nil {
		return c.err
	}
	if c.closed {
		return ErrClosed
	}
	return nil
}

func (c *Client) nextID(kind string) string {
	c.n++
	return fmt.Sprintf("%s-%s%d", c.idPrefix, kind, c.n)
}

// Join joins room and waits until the node confirmed it. From then on the
// room's messages arrive on Events, and the client rejoins it after every
// reconnect until Leave.
func (c *Client) Join(ctx context.Context, room string) error {
	if err := protocol.CheckRoom(room); err != nil {
		return fmt.Errorf("client: join %q: %w", room, err)
	}
	c.mu.Lock()
	if err := c.usable(); err != nil {
		c.mu.Unlock()
		return err
	}
	r := c.rooms[room]
	if r != nil && r.joined {
		c.mu.Unlock()
		return nil
	}
	if r == nil {
		r = &roomState{name: room}
		c.rooms[room] = r
		if c.writable() {
			c.writeJoin(r)
		}
	}
	ch := make(chan error, 1)
	r.waiters = append(r.waiters, ch)
	c.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("client: join %q: %w", room, ctx.Err())
	}
}

// Leave leaves room and waits for the node's answer (or the end of the
// connection, which leaves every room as well). Sends to the room still
// waiting for a connection fail with ErrLeft.
func (c *Client) Leave(ctx context.Context, room string) error {
	c.mu.Lock()
	r := c.rooms[room]
	if r == nil {
		c.mu.Unlock()
		return nil
	}
	c.dropRoom(r, ErrLeft)
	var ch chan error
	if c.cur != nil && (r.joined || r.joining) {
		ch = make(chan error, 1)
		c.leaves[room] = append(c.leaves[room], ch)
		c.cur.writeJSON(protocol.ClientFrame{Type: protocol.TypeLeave, Room: room, ID: c.nextID("l")})
	}
	c.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("client: leave %q: %w", room, ctx.Err())
	}
}

// dropRoom forgets r: its waiters and its sends not yet written fail with
// err. Sends already written keep waiting for their answer.
func (c *Client) dropRoom(r *roomState, err error) {
	delete(c.rooms, r.name)
	if r.retry != nil {
		r.retry.Stop()
	}
	for _, w := range r.waiters {
		w <- err
	}
	r.waiters = nil
	for _, p := range c.sends {
		if p.room == r.name && p.on == nil {
			c.finish(p, sendResult{err: fmt.Errorf("client: send %s: %w", p.id, err)})
		}
	}
}

// Send publishes text to room with an id of the client's own and waits for
// the ack. Through reconnects and refusals worth retrying it sends the same
// id again until the node answers or ctx ends.
func (c *Client) Send(ctx context.Context, room, text string) (Ack, error) {
	return c.SendID(ctx, room, "", text)
}

// SendID is Send with the application's own id (empty: the client picks
// one). Ids are the node's idempotency keys, per sender and room: a new
// message needs a new id.
func (c *Client) SendID(ctx context.Context, room, id, text string) (Ack, error) {
	c.mu.Lock()
	if err := c.usable(); err != nil {
		c.mu.Unlock()
		return Ack{}, err
	}
	if id == "" {
		id = c.nextID("s")
	} else if c.sends[id] != nil {
		c.mu.Unlock()
		return Ack{}, fmt.Errorf("client: send %s: id already waiting for an answer", id)
	} else {
		c.n++
	}
	if b, _ := json.Marshal(protocol.ClientFrame{Type: protocol.TypeSend, Room: room, Text: text, ID: id}); len(b) > c.maxMessage() {
		c.mu.Unlock()
		return Ack{}, fmt.Errorf("client: send to %q: %d bytes: %w", room, len(b), ErrTooLarge)
	}
	p := &pendingSend{id: id, room: room, text: text, n: c.n, res: make(chan sendResult, 1)}
	c.sends[id] = p
	c.stats.Sends++
	c.writeSend(p)
	c.mu.Unlock()
	select {
	case r := <-p.res:
		return r.ack, r.err
	case <-ctx.Done():
		c.mu.Lock()
		if c.sends[id] == p {
			c.stats.Unanswered++
			c.finish(p, sendResult{})
			c.mu.Unlock()
			return Ack{}, fmt.Errorf("client: send %s to %q unanswered: %w", id, room, ctx.Err())
		}
		c.mu.Unlock()
		r := <-p.res // answered meanwhile
		return r.ack, r.err
	}
}

// maxMessage is the largest send frame: the smaller of the node's limit
// (from the current connection's welcome) and Config.MaxMessageSize, or
// DefaultMaxMessageSize when neither is known. The lock must be held.
func (c *Client) maxMessage() int {
	limit := c.cfg.MaxMessageSize
	if c.cur != nil && c.cur.maxMessage > 0 && (limit == 0 || c.cur.maxMessage < limit) {
		limit = c.cur.maxMessage
	}
	if limit == 0 {
		limit = DefaultMaxMessageSize
	}
	return limit
}

// finish ends a pending send with r.
func (c *Client) finish(p *pendingSend, r sendResult) {
	delete(c.sends, p.id)
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	p.res <- r
}

// writable reports whether new frames may go on the current connection.
func (c *Client) writable() bool { return c.cur != nil && !c.draining }

// writeSend writes p on the current connection if its room is joined there
// (or not joined at all: the node then answers not_joined).
func (c *Client) writeSend(p *pendingSend) {
	if !c.writable() || p.timer != nil || p.on == c.cur {
		return
	}
	if r := c.rooms[p.room]; r != nil && !r.joined {
		return // written once the room is (re)joined
	}
	if !c.cur.writeJSON(protocol.ClientFrame{Type: protocol.TypeSend, Room: p.room, Text: p.text, ID: p.id}) {
		return
	}
	if p.writes > 0 {
		c.stats.Resent++
	}
	p.writes++
	p.on = c.cur
}

// writeJoin writes r's join, with since and epoch once a position is known.
func (c *Client) writeJoin(r *roomState) {
	f := protocol.ClientFrame{Type: protocol.TypeJoin, Room: r.name, ID: c.nextID("j")}
	if r.hasPos {
		since := r.last
		f.Since, f.Epoch = &since, r.epoch
	}
	if c.cur.writeJSON(f) {
		r.joining, r.joinID = true, f.ID
	}
}

// History asks for the newest limit messages of a joined room with seq
// below before (0: the newest). It is not retried: on a lost connection it
// returns ErrConnLost.
func (c *Client) History(ctx context.Context, room string, before uint64, limit int) ([]Message, error) {
	f, err := c.request(ctx, protocol.ClientFrame{Type: protocol.TypeHistory, Room: room, Before: before, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := make([]Message, 0, len(f.Messages))
	for _, raw := range f.Messages {
		var m protocol.Message
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("client: history of %q: %w", room, err)
		}
		out = append(out, Message{Room: m.Room, Seq: m.Seq, Epoch: m.Epoch, From: m.From, Text: m.Text, ID: m.ID, TS: m.TS})
	}
	return out, nil
}

// Presence lists the members of a joined room on every node.
func (c *Client) Presence(ctx context.Context, room string) ([]Member, error) {
	f, err := c.request(ctx, protocol.ClientFrame{Type: protocol.TypePresence, Room: room})
	if err != nil {
		return nil, err
	}
	return f.Members, nil
}

// request writes a history or presence request and waits for its reply.
// Replies carry no id: they answer the requests of their type and room in
// order.
func (c *Client) request(ctx context.Context, f protocol.ClientFrame) (*frame, error) {
	c.mu.Lock()
	if err := c.usable(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	if !c.writable() {
		c.mu.Unlock()
		return nil, fmt.Errorf("client: %s %q: %w", f.Type, f.Room, ErrConnLost)
	}
	f.ID = c.nextID("q")
	rq := &request{id: f.ID, on: c.cur, res: make(chan requestResult, 1)}
	key := f.Type + " " + f.Room
	c.reqs[key] = append(c.reqs[key], rq)
	c.cur.writeJSON(f)
	c.mu.Unlock()
	select {
	case r := <-rq.res:
		return r.f, r.err
	case <-ctx.Done():
		c.mu.Lock()
		c.reqs[key] = slices.DeleteFunc(c.reqs[key], func(x *request) bool { return x == rq })
		c.mu.Unlock()
		return nil, fmt.Errorf("client: %s %q: %w", f.Type, f.Room, ctx.Err())
	}
}

// Close ends the client: it closes the connection normally, fails every
// waiting call with ErrClosed and waits for its goroutines.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	c.failAll(ErrClosed)
	cur := c.cur
	c.mu.Unlock()
	c.quitOnce.Do(c.stop)
	if cur != nil {
		cur.closeGracefully(time.Second)
	}
	c.wg.Wait()
	return nil
}

// failAll fails every waiting call with err; the lock must be held.
func (c *Client) failAll(err error) {
	for _, p := range c.sends {
		c.finish(p, sendResult{err: err})
	}
	for _, r := range c.rooms {
		if r.retry != nil {
			r.retry.Stop()
		}
		for _, w := range r.waiters {
			w <- err
		}
		r.waiters = nil
	}
	for k, list := range c.reqs {
		for _, rq := range list {
			rq.res <- requestResult{err: err}
		}
		delete(c.reqs, k)
	}
	for k, list := range c.leaves {
		for _, ch := range list {
			ch <- nil
		}
		delete(c.leaves, k)
	}
}

// fatal ends the client after a refusal; the lock must be held.
func (c *Client) fatal(err error) {
	if c.err != nil || c.closed {
		return
	}
	c.log.Warn("client: refused, giving up", "err", err)
	c.err = err
	c.failAll(err)
	c.quitOnce.Do(c.stop)
}

// stop closes quit and cancels dials in progress (once, by quitOnce).
func (c *Client) stop() {
	close(c.quit)
	c.cancel()
}

// install makes cn the current connection and rejoins every room; the lock
// must be held.
func (c *Client) install(cn *conn) {
	if c.closed || c.err != nil {
		cn.nc.Close()
		return
	}
	c.stats.Connects++
	c.cur, c.curSince, c.draining = cn, time.Now(), false
	cn.readTimeout = 3 * c.cfg.PingInterval
	c.wg.Add(2)
	go c.readLoop(cn)
	go cn.writeLoop(&c.wg, c.cfg.PingInterval)
	if c.stats.Connects > 1 {
		c.events.push(Event{Kind: EventReconnected, Node: cn.node})
	}
	names := make([]string, 0, len(c.rooms))
	for name := range c.rooms {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		c.writeJoin(c.rooms[name])
	}
	// Sends to rooms the client does not hold (the node answers them).
	c.resend("")
}

// resend writes again, in their original order, the pending sends of room
// ("" : of no room the client holds) not yet written on this connection.
func (c *Client) resend(room string) {
	var list []*pendingSend
	for _, p := range c.sends {
		if room == "" && c.rooms[p.room] == nil || room != "" && p.room == room {
			list = append(list, p)
		}
	}
	slices.SortFunc(list, func(a, b *pendingSend) int { return cmpU64(a.n, b.n) })
	for _, p := range list {
		c.writeSend(p)
	}
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// run is the manager goroutine: each time the current connection ends it
// backs off and dials the next address, until the client ends.
func (c *Client) run() {
	defer c.wg.Done()
	attempt := 0
	for {
		select {
		case <-c.quit:
			return
		case <-c.down:
		}
		for {
			c.mu.Lock()
			if c.closed || c.err != nil {
				c.mu.Unlock()
				return
			}
			if c.cur != nil {
				c.mu.Unlock()
				break
			}
			lived := time.Since(c.curSince)
			if lived > 2*c.cfg.MaxBackoff {
				attempt = 0 // the last connection was healthy
			}
			wait := c.backoff(attempt)
			if d := time.Until(c.resumeAt); d > wait {
				wait = d
			}
			c.addrIdx = (c.addrIdx + 1) % len(c.cfg.Addrs)
			addr := c.cfg.Addrs[c.addrIdx]
			c.mu.Unlock()
			select {
			case <-c.quit:
				return
			case <-time.After(wait):
			}
			cn, err := dial(c.ctx, &c.cfg, addr)
			c.mu.Lock()
			if err != nil {
				var re *RefusedError
				if errors.As(err, &re) {
					c.fatal(err)
					c.mu.Unlock()
					return
				}
				c.stats.DialErrors++
				c.log.Debug("client: reconnect failed", "addr", addr, "err", err)
				attempt++
				c.curSince = time.Now()
				c.mu.Unlock()
				continue
			}
			attempt++
			c.install(cn)
			c.mu.Unlock()
			break
		}
	}
}

// readLoop is cn's reader goroutine.
func (c *Client) readLoop(cn *conn) {
	defer c.wg.Done()
	defer c.ended(cn)
	defer close(cn.done)
	for {
		op, payload, err := cn.readMessage()
		if err != nil {
			cn.readErr = err
			return
		}
		if op != ws.OpText {
			continue
		}
		var f frame
		if err := json.Unmarshal(payload, &f); err != nil {
			c.log.Warn("client: undecodable frame", "err", err)
			continue
		}
		c.mu.Lock()
		if c.cur == cn {
			c.handle(cn, &f)
		}
		c.mu.Unlock()
	}
}

// fatalClose reports whether a close code means the node will not take
// this client back as it is.
func fatalClose(code ws.StatusCode) bool {
	switch code {
	case ws.StatusPolicyViolation, ws.StatusProtocolError, ws.StatusUnsupportedData,
		ws.StatusInvalidFramePayloadData, ws.StatusMessageTooBig:
		return true
	}
	return false
}

// ended runs when cn's reader has ended: everything written on cn and not
// answered is written again on the next connection.
func (c *Client) ended(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != cn {
		return
	}
	c.cur, c.draining = nil, false
	for _, r := range c.rooms {
		r.joined, r.joining = false, false
		if r.retry != nil {
			r.retry.Stop()
			r.retry = nil
		}
	}
	for _, p := range c.sends {
		if p.on == cn {
			p.on = nil
			c.stats.Orphaned++
		}
	}
	for k, list := range c.reqs {
		for _, rq := range list {
			rq.res <- requestResult{err: ErrConnLost}
		}
		delete(c.reqs, k)
	}
	for k, list := range c.leaves {
		for _, ch := range list {
			ch <- nil // the node drops every membership of a closed connection
		}
		delete(c.leaves, k)
	}
	if fatalClose(cn.closeCode) && !c.closed && !(c.cfg.TokenFunc != nil && cn.closeCode == ws.StatusPolicyViolation && strings.Contains(cn.closeText, "expired")) {
		c.fatal(&RefusedError{Addr: cn.addr, CloseCode: int(cn.closeCode), Reason: cn.closeText})
		return
	}
	c.log.Debug("client: connection lost", "addr", cn.addr, "code", int(cn.closeCode), "err", cn.readErr)
	c.events.push(Event{Kind: EventDisconnected, Node: cn.node, Code: int(cn.closeCode), Err: cn.readErr})
	select {
	case c.down <- struct{}{}:
	default:
	}
}

// retryable reports whether an error code means "try again, same id".
func retryable(code string) bool {
	switch code {
	case "unavailable", "draining", "rate_limited", "busy":
		return true
	}
	return false
}

// retryableJoin reports whether a join refused with code is worth trying
// again: a rejoin (hasPos) also waits out name_taken, the old connection's
// membership not gone yet.
func retryableJoin(code string, rejoin bool) bool {
	return retryable(code) || code == "room_limit" || rejoin && code == "name_taken"
}

// handle applies one frame of the current connection; the lock is held.
func (c *Client) handle(cn *conn, f *frame) {
	switch f.Type {
	case "joined":
		c.joinedFrame(f)
	case "message":
		c.message(f)
	case "ack":
		p := c.sends[f.ID]
		if p == nil {
			return // answered before (a late duplicate) or abandoned
		}
		c.stats.Acks++
		if f.Repeat {
			c.stats.Repeats++
		}
		c.finish(p, sendResult{ack: Ack{Room: f.Room, ID: f.ID, Seq: f.Seq, Repeat: f.Repeat, Node: cn.node}})
	case "error":
		c.errorFrame(f)
	case "left":
		if list := c.leaves[f.Room]; len(list) > 0 {
			list[0] <- nil
			c.leaves[f.Room] = list[1:]
		}
	case "reconnect":
		c.stats.Notices++
		c.draining = true
		c.resumeAt = time.Now().Add(time.Duration(f.AfterMS) * time.Millisecond)
	case "history", "presence":
		key := f.Type + " " + f.Room
		if list := c.reqs[key]; len(list) > 0 {
			list[0].res <- requestResult{f: f}
			c.reqs[key] = list[1:]
		}
	case "presence_events":
		if c.rooms[f.Room] != nil {
			c.events.push(Event{Kind: EventPresenceEvents, Room: f.Room, State: f.State})
		}
	case "member_joined", "member_left":
		if c.rooms[f.Room] == nil {
			return
		}
		k := EventMemberJoined
		if f.Type == "member_left" {
			k = EventMemberLeft
		}
		c.events.push(Event{Kind: k, Room: f.Room, Member: Member{Name: f.Name, Node: f.Node}})
	}
}

// joinedFrame handles joined: the answer to a join, or a resync notice.
func (c *Client) joinedFrame(f *frame) {
	r := c.rooms[f.Room]
	if r == nil {
		return
	}
	answer := r.joining
	switch {
	case !r.hasPos:
		r.hasPos, r.epoch, r.last = true, f.Epoch, f.Seq
	case !f.Recovered:
		c.reset(r, f.Epoch, f.Seq)
	}
	if !answer {
		return
	}
	r.joining, r.joined, r.attempts = false, true, 0
	for _, w := range r.waiters {
		w <- nil
	}
	r.waiters = nil
	c.resend(r.name)
}

func (c *Client) reset(r *roomState, epoch string, seq uint64) {
	c.stats.Resets++
	r.epoch, r.last = epoch, seq
	c.events.push(Event{Kind: EventReset, Room: r.name, Epoch: epoch, Seq: seq})
}

// message delivers a message once, in order.
func (c *Client) message(f *frame) {
	r := c.rooms[f.Room]
	if r == nil || !r.hasPos {
		return
	}
	if f.Epoch != r.epoch && f.Epoch != "" {
		c.reset(r, f.Epoch, f.Seq-1) // a new epoch without a notice: treat as one
	}
	if f.Seq <= r.last {
		c.stats.Duplicates++
		return
	}
	if f.Seq > r.last+1 {
		c.stats.Gaps++
	}
	r.last = f.Seq
	c.stats.Messages++
	c.events.push(Event{Kind: EventMessage, Room: f.Room, Message: Message{Room: f.Room, Seq: f.Seq,
		Epoch: f.Epoch, From: f.From, Text: f.Text, ID: f.ID, TS: f.TS}})
}

// errorFrame routes an error frame to the send, join or request it answers.
func (c *Client) errorFrame(f *frame) {
	if p := c.sends[f.ID]; p != nil {
		c.sendError(p, f)
		return
	}
	for _, r := range c.rooms {
		if r.joining && r.joinID == f.ID {
			c.joinError(r, f)
			return
		}
	}
	for key, list := range c.reqs {
		for i, rq := range list {
			if rq.id == f.ID {
				rq.res <- requestResult{err: &ServerError{Code: f.Code, Message: f.Message, ID: f.ID}}
				c.reqs[key] = slices.Delete(list, i, i+1)
				return
			}
		}
	}
	c.log.Debug("client: error frame for nothing pending", "code", f.Code, "id", f.ID, "message", f.Message)
}

func (c *Client) sendError(p *pendingSend, f *frame) {
	r := c.rooms[p.room]
	switch {
	case retryable(f.Code):
		c.stats.Retries++
		p.retries++
		p.on = nil
		if f.Code == "draining" {
			c.draining = true // sent again on the next connection
			return
		}
		d := c.backoff(p.retries - 1)
		if f.Code == "rate_limited" && f.RetryAfterMS > 0 {
			d = time.Duration(f.RetryAfterMS) * time.Millisecond
		}
		p.timer = time.AfterFunc(d, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.sends[p.id] != p {
				return
			}
			p.timer = nil
			c.writeSend(p)
		})
	case f.Code == "not_joined" && r != nil:
		// The node dropped the membership (a join it could not serve):
		// join again, then send again.
		c.stats.Retries++
		p.retries++
		p.on = nil
		if r.joined {
			r.joined = false
			c.scheduleJoin(r, 0)
		}
	default:
		c.stats.Failed++
		c.finish(p, sendResult{err: &ServerError{Code: f.Code, Message: f.Message, ID: f.ID}})
	}
}

func (c *Client) joinError(r *roomState, f *frame) {
	r.joining = false
	if retryableJoin(f.Code, r.hasPos) {
		c.stats.Retries++
		if f.Code == "draining" {
			c.draining = true
			return
		}
		c.scheduleJoin(r, time.Duration(f.RetryAfterMS)*time.Millisecond)
		return
	}
	err := &ServerError{Code: f.Code, Message: f.Message, ID: f.ID}
	if r.hasPos {
		c.events.push(Event{Kind: EventRoomLost, Room: r.name, Err: err})
	}
	c.dropRoom(r, err)
	for _, p := range c.sends {
		if p.room == r.name {
			c.finish(p, sendResult{err: fmt.Errorf("client: send %s: %w", p.id, err)})
		}
	}
}

// scheduleJoin writes r's join again after a back-off, or after the
// node's retry_after if it gave one (after > 0).
func (c *Client) scheduleJoin(r *roomState, after time.Duration) {
	if r.retry != nil {
		return
	}
	d := c.backoff(r.attempts)
	if after > 0 {
		d = after
	}
	r.attempts++
	cur := c.cur
	r.retry = time.AfterFunc(d, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		r.retry = nil
		if c.rooms[r.name] != r || c.cur != cur || !c.writable() || r.joined || r.joining {
			return
		}
		c.writeJoin(r)
	})
}

// pump is the event goroutine: it moves events from the queue to Events.
func (c *Client) pump() {
	defer c.wg.Done()
	defer close(c.out)
	for {
		e, ok := c.events.pop()
		if !ok {
			select {
			case <-c.events.wake:
				continue
			case <-c.quit:
				return
			}
		}
		select {
		case c.out <- e:
		case <-c.quit:
			return
		}
	}
}

// eventQueue is an unbounded FIFO of events with a wake-up channel.
type eventQueue struct {
	mu    sync.Mutex // guards items
	items []Event
	wake  chan struct{} // capacity 1
}

func newEventQueue() *eventQueue { return &eventQueue{wake: make(chan struct{}, 1)} }

func (q *eventQueue) push(e Event) {
	q.mu.Lock()
	q.items = append(q.items, e)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) pop() (Event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return Event{}, false
	}
	e := q.items[0]
	q.items[0] = Event{}
	q.items = q.items[1:]
	return e, true
}
