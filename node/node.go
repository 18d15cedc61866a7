package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"parley/actors"
	"parley/netpoll"
	"parley/protocol"
	"parley/relay"
)

// Config configures a node. The zero value of every field but NodeID means
// "the default" given in its comment.
type Config struct {
	// Listen is the public address: WebSocket upgrades, the chat page,
	// /healthz and /readyz (default ":8080").
	Listen string
	// Admin is the admin address serving /debug/pprof/ and /debug/stats
	// (default "127.0.0.1:6060"; "-" disables it).
	Admin string
	// NodeID names this node in welcome frames and presence (default: a
	// random "n-xxxxxx").
	NodeID string
	// Broker is the bus between rooms and nodes. Nil means an embedded
	// memory broker: one node alone, with the same semantics. The node closes
	// the broker it is given when it shuts down.
	Broker relay.Broker

	// HandshakeTimeout bounds reading the upgrade request (default 10s).
	HandshakeTimeout time.Duration
	// MaxHeaderBytes caps the upgrade request's header bytes (default 8 KiB).
	MaxHeaderBytes int
	// MaxMessageSize caps one inbound WebSocket message; larger gets close
	// 1009 (default 64 KiB).
	MaxMessageSize int
	// MaxQueueBytes and MaxQueueFrames cap a connection's outbound queue;
	// over either the client is closed with 4008 "slow consumer" (defaults
	// 1 MiB and 1024 frames).
	MaxQueueBytes  int
	MaxQueueFrames int
	// PingInterval is the sweeper's period: a silent connection is pinged,
	// and closed if it stays silent for another period (default 30s).
	PingInterval time.Duration
	// CloseTimeout bounds the wait for a peer's close reply (default 5s).
	CloseTimeout time.Duration
	// Workers is the number of netpoll read workers (default GOMAXPROCS).
	Workers int
	// Flushers is the number of netpoll goroutines writing fan-out to
	// sockets (default 1: see netpoll.Config.Flushers).
	Flushers int
	// FlushDelay is netpoll's batching window before writing fan-out
	// (default 0: write at once; see netpoll.Config.FlushDelay).
	FlushDelay time.Duration
	// MaxRoomsPerConn caps the rooms one connection may join (default 64).
	MaxRoomsPerConn int
	// HistoryLimit caps the messages of one history reply (default 100).
	HistoryLimit int
	// HistoryBytes caps the encoded messages of one history reply; a reply
	// that stops short says more:true (default 256 KiB, at most a quarter
	// of MaxQueueBytes). More than half of MaxQueueBytes is refused: a
	// reply must never get its asker closed as a slow consumer.
	HistoryBytes int
	// ShutdownGrace bounds a graceful shutdown from its start (drain delay
	// included): after it, remaining connections are cut (default 10s).
	ShutdownGrace time.Duration
	// DrainDelay is how long a draining node keeps serving, upgrades
	// included, with /readyz already answering 503, so that a load balancer
	// takes it out of rotation before its clients are told to go (default
	// 0: no load balancer to wait for; cmd/parley's --drain-delay defaults
	// to 3s, a bit longer than the HAProxy check window in deployments/).
	// It must be shorter than ShutdownGrace.
	DrainDelay time.Duration
	// DrainBatch is how many clients are told to reconnect at once during
	// a drain; batches follow each other every DrainBatchInterval (default
	// 500).
	DrainBatch int
	// ReconnectAfter is the base of the after_ms sent in reconnect frames on
	// drain; each client gets a value in [d, 2d) (default 1s).
	ReconnectAfter time.Duration

	// Logger receives the node's structured logs (nil: discard).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = ":8080"
	}
	if c.Admin == "" {
		c.Admin = "127.0.0.1:6060"
	}
	if c.NodeID == "" {
		c.NodeID = "n-" + randomHex(3)
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 8 << 10
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	if c.DrainBatch == 0 {
		c.DrainBatch = 500
	}
	if c.ReconnectAfter == 0 {
		c.ReconnectAfter = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Node is one Parley node: an HTTP listener that upgrades WebSockets and
// hands them to the epoll loop (netpoll) and the actors, plus an admin
// listener. Create it with New, start it with Start, stop it with Shutdown.
//
// Goroutines: the public accept loop and a short-lived one per accepted
// connection until its handshake is done or it is handed to the public
// http.Server (upgrade.go), the public and admin http.Servers (one goroutine
// each plus one per HTTP connection), and what netpoll, the
// actors and the broker own. A Node's own fields are set by New and Start
// and read-only afterwards, except unready and draining (atomic) and the handshake set
// under hsMu (touched by the accept loop, the handshake goroutines and
// Shutdown).
type Node struct {
	cfg    Config
	log    *slog.Logger
	broker relay.Broker
	poller *netpoll.Poller
	sys    *actors.System

	pub, admin     *http.Server
	pubLn, adminLn net.Listener
	serveWG        sync.WaitGroup

	// The accept path (upgrade.go): pubCh feeds pub the connections that are
	// not upgrades; hsConns are the connections still in their handshake.
	pubCh      *chanListener
	acceptDone chan struct{}
	peekSize   int
	hsMu       sync.Mutex // guards hsConns and hsClosed
	hsConns    map[net.Conn]struct{}
	hsClosed   bool // Shutdown began: no new handshake is tracked
	hsWG       sync.WaitGroup

	// unready turns /readyz to 503 (the first step of a drain); draining
	// refuses upgrades (after the drain delay).
	unready  atomic.Bool
	draining atomic.Bool
	started  time.Time
	stopOnce sync.Once
	stopErr  error
}

// New validates cfg and builds a node; nothing listens until Start.
func New(cfg Config) (*Node, error) {
	cfg.setDefaults()
	if err := protocol.CheckName(cfg.NodeID); err != nil {
		return nil, fmt.Errorf("node: node id %q: %w", cfg.NodeID, err)
	}
	if cfg.HandshakeTimeout < 0 || cfg.ShutdownGrace < 0 || cfg.MaxHeaderBytes < 0 || cfg.DrainDelay < 0 || cfg.DrainBatch < 0 {
		return nil, errors.New("node: timeouts and limits must not be negative")
	}
	queueBytes := cfg.MaxQueueBytes
	if queueBytes <= 0 {
		queueBytes = netpoll.DefaultMaxQueueBytes
	}
	switch {
	case cfg.HistoryBytes < 0:
		return nil, errors.New("node: history bytes must not be negative")
	case cfg.HistoryBytes == 0:
		cfg.HistoryBytes = min(actors.DefaultHistoryBytes, queueBytes/4)
	case cfg.HistoryBytes > queueBytes/2:
		return nil, fmt.Errorf("node: history bytes %d over half the queue cap %d: a history reply would risk a 4008 kick", cfg.HistoryBytes, queueBytes)
	}
	if cfg.DrainDelay >= cfg.ShutdownGrace {
		return nil, fmt.Errorf("node: drain delay %s must be shorter than the shutdown grace %s", cfg.DrainDelay, cfg.ShutdownGrace)
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), broker: cfg.Broker}
	if n.broker == nil {
		n.broker = relay.NewMemory(relay.MemoryConfig{})
	}
	var err error
	n.poller, err = netpoll.New(netpoll.Config{
		Workers:        cfg.Workers,
		Flushers:       cfg.Flushers,
		FlushDelay:     cfg.FlushDelay,
		MaxMessageSize: cfg.MaxMessageSize,
		MaxQueueBytes:  cfg.MaxQueueBytes,
		MaxQueueFrames: cfg.MaxQueueFrames,
		PingInterval:   cfg.PingInterval,
		CloseTimeout:   cfg.CloseTimeout,
		Logger:         n.log.With("part", "netpoll"),
	})
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n.sys, err = actors.New(actors.Config{
		NodeID:          cfg.NodeID,
		Broker:          n.broker,
		Logger:          n.log.With("part", "actors"),
		MaxRoomsPerConn: cfg.MaxRoomsPerConn,
		HistoryLimit:    cfg.HistoryLimit,
		HistoryBytes:    cfg.HistoryBytes,
	})
	if err != nil {
		n.poller.Close()
		return nil, fmt.Errorf("node: %w", err)
	}
	return n, nil
}

// Start opens the listeners and begins serving. It returns once both
// listeners are open.
func (n *Node) Start() error {
	var err error
	// No TCP keepalive on accepted sockets: the ping sweeper already finds
	// dead peers, and the two setsockopt calls per accept cost connect rate.
	lc := net.ListenConfig{KeepAlive: -1}
	n.pubLn, err = lc.Listen(context.Background(), "tcp", n.cfg.Listen)
	if err != nil {
		return fmt.Errorf("node: listen %s: %w", n.cfg.Listen, err)
	}
	n.pub = &http.Server{
		Handler:           n.publicMux(),
		ReadHeaderTimeout: n.cfg.HandshakeTimeout,
		MaxHeaderBytes:    n.cfg.MaxHeaderBytes,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	if n.cfg.Admin != "-" {
		n.adminLn, err = net.Listen("tcp", n.cfg.Admin)
		if err != nil {
			n.pubLn.Close()
			return fmt.Errorf("node: listen admin %s: %w", n.cfg.Admin, err)
		}
		n.admin = &http.Server{Handler: n.adminMux(), ReadHeaderTimeout: 10 * time.Second}
		n.serve(n.admin, n.adminLn)
	}
	n.started = time.Now()
	n.peekSize = max(16, min(n.cfg.MaxHeaderBytes, maxPeek))
	n.hsConns = make(map[net.Conn]struct{})
	n.acceptDone = make(chan struct{})
	n.pubCh = newChanListener(n.pubLn.Addr())
	n.serve(n.pub, n.pubCh)
	go n.acceptLoop()
	n.log.Info("node listening", "addr", n.pubLn.Addr().String(), "admin", n.AdminAddr())
	return nil
}

func (n *Node) serve(s *http.Server, ln net.Listener) {
	n.serveWG.Add(1)
	go func() {
		defer n.serveWG.Done()
		if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("http server stopped", "err", err)
		}
	}()
}

// Addr is the public listener's address (after Start).
func (n *Node) Addr() string { return n.pubLn.Addr().String() }

// AdminAddr is the admin listener's address, or "" when disabled.
func (n *Node) AdminAddr() string {
	if n.adminLn == nil {
		return ""
	}
	return n.adminLn.Addr().String()
}

// ID is the node id.
func (n *Node) ID() string { return n.cfg.NodeID }

// Draining reports whether the node has begun shutting down.
func (n *Node) Draining() bool { return n.unready.Load() }

// DrainBatchInterval is the pause between two batches of reconnect frames
// during a drain (see Config.DrainBatch).
const DrainBatchInterval = 50 * time.Millisecond

// Shutdown drains the node, in the order a load balancer needs:
//
//  1. /readyz turns 503 at once, while everything else keeps serving,
//     upgrades included, for DrainDelay: the load balancer's health check
//     takes the node out of rotation before any client is told to go;
//  2. new upgrades are refused with 503;
//  3. clients get reconnect (JSON, with a spread after_ms) and close 1001,
//     DrainBatch of them every DrainBatchInterval;
//  4. the node waits for the sockets to go, until ShutdownGrace (counted
//     from the start, or ctx) is over, then cuts the rest;
//  5. it stops the actors, the epoll loop, the listeners and the broker.
//
// Calling it again returns the first result.
func (n *Node) Shutdown(ctx context.Context) error {
	n.stopOnce.Do(func() { n.stopErr = n.shutdown(ctx) })
	return n.stopErr
}

func (n *Node) shutdown(ctx context.Context) error {
	n.unready.Store(true)
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ShutdownGrace)
	defer cancel()
	if d := n.cfg.DrainDelay; d > 0 {
		n.log.Info("draining: not ready, serving until the load balancer has noticed",
			"drain_delay", d.String(), "connections", n.poller.Len())
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	n.draining.Store(true)
	n.log.Info("draining: telling clients to reconnect", "connections", n.poller.Len(), "batch", n.cfg.DrainBatch)

	tick := time.NewTicker(DrainBatchInterval)
	defer tick.Stop()
	// Keep telling while waiting: a later round also tells a client whose
	// handshake was under way when upgrades stopped.
	told := make(map[*actors.Session]bool)
wait:
	for {
		k := n.drainBatch(told)
		if k == 0 && n.poller.Len() == 0 {
			break
		}
		select {
		case <-ctx.Done():
			n.log.Warn("grace period over, cutting remaining connections", "connections", n.poller.Len())
			break wait
		case <-tick.C:
		}
	}
	var errs []error
	// Stop accepting HTTP; handshakes in flight are refused by draining.
	hctx, hcancel := context.WithTimeout(context.Background(), time.Second)
	defer hcancel()
	n.stopHandshakes()
	if err := n.pub.Shutdown(hctx); err != nil {
		errs = append(errs, fmt.Errorf("node: public listener: %w", err))
	}
	if err := n.poller.Close(); err != nil {
		errs = append(errs, fmt.Errorf("node: netpoll: %w", err))
	}
	actx, acancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer acancel()
	if err := n.sys.Shutdown(actx); err != nil {
		errs = append(errs, fmt.Errorf("node: actors: %w", err))
	}
	if err := n.broker.Close(); err != nil {
		errs = append(errs, fmt.Errorf("node: broker: %w", err))
	}
	if n.admin != nil {
		if err := n.admin.Shutdown(hctx); err != nil {
			errs = append(errs, fmt.Errorf("node: admin listener: %w", err))
		}
	}
	n.serveWG.Wait()
	n.log.Info("stopped")
	return errors.Join(errs...)
}

// drainBatch tells at most DrainBatch connections not in told to go, adds
// them to told, and returns how many it told.
func (n *Node) drainBatch(told map[*actors.Session]bool) int {
	k := 0
	for _, sess := range n.sys.Sessions() {
		if k == n.cfg.DrainBatch {
			break
		}
		if told[sess] {
			continue
		}
		told[sess] = true
		sess.Drain("shutdown", n.cfg.ReconnectAfter)
		k++
	}
	return k
}

// upgrade turns an HTTP request into a registered WebSocket connection
// with its connection actor. plain selects the seed-compatible mode.
func (n *Node) upgrade(w http.ResponseWriter, r *http.Request, plain bool) {
	if n.draining.Load() {
		http.Error(w, "node is draining", http.StatusServiceUnavailable)
		return
	}
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "guest-" + randomHex(2)
	} else if err := protocol.CheckName(name); err != nil {
		http.Error(w, "bad name: "+err.Error(), http.StatusBadRequest)
		return
	}
	up := ws.HTTPUpgrader{Timeout: n.cfg.HandshakeTimeout}
	nc, rw, _, err := up.Upgrade(r, w)
	if err != nil {
		// The upgrader has answered with an HTTP error status already.
		n.log.Debug("upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	// The handshake deadline must not outlive the handshake.
	_ = nc.SetDeadline(time.Time{})
	// A connection that came through the accept path may still hold bytes
	// it has not replayed to net/http.
	nc, buffered := unwrapConn(nc)
	if k := rw.Reader.Buffered(); k > 0 {
		p, _ := rw.Reader.Peek(k)
		buffered = append(append([]byte(nil), p...), buffered...)
	}
	n.register(nc, buffered, name, plain)
}

// sessionHandler adapts a connection actor's session to netpoll's Handler.
// It is one pointer wide, so storing it in the interface does not allocate.
type sessionHandler struct{ s *actors.Session }

func (h sessionHandler) HandleMessage(_ *netpoll.Conn, op ws.OpCode, p []byte) {
	h.s.HandleMessage(op, p)
}

func (h sessionHandler) HandleClose(_ *netpoll.Conn, err error) { h.s.HandleClose(err) }

func randomHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
