package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/goleak"

	"parley/actors"
	"parley/relay"
)

func TestMain(m *testing.M) {
	relay.RouteRedisLogs(nil) // go-redis logs reconnect attempts to stderr by default
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		// protoactor's dead-letter log throttle parks a goroutine for its
		// throttle interval (1s) after a dead letter; it ends on its own.
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestHTTPEndpoints(t *testing.T) {
	n := startNode(t, Config{})
	cases := []struct {
		addr, path string
		code       int
		contains   string
	}{
		{n.Addr(), "/healthz", 200, "ok"},
		{n.Addr(), "/readyz", 200, "ready"},
		{n.Addr(), "/", 200, "<title>Parley</title>"},
		{n.Addr(), "/static/app.js", 200, "textContent"},
		{n.Addr(), "/ws", 426, "WebSocket"},
		{n.Addr(), "/nope", 404, ""},
		{n.AdminAddr(), "/debug/stats", 200, `"goroutines"`},
		{n.AdminAddr(), "/debug/pprof/", 200, "heap"},
	}
	for _, tc := range cases {
		code, body := httpGet(t, tc.addr, tc.path)
		if code != tc.code || !strings.Contains(body, tc.contains) {
			t.Errorf("GET %s: %d %q, want %d containing %q", tc.path, code, trunc(body), tc.code, tc.contains)
		}
	}
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

func TestBadNameRefused(t *testing.T) {
	n := startNode(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws?name=%3Cb%3E")
	if err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("dial with name <b>: %v, want a 400 refusal", err)
	}
}

func TestJSONWelcomeAndChat(t *testing.T) {
	n := startNode(t, Config{NodeID: "n7"})
	a := dial(t, n, "/ws?name=alice")
	w := a.nextJSON()
	if w["type"] != "welcome" || w["node"] != "n7" || w["name"] != "alice" || w["session"] == "" {
		t.Fatalf("first frame %v, want welcome for alice on n7", w)
	}
	b := dial(t, n, "/ws")
	wb := b.await("welcome")
	if !strings.HasPrefix(wb["name"].(string), "guest-") {
		t.Fatalf("default name %q, want guest-…", wb["name"])
	}
	a.joinRoom("r1")
	b.joinRoom("r1")
	a.send(map[string]any{"type": "send", "room": "r1", "text": "hello <b>", "id": "c1"})
	// The sender's ack and its own message may come in either order.
	got := map[string]map[string]any{}
	for got["ack"] == nil || got["message"] == nil {
		m := a.nextJSON()
		got[m["type"].(string)] = m
	}
	if ack := got["ack"]; ack["id"] != "c1" || ack["seq"] != float64(1) || ack["room"] != "r1" {
		t.Fatalf("ack %v", ack)
	}
	for _, m := range []map[string]any{got["message"], b.await("message")} {
		if m["text"] != "hello <b>" || m["from"] != "alice" || m["id"] != "c1" || m["seq"] != float64(1) {
			t.Fatalf("message %v", m)
		}
	}
	a.send(map[string]any{"type": "ping"})
	a.await("pong")
}

func TestPlainAndJSONInLobby(t *testing.T) {
	n := startNode(t, Config{NodeID: "seed"})
	p := dial(t, n, "/?name=plainy")
	if e := p.next(); e.text != "connected to node seed" {
		t.Fatalf("first plain frame %q, want connected to node seed", e.text)
	}
	j := dial(t, n, "/ws?name=jay")
	j.await("welcome")
	j.joinRoom("lobby")

	p.sendText("hi from plain")
	if e := p.next(); e.text != "hi from plain" {
		t.Fatalf("plain echo %q", e.text)
	}
	if m := j.await("message"); m["text"] != "hi from plain" || m["from"] != "plainy" {
		t.Fatalf("json saw %v", m)
	}
	j.send(map[string]any{"type": "send", "room": "lobby", "text": "hi from json"})
	if e := p.next(); e.text != "hi from json" {
		t.Fatalf("plain saw %q", e.text)
	}
}

func TestSinceReplay(t *testing.T) {
	n := startNode(t, Config{})
	a := dial(t, n, "/ws?name=a")
	a.await("welcome")
	j := a.joinRoom("hist")
	epoch := j["epoch"]
	for i := 1; i <= 5; i++ {
		a.send(map[string]any{"type": "send", "room": "hist", "text": fmt.Sprint("m", i), "id": fmt.Sprint(i)})
		a.await("ack")
	}
	b := dial(t, n, "/ws?name=b")
	b.await("welcome")
	b.send(map[string]any{"type": "join", "room": "hist", "since": 2, "epoch": epoch})
	jb := b.await("joined")
	if jb["recovered"] != true || jb["seq"] != float64(5) {
		t.Fatalf("joined %v, want seq 5 recovered", jb)
	}
	for want := 3; want <= 5; want++ {
		m := b.nextJSON()
		if m["type"] != "message" || m["seq"] != float64(want) || m["text"] != fmt.Sprint("m", want) {
			t.Fatalf("replay: got %v, want seq %d", m, want)
		}
	}
	a.send(map[string]any{"type": "send", "room": "hist", "text": "live"})
	if m := b.await("message"); m["seq"] != float64(6) || m["text"] != "live" {
		t.Fatalf("after replay got %v, want seq 6", m)
	}
	// A stale epoch cannot be recovered.
	c := dial(t, n, "/ws?name=c")
	c.await("welcome")
	c.send(map[string]any{"type": "join", "room": "hist", "since": 2, "epoch": "stale"})
	if jc := c.await("joined"); jc["recovered"] != false {
		t.Fatalf("joined with stale epoch %v, want recovered false", jc)
	}
}

// TestErrorFrames: bad client frames get an error frame echoing the id, and
// the connection keeps working.
func TestErrorFrames(t *testing.T) {
	n := startNode(t, Config{})
	c := dial(t, n, "/ws")
	c.await("welcome")
	cases := []struct {
		frame string
		code  string
		id    string
	}{
		{`{"type":"send","room":"r","text":"x","id":"e1"}`, "not_joined", "e1"},
		{`{"type":"nope","id":"e2"}`, "unknown_type", "e2"},
		{`{"type":"join","room":"bad room","id":"e3"}`, "bad_room", "e3"},
		{`{"type":"join",`, "bad_request", ""},
		{`{"type":"history","room":"r","id":"e4"}`, "not_joined", "e4"},
		{`{"type":"leave","room":"r","id":"e5"}`, "not_joined", "e5"},
	}
	for _, tc := range cases {
		c.sendText(tc.frame)
		e := c.await("error")
		if e["code"] != tc.code || (tc.id != "" && e["id"] != tc.id) {
			t.Errorf("%s: got %v, want code %s id %s", tc.frame, e, tc.code, tc.id)
		}
	}
	c.send(map[string]any{"type": "ping"})
	c.await("pong")
}

// TestCloseCodes: each bad frame gets its close code, and the node keeps
// serving other clients.
func TestCloseCodes(t *testing.T) {
	n := startNode(t, Config{MaxMessageSize: 1024})
	closePayload := func(code uint16) []byte { return []byte{byte(code >> 8), byte(code)} }
	cases := []struct {
		name string
		path string
		raw  []byte
		want ws.StatusCode
	}{
		{"too big declared", "/ws", frameLen(0x81, nil, 1<<40), ws.StatusMessageTooBig},
		{"too big real", "/ws", frame(0x81, bytes.Repeat([]byte("a"), 2000)), ws.StatusMessageTooBig},
		{"bad utf8", "/ws", frame(0x81, []byte{'"', 0xff, 0xfe}), ws.StatusInvalidFramePayloadData},
		{"rsv bit", "/ws", frame(0x81|0x40, []byte("{}")), ws.StatusProtocolError},
		{"reserved opcode", "/ws", frame(0x83, []byte("x")), ws.StatusProtocolError},
		{"unmasked", "/ws", []byte{0x81, 0x02, '{', '}'}, ws.StatusProtocolError},
		{"fragmented ping", "/ws", frame(0x09, []byte("x")), ws.StatusProtocolError},
		{"orphan continuation", "/ws", frame(0x80, []byte("x")), ws.StatusProtocolError},
		{"long control", "/ws", frame(0x89, bytes.Repeat([]byte("p"), 126)), ws.StatusProtocolError},
		{"bad close code", "/ws", frame(0x88, closePayload(999)), ws.StatusProtocolError},
		{"binary on /ws", "/ws", frame(0x82, []byte{1, 2}), ws.StatusUnsupportedData},
		{"binary on /", "/", frame(0x82, []byte{1, 2}), ws.StatusUnsupportedData},
		{"client close echoed", "/ws", frame(0x88, closePayload(1000)), ws.StatusNormalClosure},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, n, tc.path)
			c.next() // welcome or "connected to node"
			c.writeRaw(tc.raw)
			if got := c.awaitClose(); got != tc.want {
				t.Fatalf("close code %d, want %d", got, tc.want)
			}
		})
	}
	// The node still serves.
	c := dial(t, n, "/ws")
	c.await("welcome")
	c.joinRoom("still")
}

