// Command parley runs one Parley chat node.
//
// Every flag has an environment twin: --max-message-size is
// PARLEY_MAX_MESSAGE_SIZE. A flag given on the command line wins over its
// environment variable. Run `parley --help` for the list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"parley/actors"
	"parley/auth"
	"parley/node"
	"parley/relay"
)

// version is set at build time (-ldflags "-X main.version=v1.2.3"); empty
// means "read it from the build info" (see versionString).
var version = ""

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, errVersion) || errors.Is(err, errHealthy) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "parley:", err)
		os.Exit(1)
	}
}

// errVersion ends run after --version was printed.
var errVersion = errors.New("version printed")

// versionString is "parley <version> (<commit>[, modified], <go version>)":
// the version set at build time, else the module version, plus the VCS
// revision the binary was built from when the build recorded one.
func versionString() string {
	v, rev, dirty, gov := version, "", false, runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		gov = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	var extra []string
	if rev != "" {
		extra = append(extra, rev[:min(len(rev), 12)])
		if dirty {
			extra = append(extra, "modified")
		}
	}
	extra = append(extra, gov)
	return "parley " + v + " (" + strings.Join(extra, ", ") + ")"
}

// options are the command line's settings; see register for their doc.
type options struct {
	cfg                         node.Config
	redisURL, cluster, sentinel string
	historySize                 int
	historyTTL, presenceTimeout time.Duration
	historyMaxBytes             int
	idempotencyWindow           time.Duration
	waitReplicas                int
	waitTimeout                 time.Duration
	logLevel, logFormat         string
	gcPercent                   int
	version, healthcheck        bool

	// Admission and auth (turned into node.Config by nodeSecurity).
	allowedOrigins, trustedProxies string
	authSecretFile, authPublicKeys string
	authIssuer, authAudience       string
	authSecret                     string // PARLEY_AUTH_SECRET only: never a flag, never on a command line

	api apiOptions // the server API (api.go)
}

