package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"parley/relay"
	"parley/relay/redistest"
)

// redisNode starts an in-process node whose bus is the Redis at url.
func redisNode(t testing.TB, id string, rc relay.RedisConfig) *Node {
	t.Helper()
	rc.NodeID = id
	b, err := relay.NewRedis(rc)
	if err != nil {
		t.Fatalf("relay.NewRedis: %v", err)
	}
	return startNode(t, Config{NodeID: id, Broker: b})
}

// seqLog collects, per client, the (seq, text) pairs of one room in the
// order they arrived.
type seqLog struct {
	seqs  []uint64
	texts []string
}

// collect reads message frames of room from c until want messages have
// arrived (resync notices and other frames are recorded as failures).
func collect(t *testing.T, c *client, room string, want int) seqLog {
	t.Helper()
	var l seqLog
	for len(l.seqs) < want {
		m := c.nextJSON()
		switch m["type"] {
		case "message":
			if m["room"] != room {
				continue
			}
			l.seqs = append(l.seqs, uint64(m["seq"].(float64)))
			l.texts = append(l.texts, m["text"].(string))
		case "joined":
			t.Fatalf("unexpected resync notice %v", m)
		}
	}
	return l
}

// TestClusterOrderAcrossNodes: clients on two nodes, senders on both, all
// concurrently; every client sees the same messages in the same seq order,
// with no gap.
func TestClusterOrderAcrossNodes(t *testing.T) {
	r := redistest.Start(t)
	n1 := redisNode(t, "a1", relay.RedisConfig{URL: r.URL()})
	n2 := redisNode(t, "a2", relay.RedisConfig{URL: r.URL()})
	const senders, each = 4, 40
	var clients []*client
	for i := 0; i < 6; i++ {
		n := n1
		if i%2 == 1 {
			n = n2
		}
		c := dial(t, n, fmt.Sprintf("/ws?name=u%d", i))
		c.await("welcome")
		c.joinRoom("order")
		clients = append(clients, c)
	}
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func(c *client, s int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				c.send(map[string]any{"type": "send", "room": "order", "text": fmt.Sprintf("s%d-%d", s, i)})
			}
		}(clients[s], s)
	}
	wg.Wait()
	var first seqLog
	for i, c := range clients {
		l := collect(t, c, "order", senders*each)
		for k, s := range l.seqs {
			if s != l.seqs[0]+uint64(k) {
				t.Fatalf("client %d: seq %d at position %d after %d: gap or reorder", i, s, k, l.seqs[0])
			}
		}
		if i == 0 {
			first = l
			continue
		}
		if strings.Join(l.texts, ",") != strings.Join(first.texts, ",") {
			t.Fatalf("client %d saw a different order than client 0", i)
		}
	}
}

// TestClusterResumeOnOtherNode: a client leaves node A, messages flow on B,
// it comes back on B with since and misses nothing.
func TestClusterResumeOnOtherNode(t *testing.T) {
	r := redistest.Start(t)
	na := redisNode(t, "b1", relay.RedisConfig{URL: r.URL()})
	nb := redisNode(t, "b2", relay.RedisConfig{URL: r.URL()})
	sender := dial(t, nb, "/ws?name=sender")
	sender.await("welcome")
	sender.joinRoom("resume")

	roamer := dial(t, na, "/ws?name=roamer")
	roamer.await("welcome")
	j := roamer.joinRoom("resume")
	epoch := j["epoch"]
	sender.send(map[string]any{"type": "send", "room": "resume", "text": "before", "id": "x0"})
	last := roamer.await("message")["seq"].(float64)
	roamer.conn.Close()

	for i := 1; i <= 5; i++ {
		sender.send(map[string]any{"type": "send", "room": "resume", "text": fmt.Sprint("while-away-", i), "id": fmt.Sprint("x", i)})
		sender.await("ack")
	}
	back := dial(t, nb, "/ws?name=roamer")
	back.await("welcome")
	back.send(map[string]any{"type": "join", "room": "resume", "since": last, "epoch": epoch})
	jb := back.await("joined")
	if jb["recovered"] != true {
		t.Fatalf("joined %v, want recovered", jb)
	}
	l := collect(t, back, "resume", 5)
	for i, text := range l.texts {
		if text != fmt.Sprint("while-away-", i+1) || l.seqs[i] != uint64(last)+uint64(i)+1 {
			t.Fatalf("replay %d: seq %d %q", i, l.seqs[i], text)
		}
	}
}