// TestStalledMidFrameHoldsNoGoroutine: a client that sends half a frame
// and stops parks nothing, and others keep chatting.
func TestStalledMidFrameHoldsNoGoroutine(t *testing.T) {
	n := startNode(t, Config{})
	a := dial(t, n, "/ws")
	a.await("welcome")
	a.joinRoom("r")
	base := settledGoroutines(t)
	var stalled []*client
	for i := 0; i < 20; i++ {
		s := dial(t, n, "/ws")
		s.await("welcome")
		full := frame(0x81, []byte(`{"type":"join","room":"r"}`))
		s.writeRaw(full[:len(full)/2])
		stalled = append(stalled, s)
	}
	// Each client holds one reader goroutine of its own in this process.
	want := base + len(stalled)
	eventually(t, 5*time.Second, func() error {
		if g := runtime.NumGoroutine(); g > want+2 {
			return fmt.Errorf("%d goroutines, want ≤ %d", g, want+2)
		}
		return nil
	})
	a.send(map[string]any{"type": "send", "room": "r", "text": "still here"})
	if m := a.await("message"); m["text"] != "still here" {
		t.Fatalf("got %v", m)
	}
}

// TestIdleConnectionsAddNoGoroutines holds 1,000 idle upgraded connections
// (raw sockets in this process, no client reader) and checks the node
// added no goroutine for them.
func TestIdleConnectionsAddNoGoroutines(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	n := startNode(t, Config{MaxConnsPerAddr: -1}) // all from 127.0.0.1
	base := settledGoroutines(t)
	const N = 1000
	conns := make([]interface{ Close() error }, 0, N)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < N; i++ {
		conn, _, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws")
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, conn)
	}
	eventually(t, 10*time.Second, func() error {
		if got := n.Stats().Sessions; got != N {
			return fmt.Errorf("%d sessions, want %d", got, N)
		}
		return nil
	})
	eventually(t, 10*time.Second, func() error {
		if g := runtime.NumGoroutine(); g > base+5 {
			return fmt.Errorf("%d goroutines with %d idle connections, base %d", g, N, base)
		}
		return nil
	})
}

