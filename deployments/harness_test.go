package deployments

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"parley/client"
)

// parleyBin is the node binary the cluster tests run, built once in TestMain.
var parleyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "parley-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	parleyBin = filepath.Join(dir, "parley")
	build := exec.Command("go", "build", "-o", parleyBin, "./cmd/parley")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the node: %v\n%s", err, out)
		os.Exit(1)
	}
	code := 0
	func() {
		defer os.RemoveAll(dir)
		code = m.Run()
	}()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// cluster is a local cluster started by deployments/local/cluster.sh:
// Redis, nodes and HAProxy as real processes on 127.0.0.1 free ports.
type cluster struct {
	t     testing.TB
	dir   string // the run folder
	port  int    // HAProxy's public port
	nodes int
	env   []string // extra environment for cluster.sh (PARLEY_* node settings)
}

// freePort returns a 127.0.0.1 port nothing listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCluster runs `cluster.sh up` with nodes nodes; `cluster.sh down` runs
// when the test ends. It fails if the script does not report every node up.
func startCluster(t testing.TB, nodes int, env ...string) *cluster {
	t.Helper()
	need(t, "haproxy")
	need(t, "redis-server")
	c := &cluster{t: t, dir: t.TempDir(), port: freePort(t), nodes: nodes, env: env}
	t.Cleanup(func() {
		if out, err := c.script("down"); err != nil {
			t.Errorf("cluster.sh down: %v\n%s", err, out)
		}
		if t.Failed() {
			c.dumpLogs()
		}
	})
	out, err := c.script("up")
	if err != nil {
		t.Fatalf("cluster.sh up: %v\n%s", err, out)
	}
	return c
}

// script runs cluster.sh with args against this cluster's run folder.
func (c *cluster) script(args ...string) ([]byte, error) {
	cmd := exec.Command("bash", append([]string{"local/cluster.sh"}, args...)...)
	cmd.Env = append(os.Environ(),
		"CLUSTER_DIR="+c.dir,
		"CLUSTER_PORT="+strconv.Itoa(c.port),
		"CLUSTER_NODES="+strconv.Itoa(c.nodes),
		"PARLEY_BIN="+parleyBin)
	cmd.Env = append(cmd.Env, c.env...)
	return cmd.CombinedOutput()
}

// dumpLogs prints the tail of every log of the run folder (after a failure).
func (c *cluster) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		c.t.Logf("--- %s (last lines)\n%s", filepath.Base(l), strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
}

// url is the public WebSocket address (through HAProxy).
func (c *cluster) url() string { return fmt.Sprintf("ws://127.0.0.1:%d/ws", c.port) }

// file reads one file of the run folder.
func (c *cluster) file(name string) string {
	b, err := os.ReadFile(filepath.Join(c.dir, name))
	if err != nil {
		c.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// pid is a process's PID as cluster.sh recorded it.
func (c *cluster) pid(name string) int {
	f := strings.Fields(c.file(name + ".pid"))
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		c.t.Fatal(err)
	}
	return pid
}

// server is one node as HAProxy's runtime API shows it.
type server struct {
	Status string // UP, DOWN, NOLB, MAINT, "UP 1/2" …
	Stot   int    // sessions (here: upgrades and requests) sent to it since start
	Scur   int    // sessions open now
}

// haproxyStat asks the runtime API for `show stat` and returns backend
// parley's servers by name.
func (c *cluster) haproxyStat() (map[string]server, error) {
	conn, err := net.DialTimeout("unix", filepath.Join(c.dir, "haproxy.sock"), 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "show stat\n"); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(conn)
	var cols map[string]int
	out := map[string]server{}
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "# ") {
			cols = map[string]int{}
			for i, h := range strings.Split(strings.TrimPrefix(line, "# "), ",") {
				cols[h] = i
			}
			continue
		}
		f := strings.Split(line, ",")
		if cols == nil || len(f) < len(cols) || f[0] != "parley" || f[1] == "BACKEND" {
			continue
		}
		stot, _ := strconv.Atoi(f[cols["stot"]])
		scur, _ := strconv.Atoi(f[cols["scur"]])
		out[f[1]] = server{Status: f[cols["status"]], Stot: stot, Scur: scur}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("show stat: no servers (%v)", sc.Err())
	}
	return out, sc.Err()
}

