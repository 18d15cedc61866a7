package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"parley/relay"
	"parley/relay/redistest"
)

func TestMain(m *testing.M) {
	relay.RouteRedisLogs(nil)
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// historySize is the history window the tests give nodes and the checker:
// large enough that nothing a test sends is trimmed.
const historySize = 200000

// binDir holds the node binary built for this run; TestMain removes it.
var binDir string

// buildParley builds the node binary once per test binary run.
var buildParley = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "parley-e2e-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "parley")
	out, err := exec.Command("go", "build", "-o", bin, "parley/cmd/parley").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// nodeProc is a node binary the test runs, restarts and signals. Its
// stderr goes to a log file in the test's temp dir, shown when the test
// fails.
type nodeProc struct {
	t      *testing.T
	id     string
	addr   string
	args   []string
	logDir string
	runs   int

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	err    error         // cmd's exit status, set before exited is closed
}

// startNode runs a node process with id on a free 127.0.0.1 port, using
// Redis at redisURL, and returns once it serves. It is killed when the test
// ends if still running.
func startNode(t *testing.T, id, redisURL string, extra ...string) *nodeProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &nodeProc{t: t, id: id, addr: ln.Addr().String(), logDir: t.TempDir()}
	ln.Close()
	p.args = append([]string{"--listen", p.addr, "--admin", "-", "--node-id", id, "--redis", redisURL,
		"--history-size", strconv.Itoa(historySize), "--shutdown-grace", "15s", "--drain-delay", "0", "--reconnect-after", "100ms",
		"--log-level", "warn"}, extra...)
	p.start()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		<-p.exited
		if t.Failed() {
			p.dumpLog()
		}
	})
	return p
}

func (p *nodeProc) start() {
	p.t.Helper()
	bin, err := buildParley()
	if err != nil {
		p.t.Fatal(err)
	}
	p.runs++
	logf, err := os.Create(filepath.Join(p.logDir, fmt.Sprintf("run%d.log", p.runs)))
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(bin, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// Settings a newer node may have; unknown PARLEY_* variables are ignored.
	p.cmd.Env = append(os.Environ(), "PARLEY_DRAIN_DELAY=200ms", "PARLEY_HISTORY_MAX_BYTES=268435456")
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start node %s: %v", p.id, err)
	}
	p.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		p.err = cmd.Wait()
		close(exited)
	}(p.cmd, p.exited)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.exited:
			p.dumpLog()
			p.t.Fatalf("node %s exited at start: %v", p.id, p.err)
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("node %s does not serve after 20s: %v", p.id, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

func (p *nodeProc) signal(sig syscall.Signal) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// terminate sends SIGTERM and waits for the process to exit; it fails the
// test if the node does not exit cleanly within its grace period.
func (p *nodeProc) terminate() {
	p.t.Helper()
	p.signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			p.t.Errorf("node %s exit after SIGTERM: %v", p.id, p.err)
		}
	case <-time.After(30 * time.Second):
		p.t.Fatalf("node %s still running 30s after SIGTERM", p.id)
	}
}

// restart terminates the node and starts it again on the same address.
func (p *nodeProc) restart() {
	p.t.Helper()
	p.terminate()
	p.start()
}

func (p *nodeProc) dumpLog() {
	for i := 1; i <= p.runs; i++ {
		b, _ := os.ReadFile(filepath.Join(p.logDir, fmt.Sprintf("run%d.log", i)))
		if len(b) > 1500 {
			b = b[len(b)-1500:]
		}
		if len(b) > 0 {
			p.t.Logf("node %s run %d log (tail):\n%s", p.id, i, b)
		}
	}
}

// redisPID returns the process id of the Redis server at addr.
func redisPID(t *testing.T, r *redistest.Server) int {
	t.Helper()
	info := r.Do(t, "INFO", "server")
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, err := strconv.Atoi(v)
			if err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no process_id in INFO server of %s", r.Addr())
	return 0
}

// pauseRedis stops the Redis process with SIGSTOP for d, then resumes it.
// The test's cleanup resumes it too, so a failing test never leaves it
// stopped.
func pauseRedis(t *testing.T, r *redistest.Server, d time.Duration) {
	t.Helper()
	pid := redisPID(t, r)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP redis: %v", err)
	}
	defer func() {
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT redis: %v", err)
		}
	}()
	time.Sleep(d) // the fault's length: Redis is stopped this long
}

// startRedis starts a Redis with an append-only file fsynced on every
// write: a restart (even kill -9) keeps every acked message.
func startRedis(t *testing.T) *redistest.Server {
	return redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
}

// readHistory reads every room's whole history straight from Redis.
func readHistory(t *testing.T, url string, rooms []string) map[string]relay.HistoryResult {
	t.Helper()
	b, err := relay.NewRedis(relay.RedisConfig{URL: url, NodeID: "e2e-checker", HistorySize: historySize})
	if err != nil {
		t.Fatalf("checker broker: %v", err)
	}
	defer b.Close()
	out := map[string]relay.HistoryResult{}
	for _, room := range rooms {
		var res relay.HistoryResult
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			res, err = b.History(ctx, room, relay.HistoryRequest{})
			cancel()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond) // Redis may still be loading its AOF
		}
		if err != nil {
			t.Fatalf("history of %s: %v", room, err)
		}
		out[room] = res
	}
	return out
}