func settledGoroutines(t testing.TB) int {
	t.Helper()
	var last int
	stable := 0
	eventually(t, 5*time.Second, func() error {
		g := runtime.NumGoroutine()
		if g == last {
			stable++
		} else {
			stable, last = 0, g
		}
		if stable < 5 {
			return errNotYet
		}
		return nil
	})
	return last
}

// TestGracefulShutdown: every client gets reconnect (JSON) and close 1001;
// readyz turns 503 meanwhile.
func TestGracefulShutdown(t *testing.T) {
	n := startNode(t, Config{ShutdownGrace: 5 * time.Second})
	var js []*client
	for i := 0; i < 5; i++ {
		c := dial(t, n, "/ws")
		c.await("welcome")
		c.joinRoom("r")
		js = append(js, c)
	}
	p := dial(t, n, "/")
	p.next()
	done := make(chan error, 1)
	go func() { done <- n.Shutdown(context.Background()) }()
	for _, c := range js {
		r := c.await("reconnect")
		if r["reason"] == "" || r["after_ms"] == nil {
			t.Fatalf("reconnect frame %v", r)
		}
		if code := c.awaitClose(); code != ws.StatusGoingAway {
			t.Fatalf("close code %d, want 1001", code)
		}
	}
	if code := p.awaitClose(); code != ws.StatusGoingAway {
		t.Fatalf("plain close code %d, want 1001", code)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not finish")
	}
}