// haproxyCmd sends one runtime API command and returns the answer.
func (c *cluster) haproxyCmd(cmd string) (string, error) {
	conn, err := net.DialTimeout("unix", filepath.Join(c.dir, "haproxy.sock"), 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// sample is HAProxy's view at one instant.
type sample struct {
	at      time.Time
	servers map[string]server
}

// sampler records HAProxy's view every period until stopped.
type sampler struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	done    chan struct{}
}

func (c *cluster) startSampler(period time.Duration) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			if st, err := c.haproxyStat(); err == nil {
				s.mu.Lock()
				s.samples = append(s.samples, sample{at: time.Now(), servers: st})
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops the sampler and returns its samples.
func (s *sampler) finish() []sample {
	close(s.stop)
	<-s.done
	return s.samples
}

// peakRate is the most sessions one server took in any window of about
// one second, per second.
func peakRate(samples []sample) (node string, perSec float64) {
	for i := range samples {
		for j := i + 1; j < len(samples); j++ {
			dt := samples[j].at.Sub(samples[i].at)
			if dt < time.Second {
				continue
			}
			for name, s := range samples[j].servers {
				prev, ok := samples[i].servers[name]
				if !ok || s.Stot < prev.Stot {
					continue // restarted counters are HAProxy's, not the node's: never reset
				}
				if r := float64(s.Stot-prev.Stot) / dt.Seconds(); r > perSec {
					node, perSec = name, r
				}
			}
			break
		}
	}
	return node, perSec
}

// dialFrom dials from loopback source address 127.0.0.(2 + i%250): users
// come from many addresses, and the nodes, which learn each client's address
// from HAProxy's PROXY protocol header, count their per-address limits so.
func dialFrom(i int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%250))}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: src}
		return d.DialContext(ctx, network, addr)
	}
}

// chatter is one client of a load: it records every message it is
// delivered, per room, and each reconnect.
type chatter struct {
	c    *client.Client
	name string
	room string

	mu         sync.Mutex
	seqs       []uint64 // seqs delivered in room, in delivery order
	epochs     map[string]bool
	reconnects []time.Time
	nodes      []string // nodes it was on, in order
	lost       []error  // EventRoomLost
	resets     int
	left       []client.Member // member_left events seen
	done       chan struct{}
}