// steadySender sends one message every interval until stop, and records
// which ids were acked and which got "unavailable".
type steadySender struct {
	acked, unavailable map[string]bool
}

// runSender sends n messages from c at a steady pace, waiting for each
// answer, and records which were acked and which got "unavailable". Before
// send number downAt it calls down, before number upAt it calls up.
func runSender(t *testing.T, c *client, room string, n int, every time.Duration, downAt, upAt int, down, up func()) steadySender {
	t.Helper()
	res := steadySender{acked: map[string]bool{}, unavailable: map[string]bool{}}
	for i := 0; i < n; i++ {
		if i == downAt && down != nil {
			down()
		}
		if i == upAt && up != nil {
			up()
		}
		id := fmt.Sprint("m", i)
		c.send(map[string]any{"type": "send", "room": room, "text": id, "id": id})
		for answered := false; !answered; {
			m := c.nextJSON()
			switch {
			case m["type"] == "ack" && m["id"] == id:
				res.acked[id] = true
				answered = true
			case m["type"] == "error" && m["id"] == id:
				if m["code"] != "unavailable" {
					t.Fatalf("send %s: error %v, want unavailable", id, m)
				}
				res.unavailable[id] = true
				answered = true
			}
		}
		time.Sleep(every) // pacing of the load, not synchronisation
	}
	return res
}

// deliveries reads from c until every id in want arrived (or fails after
// the timeout), checking no id arrives twice and seqs rise within an epoch.
func deliveries(t *testing.T, c *client, room string, want map[string]bool) {
	t.Helper()
	seen := map[string]bool{}
	var lastSeq float64
	var epoch any
	deadline := time.Now().Add(20 * time.Second)
	for missing := len(want); missing > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d acked messages never arrived", missing)
		}
		var m map[string]any
		select {
		case e := <-c.events:
			if e.closed {
				t.Fatalf("connection closed (%d) while waiting for deliveries", e.closeCode)
			}
			if err := json.Unmarshal([]byte(e.text), &m); err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			var lost []string
			for id := range want {
				if !seen[id] {
					lost = append(lost, id)
				}
			}
			sort.Strings(lost)
			t.Fatalf("acked messages never arrived: %v (saw %d)", lost, len(seen))
		}
		if m["room"] != room {
			continue
		}
		switch m["type"] {
		case "joined": // resync notice after the bus lost the room
			epoch, lastSeq = m["epoch"], m["seq"].(float64)
		case "message":
			newEpoch := m["epoch"] != epoch && epoch != nil && lastSeq >= m["seq"].(float64)
			if !newEpoch && m["seq"].(float64) <= lastSeq {
				t.Fatalf("seq %v after %v: duplicate or reorder", m["seq"], lastSeq)
			}
			lastSeq, epoch = m["seq"].(float64), m["epoch"]
			id, _ := m["id"].(string)
			if seen[id] {
				t.Fatalf("message %s delivered twice", id)
			}
			seen[id] = true
			if want[id] {
				missing--
			}
		}
	}
}