func register(fs *flag.FlagSet, o *options) {
	c := &o.cfg
	fs.StringVar(&c.Listen, "listen", ":8080", "public address: WebSocket upgrades at / (plain) and /ws (JSON), the chat page, /healthz, /readyz")
	fs.StringVar(&c.Admin, "admin", "127.0.0.1:6060", "admin address for /debug/pprof/ and /debug/stats (\"-\" disables)")
	fs.StringVar(&c.NodeID, "node-id", "", "this node's id in welcome frames and presence (empty: <host>-<pid>)")
	fs.StringVar(&o.redisURL, "redis", "", "Redis URL (redis://host:port/db): use Redis as the bus instead of the embedded one")
	fs.StringVar(&o.cluster, "redis-cluster", "", "Redis Cluster seed addresses, host:port,host:port,…")
	fs.StringVar(&o.sentinel, "redis-sentinel", "", "Redis Sentinel: master@host:port,host:port,…")
	fs.IntVar(&o.historySize, "history-size", relay.DefaultHistorySize, "messages kept per room for history and resume")
	fs.DurationVar(&o.historyTTL, "history-ttl", relay.DefaultHistoryTTL, "a room idle this long forgets its history (its epoch changes)")
	fs.IntVar(&o.historyMaxBytes, "history-max-bytes", relay.DefaultHistoryMaxBytes, "stored bytes of history kept per room; the oldest messages go first, the newest is always kept")
	fs.DurationVar(&o.idempotencyWindow, "idempotency-window", relay.DefaultIdempotencyWindow, "a send retried with the same id within this is not published again: it gets the original ack (repeat:true)")
	fs.IntVar(&o.waitReplicas, "redis-wait-replicas", 0, "with Redis: acknowledge a send only once this many replicas hold it (WAIT); fewer within --redis-wait-timeout: unavailable (0: once the master has it)")
	fs.DurationVar(&o.waitTimeout, "redis-wait-timeout", relay.DefaultRedisWaitTimeout, "with --redis-wait-replicas: how long a send waits for its replicas")
	fs.DurationVar(&o.presenceTimeout, "presence-timeout", 15*time.Second, "with Redis: a dead node's members leave presence within this")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 10*time.Second, "deadline for reading a WebSocket upgrade request")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", 8<<10, "cap on an upgrade request's header bytes")
	fs.IntVar(&c.MaxMessageSize, "max-message-size", 64<<10, "largest inbound WebSocket message in bytes; larger gets close 1009")
	fs.IntVar(&c.MaxQueueBytes, "max-queue-bytes", 1<<20, "outbound queue cap per connection in bytes; over it: close 4008 slow consumer")
	fs.IntVar(&c.MaxQueueFrames, "max-queue-frames", 1024, "outbound queue cap per connection in frames; over it: close 4008 slow consumer")
	fs.DurationVar(&c.PingInterval, "ping-interval", 30*time.Second, "ping a connection silent this long; close it after another such period")
	fs.DurationVar(&c.CloseTimeout, "close-timeout", 5*time.Second, "how long to wait for a peer's close reply")
	fs.IntVar(&c.Workers, "workers", 0, "netpoll read worker goroutines (0: GOMAXPROCS)")
	fs.IntVar(&c.Flushers, "flushers", 1, "netpoll goroutines writing fan-out to sockets; one coalesces best")
	fs.DurationVar(&c.FlushDelay, "flush-delay", 0, "batching window before netpoll writes fan-out: more frames per write, that much more latency")
	fs.IntVar(&c.MaxRoomsPerConn, "max-rooms-per-conn", 64, "rooms one connection may join")
	fs.IntVar(&c.HistoryLimit, "history-limit", 100, "messages in one history reply at most")
	l := &c.Limits
	fs.Float64Var(&l.MessageRate, "message-rate", actors.DefaultMessageRate, "frames per second one connection may send, sustained; over it: error rate_limited (a text line on /)")
	fs.IntVar(&l.MessageBurst, "message-burst", 0, "frames one connection may send at once (0: twice --message-rate)")
	fs.IntVar(&l.RateLimitStrikes, "rate-limit-strikes", actors.DefaultRateLimitStrikes, "frames refused for rate a connection may collect (one forgiven per second) before it is closed 1008")
	fs.IntVar(&l.MaxPublishQueue, "max-publish-queue", actors.DefaultMaxPublishQueue, "sends a room holds while the bus is busy with its batch; past it: error unavailable at once")
	fs.IntVar(&l.MaxPublishQueueBytes, "max-publish-queue-bytes", actors.DefaultMaxPublishQueueBytes, "bytes of text a room holds while the bus is busy with its batch; past it: error unavailable at once")
	fs.IntVar(&l.MaxRooms, "max-rooms", actors.DefaultMaxRooms, "rooms open on this node at once; a join that would open one more: error room_limit")
	fs.IntVar(&l.PresenceEventsMaxMembers, "presence-events-max-members", actors.DefaultPresenceEventsMaxMembers, "in a room with more members than this on the node, member_joined/member_left are off (clients are told with presence_events and ask presence)")
	fs.Float64Var(&l.RoomCreateRate, "room-create-rate", actors.DefaultRoomCreateRate, "rooms this node may open per second (burst as many); faster: error room_limit")
	fs.IntVar(&c.HistoryBytes, "history-bytes", 0, "encoded bytes of messages in one history reply at most; the reply then says more:true (0: 256 KiB or a quarter of --max-queue-bytes, whichever is less; at most half of it)")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM/SIGINT: the whole drain, --drain-delay included, ends within this; clients still there are cut")
	fs.DurationVar(&c.DrainDelay, "drain-delay", 3*time.Second, "on SIGTERM/SIGINT: keep serving this long with /readyz answering 503, so a load balancer takes the node out before clients are told to go (a bit longer than its check window: HAProxy inter × fall)")
	fs.IntVar(&c.DrainBatch, "drain-batch", 500, "on drain: clients told to reconnect at once, a batch every 50ms")
	fs.DurationVar(&c.ReconnectAfter, "reconnect-after", time.Second, "on drain, each client's reconnect after_ms is drawn from [d, 2d)")
	fs.IntVar(&o.gcPercent, "gc-percent", 50, "Go GC target (as GOGC): heap growth over the live heap before a collection; lower keeps idle connections' RSS near their live size")
	fs.DurationVar(&c.MemReleaseAfter, "mem-release-after", node.DefaultMemReleaseAfter, "once the node ran no GC cycle this long (idle) and holds freed heap worth an eighth of its live heap, return it to the OS, so RSS shows what the connections held cost (0: off)")
	fs.StringVar(&o.allowedOrigins, "allowed-origins", "", "web origins (https://chat.example.com,…) whose pages may connect; empty: same-origin only (the Origin's host must be the Host); * (any) needs token auth")
	fs.BoolVar(&c.RequireOrigin, "require-origin", false, "refuse upgrades without an Origin header (non-browser clients) with 403")
	fs.IntVar(&c.MaxConns, "max-conns", 0, "WebSocket connections per node; more get 503 (0: the open-file limit less 512; -1: no cap)")
	fs.IntVar(&c.MaxConnsPerAddr, "max-conns-per-addr", node.DefaultMaxConnsPerAddr, "WebSocket connections per client address (IPv6: per /64); more get 429 (-1: no cap)")
	fs.StringVar(&o.trustedProxies, "trusted-proxies", "", "CIDRs of proxies (HAProxy) whose PROXY protocol header or X-Forwarded-For gives the client address; a PROXY header from anyone else is refused")
	fs.DurationVar(&c.HTTPReadTimeout, "http-read-timeout", 10*time.Second, "deadline for reading a whole HTTP request, body included (public and admin)")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", 60*time.Second, "close an idle HTTP keep-alive connection after this (admin)")
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", 64<<10, "cap on an HTTP request body (public and admin); larger gets 413")
	fs.BoolVar(&c.AdminAllowRemote, "admin-allow-remote", false, "let --admin bind a non-loopback address (pprof and stats: keep it behind a firewall)")
	fs.StringVar(&o.authSecretFile, "auth-secret-file", "", "file holding the HS256 secret (≥ 32 bytes) of client tokens; turns token auth on (or set PARLEY_AUTH_SECRET)")
	fs.StringVar(&o.authPublicKeys, "auth-public-keys", "", "file of RS256/EdDSA public keys (PEM, or a JWKS document) for client tokens; turns token auth on")
	fs.StringVar(&o.authIssuer, "auth-issuer", "", "with token auth: the iss claim tokens must carry (empty: not checked)")
	fs.StringVar(&o.authAudience, "auth-audience", "", "with token auth: the aud claim tokens must carry (empty: not checked)")
	fs.DurationVar(&c.AuthTimeout, "auth-timeout", 10*time.Second, "with token auth: close (1008) a connection that has not authenticated this long after its upgrade")
	registerAPI(fs, o)
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.healthcheck, "healthcheck", false, "probe the /readyz of the node at --listen on this host and exit 0 if it is ready, 1 if not (a container's health check)")
}

