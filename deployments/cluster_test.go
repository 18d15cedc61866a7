package deployments

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// Figures of the cluster tests, from node.env: a draining node keeps
// serving this long with /readyz at 503 before it tells its clients.
const drainDelay = 3 * time.Second

// TestClusterChat: 400 clients through HAProxy, spread over 4 nodes, chat in
// 10 rooms; everyone sees every message of their room, in seq order, once.
func TestClusterChat(t *testing.T) {
	c := startCluster(t, 4)
	l := newLoad(t, c.url(), 400, 10)
	per := l.perNode()
	if len(per) != 4 {
		t.Fatalf("clients on %d nodes, want all 4: %v", len(per), per)
	}
	for node, n := range per {
		// leastconn: an even spread, give or take the joins in flight.
		if n < 50 {
			t.Errorf("node %s has %d of 400 clients; leastconn should spread them: %v", node, n, per)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for round := 0; round < 2; round++ {
		l.sendOnce(ctx, fmt.Sprintf("r%d", round))
	}
	l.verify(30 * time.Second)
	sent, acked, _ := l.totals()
	if sent != 800 || acked != 800 {
		t.Errorf("sent %d, acked %d, want 800", sent, acked)
	}
	t.Logf("clients per node %v; %d messages, each to 40 members", per, acked)
}

// TestRollingRestart restarts all 4 nodes one by one with the drain
// procedure while 200 clients send steadily. Every acked message reaches
// every client (after reconnect and resume), once, in order; no client
// sees an error; and HAProxy takes each node out of rotation before the
// node tells its clients to go, and sends it no new upgrade after that.
func TestRollingRestart(t *testing.T) {
	c := startCluster(t, 4)
	l := newLoad(t, c.url(), 200, 10)
	smp := c.startSampler(100 * time.Millisecond)
	l.start(2 * time.Second) // 100 messages/s over the cluster

	type restart struct {
		node        string
		sigterm     time.Time
		out         time.Time // first sample with the node not UP
		exited      time.Time
		stotAtOut   int
		stotAtExit  int
		clientsBusy int // clients on it when drained
	}
	var rs []restart
	firstDrain := time.Now()
	for i := 1; i <= 4; i++ {
		name := fmt.Sprintf("n%d", i)
		var st map[string]server
		eventually(t, 20*time.Second, func() (err error) {
			st, err = c.haproxyStat()
			return err
		})
		r := restart{node: name, sigterm: time.Now(), clientsBusy: st[name].Scur}
		if i == 1 {
			firstDrain = r.sigterm
		}
		if out, err := c.script("drain", name); err != nil {
			t.Fatalf("drain %s: %v\n%s", name, err, out)
		}
		r.exited = time.Now()
		if out, err := c.script("start", name); err != nil {
			t.Fatalf("start %s: %v\n%s", name, err, out)
		}
		rs = append(rs, r)
	}
	// All clients resumed: every client that was moved has reconnected, and
	// each client's last reconnect is the end of the restart for it.
	resumed := time.Time{}
	for _, ch := range l.chatters {
		ch.mu.Lock()
		for _, at := range ch.reconnects {
			if at.After(resumed) {
				resumed = at
			}
		}
		ch.mu.Unlock()
	}
	l.stopSending()
	samples := smp.finish()
	missing := l.verify(60 * time.Second)

	// HAProxy's view of each drain.
	for k := range rs {
		r := &rs[k]
		var stotOut, stotExit = -1, -1
		for _, s := range samples {
			sv, ok := s.servers[r.node]
			if !ok || s.at.Before(r.sigterm) {
				continue
			}
			if r.out.IsZero() && sv.Status != "UP" {
				r.out, stotOut = s.at, sv.Stot
			}
			if !s.at.After(r.exited) {
				stotExit = sv.Stot
			}
		}
		r.stotAtOut, r.stotAtExit = stotOut, stotExit
		// HAProxy must take the node out while it drains (the timing is
		// logged, not asserted: on a loaded machine checks run late, and
		// the node still serves an upgrade that comes in its drain delay),
		// and send it nothing new afterwards.
		switch {
		case r.out.IsZero() || r.out.After(r.exited):
			t.Errorf("%s: HAProxy did not take it out of rotation before it exited", r.node)
		case stotExit > stotOut:
			t.Errorf("%s: HAProxy sent it %d new sessions after taking it out (stot %d → %d)", r.node, stotExit-stotOut, stotOut, stotExit)
		}
		if d := r.out.Sub(r.sigterm); d >= drainDelay {
			t.Logf("%s: HAProxy took it out only %v after SIGTERM, later than the %v drain delay (a loaded machine?)", r.node, d, drainDelay)
		}
	}
	moved := 0
	for _, ch := range l.chatters {
		ch.mu.Lock()
		if len(ch.reconnects) > 0 {
			moved++
		}
		ch.mu.Unlock()
	}
	sent, acked, repeats := l.totals()
	node, peak := peakRate(samples)
	var dups uint64
	for _, ch := range l.chatters {
		dups += ch.c.Stats().Duplicates
	}
	t.Logf("rolling restart of 4 nodes: first drain → all clients resumed %v (restarts done %v); %d of %d clients moved",
		resumed.Sub(firstDrain).Round(10*time.Millisecond), time.Since(firstDrain).Round(10*time.Millisecond), moved, len(l.chatters))
	for _, r := range rs {
		t.Logf("  %s: %d clients; out of rotation %v after SIGTERM; stot at out %d, at exit %d; exited after %v",
			r.node, r.clientsBusy, r.out.Sub(r.sigterm).Round(10*time.Millisecond), r.stotAtOut, r.stotAtExit, r.exited.Sub(r.sigterm).Round(10*time.Millisecond))
	}
	t.Logf("  peak upgrades/s one node took: %.0f (%s); messages sent %d, acked %d (%d acked as repeats of a resend), lost %d deliveries; duplicates the client dropped %d",
		peak, node, sent, acked, repeats, missing, dups)
	if moved < len(l.chatters)*3/4 {
		t.Errorf("only %d of %d clients reconnected during a restart of every node", moved, len(l.chatters))
	}
}

// TestKillNode: kill -9 one node under load. Its clients reconnect through
// HAProxy to the others and resume; nothing acked is lost; the other
// members see each of the dead node's members leave once.
func TestKillNode(t *testing.T) {
	c := startCluster(t, 4)
	l := newLoad(t, c.url(), 200, 10)
	l.start(time.Second)

	// Who was on n2, per room.
	victims := map[string]bool{}
	for _, ch := range l.chatters {
		if ch.c.Node() == "n2" {
			victims[ch.name] = true
		}
	}
	if len(victims) == 0 {
		t.Fatalf("no client on n2: %v", l.perNode())
	}
	killed := time.Now()
	if err := syscall.Kill(c.pid("n2"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Every victim is back on another node.
	eventually(t, 30*time.Second, func() error {
		for _, ch := range l.chatters {
			if victims[ch.name] && ch.c.Node() == "n2" {
				return fmt.Errorf("%s still on n2", ch.name)
			}
			if victims[ch.name] && ch.c.Node() == "" {
				return fmt.Errorf("%s not reconnected", ch.name)
			}
		}
		return nil
	})
	back := time.Since(killed)
	// Presence: within the presence timeout (15s) every other member of a
	// victim's room sees it leave from n2, once.
	eventually(t, 30*time.Second, func() error {
		for _, ch := range l.chatters {
			if victims[ch.name] {
				continue
			}
			ch.mu.Lock()
			seen := 0
			for _, m := range ch.left {
				if m.Node == "n2" {
					seen++
				}
			}
			ch.mu.Unlock()
			if want := victimsIn(l, ch.room, victims); seen < want {
				return fmt.Errorf("%s saw %d of %d n2 members leave", ch.name, seen, want)
			}
		}
		return nil
	})
	gone := time.Since(killed)
	l.stopSending()
	for _, ch := range l.chatters {
		if victims[ch.name] {
			continue
		}
		ch.mu.Lock()
		count := map[string]int{}
		for _, m := range ch.left {
			if m.Node == "n2" {
				count[m.Name]++
			}
		}
		ch.mu.Unlock()
		for name, n := range count {
			if n != 1 || !victims[name] {
				t.Errorf("%s saw %s leave from n2 %d times (victim: %v)", ch.name, name, n, victims[name])
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ms, err := ch.c.Presence(ctx, ch.room)
		cancel()
		if err != nil {
			t.Fatalf("presence: %v", err)
		}
		for _, m := range ms {
			if m.Node == "n2" {
				t.Errorf("%s: presence of %s still lists %s on the dead n2", ch.name, ch.room, m.Name)
			}
		}
	}
	missing := l.verify(60 * time.Second)
	sent, acked, repeats := l.totals()
	t.Logf("kill -9 n2 with %d clients: all back on other nodes after %v, their presence gone after %v; sent %d, acked %d (%d repeats), lost %d",
		len(victims), back.Round(10*time.Millisecond), gone.Round(10*time.Millisecond), sent, acked, repeats, missing)
}

func victimsIn(l *load, room string, victims map[string]bool) int {
	n := 0
	for _, ch := range l.chatters {
		if ch.room == room && victims[ch.name] {
			n++
		}
	}
	return n
}

// TestClusterScript: make cluster's script as a user meets it: a busy
// public port is named, a second `up` is refused while one runs, stopping
// one node leaves the others serving, and `down` stops exactly the
// processes `up` started.
func TestClusterScript(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 2)
	// A second cluster on the same port: the port is named.
	other := &cluster{t: t, dir: t.TempDir(), port: c.port, nodes: 1}
	out, err := other.script("up")
	if err == nil || !strings.Contains(string(out), fmt.Sprintf("port %d is busy", c.port)) {
		t.Fatalf("up on a busy port: %v\n%s", err, out)
	}
	// A second `up` in the same folder is refused.
	if out, err := c.script("up"); err == nil || !strings.Contains(string(out), "already running") {
		t.Fatalf("second up: %v\n%s", err, out)
	}
	// The runtime API's drain, the alternative to SIGTERM that haproxy.cfg
	// documents: no new client goes to n2 while it is set to drain.
	if out, err := c.haproxyCmd("set server parley/n2 state drain"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("set server state drain: %v %q", err, out)
	}
	eventually(t, 5*time.Second, func() error {
		st, err := c.haproxyStat()
		if err != nil {
			return err
		}
		if st["n2"].Status != "DRAIN" {
			return fmt.Errorf("n2 status %q, want DRAIN", st["n2"].Status)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := 0; i < 4; i++ {
		ch := dialChatter(ctx, t, c.url(), fmt.Sprintf("d%d", i), "lobby")
		if ch.c.Node() != "n1" {
			t.Errorf("client %d went to %s while n2 drains", i, ch.c.Node())
		}
		ch.close()
	}
	if out, err := c.haproxyCmd("set server parley/n2 state ready"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("set server state ready: %v %q", err, out)
	}
	// One node stopped: the other still serves through HAProxy.
	if out, err := c.script("drain", "n1"); err != nil {
		t.Fatalf("drain n1: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, func() error {
		st, err := c.haproxyStat()
		if err != nil {
			return err
		}
		if st["n2"].Status != "UP" || st["n1"].Status == "UP" {
			return fmt.Errorf("haproxy: %+v", st)
		}
		return nil
	})
	ch := dialChatter(ctx, t, c.url(), "solo", "lobby")
	defer ch.close()
	if ch.c.Node() != "n2" {
		t.Fatalf("client on %q, want n2 (n1 is stopped)", ch.c.Node())
	}
	if out, err := c.script("status"); err != nil || !strings.Contains(string(out), "stopped") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	// down stops exactly what up started: an unrelated process with a
	// recorded PID file of the same name is left alone.
	pids := []int{c.pid("haproxy"), c.pid("redis"), c.pid("n2")}
	ch.close()
	if out, err := c.script("down"); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	for _, p := range pids {
		if syscall.Kill(p, 0) == nil {
			t.Errorf("pid %d still runs after down", p)
		}
	}
	for _, f := range []string{"n1.log", "n2.log", "haproxy.log", "redis.log"} {
		if _, err := os.Stat(filepath.Join(c.dir, f)); err != nil {
			t.Errorf("run folder lost %s: %v", f, err)
		}
	}
}

// TestClusterDownLeavesOthers: down never signals a process it did not
// start, even when a recorded PID now belongs to someone else.
func TestClusterDownLeavesOthers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A process of ours that cluster.sh did not start, recorded under a
	// stale start time, as after a reboot that reused the PID.
	sleeper := startSleeper(t)
	os.WriteFile(filepath.Join(dir, "n1.pid"), []byte(fmt.Sprintf("%d 1\n", sleeper)), 0o644)
	os.WriteFile(filepath.Join(dir, "n1.addr"), []byte("127.0.0.1:1\n"), 0o644)
	c := &cluster{t: t, dir: dir, port: freePort(t), nodes: 1}
	if out, err := c.script("down"); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	if err := syscall.Kill(sleeper, 0); err != nil {
		t.Fatalf("down signalled a process it did not start: %v", err)
	}
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startSleeper starts a process the test owns (sleep) and kills it at the end.
func startSleeper(t *testing.T) int {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// TestClientAddressThroughHAProxy: the nodes see each client's own address
// (HAProxy's PROXY protocol header), not HAProxy's: with two connections
// allowed per address, a third from one address is refused with 429 while
// another address still gets in.
func TestClientAddressThroughHAProxy(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1, "PARLEY_MAX_CONNS_PER_ADDR=2")
	dialAs := func(i int) (net.Conn, error) {
		d := ws.Dialer{NetDial: dialFrom(i), Timeout: 5 * time.Second}
		conn, _, _, err := d.Dial(context.Background(), c.url()+"?name=a"+strconv.Itoa(i))
		return conn, err
	}
	for k := 0; k < 2; k++ {
		conn, err := dialAs(0) // 127.0.0.2
		if err != nil {
			t.Fatalf("connection %d from 127.0.0.2: %v", k+1, err)
		}
		defer conn.Close()
	}
	_, err := dialAs(250) // 127.0.0.2 again
	if err == nil || !strings.Contains(err.Error(), "429") {
		t.Fatalf("third connection from 127.0.0.2: %v, want 429", err)
	}
	conn, err := dialAs(1) // 127.0.0.3
	if err != nil {
		t.Fatalf("connection from 127.0.0.3: %v (the node counts HAProxy's address, not the client's?)", err)
	}
	conn.Close()
}