// TestClusterSurvivesBusFaults: a steady sender while Redis restarts (and,
// separately, while every pub/sub connection is killed): each acked message
// reaches every member on both nodes once and in order; sends during the
// outage get "unavailable", and sending works again afterwards.
func TestClusterSurvivesBusFaults(t *testing.T) {
	cases := []struct {
		name          string
		down, up      func(t *testing.T, r *redistest.Server)
		expectOutages bool
	}{
		{"client kill pubsub", func(t *testing.T, r *redistest.Server) {
			r.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
		}, nil, false},
		{"redis restart", func(t *testing.T, r *redistest.Server) { r.Kill() },
			func(t *testing.T, r *redistest.Server) { r.Start(t) }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := redistest.Start(t)
			rc := relay.RedisConfig{URL: r.URL(), IOTimeout: 500 * time.Millisecond, DialTimeout: 500 * time.Millisecond}
			n1 := redisNode(t, "c1", rc)
			n2 := redisNode(t, "c2", rc)
			s := dial(t, n1, "/ws?name=s")
			s.await("welcome")
			s.joinRoom("faults")
			var members []*client
			for i, n := range []*Node{n1, n2, n2} {
				c := dial(t, n, fmt.Sprintf("/ws?name=m%d", i))
				c.await("welcome")
				c.joinRoom("faults")
				members = append(members, c)
			}
			hook := func(f func(*testing.T, *redistest.Server)) func() {
				if f == nil {
					return nil
				}
				return func() { f(t, r) }
			}
			res := runSender(t, s, "faults", 60, 20*time.Millisecond, 20, 25, hook(tc.down), hook(tc.up))
			if len(res.acked) == 0 {
				t.Fatal("nothing was acked")
			}
			if tc.expectOutages && len(res.unavailable) == 0 {
				t.Fatal("no send failed during the outage")
			}
			if !res.acked["m59"] {
				t.Fatalf("the last send was not acked: the bus did not recover (%d unavailable)", len(res.unavailable))
			}
			for _, c := range members {
				deliveries(t, c, "faults", res.acked)
			}
		})
	}
}

// binDir holds the node binary built for this test run; TestMain removes it.
var binDir string

// buildParley builds the node binary once per test binary run.
var buildParley = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "parley-bin-")
	binDir = dir
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "parley")
	out, err := exec.Command("go", "build", "-o", bin, "parley/cmd/parley").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// process is a node binary running for a test.
type process struct {
	cmd    *exec.Cmd
	addr   string        // its public listener
	exited chan struct{} // closed once it exited; err is then set
	err    error
}