// envName is the environment twin of a flag: max-message-size → PARLEY_MAX_MESSAGE_SIZE.
func envName(flagName string) string {
	return "PARLEY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// seeHelp ends every command-line error: one line, then where to look.
const seeHelp = "; see parley --help"

// parse reads args, then fills every flag not given from its environment
// twin. --help prints the usage on out and returns flag.ErrHelp; any other
// mistake is one line of error (the usage is not dumped under it).
func parse(args []string, getenv func(string) string, out io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("parley", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	register(fs, o)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs, out)
			return nil, err
		}
		return nil, errors.New(err.Error() + seeHelp)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q%s", fs.Arg(0), seeHelp)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
		}
	})
	o.authSecret = getenv("PARLEY_AUTH_SECRET")
	if len(errs) > 0 {
		return nil, errors.New(errs[0].Error() + seeHelp)
	}
	return o, nil
}

// usage prints every flag with its environment twin and its default.
func usage(fs *flag.FlagSet, out io.Writer) {
	fmt.Fprintf(out, "Usage: parley [flags]\n\nRuns one Parley chat node. Every flag has an environment twin (PARLEY_<FLAG>, e.g. PARLEY_LISTEN).\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		def := fmt.Sprintf("default %q", f.DefValue)
		if f.DefValue == "" {
			def = "no default"
		}
		fmt.Fprintf(out, "  --%s (env %s, %s)\n    \t%s\n", f.Name, envName(f.Name), def, f.Usage)
	})
}

