package main

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// fanoutConfig describes one fanout run.
type fanoutConfig struct {
	targets        []target
	proto          string // "json" or "plain"
	roomPrefix     string // json rooms are roomPrefix0 … roomPrefix(R-1)
	clients        int
	rooms          int
	senders        int
	rate           float64 // total messages per second over all senders
	duration       time.Duration
	size           int // payload bytes
	drain          time.Duration
	quiet          time.Duration // end the drain early after this long without a delivery
	settle         time.Duration // before sending: wait until no frame arrived for this long (0: don't)
	settleMax      time.Duration // ... but at most this long
	connectTimeout time.Duration
	concurrency    int
	sources        int
	crossNode      bool
	probe          nodeProbe
	pids           []int
	progress       io.Writer // live progress line, or nil
}

// timelineStep is the bucket width of the throughput timeline.
const timelineStep = 250 * time.Millisecond

// fanState is shared by all clients of one fanout run.
type fanState struct {
	cfg        *fanoutConfig
	recorders  []*latencyRecorder // one per target
	delivered  atomic.Int64       // unique deliveries, all receivers
	lastRecv   atomic.Int64       // unix nanos of the last delivery
	lastFrame  atomic.Int64       // unix nanos of the last read of any frame (settling)
	sentRoom   []atomic.Int64     // successful sends per room
	sendErrs   atomic.Int64
	skipped    atomic.Int64 // sends the pacer could not hand to a busy sender
	errFrames  atomic.Int64
	disconnect atomic.Int64
	closing    atomic.Bool
	firstErr   errOnce
	start      atomic.Int64       // unix nanos when sending began (0 before)
	recvTL     [1024]atomic.Int64 // deliveries per timelineStep since start
	sendTL     [1024]atomic.Int64 // sends per timelineStep since start
	roomNames  []string
	roomFrames [][]byte // json: `{"type":"send","room":"R","text":"` per room
}

// errOnce keeps the first error reported.
type errOnce struct {
	mu  sync.Mutex // guards err
	err string
}

func (e *errOnce) set(err error) {
	if err == nil {
		return
	}
	e.mu.Lock()
	if e.err == "" {
		e.err = err.Error()
	}
	e.mu.Unlock()
}

func (e *errOnce) get() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// localSender maps a sender index to its index among the senders of room
// (senders are clients 0…S-1, client i is in room i mod R), or -1 when that
// sender is not in room: each receiver tracks only its own room's senders.
func (st *fanState) localSender(room, sender int) int {
	r := st.cfg.rooms
	if sender < 0 || sender%r != room {
		return -1
	}
	return sender / r
}

// sendersPerRoom is the most senders any one room has.
func (cfg *fanoutConfig) sendersPerRoom() int {
	return (cfg.senders + cfg.rooms - 1) / cfg.rooms
}

func (st *fanState) bucket(now int64) int {
	s := st.start.Load()
	if s == 0 || now < s {
		return -1
	}
	i := int(time.Duration(now-s) / timelineStep)
	if i >= len(st.recvTL) {
		return -1
	}
	return i
}

// assignNodes returns the target index of each client. Without cross-node,
// clients go round-robin over the targets. With cross-node, every sender is
// on target 0 and the other clients fill the targets so that each holds about
// clients/len(targets), target 0 last.
func assignNodes(clients, senders, nTargets int, crossNode bool) []int {
	out := make([]int, clients)
	if nTargets <= 1 {
		return out
	}
	if !crossNode {
		for i := range out {
			out[i] = i % nTargets
		}
		return out
	}
	want := make([]int, nTargets)
	for i := range want {
		want[i] = clients / nTargets
		if i < clients%nTargets {
			want[i]++
		}
	}
	have := make([]int, nTargets)
	have[0] = min(senders, clients)
	for i := have[0]; i < clients; i++ {
		best := -1
		for u := nTargets - 1; u >= 0; u-- {
			if best < 0 || want[u]-have[u] > want[best]-have[best] {
				best = u
			}
		}
		out[i] = best
		have[best]++
	}
	return out
}