// dialChatter connects a client through HAProxy and joins room.
func dialChatter(ctx context.Context, t testing.TB, url, name, room string) *chatter {
	t.Helper()
	c, err := client.Dial(ctx, client.Config{Addrs: []string{url}, Name: name, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	ch := &chatter{c: c, name: name, room: room, epochs: map[string]bool{}, done: make(chan struct{}), nodes: []string{c.Node()}}
	go ch.read()
	if err := c.Join(ctx, room); err != nil {
		t.Fatalf("%s join %s: %v", name, room, err)
	}
	return ch
}

func (ch *chatter) read() {
	defer close(ch.done)
	for ev := range ch.c.Events() {
		ch.mu.Lock()
		switch ev.Kind {
		case client.EventMessage:
			if ev.Room == ch.room {
				ch.seqs = append(ch.seqs, ev.Message.Seq)
				ch.epochs[ev.Message.Epoch] = true
			}
		case client.EventReconnected:
			ch.reconnects = append(ch.reconnects, time.Now())
			ch.nodes = append(ch.nodes, ev.Node)
		case client.EventRoomLost:
			ch.lost = append(ch.lost, ev.Err)
		case client.EventReset:
			ch.resets++
		case client.EventMemberLeft:
			ch.left = append(ch.left, ev.Member)
		}
		ch.mu.Unlock()
	}
}

func (ch *chatter) close() {
	ch.c.Close()
	<-ch.done
}

// lastSeq is the highest seq delivered so far.
func (ch *chatter) lastSeq() uint64 {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if len(ch.seqs) == 0 {
		return 0
	}
	return ch.seqs[len(ch.seqs)-1]
}

// load is a set of chatters spread over rooms, sending at a steady rate.
type load struct {
	t        testing.TB
	chatters []*chatter
	rooms    int

	mu     sync.Mutex
	acked  map[string][]uint64 // room → acked seqs
	sent   int
	errs   []error
	stop   chan struct{}
	wg     sync.WaitGroup
	repeat int
}

// newLoad dials n chatters through url, chatter i in room i%rooms.
func newLoad(t testing.TB, url string, n, rooms int) *load {
	t.Helper()
	l := &load{t: t, rooms: rooms, acked: map[string][]uint64{}, stop: make(chan struct{})}
	t.Cleanup(l.close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Dial in parallel, a few at a time, so 400 handshakes do not queue.
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	l.chatters = make([]*chatter, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := client.Dial(ctx, client.Config{Addrs: []string{url}, Name: fmt.Sprintf("u%03d", i),
				MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, NetDial: dialFrom(i)})
			if err != nil {
				mu.Lock()
				l.errs = append(l.errs, fmt.Errorf("dial u%03d: %w", i, err))
				mu.Unlock()
				return
			}
			room := fmt.Sprintf("room%d", i%rooms)
			ch := &chatter{c: c, name: fmt.Sprintf("u%03d", i), room: room, epochs: map[string]bool{}, done: make(chan struct{}), nodes: []string{c.Node()}}
			go ch.read()
			l.chatters[i] = ch
			if err := c.Join(ctx, room); err != nil {
				mu.Lock()
				l.errs = append(l.errs, fmt.Errorf("u%03d join: %w", i, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(l.errs) > 0 {
		t.Fatalf("%d clients failed to connect, first: %v", len(l.errs), l.errs[0])
	}
	return l
}

// perNode counts the chatters on each node now.
func (l *load) perNode() map[string]int {
	m := map[string]int{}
	for _, ch := range l.chatters {
		m[ch.c.Node()]++
	}
	return m
}

// send has every chatter send one message and waits for all acks.
func (l *load) sendOnce(ctx context.Context, tag string) {
	var wg sync.WaitGroup
	for _, ch := range l.chatters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.sendOne(ctx, ch, tag)
		}()
	}
	wg.Wait()
}

func (l *load) sendOne(ctx context.Context, ch *chatter, tag string) {
	l.mu.Lock()
	l.sent++
	l.mu.Unlock()
	ack, err := ch.c.Send(ctx, ch.room, ch.name+" "+tag)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errs = append(l.errs, fmt.Errorf("%s send %s: %w", ch.name, tag, err))
		return
	}
	if ack.Repeat {
		l.repeat++
	}
	l.acked[ch.room] = append(l.acked[ch.room], ack.Seq)
}

// start has every chatter send one message every period (first send at a
// random offset), until stopSending.
func (l *load) start(period time.Duration) {
	for i, ch := range l.chatters {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			offset := time.Duration(i) * period / time.Duration(len(l.chatters))
			select {
			case <-time.After(offset):
			case <-l.stop:
				return
			}
			tick := time.NewTicker(period)
			defer tick.Stop()
			for k := 0; ; k++ {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				l.sendOne(ctx, ch, "m"+strconv.Itoa(k))
				cancel()
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
}

// stopSending stops the senders and waits for their last acks.
func (l *load) stopSending() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *load) close() {
	l.stopSending()
	for _, ch := range l.chatters {
		if ch != nil {
			ch.close()
		}
	}
}

// verify waits until every chatter has every acked message of its room,
// then checks what each one got: all acked seqs, each once, in order, one
// epoch, no lost room, no reset, no send error. It returns how many
// (message, member) deliveries are missing (0 when the test passes).
func (l *load) verify(timeout time.Duration) (missing int) {
	t := l.t
	t.Helper()
	l.mu.Lock()
	errs := append([]error(nil), l.errs...)
	maxAcked := map[string]uint64{}
	ackedSet := map[string]map[uint64]bool{}
	for room, seqs := range l.acked {
		ackedSet[room] = map[uint64]bool{}
		for _, s := range seqs {
			maxAcked[room] = max(maxAcked[room], s)
			ackedSet[room][s] = true
		}
	}
	l.mu.Unlock()
	if len(errs) > 0 {
		t.Errorf("%d sends failed; first: %v", len(errs), errs[0])
	}
	deadline := time.Now().Add(timeout)
	for _, ch := range l.chatters {
		for ch.lastSeq() < maxAcked[ch.room] && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	bad := 0
	for _, ch := range l.chatters {
		ch.mu.Lock()
		got := map[uint64]bool{}
		for i, s := range ch.seqs {
			if got[s] {
				t.Errorf("%s got seq %d of %s twice", ch.name, s, ch.room)
			}
			got[s] = true
			if i > 0 && s <= ch.seqs[i-1] {
				t.Errorf("%s: seq %d after %d in %s: out of order", ch.name, s, ch.seqs[i-1], ch.room)
			}
		}
		first := uint64(0)
		if len(ch.seqs) > 0 {
			first = ch.seqs[0]
		}
		for s := range ackedSet[ch.room] {
			if s >= first && !got[s] {
				missing++
			}
		}
		if len(ch.lost) > 0 || ch.resets > 0 || len(ch.epochs) > 1 {
			bad++
			if bad <= 3 {
				t.Errorf("%s: rooms lost %v, resets %d, epochs %d", ch.name, ch.lost, ch.resets, len(ch.epochs))
			}
		}
		st := ch.c.Stats()
		if st.Gaps > 0 || st.Failed > 0 {
			t.Errorf("%s: client stats %+v", ch.name, st)
		}
		ch.mu.Unlock()
	}
	if missing > 0 {
		t.Errorf("%d acked (message, member) deliveries missing", missing)
	}
	return missing
}

// totals returns messages sent (Send calls), acked, and acks that were
// repeats (a resend of a message already published).
func (l *load) totals() (sent, acked, repeats int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.acked {
		acked += len(s)
	}
	return l.sent, acked, l.repeat
}