// startProcess runs the node binary with args and returns once it serves.
// It is killed (SIGKILL) when the test ends, if still running.
func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	bin, err := buildParley()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &process{addr: ln.Addr().String(), exited: make(chan struct{})}
	ln.Close()
	p.cmd = exec.Command(bin, append([]string{"--listen", p.addr, "--admin", "-"}, args...)...)
	p.cmd.Stderr = io.Discard // copied by a goroutine that Wait ends
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	})
	eventually(t, 10*time.Second, func() error {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	return p
}

// TestClusterNodeDeathLeavesPresence: kill -9 a node process; its member
// leaves presence on the survivor within the bound, with one member_left.
func TestClusterNodeDeathLeavesPresence(t *testing.T) {
	r := redistest.Start(t)
	const timeout = 2 * time.Second
	n1 := redisNode(t, "d1", relay.RedisConfig{URL: r.URL(), PresenceTimeout: timeout})
	proc := startProcess(t, "--node-id", "d2", "--redis", r.URL(), "--presence-timeout", timeout.String())

	watcher := dial(t, n1, "/ws?name=watcher")
	watcher.await("welcome")
	watcher.joinRoom("pres")

	victim := dialURL(t, "ws://"+proc.addr+"/ws?name=victim")
	victim.await("welcome")
	victim.joinRoom("pres")
	if e := watcher.await("member_joined"); e["name"] != "victim" || e["node"] != "d2" {
		t.Fatalf("member_joined %v", e)
	}
	watcher.send(map[string]any{"type": "presence", "room": "pres"})
	if p := watcher.await("presence"); !strings.Contains(fmt.Sprint(p["members"]), "victim") {
		t.Fatalf("presence %v lacks victim", p)
	}

	killed := time.Now()
	proc.cmd.Process.Signal(syscall.SIGKILL)
	left := watcher.await("member_left")
	if left["name"] != "victim" {
		t.Fatalf("member_left %v", left)
	}
	if took := time.Since(killed); took > timeout+time.Second {
		t.Fatalf("member_left after %v, bound %v", took, timeout)
	}
	watcher.send(map[string]any{"type": "presence", "room": "pres"})
	if p := watcher.await("presence"); strings.Contains(fmt.Sprint(p["members"]), "victim") {
		t.Fatalf("presence %v still lists victim", p)
	}
	// Exactly one member_left: a ping round trip later, no second one came.
	watcher.send(map[string]any{"type": "ping"})
	for {
		m := watcher.nextJSON()
		if m["type"] == "member_left" {
			t.Fatalf("second member_left %v", m)
		}
		if m["type"] == "pong" {
			break
		}
	}
}

// TestRedisClusterDelivery: a real 3-master Redis Cluster; rooms in
// different slots; messages flow between nodes through sharded pub/sub.
func TestRedisClusterDelivery(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rc := relay.RedisConfig{ClusterAddrs: cl.Addrs()}
	n1 := redisNode(t, "e1", rc)
	n2 := redisNode(t, "e2", rc)
	rooms := []string{"alpha", "beta", "gamma", "delta"}
	slots := map[int]bool{}
	for _, room := range rooms {
		slots[cl.KeySlot(t, room)] = true
	}
	if len(slots) < 2 {
		t.Fatalf("rooms %v all hash to one slot", rooms)
	}
	a := dial(t, n1, "/ws?name=a")
	b := dial(t, n2, "/ws?name=b")
	a.await("welcome")
	b.await("welcome")
	for _, room := range rooms {
		a.joinRoom(room)
		b.joinRoom(room)
	}
	for _, room := range rooms {
		a.send(map[string]any{"type": "send", "room": room, "text": "to " + room})
		m := b.await("message")
		if m["room"] != room || m["text"] != "to "+room {
			t.Fatalf("node 2 got %v, want the message to %s", m, room)
		}
	}
}

// TestReadyzReportsBusDown: with Redis gone the node stays ready (clients
// keep their connections) and says the bus is down; it recovers alone.
func TestReadyzReportsBusDown(t *testing.T) {
	r := redistest.Start(t)
	n := redisNode(t, "f1", relay.RedisConfig{URL: r.URL(), DialTimeout: 300 * time.Millisecond})
	c := dial(t, n, "/ws")
	c.await("welcome")
	c.joinRoom("up")
	plain := dial(t, n, "/")
	if e := plain.next(); e.text != "connected to node f1" {
		t.Fatalf("plain greeting %q", e.text)
	}
	readyz := func(want string) func() error {
		return func() error {
			code, body := httpGet(t, n.Addr(), "/readyz")
			if code != 200 || !strings.Contains(body, want) {
				return fmt.Errorf("readyz %d %q, want 200 containing %q", code, body, want)
			}
			return nil
		}
	}
	eventually(t, 5*time.Second, readyz("ready\n"))
	r.Kill()
	eventually(t, 10*time.Second, readyz("bus down"))
	c.send(map[string]any{"type": "send", "room": "up", "text": "lost?", "id": "d1"})
	if e := c.await("error"); e["code"] != "unavailable" || e["id"] != "d1" {
		t.Fatalf("send while down: %v", e)
	}
	plain.sendText("lost?")
	if e := plain.next(); e.text != "error: message not sent: bus unavailable" {
		t.Fatalf("plain send while down got %q", e.text)
	}
	r.Start(t)
	eventually(t, 15*time.Second, readyz("ready\n"))
	eventually(t, 10*time.Second, func() error {
		c.send(map[string]any{"type": "send", "room": "up", "text": "back", "id": "d2"})
		for {
			m := c.nextJSON()
			if m["id"] == "d2" && m["type"] == "ack" {
				return nil
			}
			if m["id"] == "d2" && m["type"] == "error" {
				return fmt.Errorf("still failing: %v", m)
			}
		}
	})
}
