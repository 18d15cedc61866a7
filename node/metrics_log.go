package node

import (
	"cmp"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"time"
)

// Logs of node-level transitions that come from counters: "limit hit",
// one info line per reason per LimitLogInterval at most, whatever the rate
// of refusals (a flood of refused upgrades or frames costs one line per
// reason per interval). The lines read the counters /metrics reads; they
// never carry a message's text, a name, an address or a token.

// DefaultLimitLogInterval is how often refusals are summed into log lines.
const DefaultLimitLogInterval = 10 * time.Second

// startLimitLog starts the goroutine that logs refusals; stopLimitLog
// stops it.
func (n *Node) startLimitLog() {
	n.limitStop = make(chan struct{})
	n.limitDone = make(chan struct{})
	go n.limitLog()
}

func (n *Node) stopLimitLog() {
	if n.limitStop == nil {
		return
	}
	close(n.limitStop)
	<-n.limitDone
}

// limitLog is the limit-log goroutine. It alone owns prev.
func (n *Node) limitLog() {
	defer close(n.limitDone)
	t := time.NewTicker(n.cfg.LimitLogInterval)
	defer t.Stop()
	prev := n.limitCounts()
	for {
		select {
		case <-n.limitStop:
			return
		case <-t.C:
		}
		cur := n.limitCounts()
		for _, k := range slices.SortedFunc(maps.Keys(cur), compareKeys) {
			if d := cur[k] - prev[k]; d > 0 {
				n.log.Info("limit hit", "what", k.what, "reason", k.reason, "count", d,
					"in", n.cfg.LimitLogInterval.String())
			}
		}
		prev = cur
	}
}

// limitKey names one refusal counter.
type limitKey struct{ what, reason string }

func compareKeys(a, b limitKey) int {
	if c := cmp.Compare(a.what, b.what); c != 0 {
		return c
	}
	return cmp.Compare(a.reason, b.reason)
}

// limitCounts reads every refusal counter: upgrades refused by reason,
// client frames refused by error code, and connections the server closed
// by close code (1000 and 1001, an ordinary end, excluded).
func (n *Node) limitCounts() map[limitKey]uint64 {
	c := n.counters()
	out := make(map[limitKey]uint64)
	for reason, v := range c.upgrades.Refused {
		out[limitKey{"upgrade refused", reason}] = v
	}
	for code, v := range c.actors.Refused {
		out[limitKey{"frame refused", code}] = v
	}
	for _, cc := range c.closes {
		if cc.Side.String() != "server" || cc.Code == "1000" || cc.Code == "1001" {
			continue
		}
		out[limitKey{"connection closed", "close " + cc.Code}] += cc.N
	}
	return out
}

// configAttrs is the configuration summary logged at start: what an
// operator checks first (no secrets: the API and auth say on or off).
func (n *Node) configAttrs() []any {
	c := &n.cfg
	bus := "memory"
	if n.broker != nil {
		bus = n.broker.Stats().Kind
	}
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	return []any{
		"addr", n.pubLn.Addr().String(),
		"admin", n.AdminAddr(),
		"bus", bus,
		"max_conns", c.MaxConns,
		"max_conns_per_addr", c.MaxConnsPerAddr,
		"max_message_size", c.MaxMessageSize,
		"max_queue_bytes", c.MaxQueueBytes,
		"max_queue_frames", c.MaxQueueFrames,
		"ping_interval", c.PingInterval.String(),
		"shutdown_grace", c.ShutdownGrace.String(),
		"drain_delay", c.DrainDelay.String(),
		"token_auth", onOff(c.Auth != nil),
		"allowed_origins", strconv.Itoa(len(c.AllowedOrigins)),
		"server_api", onOff(len(c.APIKeys) > 0),
		"gomaxprocs", runtime.GOMAXPROCS(0),
	}
}
