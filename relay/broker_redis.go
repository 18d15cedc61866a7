package relay

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of RedisConfig.
const (
	DefaultRedisPresenceTimeout = 15 * time.Second
	DefaultRedisDialTimeout     = 2 * time.Second
	DefaultRedisIOTimeout       = 3 * time.Second
	DefaultRedisPingInterval    = time.Second
	DefaultRedisProbeInterval   = time.Second
	DefaultRedisSubscribeWait   = 5 * time.Second
	DefaultRedisBackoffMax      = time.Second
	DefaultRedisShutdownTimeout = 2 * time.Second
	DefaultRedisPoolSize        = 32
	DefaultRedisWaitTimeout     = time.Second
)

// RedisConfig configures the Redis broker. Exactly one of URL, ClusterAddrs
// or SentinelMaster+SentinelAddrs selects the deployment. The zero value of
// every other field means its default.
type RedisConfig struct {
	URL            string   // redis://[user:pass@]host:port/db of a single server
	ClusterAddrs   []string // Redis Cluster seed nodes (host:port)
	SentinelMaster string   // Sentinel: name of the monitored master
	SentinelAddrs  []string // Sentinel: sentinel addresses (host:port)

	NodeID string // this node's id, unique in the cluster (required)

	HistorySize     int           // messages kept per room (0: DefaultHistorySize)
	HistoryMaxBytes int           // stored bytes kept per room, the newest message always (0: DefaultHistoryMaxBytes)
	HistoryTTL      time.Duration // an idle room's keys expire after this (0: DefaultHistoryTTL)

	// IdempotencyWindow is how long a message's IdemKey is remembered (one
	// key per message with a TTL of the window; 0: DefaultIdempotencyWindow).
	IdempotencyWindow time.Duration

	// WaitReplicas, if positive, makes every publish wait (WAIT) until that
	// many replicas of the room's master hold it before acknowledging; a
	// shortfall within WaitTimeout is an error wrapping ErrUnavailable (the
	// messages are published but may be lost on a failover: retry with the
	// same ids). 0: acknowledge once the master has it.
	WaitReplicas int
	// WaitTimeout bounds the WAIT (0: DefaultRedisWaitTimeout); it must be
	// below IOTimeout.
	WaitTimeout time.Duration

	// PresenceTimeout bounds how long a dead node's members stay in
	// presence (0: DefaultRedisPresenceTimeout). Nodes heartbeat every
	// PresenceTimeout/5; a node silent for 4/5 of it is declared dead and
	// its members are removed by the first survivor to notice.
	PresenceTimeout time.Duration

	DialTimeout     time.Duration // connecting to Redis (0: DefaultRedisDialTimeout)
	IOTimeout       time.Duration // read/write of one command (0: DefaultRedisIOTimeout)
	PoolSize        int           // command connections per Redis node (0: DefaultRedisPoolSize)
	PingInterval    time.Duration // a silent subscriber connection is pinged after this (0: DefaultRedisPingInterval)
	ProbeInterval   time.Duration // the bus is probed with PING this often (0: DefaultRedisProbeInterval)
	SubscribeWait   time.Duration // Subscribe waits this long for the confirmation when ctx has no deadline (0: DefaultRedisSubscribeWait)
	BackoffMax      time.Duration // longest pause between subscriber reconnect attempts (0: DefaultRedisBackoffMax)
	ShutdownTimeout time.Duration // Close spends at most this removing the node's presence (0: DefaultRedisShutdownTimeout)

	Logger *slog.Logger // nil: discard
}

