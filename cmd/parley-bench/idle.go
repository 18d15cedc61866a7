package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// idleConfig describes a connect or idle run.
type idleConfig struct {
	targets        []target
	steps          []int // cumulative connection counts
	concurrency    int
	sources        int
	perProcess     int // connections one process may hold; more → worker processes
	connectTimeout time.Duration
	settle         time.Duration // bounded wait for the node's RSS to settle at each step
	idleFor        time.Duration // at each step, idle time before measuring
	hold           time.Duration // idle: keep the connections this long after the last step
	probe          nodeProbe
	hold0          bool // idle mode: measure, hold; connect mode: close right away
	progress       io.Writer
	worker         []string      // flags passed to worker processes
	workers        int           // at least this many worker processes (0: as perProcess needs)
	join           *joinSpec     // nil: connections join nothing (on /ws) or are not awaited (on /)
	readEvery      time.Duration // read and discard what the node sent this often (0: only when measuring)
}

// idleStep is the measurement at one step.
type idleStep struct {
	Target         int         `json:"target"`
	Opened         int         `json:"opened"`
	Errors         int         `json:"errors"`
	ConnectS       float64     `json:"connect_s"`
	Rate           float64     `json:"connect_rate"`
	Alive          int         `json:"alive"`
	Nodes          []nodeStats `json:"nodes,omitempty"`
	NodeRSS        int64       `json:"node_rss_bytes"`
	NodeGoroutines int64       `json:"node_goroutines"`
	NodeHeapInuse  int64       `json:"node_heap_inuse"`
	ClientRSS      int64       `json:"client_rss_bytes"`
}

// slope is RSS growth per connection between two steps.
type slope struct {
	From       int     `json:"from"`
	To         int     `json:"to"`
	KiBPerConn float64 `json:"kib_per_conn"`
	HeapKiB    float64 `json:"heap_kib_per_conn,omitempty"`
}

// idleResult is the outcome of a connect or idle run.
type idleResult struct {
	Mode        string     `json:"mode"`
	URLs        []string   `json:"urls"`
	Join        string     `json:"join,omitempty"` // e.g. "lobby", "1 room", "100 rooms"
	Processes   int        `json:"processes"`
	Baseline    *idleStep  `json:"baseline,omitempty"`
	Steps       []idleStep `json:"steps"`
	Slopes      []slope    `json:"slopes,omitempty"`
	ConnectRate float64    `json:"connect_rate"`
	Errors      int        `json:"errors"`
	HoldS       float64    `json:"hold_s"`
	FinalAlive  int        `json:"final_alive"`
	FirstError  string     `json:"first_error,omitempty"`
}

// An idle or connect run has four phases, one function each: start the
// holders (this process, or worker processes past cfg.perProcess), open
// each step's connections (spread over the holders, timed: the connect
// rate), measure the node at each step (RSS once it settles, heap,
// goroutines, connections still alive), and account the slopes between
// steps; idle then holds the connections and counts the survivors.

// idleRun is one idle or connect run in progress.
type idleRun struct {
	cfg     *idleConfig
	res     *idleResult
	holders []holder
	per     []int        // connections per holder so far
	opened  atomic.Int64 // connections opened in this process, for progress
}

// runIdle opens connections step by step, measuring after each step.
func runIdle(cfg idleConfig, mode string) (*idleResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &idleRun{cfg: &cfg, res: &idleResult{Mode: mode, Processes: cfg.processes()}}
	for _, t := range cfg.targets {
		r.res.URLs = append(r.res.URLs, t.raw)
	}
	if r.cfg.join != nil {
		r.res.Join = r.cfg.join.describe()
	}
	if err := r.startHolders(); err != nil {
		return nil, err
	}
	defer r.closeHolders()
	if !cfg.probe.empty() {
		b := idleStep{}
		r.measure(&b)
		r.res.Baseline = &b
	}
	var total time.Duration
	cur := 0
	for _, step := range cfg.steps {
		st, el, err := r.openStep(step)
		if err != nil {
			return r.res, err
		}
		total += el
		cur += st.Opened
		st.Opened = cur
		if cfg.hold0 {
			r.measure(&st)
		} else {
			st.Alive = cur
		}
		r.res.Steps = append(r.res.Steps, st)
	}
	if total > 0 {
		r.res.ConnectRate = float64(cur) / total.Seconds()
	}
	r.res.Slopes = slopes(r.res.Steps)
	r.hold()
	return r.res, nil
}

func (cfg *idleConfig) validate() error {
	if len(cfg.steps) == 0 {
		return errors.New("idle: no steps")
	}
	for i, s := range cfg.steps {
		if s < 1 || s > 200000 || (i > 0 && s <= cfg.steps[i-1]) {
			return fmt.Errorf("idle: --steps must be increasing counts in 1…200000, got %v", cfg.steps)
		}
	}
	if cfg.perProcess < 1 {
		return fmt.Errorf("idle: --per-process must be ≥ 1, not %d", cfg.perProcess)
	}
	if j := cfg.join; j != nil && j.proto == "json" && j.rooms < 1 {
		return fmt.Errorf("idle: --rooms must be ≥ 1, not %d", j.rooms)
	}
	return nil
}

