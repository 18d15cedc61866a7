package netpoll

import (
	"fmt"
	"log/slog"
	"runtime"
	"time"
)

// Defaults used for zero Config fields.
const (
	DefaultMaxQueueBytes  = 1 << 20
	DefaultMaxQueueFrames = 1024
	DefaultPingInterval   = 30 * time.Second
	DefaultCloseTimeout   = 5 * time.Second
)

// Config configures a Poller. The zero value is valid: every zero field means
// its default.
type Config struct {
	// Workers is the number of worker goroutines handling ready connections
	// (0: runtime.GOMAXPROCS(0)).
	Workers int
	// Flushers is the number of goroutines writing what Send queued (0: 1).
	// One is the measured best on 2 cores: while it works through a
	// fan-out, frames pile up behind each socket and leave in one write;
	// more flushers write sooner but in smaller, costlier writes
	// (BENCHMARKS.md).
	Flushers int
	// FlushDelay is a batching window: a flusher woken by Send waits this
	// long before writing, so more frames leave per write (0: none).
	FlushDelay time.Duration
	// MaxMessageSize caps one data message in bytes, fragments summed
	// (0: 64 KiB). A frame that would exceed it is answered with close 1009
	// before its declared length is allocated.
	MaxMessageSize int
	// MaxQueueBytes caps a connection's outbound queue in bytes (0: 1 MiB).
	MaxQueueBytes int
	// MaxQueueFrames caps a connection's outbound queue in frames (0: 1024).
	MaxQueueFrames int
	// PingInterval is the ping sweeper period: a connection silent for a full
	// period is pinged, and one still silent a full period after the ping is
	// closed with 1001 "ping timeout" (0: 30s; < 0 disables pings).
	PingInterval time.Duration
	// CloseTimeout is how long a closing connection waits for the peer's
	// close reply or EOF (and for its queue to drain) before its socket is
	// closed (0: 5s).
	CloseTimeout time.Duration
	// Written, if set, is called with the timestamp given to
	// Conn.SendTraced once that frame is fully written to its socket (on
	// the writing goroutine, under the conn's lock: it must be quick and
	// must not call back into the conn).
	Written func(at int64)
	// Logger receives the poller's logs (nil: discard).
	Logger *slog.Logger
}

// normalize validates cfg and fills in defaults.
func (cfg Config) normalize() (Config, error) {
	switch {
	case cfg.Workers < 0:
		return cfg, fmt.Errorf("netpoll: config: Workers %d < 0", cfg.Workers)
	case cfg.FlushDelay < 0:
		return cfg, fmt.Errorf("netpoll: config: FlushDelay %v < 0", cfg.FlushDelay)
	case cfg.Flushers < 0:
		return cfg, fmt.Errorf("netpoll: config: Flushers %d < 0", cfg.Flushers)
	case cfg.MaxMessageSize < 0:
		return cfg, fmt.Errorf("netpoll: config: MaxMessageSize %d < 0", cfg.MaxMessageSize)
	case cfg.MaxQueueBytes < 0:
		return cfg, fmt.Errorf("netpoll: config: MaxQueueBytes %d < 0", cfg.MaxQueueBytes)
	case cfg.MaxQueueFrames < 0:
		return cfg, fmt.Errorf("netpoll: config: MaxQueueFrames %d < 0", cfg.MaxQueueFrames)
	case cfg.CloseTimeout < 0:
		return cfg, fmt.Errorf("netpoll: config: CloseTimeout %v < 0", cfg.CloseTimeout)
	}
	if cfg.Workers == 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Flushers == 0 {
		cfg.Flushers = 1
	}
	if cfg.MaxMessageSize == 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.MaxQueueBytes == 0 {
		cfg.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if cfg.MaxQueueFrames == 0 {
		cfg.MaxQueueFrames = DefaultMaxQueueFrames
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// sweepTick is the sweeper's period: a quarter of the shortest deadline it
// enforces, so deadlines are met within 25%.
func (cfg Config) sweepTick() time.Duration {
	d := cfg.CloseTimeout
	if cfg.PingInterval > 0 {
		d = min(d, cfg.PingInterval)
	}
	return max(d/4, minSweepTick)
}

// minSweepTick bounds the sweeper's wakeups for tiny test intervals.
const minSweepTick = 5 * time.Millisecond