// ParseRedisFlags builds a RedisConfig from the command-line forms: url
// "redis://host:port/db", cluster "host:port,host:port", sentinel
// "master@host:port,host:port". Exactly one must be non-empty. NodeID and
// the other fields are left for the caller.
func ParseRedisFlags(url, cluster, sentinel string) (RedisConfig, error) {
	var cfg RedisConfig
	n := 0
	for _, s := range []string{url, cluster, sentinel} {
		if strings.TrimSpace(s) != "" {
			n++
		}
	}
	if n != 1 {
		return cfg, fmt.Errorf("relay: exactly one of redis url, cluster or sentinel must be set (got %d)", n)
	}
	switch {
	case strings.TrimSpace(url) != "":
		if _, err := redis.ParseURL(strings.TrimSpace(url)); err != nil {
			return cfg, fmt.Errorf("relay: redis url: %w", err)
		}
		cfg.URL = strings.TrimSpace(url)
	case strings.TrimSpace(cluster) != "":
		addrs, err := rdsSplitAddrs(cluster)
		if err != nil {
			return cfg, fmt.Errorf("relay: redis cluster: %w", err)
		}
		cfg.ClusterAddrs = addrs
	default:
		master, list, ok := strings.Cut(strings.TrimSpace(sentinel), "@")
		if !ok || master == "" {
			return cfg, fmt.Errorf("relay: redis sentinel %q: want master@host:port,host:port", sentinel)
		}
		addrs, err := rdsSplitAddrs(list)
		if err != nil {
			return cfg, fmt.Errorf("relay: redis sentinel: %w", err)
		}
		cfg.SentinelMaster, cfg.SentinelAddrs = master, addrs
	}
	return cfg, nil
}

func rdsSplitAddrs(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("address %q: %w", a, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("no address")
	}
	return out, nil
}

var (
	//go:embed scripts/publish.lua
	rdsPublishSrc string
	//go:embed scripts/history.lua
	rdsHistorySrc string
	//go:embed scripts/rollover.lua
	rdsRolloverSrc string
	//go:embed scripts/presence_add.lua
	rdsPresenceAddSrc string
	//go:embed scripts/presence_remove.lua
	rdsPresenceRemoveSrc string
	//go:embed scripts/presence_reap.lua
	rdsPresenceReapSrc string
	//go:embed scripts/heartbeat.lua
	rdsHeartbeatSrc string
	//go:embed scripts/live_nodes.lua
	rdsLiveNodesSrc string

	rdsPublishScript        = redis.NewScript(rdsPublishSrc)
	rdsHistoryScript        = redis.NewScript(rdsHistorySrc)
	rdsRolloverScript       = redis.NewScript(rdsRolloverSrc)
	rdsPresenceAddScript    = redis.NewScript(rdsPresenceAddSrc)
	rdsPresenceRemoveScript = redis.NewScript(rdsPresenceRemoveSrc)
	rdsPresenceReapScript   = redis.NewScript(rdsPresenceReapSrc)
	rdsHeartbeatScript      = redis.NewScript(rdsHeartbeatSrc)
	rdsLiveNodesScript      = redis.NewScript(rdsLiveNodesSrc)
)

// Key layout. Every key and the channel of one room carry the hash tag
// {room}, so on a Redis Cluster they share one slot and the per-room
// scripts are single-slot.
const (
	rdsKeyPrefix = "parley:"
	rdsNodesKey  = "parley:nodes" // sorted set: node id -> last heartbeat (ms, Redis clock)
)

func rdsMetaKey(room string) string      { return rdsKeyPrefix + "{" + room + "}:meta" }
func rdsHistKey(room string) string      { return rdsKeyPrefix + "{" + room + "}:hist" }
func rdsPresKey(room string) string      { return rdsKeyPrefix + "{" + room + "}:pres" }
func rdsChannel(room string) string      { return rdsKeyPrefix + "{" + room + "}:ch" }
func rdsNodeRoomsKey(node string) string { return rdsKeyPrefix + "node:{" + node + "}:rooms" }
func rdsIdemKey(room, key string) string { return rdsKeyPrefix + "{" + room + "}:idem:" + key }

// rdsRoomOf extracts the room from a channel name made by rdsChannel.
func rdsRoomOf(channel string) (string, bool) {
	s, ok := strings.CutPrefix(channel, rdsKeyPrefix+"{")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(s, "}:ch")
}

func rdsCheckRoom(room string) error {
	if room == "" || strings.ContainsAny(room, "{}") {
		return fmt.Errorf("relay: invalid room name %q", room)
	}
	return nil
}

