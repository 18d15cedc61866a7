package main

import (
	"bufio"
	"encoding/binary"
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

	"github.com/gobwas/ws"
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
	mu      sync.Mutex // guards conns and frames, and reading them
	conns   []net.Conn
	frames  []frameSkipper // frames[i] follows conns[i]
	counter *atomic.Int64  // connections opened, for progress
	stop    chan struct{}  // closed by close(): the sweeper returns
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
		for i, nc := range h.conns {
			connAlive(nc, buf, &h.frames[i])
		}
		h.mu.Unlock()
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
				nc, rest, err := h.dial(base + i)
				if err != nil {
					errs.Add(1)
					first.set(err)
					continue
				}
				var fs frameSkipper
				if fs.feed(rest) > 0 {
					_, _ = nc.Write(pongFrame)
				}
				h.mu.Lock()
				h.conns = append(h.conns, nc)
				h.frames = append(h.frames, fs)
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
// member of its room. rest is what it read past that (the start of a
// frame, or the handshake's leftovers).
func (h *localHolder) dial(g int) (nc net.Conn, rest []byte, err error) {
	t := h.cfg.targets[g%len(h.cfg.targets)]
	nc, pre, err := dialWS(t, "i"+strconv.Itoa(g), sourceIP(g, h.cfg.sources), h.cfg.connectTimeout)
	if err != nil {
		return nil, nil, err
	}
	if h.cfg.join == nil {
		return nc, pre, nil
	}
	rest, err = h.cfg.join.await(nc, pre, g, h.cfg.connectTimeout)
	if err != nil {
		_ = nc.Close()
		return nil, nil, fmt.Errorf("connection %d: %w", g, err)
	}
	return nc, rest, nil
}

func (h *localHolder) alive() (openResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var res openResult
	buf := make([]byte, 4096)
	for i, nc := range h.conns {
		if connAlive(nc, buf, &h.frames[i]) {
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
	h.conns, h.frames = nil, nil
	return nil
}

// connAlive reads (without blocking) and discards whatever the node sent,
// answers its pings (fs follows the frames), and reports whether the
// connection is still open.
func connAlive(nc net.Conn, buf []byte, fs *frameSkipper) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive, pings := true, 0
	_ = rc.Read(func(fd uintptr) bool {
		for range 64 {
			n, _, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
			if n > 0 {
				pings += fs.feed(buf[:n])
			}
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
	if alive && pings > 0 {
		_, _ = nc.Write(pongFrame)
	}
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

// frameSkipper follows the frame boundaries of what a node sends while the
// bytes are discarded, so that a held connection answers the node's pings
// as any client does (a node closes a connection that stays silent through
// a ping and another ping interval). It keeps no payload: a partial header
// and a count of payload bytes still to skip.
type frameSkipper struct {
	skip uint64   // payload bytes of the current frame still to come
	hdr  [10]byte // a header cut by a read, so far
	nh   uint8
	ping bool // the frame being skipped is a ping
}

// feed consumes b and returns how many pings it completed.
func (s *frameSkipper) feed(b []byte) (pings int) {
	for len(b) > 0 {
		if s.skip > 0 {
			n := min(uint64(len(b)), s.skip)
			s.skip -= n
			b = b[n:]
			if s.skip == 0 && s.ping {
				pings++
			}
			continue
		}
		for s.nh < 2 && len(b) > 0 { // the two fixed bytes
			s.hdr[s.nh] = b[0]
			s.nh++
			b = b[1:]
		}
		if s.nh < 2 {
			return pings
		}
		need := uint8(2) // server frames are not masked
		switch s.hdr[1] & 0x7f {
		case 126:
			need = 4
		case 127:
			need = 10
		}
		for s.nh < need && len(b) > 0 {
			s.hdr[s.nh] = b[0]
			s.nh++
			b = b[1:]
		}
		if s.nh < need {
			return pings
		}
		var length uint64
		switch need {
		case 2:
			length = uint64(s.hdr[1] & 0x7f)
		case 4:
			length = uint64(binary.BigEndian.Uint16(s.hdr[2:4]))
		default:
			length = binary.BigEndian.Uint64(s.hdr[2:10])
		}
		s.ping = ws.OpCode(s.hdr[0]&0x0f) == ws.OpPing
		s.nh, s.skip = 0, length
		if length == 0 && s.ping {
			pings++
		}
	}
	return pings
}

// pongFrame is a client's masked, empty pong (the node's pings carry no
// payload).
var pongFrame = appendClientFrame(nil, ws.OpPong, nil)
