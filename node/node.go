package node

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"parley/actors"
	"parley/auth"
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
	// Limits are the per-connection rate limit, the per-room publish queue
	// cap, and the cap and creation rate of rooms (actors.Limits; zero
	// values are the defaults given there).
	Limits actors.Limits
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

	// AllowedOrigins are the web origins ("https://chat.example.com") whose
	// pages may open WebSockets here; a browser upgrade from any other
	// origin gets 403. Empty means same-origin: the Origin's host must be
	// the request's Host. "*" allows every origin and needs Auth.
	AllowedOrigins []string
	// RequireOrigin refuses upgrades without an Origin header (non-browser
	// clients) with 403.
	RequireOrigin bool
	// Auth, when set, makes every connection authenticate with a token:
	// ?token= on the upgrade, or an auth frame first on /ws. Names then
	// come from the token (nil: no auth, clients pick their names).
	Auth *auth.Verifier
	// AuthTimeout closes (1008) a /ws connection that has not sent a valid
	// auth frame this long after the upgrade (default 10s; with Auth only).
	AuthTimeout time.Duration
	// MaxConns caps the node's WebSocket connections; more get 503 at the
	// upgrade (0: the open-file limit less 512 for everything else; < 0:
	// no cap).
	MaxConns int
	// MaxConnsPerAddr caps the connections from one client address (one
	// IPv6 /64); more get 429 (0: 256; < 0: no cap).
	MaxConnsPerAddr int
	// TrustedProxies are the peers (CIDRs) whose PROXY protocol header
	// (v1 or v2) and X-Forwarded-For say who the client is. A PROXY header
	// from any other peer is refused (the connection is closed).
	TrustedProxies []netip.Prefix
	// HTTPReadTimeout bounds reading a whole non-upgrade request, body
	// included (default 10s); HTTPIdleTimeout closes an idle keep-alive
	// connection (default 60s). Both apply to the public and admin servers.
	HTTPReadTimeout time.Duration
	HTTPIdleTimeout time.Duration
	// MaxBodyBytes caps a request body on the public and admin servers;
	// larger gets 413 (default 64 KiB).
	MaxBodyBytes int64
	// AdminAllowRemote lets the admin listener bind a non-loopback address
	// (pprof and stats are for operators only; default: refuse to start).
	AdminAllowRemote bool

	// APIKeys turns the server API on (node/api.go, docs/API.md): requests
	// must carry "Authorization: Bearer <one of these>" (empty: API off).
	APIKeys []string
	// LimitLogInterval is how often refusals (upgrades, frames, closes by
	// the server) are logged, one info line per reason at most (default
	// 10s).
	LimitLogInterval time.Duration
	// APIRate caps API requests per second on this node, with a burst of
	// the same; over it: 429 (default 200).
	APIRate float64

	// MemReleaseAfter: once the node has run no GC cycle for this long (it
	// is idle) and holds a sizeable amount of freed heap, it returns that
	// memory to the OS (memrelease.go), so the RSS of a node holding idle
	// connections after a burst is what they cost. 0 means
	// DefaultMemReleaseAfter; negative turns it off.
	MemReleaseAfter time.Duration

	// Logger receives the node's structured logs (nil: discard).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.LimitLogInterval <= 0 {
		c.LimitLogInterval = DefaultLimitLogInterval
	}
	if c.MemReleaseAfter == 0 {
		c.MemReleaseAfter = DefaultMemReleaseAfter
	}
	if c.APIRate == 0 {
		c.APIRate = DefaultAPIRate
	}
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
	if c.AuthTimeout == 0 {
		c.AuthTimeout = 10 * time.Second
	}
	if c.MaxConns == 0 {
		c.MaxConns = defaultMaxConns()
	}
	if c.MaxConnsPerAddr == 0 {
		c.MaxConnsPerAddr = DefaultMaxConnsPerAddr
	}
	if c.HTTPReadTimeout == 0 {
		c.HTTPReadTimeout = 10 * time.Second
	}
	if c.HTTPIdleTimeout == 0 {
		c.HTTPIdleTimeout = 60 * time.Second
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 64 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// DefaultMaxConnsPerAddr is MaxConnsPerAddr's default.
const DefaultMaxConnsPerAddr = 256

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

	// Admission (admission.go): the origins allowed, and the connection
	// counts under connMu (admit takes a slot, the connection's end gives
	// it back).
	origins   []string
	anyOrigin bool
	connMu    sync.Mutex
	connCount int
	perAddr   map[netip.Addr]int

	upgrades upgradeCounters // metrics_refusals.go
	metrics  *metrics        // metrics.go
	// The limit-log goroutine (metrics_log.go).
	limitStop, limitDone chan struct{}
	memRelease           *memReleaser // nil when Config.MemReleaseAfter < 0; set by New

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
	if cfg.HandshakeTimeout < 0 || cfg.ShutdownGrace < 0 || cfg.MaxHeaderBytes < 0 || cfg.DrainDelay < 0 || cfg.DrainBatch < 0 ||
		cfg.AuthTimeout < 0 || cfg.HTTPReadTimeout < 0 || cfg.HTTPIdleTimeout < 0 || cfg.MaxBodyBytes < 0 {
		return nil, errors.New("node: timeouts and limits must not be negative")
	}
	if cfg.MaxHeaderBytes > maxHeaderBytes {
		return nil, fmt.Errorf("node: max header bytes %d over %d", cfg.MaxHeaderBytes, maxHeaderBytes)
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
	if cfg.APIRate < 0 {
		return nil, errors.New("node: API rate must not be negative")
	}
	for _, k := range cfg.APIKeys {
		if len(k) < 16 {
			return nil, errors.New("node: an API key must be at least 16 characters")
		}
	}
	if cfg.DrainDelay >= cfg.ShutdownGrace {
		return nil, fmt.Errorf("node: drain delay %s must be shorter than the shutdown grace %s", cfg.DrainDelay, cfg.ShutdownGrace)
	}
	origins, anyOrigin, err := parseOrigins(cfg.AllowedOrigins)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if anyOrigin && cfg.Auth == nil {
		return nil, errors.New("node: allowed origins \"*\" needs token auth: without it any web page could use its visitors' connections")
	}
	if err := checkAdminAddr(cfg.Admin, cfg.AdminAllowRemote); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), broker: cfg.Broker,
		origins: origins, anyOrigin: anyOrigin, perAddr: make(map[netip.Addr]int)}
	n.metrics = newMetrics(n)
	if n.broker == nil {
		n.broker = relay.NewMemory(relay.MemoryConfig{})
	}
	n.poller, err = netpoll.New(netpoll.Config{
		Workers:        cfg.Workers,
		Flushers:       cfg.Flushers,
		FlushDelay:     cfg.FlushDelay,
		MaxMessageSize: cfg.MaxMessageSize,
		MaxQueueBytes:  cfg.MaxQueueBytes,
		MaxQueueFrames: cfg.MaxQueueFrames,
		PingInterval:   cfg.PingInterval,
		CloseTimeout:   cfg.CloseTimeout,
		Written:        n.metrics.observeWritten,
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
		MaxMessageSize:  cmp.Or(cfg.MaxMessageSize, netpoll.DefaultMaxMessageSize),
		Auth:            cfg.Auth,
		AuthTimeout:     cfg.AuthTimeout,
		ObservePublish:  n.metrics.observePublish,
		Limits:          cfg.Limits,
	})
	if err != nil {
		n.poller.Close()
		return nil, fmt.Errorf("node: %w", err)
	}
	if cfg.MemReleaseAfter > 0 {
		n.memRelease = newMemReleaser(cfg.MemReleaseAfter) // started by Start
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
		ReadTimeout:       n.cfg.HTTPReadTimeout,
		IdleTimeout:       n.cfg.HTTPIdleTimeout,
		MaxHeaderBytes:    n.cfg.MaxHeaderBytes,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	// One request per connection: each then passes the accept path, whose
	// header cap is exact (net/http's allows 4 KiB more) and whose PROXY
	// and admission rules apply. The page is a handful of requests.
	n.pub.SetKeepAlivesEnabled(false)
	if n.cfg.Admin != "-" {
		n.adminLn, err = net.Listen("tcp", n.cfg.Admin)
		if err != nil {
			n.pubLn.Close()
			return fmt.Errorf("node: listen admin %s: %w", n.cfg.Admin, err)
		}
		// No WriteTimeout: a CPU profile or trace streams for as long as
		// asked (?seconds=).
		n.admin = &http.Server{
			Handler:           n.adminMux(),
			ReadHeaderTimeout: n.cfg.HandshakeTimeout,
			ReadTimeout:       n.cfg.HTTPReadTimeout,
			IdleTimeout:       n.cfg.HTTPIdleTimeout,
			MaxHeaderBytes:    n.cfg.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		}
		n.serve(n.admin, n.adminLn)
	}
	n.started = time.Now()
	n.peekSize = max(16, n.cfg.MaxHeaderBytes)
	n.hsConns = make(map[net.Conn]struct{})
	n.acceptDone = make(chan struct{})
	n.pubCh = newChanListener(n.pubLn.Addr())
	n.serve(n.pub, n.pubCh)
	go n.acceptLoop()
	n.startLimitLog()
	if n.memRelease != nil {
		n.memRelease.start()
	}
	n.log.Info("node listening", n.configAttrs()...) // metrics_log.go
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
	drainStart := time.Now()
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
	n.stopLimitLog()
	if n.memRelease != nil {
		n.memRelease.close()
	}
	n.log.Info("stopped", "drain", time.Since(drainStart).Round(time.Millisecond).String())
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
// with its connection actor, after admit. plain selects the seed-compatible
// mode. This is the net/http path; upgradeFast (upgrade.go) is the other.
func (n *Node) upgrade(w http.ResponseWriter, r *http.Request, plain bool) {
	req := n.requestOf(r, plain)
	a, ref := n.admit(req)
	if ref != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(ref.status())
		_, _ = io.WriteString(w, ref.body())
		return
	}
	up := ws.HTTPUpgrader{Timeout: n.cfg.HandshakeTimeout}
	nc, rw, _, err := up.Upgrade(r, w)
	if err != nil {
		n.countFailedUpgrade(err)
		// The upgrader has answered with an HTTP error status already.
		n.release(a.key)
		n.log.Debug("upgrade failed", "remote", req.client.String(), "err", err)
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
	n.register(nc, buffered, a, req)
}

// requestOf gathers what admission looks at from an HTTP request.
func (n *Node) requestOf(r *http.Request, plain bool) *upgradeRequest {
	pi, _ := r.Context().Value(peerInfoKey{}).(peerInfo)
	req := &upgradeRequest{target: r.RequestURI, host: r.Host, plain: plain}
	if o := r.Header.Values("Origin"); len(o) > 0 {
		req.origin, req.hasOrigin = o[0], true
	}
	req.client = n.clientAddr(pi.peer, pi.proxied, strings.Join(r.Header.Values("X-Forwarded-For"), ","))
	return req
}

// sessionHandler adapts a connection actor's session to netpoll's Handler
// and gives the connection's admission slot back when it ends.
type sessionHandler struct {
	s        *actors.Session
	n        *Node
	key      netip.Addr
	released atomic.Bool
}

func (h *sessionHandler) HandleMessage(_ *netpoll.Conn, op ws.OpCode, p []byte) {
	h.s.HandleMessage(op, p)
}

func (h *sessionHandler) HandleClose(_ *netpoll.Conn, err error) {
	h.s.HandleClose(err)
	h.release()
}

func (h *sessionHandler) release() {
	if !h.released.Swap(true) {
		h.n.release(h.key)
	}
}

func randomHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