// rdsBody is a message as stored in history and carried on the channel
// (Room, Seq and Epoch travel beside it).
type rdsBody struct {
	From string `json:"f"`
	Node string `json:"n"`
	Text string `json:"t"`
	ID   string `json:"i,omitempty"`
	TS   int64  `json:"ts"`
	User string `json:"u,omitempty"`
}

// rdsEncodeBody encodes m's body as stored and carried: UTF-8 JSON without
// HTML escaping, so "<" costs one byte, not six.
func rdsEncodeBody(m Message) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rdsBody{From: m.From, Node: m.Node, Text: m.Text, ID: m.ID, TS: m.TS, User: m.User}); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// rdsMember is a presence entry as stored and carried.
type rdsMember struct {
	Session string `json:"s"`
	Name    string `json:"n"`
	Node    string `json:"node"`
}

// Redis is the Broker over Redis (single server, Sentinel or Cluster).
//
// Keys, all with the room as hash tag so that one room lives in one slot:
// parley:{room}:meta (hash epoch, seq, bytes), parley:{room}:hist (stream,
// entry ID "<seq>-0", trimmed exactly to HistorySize entries and
// HistoryMaxBytes of stored bodies, the newest always kept),
// parley:{room}:idem:<IdemKey> (string "<epoch> <seq>", one per message with
// an id), parley:{room}:pres (hash session -> member JSON), channel
// parley:{room}:ch; per node parley:node:{id}:rooms (set of rooms it has
// members in); cluster-wide parley:nodes (sorted set of heartbeats). Every
// per-room operation is one single-slot Lua script. Every key expires: meta
// and history HistoryTTL after the last publish, idempotency keys after
// IdempotencyWindow, presence hashes after max(HistoryTTL, PresenceTimeout)
// (renewed by the keeper while this node has members there), the node's
// room set and parley:nodes after 4×PresenceTimeout (renewed by every
// heartbeat); Close deletes this node's own. Reads (History, Presence)
// write nothing.
//
// Goroutines and what they own:
//   - one keeper goroutine (keep): probes Redis every ProbeInterval,
//     heartbeats every PresenceTimeout/5, cleans up after dead nodes it
//     claimed, re-announces this node's members if Redis forgot them,
//     retries presence removals (and failed adds) that did not reach Redis,
//     and renews the TTL of the presence hashes this node has members in;
//   - one goroutine per subscriber shard (rdsShard.run): the only receiver of
//     its PubSub; it decodes payloads and calls the Handler (never blocking
//     on anything but the handler), and alone replaces the PubSub after a
//     lost connection. On a single server or Sentinel there is one shard
//     (plain SUBSCRIBE); on a Cluster one per slot in use (SSUBSCRIBE), so a
//     resubscribe never mixes slots (CROSSSLOT) and follows the slot owner;
//     the cost is one connection per slot with subscribed rooms.
//
// Shared state is guarded by mutexes noted on the fields (lock order:
// Redis.mu before rdsShard.mu; stateMu is taken alone). Handler calls come
// from shard goroutines (messages and presence of one room always from the
// same goroutine, in order); HandleState also from the keeper. HandleState is
// serialised and called once per down/up transition.
type Redis struct {
	cfg     RedisConfig
	log     *slog.Logger
	client  redis.UniversalClient
	cluster *redis.ClusterClient // non-nil on a Redis Cluster: sharded pub/sub
	pubCmd  string               // "publish" or "spublish"
	deadMS  string               // PresenceTimeout*4/5 in ms, for the scripts
	ttlMS   string               // HistoryTTL in ms
	maxLen  string               // HistorySize
	maxB    string               // HistoryMaxBytes
	idemMS  string               // IdempotencyWindow in ms

	handler atomic.Pointer[rdsHandlerBox]

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the keeper and every shard goroutine

	mu       sync.Mutex // guards following
	closed   bool
	shards   map[int]*rdsShard            // by slot (-1: the one shard of a non-cluster deployment)
	rooms    map[string]*rdsShard         // subscribed rooms
	presence map[string]map[string]Member // this node's members: room -> session -> member
	leaving  map[string]map[string]Member // removals that failed, retried by the keeper: room -> session -> member

	stateMu sync.Mutex // guards following; held while calling HandleState
	probeOK bool       // the last probe (PING) succeeded
	broken  int        // shards that lost their subscription and did not get it back
	lastErr error

	up atomic.Bool // written under stateMu; read without it (Stats, from a handler too)

	hbPaused atomic.Bool // test hook: skip heartbeats (simulates a dead node)

	nPublishes, nDeliveries, nResyncs, nErrors, nReconnects atomic.Uint64
	lastErrorAt                                             atomic.Int64
	nSubscribed                                             atomic.Int64
}