// fanoutResult is the outcome of a fanout run.
type fanoutResult struct {
	Mode           string              `json:"mode"`
	Proto          string              `json:"proto"`
	URLs           []string            `json:"urls"`
	CrossNode      bool                `json:"cross_node"`
	Clients        int                 `json:"clients"`
	Connected      int                 `json:"connected"`
	ConnectErrors  int                 `json:"connect_errors"`
	NotReady       int                 `json:"not_ready"`
	Rooms          int                 `json:"rooms"`
	Senders        int                 `json:"senders"`
	Rate           float64             `json:"rate"`
	DurationS      float64             `json:"duration_s"`
	Size           int                 `json:"size"`
	Sent           int64               `json:"sent"`
	SendSkipped    int64               `json:"send_skipped"`
	SendErrors     int64               `json:"send_errors"`
	Expected       int64               `json:"expected"`
	deliveryTotals                     // received, duplicates, out_of_order, foreign
	Loss           int64               `json:"loss"`
	LossPct        float64             `json:"loss_pct"`
	DeliveriesPS   float64             `json:"deliveries_per_s"`
	DrainS         float64             `json:"drain_s"`
	ErrorFrames    int64               `json:"error_frames"`
	Disconnects    int64               `json:"disconnects"`
	PresenceFrames int64               `json:"presence_frames"`     // member_joined + member_left received
	Closes         map[string]int      `json:"closes,omitempty"`    // close code the node sent → clients
	JoinS          float64             `json:"join_s,omitempty"`    // first dial → last client ready
	StormS         float64             `json:"storm_s,omitempty"`   // storm: first dial → the last frame any client received
	JoinWait       latencySummary      `json:"join_wait,omitempty"` // per client: dial → ready (ms)
	Latency        latencySummary      `json:"latency"`
	PerURL         []latencySummary    `json:"latency_per_url,omitempty"`
	Spectrum       []percentilePoint   `json:"spectrum"`
	NodeCPU        []cpuUse            `json:"node_cpu,omitempty"`
	PerWrite       float64             `json:"deliveries_per_node_write,omitempty"` // deliveries ÷ the nodes' write syscalls
	SelfCPU        float64             `json:"self_cpu_pct"`
	Nodes          []nodeStats         `json:"nodes,omitempty"`
	Timeline       []timelinePoint     `json:"timeline"`
	FirstError     string              `json:"first_error,omitempty"`
	PerURLSpectra  [][]percentilePoint `json:"-"`
}

// timelinePoint is one bucket of the throughput timeline.
type timelinePoint struct {
	T         float64 `json:"t_s"`
	SendPS    float64 `json:"sends_per_s"`
	DeliverPS float64 `json:"deliveries_per_s"`
}

func sumRooms(a []atomic.Int64) int64 {
	var t int64
	for i := range a {
		t += a[i].Load()
	}
	return t
}

func mergeRecorders(rs []*latencyRecorder) *hdrHistogram {
	out := newHist()
	for _, r := range rs {
		out.Merge(r.snapshot())
	}
	return out
}

func (cfg *fanoutConfig) validate() error {
	switch {
	case len(cfg.targets) == 0:
		return errors.New("fanout: no --url")
	case cfg.proto != "json" && cfg.proto != "plain":
		return fmt.Errorf("fanout: --proto must be json or plain, not %q", cfg.proto)
	case cfg.clients < 1 || cfg.clients > 15000:
		return fmt.Errorf("fanout: --clients must be 1…15000, not %d", cfg.clients)
	case cfg.rooms < 1 || cfg.rooms > cfg.clients:
		return fmt.Errorf("fanout: --rooms must be 1…clients, not %d", cfg.rooms)
	case cfg.proto == "plain" && cfg.rooms != 1:
		return errors.New("fanout: --proto plain has one room (lobby): use --rooms 1")
	case cfg.senders < 0 || cfg.senders > cfg.clients:
		return fmt.Errorf("fanout: --senders must be 0…clients, not %d", cfg.senders)
	case cfg.rate < 0 || cfg.rate > 1e6:
		return fmt.Errorf("fanout: --rate must be in [0, 1e6], not %g", cfg.rate)
	case cfg.duration <= 0 || cfg.duration > time.Hour:
		return fmt.Errorf("fanout: --duration must be in (0, 1h], not %s", cfg.duration)
	case cfg.size < 48 || cfg.size > 1<<20:
		return fmt.Errorf("fanout: --size must be 48…1MiB (the payload header needs ~45 bytes), not %d", cfg.size)
	case cfg.crossNode && len(cfg.targets) < 2:
		return errors.New("fanout: --cross-node needs at least two --url")
	}
	if cfg.concurrency < 1 {
		cfg.concurrency = 1
	}
	if cfg.quiet <= 0 {
		cfg.quiet = 2 * time.Second
	}
	if cfg.connectTimeout <= 0 {
		cfg.connectTimeout = 30 * time.Second
	}
	return nil
}
