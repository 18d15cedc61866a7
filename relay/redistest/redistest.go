// Package redistest starts real redis-server processes, and real Redis
// Clusters, on free 127.0.0.1 ports for the tests of any package.
//
// Every server runs without persistence (--save "" --appendonly no) in a
// t.TempDir, listens on 127.0.0.1 only, and is killed by its PID in
// t.Cleanup. The harness fails the test (it never skips) when redis-server
// or redis-cli is missing: CI installs them.
//
// Ownership: a Server or Cluster belongs to the test goroutine that started
// it; its methods are not safe for concurrent use.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// StartTimeout bounds how long the harness waits for a server (or a
// cluster) to become ready.
const StartTimeout = 15 * time.Second

// Server is one redis-server process.
type Server struct {
	port int
	dir  string
	args []string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for

	sentinel bool // run as redis-sentinel with dir/sentinel.conf
}

// Start runs a redis-server on a free 127.0.0.1 port with extra args (for
// example "--maxmemory", "10mb") and waits until it answers PING. The
// server is killed in t.Cleanup.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	lookPath(t, "redis-server")
	s := &Server{port: freePort(t, false), dir: t.TempDir(), args: args}
	s.start(t)
	t.Cleanup(s.Kill)
	return s
}

// Addr returns host:port of the server.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL returns redis://host:port/0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Port returns the server's port.
func (s *Server) Port() int { return s.port }

func (s *Server) start(t testing.TB) {
	t.Helper()
	if s.sentinel {
		s.cmd = exec.Command("redis-server", filepath.Join(s.dir, "sentinel.conf"), "--sentinel")
	} else {
		s.cmd = exec.Command("redis-server", s.argv()...)
	}
	s.cmd.Dir = s.dir
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("redistest: start redis-server: %v", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(s.cmd, s.done)
	if err := waitReady(s.Addr(), s.done, StartTimeout); err != nil {
		s.Kill()
		t.Fatalf("redistest: redis-server on %s: %v\n%s", s.Addr(), err, s.logTail())
	}
}

func (s *Server) argv() []string {
	argv := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}
	return append(argv, s.args...)
}

// Kill stops the server with SIGKILL and waits for the process to exit.
// It is safe to call more than once.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
	}
}

// Restart kills the server and starts it again on the same port, with an
// empty dataset (there is no persistence). It returns once the new process
// answers PING.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	s.start(t)
}

// Start starts a killed server again on the same port.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	select {
	case <-s.done:
	default:
		t.Fatalf("redistest: server %s is still running", s.Addr())
	}
	s.start(t)
}

// Do sends one command and returns its reply in RESP text, for simple
// administration in tests (FLUSHALL, CLIENT KILL, ...). Integer replies come
// back as their decimal text, simple strings as themselves.
func (s *Server) Do(t testing.TB, args ...string) string {
	t.Helper()
	out, err := Do(s.Addr(), args...)
	if err != nil {
		t.Fatalf("redistest: %s %v: %v", s.Addr(), args, err)
	}
	return out
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Do sends one command to addr on a fresh connection and returns the reply:
// simple strings, integers and bulk strings as text; arrays as their
// elements joined by newlines. An error reply is returned as an error.
func Do(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	return readReply(bufio.NewReader(conn))
}

func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := ioReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		parts := make([]string, 0, max(n, 0))
		for i := 0; i < n; i++ {
			p, err := readReply(r)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, "\n"), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

func ioReadFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// waitReady polls addr with PING until it answers PONG, the process exits
// (done closed) or the timeout passes.
func waitReady(addr string, done <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("process exited")
		default:
		}
		out, err := Do(addr, "PING")
		if err == nil && out == "PONG" {
			return nil
		}
		last = err
		select {
		case <-done:
			return errors.New("process exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("not ready after %v: %v", timeout, last)
}

func lookPath(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("redistest: %s not found in PATH (install it, e.g. apt-get install redis-server redis-tools): %v", name, err)
	}
}

// freePort returns a port on 127.0.0.1 that nobody listens on. With
// clusterBus it also checks port+10000 (the cluster bus port).
func freePort(t testing.TB, clusterBus bool) int {
	t.Helper()
	for i := 0; i < 200; i++ {
		p := 20000 + rand.IntN(25000)
		if !portFree(p) || clusterBus && !portFree(p+10000) {
			continue
		}
		return p
	}
	t.Fatalf("redistest: no free port found")
	return 0
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// StartSentinel runs one redis-sentinel (redis-server --sentinel) on a free
// port that monitors master under name with quorum 1. It waits until the
// sentinel reports the master's address.
func StartSentinel(t testing.TB, master *Server, name string) *Server {
	t.Helper()
	lookPath(t, "redis-server")
	s := &Server{port: freePort(t, false), dir: t.TempDir(), sentinel: true}
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %s 1000\n",
		s.port, s.dir, filepath.Join(s.dir, "redis.log"), name, master.port, name)
	if err := os.WriteFile(filepath.Join(s.dir, "sentinel.conf"), []byte(conf), 0o600); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	s.start(t)
	t.Cleanup(s.Kill)
	deadline := time.Now().Add(StartTimeout)
	for {
		out, err := Do(s.Addr(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
		if err == nil && out == "127.0.0.1\n"+strconv.Itoa(master.port) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: sentinel does not know master %s: %q %v", name, out, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}