type rdsHandlerBox struct{ h Handler }

// NewRedis validates cfg, creates the Redis clients and starts the
// broker's keeper goroutine (probe, heartbeat, dead-node cleanup).
//
// NewRedis does not fail because Redis is unreachable: it tries one PING and
// heartbeat (bounded by DialTimeout+IOTimeout), and if they fail the broker
// starts in the down state — Stats().Up is false, Subscribe and Publish
// return errors wrapping ErrUnavailable — and comes up by itself when Redis
// answers, calling HandleState(nil). It fails only on an invalid config.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("relay: redis: NodeID is required")
	}
	if strings.ContainsAny(cfg.NodeID, "{}") {
		return nil, fmt.Errorf("relay: redis: NodeID %q must not contain braces", cfg.NodeID)
	}
	modes := 0
	if cfg.URL != "" {
		modes++
	}
	if len(cfg.ClusterAddrs) > 0 {
		modes++
	}
	if cfg.SentinelMaster != "" || len(cfg.SentinelAddrs) > 0 {
		modes++
		if cfg.SentinelMaster == "" || len(cfg.SentinelAddrs) == 0 {
			return nil, errors.New("relay: redis: Sentinel needs both SentinelMaster and SentinelAddrs")
		}
	}
	if modes != 1 {
		return nil, fmt.Errorf("relay: redis: exactly one of URL, ClusterAddrs, Sentinel must be set (got %d)", modes)
	}
	if cfg.HistorySize < 0 || cfg.HistoryMaxBytes < 0 || cfg.HistoryTTL < 0 || cfg.IdempotencyWindow < 0 ||
		cfg.PresenceTimeout < 0 || cfg.PoolSize < 0 || cfg.WaitReplicas < 0 || cfg.WaitTimeout < 0 {
		return nil, errors.New("relay: redis: negative size or duration in config")
	}
	rdsDefault(&cfg.HistorySize, DefaultHistorySize)
	rdsDefault(&cfg.HistoryMaxBytes, DefaultHistoryMaxBytes)
	rdsDefault(&cfg.HistoryTTL, DefaultHistoryTTL)
	rdsDefault(&cfg.IdempotencyWindow, DefaultIdempotencyWindow)
	rdsDefault(&cfg.PresenceTimeout, DefaultRedisPresenceTimeout)
	rdsDefault(&cfg.DialTimeout, DefaultRedisDialTimeout)
	rdsDefault(&cfg.IOTimeout, DefaultRedisIOTimeout)
	rdsDefault(&cfg.PoolSize, DefaultRedisPoolSize)
	rdsDefault(&cfg.PingInterval, DefaultRedisPingInterval)
	rdsDefault(&cfg.ProbeInterval, DefaultRedisProbeInterval)
	rdsDefault(&cfg.SubscribeWait, DefaultRedisSubscribeWait)
	rdsDefault(&cfg.BackoffMax, DefaultRedisBackoffMax)
	rdsDefault(&cfg.ShutdownTimeout, DefaultRedisShutdownTimeout)
	rdsDefault(&cfg.WaitTimeout, DefaultRedisWaitTimeout)
	if cfg.WaitReplicas > 0 && cfg.WaitTimeout >= cfg.IOTimeout {
		return nil, fmt.Errorf("relay: redis: WaitTimeout %v must be below IOTimeout %v", cfg.WaitTimeout, cfg.IOTimeout)
	}
	if cfg.PresenceTimeout < 30*time.Millisecond {
		return nil, fmt.Errorf("relay: redis: PresenceTimeout %v too short", cfg.PresenceTimeout)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Redis{
		cfg:      cfg,
		log:      log.With("component", "relay.redis", "node", cfg.NodeID),
		pubCmd:   "publish",
		deadMS:   strconv.FormatInt((cfg.PresenceTimeout * 4 / 5).Milliseconds(), 10),
		ttlMS:    strconv.FormatInt(cfg.HistoryTTL.Milliseconds(), 10),
		maxLen:   strconv.Itoa(cfg.HistorySize),
		maxB:     strconv.Itoa(cfg.HistoryMaxBytes),
		idemMS:   strconv.FormatInt(max(cfg.IdempotencyWindow.Milliseconds(), 1), 10),
		shards:   map[int]*rdsShard{},
		rooms:    map[string]*rdsShard{},
		presence: map[string]map[string]Member{},
		leaving:  map[string]map[string]Member{},
	}
	// MaxRetries -1: go-redis would retry a script after EOF, which may run
	// a publish twice; the relay retries instead. DialerRetries 1: fail fast
	// while Redis is down; the probe and the subscribers retry.
	switch {
	case cfg.URL != "":
		opt, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("relay: redis url: %w", err)
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = cfg.DialTimeout, cfg.IOTimeout, cfg.IOTimeout
		opt.MaxRetries, opt.PoolSize, opt.DialerRetries = -1, cfg.PoolSize, 1
		opt.ClientName = "parley-" + cfg.NodeID
		r.client = redis.NewClient(opt)
	case len(cfg.ClusterAddrs) > 0:
		r.cluster = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:         cfg.ClusterAddrs,
			ClientName:    "parley-" + cfg.NodeID,
			DialTimeout:   cfg.DialTimeout,
			ReadTimeout:   cfg.IOTimeout,
			WriteTimeout:  cfg.IOTimeout,
			MaxRetries:    -1,
			DialerRetries: 1,
			PoolSize:      cfg.PoolSize,
		})
		r.client = r.cluster
		r.pubCmd = "spublish"
	default:
		r.client = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:    cfg.SentinelMaster,
			SentinelAddrs: cfg.SentinelAddrs,
			ClientName:    "parley-" + cfg.NodeID,
			DialTimeout:   cfg.DialTimeout,
			ReadTimeout:   cfg.IOTimeout,
			WriteTimeout:  cfg.IOTimeout,
			MaxRetries:    -1,
			DialerRetries: 1,
			PoolSize:      cfg.PoolSize,
		})
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	// First probe and heartbeat, synchronously, so that a broker created
	// while Redis is up starts up and listed as a live node.
	r.probe()
	if r.Stats().Up {
		r.heartbeat()
	}
	r.wg.Add(1)
	go r.keep()
	return r, nil
}