// processes is how many processes hold the connections: enough for
// cfg.perProcess each, and at least cfg.workers.
func (cfg *idleConfig) processes() int {
	n := (cfg.steps[len(cfg.steps)-1] + cfg.perProcess - 1) / cfg.perProcess
	return max(n, cfg.workers, 1)
}

// startHolders holds connections in this process, or starts the worker
// processes when one is not enough.
func (r *idleRun) startHolders() error {
	n := r.res.Processes
	if n <= 1 {
		r.holders = []holder{newLocalHolder(r.cfg, &r.opened)}
	} else {
		for range n {
			w, err := startWorker(r.cfg.worker)
			if err != nil {
				r.closeHolders()
				return err
			}
			r.holders = append(r.holders, w)
		}
	}
	r.per = make([]int, len(r.holders))
	return nil
}

func (r *idleRun) closeHolders() {
	for _, h := range r.holders {
		_ = h.close()
	}
}

// openStep brings the holders, together, up to step connections, timed.
func (r *idleRun) openStep(step int) (idleStep, time.Duration, error) {
	st := idleStep{Target: step}
	multi := len(r.holders) > 1
	stop := startProgress(r.cfg.progress, func() string {
		if multi {
			return fmt.Sprintf("step %d: opening (workers)…", step)
		}
		return fmt.Sprintf("step %d: %d connected", step, r.opened.Load())
	})
	t0 := time.Now()
	var wg sync.WaitGroup
	results := make([]openResult, len(r.holders))
	errs := make([]error, len(r.holders))
	for hi, h := range r.holders {
		want := shareOf(step, hi, len(r.holders))
		n, base := want-r.per[hi], hi*1_000_000+r.per[hi]
		r.per[hi] = want
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[hi], errs[hi] = h.open(n, base)
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	stop()
	for hi := range r.holders {
		if errs[hi] != nil {
			return st, el, errs[hi]
		}
		st.Opened += results[hi].Opened
		st.Errors += results[hi].Errors
		if results[hi].FirstError != "" && r.res.FirstError == "" {
			r.res.FirstError = results[hi].FirstError
		}
	}
	r.res.Errors += st.Errors
	st.ConnectS = el.Seconds()
	if el > 0 {
		st.Rate = float64(st.Opened) / el.Seconds()
	}
	return st, el, nil
}

// shareOf is holder i's share of total connections over n holders.
func shareOf(total, i, n int) int {
	return total*(i+1)/n - total*i/n
}

// measure reads the node once it settled, and counts the live connections.
func (r *idleRun) measure(st *idleStep) {
	if !r.cfg.probe.empty() {
		time.Sleep(r.cfg.idleFor) // the measurement's definition (idle this long), not synchronisation
		st.Nodes = r.cfg.probe.settle(r.cfg.settle)
		for _, n := range st.Nodes {
			st.NodeRSS += n.RSS
			st.NodeGoroutines += n.Goroutines
			st.NodeHeapInuse += n.HeapInuse
		}
	}
	multi := len(r.holders) > 1
	st.ClientRSS = selfRSS()
	st.Alive = 0
	for _, h := range r.holders {
		a, err := h.alive()
		if err != nil {
			r.res.FirstError = err.Error()
			continue
		}
		st.Alive += a.Alive
		if multi {
			st.ClientRSS += a.RSS
		}
	}
}

// slopes is the node's RSS and heap growth per live connection between
// consecutive steps, then (with more than two steps) first to last.
func slopes(steps []idleStep) []slope {
	var out []slope
	between := func(a, b idleStep) {
		if b.Alive > a.Alive && a.NodeRSS > 0 {
			d := float64(b.Alive - a.Alive)
			out = append(out, slope{From: a.Target, To: b.Target,
				KiBPerConn: float64(b.NodeRSS-a.NodeRSS) / d / 1024,
				HeapKiB:    float64(b.NodeHeapInuse-a.NodeHeapInuse) / d / 1024})
		}
	}
	for i := 1; i < len(steps); i++ {
		between(steps[i-1], steps[i])
	}
	if len(steps) > 2 {
		between(steps[0], steps[len(steps)-1])
	}
	return out
}

// hold keeps the connections cfg.hold (idle) and counts the survivors.
func (r *idleRun) hold() {
	if !r.cfg.hold0 || r.cfg.hold <= 0 {
		r.res.FinalAlive = r.res.Steps[len(r.res.Steps)-1].Alive
		return
	}
	<-time.After(r.cfg.hold)
	final := 0
	for _, h := range r.holders {
		if a, err := h.alive(); err == nil {
			final += a.Alive
		}
	}
	r.res.FinalAlive = final
	r.res.HoldS = r.cfg.hold.Seconds()
}

// parseSteps parses "2000,15000".
func parseSteps(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil {
			return nil, fmt.Errorf("parse step %q: %w", f, err)
		}
		out = append(out, n)
	}
	return out, nil
}
