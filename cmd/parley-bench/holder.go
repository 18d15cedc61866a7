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
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

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
// connection: nothing reads them except alive() and, with cfg.readEvery, one
// sweeper goroutine that discards what the node sent, as a client would read
// it (a joined connection gets presence frames).
type localHolder struct {
	cfg     *idleConfig
	mu      sync.Mutex // guards conns
	conns   []net.Conn
	counter *atomic.Int64 // connections opened, for progress
	stop    chan struct{} // closed by close(): the sweeper returns
	swept   sync.WaitGroup
}

func newLocalHolder(cfg *idleConfig, counter *atomic.Int64) *localHolder {
	h := &localHolder{cfg: cfg, counter: counter, stop: make(chan struct{})}
	if cfg.readEvery > 0 {
		h.swept.Add(1)
		go h.sweep(cfg.readEvery)
	}
	return h
}

// sweep reads and discards what every connection has, every interval.
func (h *localHolder) sweep(every time.Duration) {
	defer h.swept.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	buf := make([]byte, 64<<10)
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		h.mu.Lock()
		conns := h.conns
		h.mu.Unlock()
		for _, nc := range conns {
			connAlive(nc, buf)
		}
	}
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
				nc, err := h.dial(base + i)
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

// dial opens connection g and, with a join spec, waits until it is a
// member of its room.
func (h *localHolder) dial(g int) (net.Conn, error) {
	t := h.cfg.targets[g%len(h.cfg.targets)]
	nc, pre, err := dialWS(t, "i"+strconv.Itoa(g), sourceIP(g, h.cfg.sources), h.cfg.connectTimeout)
	if err != nil {
		return nil, err
	}
	if h.cfg.join == nil {
		return nc, nil
	}
	if err := h.cfg.join.await(nc, pre, g, h.cfg.connectTimeout); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("connection %d: %w", g, err)
	}
	return nc, nil
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
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	h.swept.Wait()
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
	h := newLocalHolder(&cfg, nil)
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