// RouteRedisLogs sends the log lines of the go-redis library, which go to
// its process-wide logger (stderr by default), to l (nil: discard). It
// changes global state: only cmd/ (or a test) should call it.
func RouteRedisLogs(l *slog.Logger) {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	redis.SetLogger(rdsLibLogger{l: l})
}

type rdsLibLogger struct{ l *slog.Logger }

func (g rdsLibLogger) Printf(ctx context.Context, format string, v ...any) {
	g.l.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}

func rdsDefault[T int | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// SetHandler sets the handler deliveries go to. Call it before Subscribe.
func (r *Redis) SetHandler(h Handler) {
	r.handler.Store(&rdsHandlerBox{h: h})
}

func (r *Redis) handlerOf() Handler {
	if b := r.handler.Load(); b != nil {
		return b.h
	}
	return nil
}

// unavailable counts an error and wraps it with ErrUnavailable and context.
func (r *Redis) unavailable(op, room string, err error) error {
	r.nErrors.Add(1)
	r.lastErrorAt.Store(time.Now().UnixMilli())
	if room == "" {
		return fmt.Errorf("relay: redis %s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("relay: redis %s %q: %w: %w", op, room, ErrUnavailable, err)
}

func rdsNewEpoch() string {
	return strconv.FormatUint(rand.Uint64(), 36)
}

// Publish is PublishBatch of one message with no known position.
func (r *Redis) Publish(ctx context.Context, m Message) (Position, error) {
	ps, err := r.PublishBatch(ctx, m.Room, Position{}, []Message{m})
	if err != nil {
		return Position{}, err
	}
	return ps[0], nil
}

// PublishBatch publishes msgs with one script run (one round trip): the
// rollback check against known, idempotency, sequencing, the capped
// history stream (entry ID "<seq>-0") and the publish on the room channel
// happen atomically. Every error wraps ErrUnavailable.
func (r *Redis) PublishBatch(ctx context.Context, room string, known Position, msgs []Message) ([]Position, error) {
	if err := rdsCheckRoom(room); err != nil {
		return nil, err
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	keys := make([]string, 3, 3+len(msgs))
	keys[0], keys[1], keys[2] = rdsMetaKey(room), rdsHistKey(room), rdsChannel(room)
	args := make([]any, 0, 8+2*len(msgs))
	args = append(args, rdsNewEpoch(), r.maxLen, r.ttlMS, r.pubCmd, known.Epoch, known.Seq, r.maxB, r.idemMS)
	for _, m := range msgs {
		b, err := rdsEncodeBody(m)
		if err != nil {
			return nil, fmt.Errorf("relay: redis publish %q: encode: %w", room, err)
		}
		if k := m.IdemKey(); k != "" {
			keys = append(keys, rdsIdemKey(room, k))
			args = append(args, "1", b)
		} else {
			args = append(args, "0", b)
		}
	}
	res, err := r.runPublish(ctx, keys, args)
	if err != nil {
		return nil, r.unavailable("publish", room, err)
	}
	if len(res) != 2*len(msgs)+1 {
		return nil, r.unavailable("publish", room, fmt.Errorf("unexpected reply of %d elements", len(res)))
	}
	epoch, _ := res[0].(string)
	out := make([]Position, len(msgs))
	published := 0
	for i := range msgs {
		seq, ok1 := res[1+2*i].(int64)
		rep, ok2 := res[2+2*i].(int64)
		if !ok1 || !ok2 {
			return nil, r.unavailable("publish", room, fmt.Errorf("unexpected reply %T %T", res[1+2*i], res[2+2*i]))
		}
		out[i] = Position{Seq: uint64(seq), Epoch: epoch, Repeat: rep == 1}
		if rep != 1 {
			published++
		}
	}
	r.nPublishes.Add(uint64(published))
	return out, nil
}

// runPublish runs the publish script; with WaitReplicas it pipelines WAIT
// behind it on the same connection (WAIT counts the replicas that hold
// every write of its connection so far) and fails if too few answered.
func (r *Redis) runPublish(ctx context.Context, keys []string, args []any) ([]any, error) {
	if r.cfg.WaitReplicas <= 0 {
		return rdsPublishScript.Run(ctx, r.client, keys, args...).Slice()
	}
	var c *redis.Client
	if r.cluster != nil {
		var err error
		if c, err = r.cluster.MasterForKey(ctx, keys[0]); err != nil {
			return nil, err
		}
	} else {
		c = r.client.(*redis.Client)
	}
	run := func(load bool) ([]any, int64, error) {
		var script *redis.Cmd
		var wait *redis.Cmd
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			if load {
				script = rdsPublishScript.Eval(ctx, p, keys, args...)
			} else {
				script = rdsPublishScript.EvalSha(ctx, p, keys, args...)
			}
			wait = p.Do(ctx, "wait", r.cfg.WaitReplicas, r.cfg.WaitTimeout.Milliseconds())
			return nil
		})
		if err != nil {
			if script != nil && script.Err() != nil {
				return nil, 0, script.Err()
			}
			return nil, 0, err
		}
		res, err := script.Slice()
		if err != nil {
			return nil, 0, err
		}
		acked, err := wait.Int64()
		return res, acked, err
	}
	res, acked, err := run(false)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// The script did not run; send its source this once.
		res, acked, err = run(true)
	}
	if err != nil {
		return nil, err
	}
	if acked < int64(r.cfg.WaitReplicas) {
		return nil, fmt.Errorf("published, but %d of %d replicas acknowledged within %v: may be lost on failover, retry with the same ids",
			acked, r.cfg.WaitReplicas, r.cfg.WaitTimeout)
	}
	return res, nil
}

// Rollover runs the rollback check alone (one script): a room without meta,
// or held in known.Epoch below known.Seq, starts a new epoch.
func (r *Redis) Rollover(ctx context.Context, room string, known Position) (Position, error) {
	if err := rdsCheckRoom(room); err != nil {
		return Position{}, err
	}
	res, err := rdsRolloverScript.Run(ctx, r.client, []string{rdsMetaKey(room), rdsHistKey(room)},
		rdsNewEpoch(), known.Epoch, known.Seq, r.ttlMS).Slice()
	if err != nil {
		return Position{}, r.unavailable("rollover", room, err)
	}
	if len(res) != 2 {
		return Position{}, r.unavailable("rollover", room, fmt.Errorf("unexpected reply of %d elements", len(res)))
	}
	epoch, _ := res[0].(string)
	seq, _ := res[1].(int64)
	return Position{Seq: uint64(seq), Epoch: epoch}, nil
}

// History reads a slice of room's history and its position atomically (one
// script). It writes nothing: a room without meta reads as Position{}.
// Earliest is the lowest seq inside the window of HistorySize messages,
// even when the approximately trimmed stream still holds older entries.
func (r *Redis) History(ctx context.Context, room string, req HistoryRequest) (HistoryResult, error) {
	if err := rdsCheckRoom(room); err != nil {
		return HistoryResult{}, err
	}
	limit := req.Limit
	if limit <= 0 || limit > r.cfg.HistorySize {
		limit = r.cfg.HistorySize
	}
	return r.readHistory(ctx, room, req.Since, req.Before, limit)
}

// Positions reads the position (HMGET of the meta hash) of each of rooms in
// one pipeline; on a Cluster go-redis splits it by node. It writes nothing.
func (r *Redis) Positions(ctx context.Context, rooms []string) ([]Position, error) {
	for _, room := range rooms {
		if err := rdsCheckRoom(room); err != nil {
			return nil, err
		}
	}
	out := make([]Position, len(rooms))
	if len(rooms) == 0 {
		return out, nil
	}
	cmds := make([]*redis.SliceCmd, len(rooms))
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, room := range rooms {
			cmds[i] = p.HMGet(ctx, rdsMetaKey(room), "epoch", "seq")
		}
		return nil
	})
	if err != nil {
		return nil, r.unavailable("positions", "", err)
	}
	for i, c := range cmds {
		v := c.Val()
		if len(v) != 2 {
			return nil, r.unavailable("positions", rooms[i], fmt.Errorf("unexpected reply of %d elements", len(v)))
		}
		epoch, _ := v[0].(string)
		if epoch == "" {
			continue // the bus holds nothing of the room
		}
		var seq uint64
		if s, _ := v[1].(string); s != "" {
			var err error
			if seq, err = strconv.ParseUint(s, 10, 64); err != nil {
				return nil, r.unavailable("positions", rooms[i], fmt.Errorf("bad seq %q", s))
			}
		}
		out[i] = Position{Seq: seq, Epoch: epoch}
	}
	return out, nil
}

