package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	hold           time.Duration // idle: keep the connections this long after the last step
	probe          nodeProbe
	hold0          bool // idle mode: measure, hold; connect mode: close right away
	progress       io.Writer
	worker         []string // flags passed to worker processes
}

// openResult is what a holder reports after opening a batch.
type openResult struct {
	Opened     int    `json:"opened"`
	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	Alive      int    `json:"alive"`
	RSS        int64  `json:"rss"`
}

// holder holds open connections, in this process or in a worker process.
type holder interface {
	// open adds n connections whose global indices start at base.
	open(n, base int) (openResult, error)
	// alive drains what the node sent and counts connections still open.
	alive() (openResult, error)
	close() error
}

// localHolder holds connections in this process, with no goroutine per
// connection: nothing reads them except alive().
type localHolder struct {
	cfg     *idleConfig
	mu      sync.Mutex // guards conns
	conns   []net.Conn
	counter *atomic.Int64 // connections opened, for progress
}

func (h *localHolder) open(n, base int) (openResult, error) {
	var (
		res   openResult
		errs  atomic.Int64
		first errOnce
		wg    sync.WaitGroup
		next  atomic.Int64
	)
	workers := min(h.cfg.concurrency, n)
	deadline := time.Now().Add(h.cfg.connectTimeout + time.Duration(n)*time.Millisecond)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if time.Now().After(deadline) {
					errs.Add(1)
					first.set(errors.New("connect phase deadline passed"))
					continue
				}
				g := base + i
				t := h.cfg.targets[g%len(h.cfg.targets)]
				nc, _, err := dialWS(t, "i"+strconv.Itoa(g), sourceIP(g, h.cfg.sources), h.cfg.connectTimeout)
				if err != nil {
					errs.Add(1)
					first.set(err)
					continue
				}
				h.mu.Lock()
				h.conns = append(h.conns, nc)
				h.mu.Unlock()
				if h.counter != nil {
					h.counter.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	res.Errors = int(errs.Load())
	res.Opened = n - res.Errors
	res.FirstError = first.get()
	res.RSS = selfRSS()
	return res, nil
}

func (h *localHolder) alive() (openResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var res openResult
	buf := make([]byte, 4096)
	for _, nc := range h.conns {
		if connAlive(nc, buf) {
			res.Alive++
		}
	}
	res.Opened = len(h.conns)
	res.RSS = selfRSS()
	return res, nil
}

func (h *localHolder) close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, nc := range h.conns {
		_ = nc.Close()
	}
	h.conns = nil
	return nil
}

// connAlive reads (without blocking) and discards whatever the node sent
// and reports whether the connection is still open.
func connAlive(nc net.Conn, buf []byte) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	_ = rc.Read(func(fd uintptr) bool {
		for range 64 {
			n, _, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
				return true
			case err == syscall.EINTR:
				continue
			case err != nil || n == 0:
				alive = false
				return true
			}
		}
		return true
	})
	return alive
}

// workerCmd is one line of the parent → worker protocol.
type workerCmd struct {
	Op   string `json:"op"` // "open" or "alive"
	N    int    `json:"n,omitempty"`
	Base int    `json:"base,omitempty"`
}

// procHolder drives a worker process (this binary re-executed as "worker").
type procHolder struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startWorker(args []string) (*procHolder, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	cmd := exec.Command(exe, append([]string{"worker"}, args...)...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &procHolder{cmd: cmd, in: in, out: sc}, nil
}

func (p *procHolder) call(c workerCmd) (openResult, error) {
	var res openResult
	b, _ := json.Marshal(c)
	if _, err := p.in.Write(append(b, '\n')); err != nil {
		return res, fmt.Errorf("worker %d: send %s: %w", p.cmd.Process.Pid, c.Op, err)
	}
	if !p.out.Scan() {
		return res, fmt.Errorf("worker %d: no answer to %s: %v", p.cmd.Process.Pid, c.Op, p.out.Err())
	}
	if err := json.Unmarshal(p.out.Bytes(), &res); err != nil {
		return res, fmt.Errorf("worker %d: decode answer: %w", p.cmd.Process.Pid, err)
	}
	return res, nil
}

func (p *procHolder) open(n, base int) (openResult, error) {
	return p.call(workerCmd{Op: "open", N: n, Base: base})
}

func (p *procHolder) alive() (openResult, error) { return p.call(workerCmd{Op: "alive"}) }

func (p *procHolder) close() error {
	_ = p.in.Close()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill() // our own child, by its PID
		return <-done
	}
}

// runWorker serves the parent's commands on stdin/stdout until stdin closes.
func runWorker(cfg idleConfig, in io.Reader, out io.Writer) error {
	h := &localHolder{cfg: &cfg}
	defer h.close()
	sc := bufio.NewScanner(in)
	enc := json.NewEncoder(out)
	for sc.Scan() {
		var c workerCmd
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return fmt.Errorf("worker: decode command: %w", err)
		}
		var res openResult
		var err error
		switch c.Op {
		case "open":
			res, err = h.open(c.N, c.Base)
		case "alive":
			res, err = h.alive()
		default:
			err = fmt.Errorf("worker: unknown op %q", c.Op)
		}
		if err != nil {
			return err
		}
		if err := enc.Encode(res); err != nil {
			return fmt.Errorf("worker: answer: %w", err)
		}
	}
	return sc.Err()
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