// nodeSecurity turns the admission and auth settings into node.Config.
func nodeSecurity(o *options) error {
	c := &o.cfg
	c.AllowedOrigins = splitList(o.allowedOrigins)
	var err error
	if c.TrustedProxies, err = node.ParsePrefixes(splitList(o.trustedProxies)); err != nil {
		return fmt.Errorf("--trusted-proxies: %w", err)
	}
	var ac auth.Config
	switch {
	case o.authSecret != "" && o.authSecretFile != "":
		return errors.New("--auth-secret-file and PARLEY_AUTH_SECRET both set: choose one")
	case o.authSecret != "":
		ac.HS256Secret = []byte(o.authSecret)
	case o.authSecretFile != "":
		if ac.HS256Secret, err = auth.LoadSecret(o.authSecretFile); err != nil {
			return fmt.Errorf("--auth-secret-file: %w", err)
		}
	}
	if o.authPublicKeys != "" {
		if ac.PublicKeys, err = os.ReadFile(o.authPublicKeys); err != nil {
			return fmt.Errorf("--auth-public-keys: %w", err)
		}
	}
	if len(ac.HS256Secret) == 0 && len(ac.PublicKeys) == 0 {
		if o.authIssuer != "" || o.authAudience != "" {
			return errors.New("--auth-issuer and --auth-audience need token auth (--auth-secret-file or --auth-public-keys)")
		}
		return nil
	}
	ac.Issuer, ac.Audience = o.authIssuer, o.authAudience
	if c.Auth, err = auth.New(ac); err != nil {
		return err
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func newLogger(o *options, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, got %q", o.logFormat)
}

func run(args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, os.Getenv, stdout)
	if err != nil {
		return err
	}
	if o.version {
		fmt.Fprintln(stdout, versionString())
		return errVersion
	}
	if o.healthcheck {
		return healthcheck(o.cfg.Listen, stdout)
	}
	log, err := newLogger(o, stderr)
	if err != nil {
		return errors.New(err.Error() + seeHelp)
	}
	o.cfg.Logger = log
	if err := nodeSecurity(o); err != nil {
		return err
	}
	if err := apiConfig(o); err != nil {
		return err
	}
	if o.historyMaxBytes <= 0 || o.idempotencyWindow <= 0 || o.waitReplicas < 0 {
		return fmt.Errorf("--history-max-bytes and --idempotency-window must be positive, --redis-wait-replicas not negative%s", seeHelp)
	}
	if o.gcPercent <= 0 {
		return fmt.Errorf("--gc-percent must be positive, got %d%s", o.gcPercent, seeHelp)
	}
	if o.cfg.MemReleaseAfter == 0 {
		o.cfg.MemReleaseAfter = -1 // the flag's 0 is off; node.Config's is its default
	}
	log.Info("starting", "version", versionString())
	debug.SetGCPercent(o.gcPercent)
	relay.RouteRedisLogs(log.With("part", "go-redis"))
	if o.cfg.NodeID == "" {
		host, _ := os.Hostname()
		o.cfg.NodeID = defaultNodeID(host, os.Getpid())
	}
	if o.redisURL != "" || o.cluster != "" || o.sentinel != "" {
		rc, err := relay.ParseRedisFlags(o.redisURL, o.cluster, o.sentinel)
		if err != nil {
			return errors.New(err.Error() + seeHelp)
		}
		rc.NodeID = o.cfg.NodeID
		rc.HistorySize = o.historySize
		rc.HistoryTTL = o.historyTTL
		rc.HistoryMaxBytes = o.historyMaxBytes
		rc.IdempotencyWindow = o.idempotencyWindow
		rc.WaitReplicas = o.waitReplicas
		rc.WaitTimeout = o.waitTimeout
		rc.PresenceTimeout = o.presenceTimeout
		rc.Logger = log.With("part", "redis")
		b, err := relay.NewRedis(rc)
		if err != nil {
			return errors.New(err.Error() + seeHelp)
		}
		o.cfg.Broker = b
		logBusState(log, b, o.redisURL, o.cluster, o.sentinel)
	} else {
		if o.waitReplicas != 0 {
			return errors.New("--redis-wait-replicas needs a Redis bus" + seeHelp)
		}
		o.cfg.Broker = relay.NewMemory(relay.MemoryConfig{HistorySize: o.historySize, HistoryTTL: o.historyTTL,
			HistoryMaxBytes: o.historyMaxBytes, IdempotencyWindow: o.idempotencyWindow})
		log.Info("bus: embedded, this node alone (give --redis to share rooms between nodes)")
	}
	n, err := node.New(o.cfg)
	if err != nil {
		o.cfg.Broker.Close()
		return errors.New(err.Error() + seeHelp)
	}
	if err := n.Start(); err != nil {
		o.cfg.Broker.Close()
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Info("signal received, shutting down", "signal", s.String(), "grace", o.cfg.ShutdownGrace.String())
	signal.Stop(sig)
	// A second signal is not awaited: the grace period bounds the exit.
	return n.Shutdown(context.Background())
}

// defaultNodeID derives a readable, valid node id from the host name and
// pid, so that restarts are told apart in presence.
func defaultNodeID(host string, pid int) string {
	var b strings.Builder
	for _, r := range host {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			b.WriteRune(r)
		}
		if b.Len() >= 20 {
			break
		}
	}
	if b.Len() == 0 {
		b.WriteString("node")
	}
	return b.String() + "-" + strconv.Itoa(pid)
}