func (r *Redis) readHistory(ctx context.Context, room string, since, before uint64, limit int) (HistoryResult, error) {
	var hr HistoryResult
	res, err := rdsHistoryScript.Run(ctx, r.client, []string{rdsMetaKey(room), rdsHistKey(room)},
		since, before, limit, r.cfg.HistorySize).Slice()
	if err != nil {
		return hr, r.unavailable("history", room, err)
	}
	if len(res) != 4 {
		return hr, r.unavailable("history", room, fmt.Errorf("unexpected reply of %d elements", len(res)))
	}
	hr.Position.Epoch, _ = res[0].(string)
	seq, _ := res[1].(int64)
	earliest, _ := res[2].(int64)
	hr.Position.Seq, hr.Earliest = uint64(seq), uint64(earliest)
	entries, _ := res[3].([]any)
	if len(entries) > 0 {
		hr.Messages = make([]Message, 0, len(entries))
	}
	for _, e := range entries {
		m, err := rdsDecodeEntry(room, hr.Position.Epoch, e)
		if err != nil {
			return hr, r.unavailable("history", room, err)
		}
		hr.Messages = append(hr.Messages, m)
	}
	if before > 0 { // XREVRANGE: newest first
		for i, j := 0, len(hr.Messages)-1; i < j; i, j = i+1, j-1 {
			hr.Messages[i], hr.Messages[j] = hr.Messages[j], hr.Messages[i]
		}
	}
	return hr, nil
}