// runIdle opens connections step by step, measuring after each step.
func runIdle(cfg idleConfig, mode string) (*idleResult, error) {
	if len(cfg.steps) == 0 {
		return nil, errors.New("idle: no steps")
	}
	for i, s := range cfg.steps {
		if s < 1 || s > 200000 || (i > 0 && s <= cfg.steps[i-1]) {
			return nil, fmt.Errorf("idle: --steps must be increasing counts in 1…200000, got %v", cfg.steps)
		}
	}
	maxN := cfg.steps[len(cfg.steps)-1]
	procs := (maxN + cfg.perProcess - 1) / cfg.perProcess
	res := &idleResult{Mode: mode, Processes: procs}
	for _, t := range cfg.targets {
		res.URLs = append(res.URLs, t.raw)
	}
	var opened atomic.Int64
	var holders []holder
	if procs <= 1 {
		holders = []holder{&localHolder{cfg: &cfg, counter: &opened}}
		res.Processes = 1
	} else {
		for range procs {
			w, err := startWorker(cfg.worker)
			if err != nil {
				for _, h := range holders {
					_ = h.close()
				}
				return nil, err
			}
			holders = append(holders, w)
		}
	}
	defer func() {
		for _, h := range holders {
			_ = h.close()
		}
	}()
	measure := func(st *idleStep) {
		if !cfg.probe.empty() {
			st.Nodes = cfg.probe.settle(cfg.settle)
			for _, n := range st.Nodes {
				st.NodeRSS += n.RSS
				st.NodeGoroutines += n.Goroutines
				st.NodeHeapInuse += n.HeapInuse
			}
		}
		st.ClientRSS = selfRSS()
		if procs > 1 {
			st.Alive = 0
		}
		for _, h := range holders {
			a, err := h.alive()
			if err != nil {
				res.FirstError = err.Error()
				continue
			}
			st.Alive += a.Alive
			if procs > 1 {
				st.ClientRSS += a.RSS
			}
		}
	}
	if !cfg.probe.empty() {
		b := idleStep{}
		measure(&b)
		res.Baseline = &b
	}
	per := make([]int, len(holders)) // connections per holder so far
	cur := 0
	var totalTime time.Duration
	for _, step := range cfg.steps {
		st := idleStep{Target: step}
		stop := startProgress(cfg.progress, func() string {
			if procs > 1 {
				return fmt.Sprintf("step %d: opening (workers)…", step)
			}
			return fmt.Sprintf("step %d: %d connected", step, opened.Load())
		})
		t0 := time.Now()
		var wg sync.WaitGroup
		results := make([]openResult, len(holders))
		errs := make([]error, len(holders))
		for hi, h := range holders {
			want := step*(hi+1)/len(holders) - step*hi/len(holders)
			n := want - per[hi]
			base := hi*1_000_000 + per[hi]
			per[hi] = want
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[hi], errs[hi] = h.open(n, base)
			}()
		}
		wg.Wait()
		el := time.Since(t0)
		stop()
		totalTime += el
		for hi := range holders {
			if errs[hi] != nil {
				return res, errs[hi]
			}
			st.Opened += results[hi].Opened
			st.Errors += results[hi].Errors
			if results[hi].FirstError != "" && res.FirstError == "" {
				res.FirstError = results[hi].FirstError
			}
		}
		st.ConnectS = el.Seconds()
		if el > 0 {
			st.Rate = float64(st.Opened) / el.Seconds()
		}
		cur += st.Opened
		st.Opened = cur
		res.Errors += st.Errors
		if cfg.hold0 {
			measure(&st)
		} else {
			st.Alive = cur
		}
		res.Steps = append(res.Steps, st)
	}
	if totalTime > 0 {
		res.ConnectRate = float64(cur) / totalTime.Seconds()
	}
	for i := 1; i < len(res.Steps); i++ {
		a, b := res.Steps[i-1], res.Steps[i]
		if b.Alive > a.Alive && a.NodeRSS > 0 {
			d := float64(b.Alive - a.Alive)
			res.Slopes = append(res.Slopes, slope{From: a.Target, To: b.Target,
				KiBPerConn: float64(b.NodeRSS-a.NodeRSS) / d / 1024,
				HeapKiB:    float64(b.NodeHeapInuse-a.NodeHeapInuse) / d / 1024})
		}
	}
	if len(res.Steps) > 2 {
		a, b := res.Steps[0], res.Steps[len(res.Steps)-1]
		if b.Alive > a.Alive && a.NodeRSS > 0 {
			d := float64(b.Alive - a.Alive)
			res.Slopes = append(res.Slopes, slope{From: a.Target, To: b.Target,
				KiBPerConn: float64(b.NodeRSS-a.NodeRSS) / d / 1024,
				HeapKiB:    float64(b.NodeHeapInuse-a.NodeHeapInuse) / d / 1024})
		}
	}
	if cfg.hold0 && cfg.hold > 0 {
		deadline := time.After(cfg.hold)
		<-deadline
		final := 0
		for _, h := range holders {
			if a, err := h.alive(); err == nil {
				final += a.Alive
			}
		}
		res.FinalAlive = final
		res.HoldS = cfg.hold.Seconds()
	} else {
		res.FinalAlive = res.Steps[len(res.Steps)-1].Alive
	}
	return res, nil
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