func TestReadyzWhileDraining(t *testing.T) {
	n := startNode(t, Config{ShutdownGrace: 5 * time.Second})
	c := dial(t, n, "/ws")
	c.await("welcome")
	// Hold the node in its drain (past the drain delay): this client
	// ignores the close for now.
	n.unready.Store(true)
	n.draining.Store(true)
	if code, _ := httpGet(t, n.Addr(), "/readyz"); code != 503 {
		t.Fatalf("readyz while draining: %d, want 503", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws"); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("upgrade while draining: %v, want 503", err)
	}
}

// TestSlowConsumerClosed4008: a member that stops reading is closed with
// 4008 once its queue passes the cap, and the room keeps serving the rest.
func TestSlowConsumerClosed4008(t *testing.T) {
	// A long close timeout: the stalled client reads only after the kick.
	// No rate limit: the sender must outrun the stalled reader's queue.
	n := startNode(t, Config{MaxQueueBytes: 64 << 10, CloseTimeout: time.Minute,
		Limits: actors.Limits{MessageRate: 1e6}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stalled, _, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws?name=stalled")
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	stalled.Write(frame(0x81, []byte(`{"type":"join","room":"flood"}`)))

	sender := dial(t, n, "/ws?name=sender")
	sender.await("welcome")
	sender.joinRoom("flood")
	eventually(t, 5*time.Second, func() error {
		sender.send(map[string]any{"type": "presence", "room": "flood"})
		if p := sender.await("presence"); !strings.Contains(fmt.Sprint(p["members"]), "stalled") {
			return errNotYet
		}
		return nil
	})
	text := strings.Repeat("x", 8<<10)
	// Paced by acks, so the sender's own queue stays short.
	for i := 0; i < 2000 && n.Stats().SlowKicks == 0; i++ {
		sender.send(map[string]any{"type": "send", "room": "flood", "text": text, "id": fmt.Sprint(i)})
		sender.await("ack")
	}
	// The stalled client finds, after what the socket buffers held, a 4008 close.
	if n.Stats().SlowKicks != 1 {
		t.Fatalf("slow_kicks %d after 2,000 messages, want 1", n.Stats().SlowKicks)
	}
	code := readUntilClose(t, stalled)
	if code != 4008 {
		t.Fatalf("stalled client closed with %d, want 4008", code)
	}
	sender.send(map[string]any{"type": "ping"})
	sender.await("pong")
}

// readUntilClose reads server frames from conn until a close frame.
func readUntilClose(t *testing.T, conn net.Conn) ws.StatusCode {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReaderSize(conn, 64<<10)
	for {
		h, err := ws.ReadHeader(r)
		if err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatalf("read payload: %v", err)
		}
		if h.OpCode == ws.OpClose {
			if len(p) < 2 {
				return ws.StatusNoStatusRcvd
			}
			return ws.StatusCode(binary.BigEndian.Uint16(p))
		}
	}
}