// rdsDecodeEntry decodes one stream entry {id, {"d", body}}.
func rdsDecodeEntry(room, epoch string, e any) (Message, error) {
	pair, ok := e.([]any)
	if !ok || len(pair) != 2 {
		return Message{}, fmt.Errorf("bad history entry %T", e)
	}
	id, _ := pair[0].(string)
	fields, _ := pair[1].([]any)
	seqStr, _, _ := strings.Cut(id, "-")
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if err != nil {
		return Message{}, fmt.Errorf("bad history id %q", id)
	}
	for i := 0; i+1 < len(fields); i += 2 {
		if k, _ := fields[i].(string); k == "d" {
			v, _ := fields[i+1].(string)
			return rdsDecodeBody(room, seq, epoch, v)
		}
	}
	return Message{}, fmt.Errorf("history entry %q without body", id)
}

func rdsDecodeBody(room string, seq uint64, epoch, body string) (Message, error) {
	var b rdsBody
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		return Message{}, fmt.Errorf("bad message body: %w", err)
	}
	return Message{Room: room, Seq: seq, Epoch: epoch, From: b.From, Node: b.Node, Text: b.Text, ID: b.ID, TS: b.TS, User: b.User}, nil
}

// Stats returns the broker's counters.
func (r *Redis) Stats() Stats {
	return Stats{
		Kind:        "redis",
		Up:          r.up.Load(),
		Publishes:   r.nPublishes.Load(),
		Deliveries:  r.nDeliveries.Load(),
		Resyncs:     r.nResyncs.Load(),
		Errors:      r.nErrors.Load(),
		Subscribed:  int(r.nSubscribed.Load()),
		Reconnects:  r.nReconnects.Load(),
		LastErrorAt: r.lastErrorAt.Load(),
	}
}

// Close removes this node's presence (best effort, within
// ShutdownTimeout, announcing member_left; skipped while the bus is down),
// stops every goroutine of the
// broker and closes its connections. Calling it again returns an error.
func (r *Redis) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errors.New("relay: redis broker already closed")
	}
	r.closed = true
	shards := make([]*rdsShard, 0, len(r.shards))
	for _, s := range r.shards {
		shards = append(shards, s)
	}
	clear(r.shards)
	clear(r.rooms)
	r.nSubscribed.Store(0)
	r.mu.Unlock()

	if !r.hbPaused.Load() && r.isUp() {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
		r.leave(ctx)
		cancel()
	}
	r.cancel()
	for _, s := range shards {
		s.stop()
	}
	r.wg.Wait()
	return r.client.Close()
}

// setState records a probe result (probe != nil) and/or a change in the
// number of broken shards, and reports a transition to the handler once.
func (r *Redis) setState(probe *bool, brokenDelta int, err error) {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	if probe != nil {
		r.probeOK = *probe
	}
	r.broken += brokenDelta
	if err != nil {
		r.lastErr = err
	}
	up := r.probeOK && r.broken == 0
	if up == r.up.Load() {
		return
	}
	r.up.Store(up)
	h := r.handlerOf()
	if up {
		r.log.Info("redis bus up")
		if h != nil {
			h.HandleState(nil)
		}
		return
	}
	cause := r.lastErr
	if cause == nil {
		cause = errors.New("unknown cause")
	}
	down := fmt.Errorf("relay: redis bus down: %w: %w", ErrUnavailable, cause)
	r.log.Warn("redis bus down", "err", cause)
	if h != nil {
		h.HandleState(down)
	}
}

func (r *Redis) isUp() bool { return r.up.Load() }
