package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// connect/idle re-execute the binary as "parley-bench worker": the test
	// binary then serves as the worker.
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// chatServer is a tiny broadcast WebSocket server for the tests: "/" speaks
// the plain seed protocol (greeting, then every text frame goes to everyone),
// "/ws" a minimal protocol v1 (welcome, join → joined and member_joined to
// every member already in the room, send → message to every member and ack
// to the sender). A join of a room named kick… is answered with joined and
// then close 4008, as a node kicks a slow consumer; a join of deny… with an
// error frame.
type chatServer struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex // guards conns, members, seq
	conn map[net.Conn]*sync.Mutex
	mem  map[net.Conn]string // conn → joined room (json)
	peak map[string]int      // room → most members at once
	seq  uint64
}

func startChatServer(t *testing.T) *chatServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &chatServer{ln: ln, conn: map[net.Conn]*sync.Mutex{}, mem: map[net.Conn]string{}, peak: map[string]int{}}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

func (s *chatServer) addr() string { return s.ln.Addr().String() }

func (s *chatServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *chatServer) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.conn {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *chatServer) write(c net.Conn, msg []byte) {
	s.mu.Lock()
	wmu := s.conn[c]
	s.mu.Unlock()
	if wmu == nil {
		return
	}
	wmu.Lock()
	_ = wsutil.WriteServerText(c, msg)
	wmu.Unlock()
}

// broadcast sends msg to every connection, or with room != "" to its members.
func (s *chatServer) broadcast(msg []byte, room string) {
	s.mu.Lock()
	var to []net.Conn
	for c := range s.conn {
		if room == "" || s.mem[c] == room {
			to = append(to, c)
		}
	}
	s.mu.Unlock()
	for _, c := range to {
		s.write(c, msg)
	}
}

func (s *chatServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	path := ""
	u := ws.Upgrader{OnRequest: func(uri []byte) error {
		path, _, _ = strings.Cut(string(uri), "?")
		return nil
	}}
	if _, err := u.Upgrade(c); err != nil {
		return
	}
	s.mu.Lock()
	s.conn[c] = &sync.Mutex{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conn, c)
		delete(s.mem, c)
		s.mu.Unlock()
	}()
	jsonProto := path == "/ws"
	if jsonProto {
		s.write(c, []byte(`{"type":"welcome","node":"t1","session":"x","name":"n"}`))
	} else {
		s.write(c, []byte("connected to node t1"))
	}
	for {
		msg, op, err := wsutil.ReadClientData(c)
		if err != nil {
			return
		}
		if op != ws.OpText {
			continue
		}
		if !jsonProto {
			s.broadcast(msg, "")
			continue
		}
		var f struct{ Type, Room, Text, ID string }
		if json.Unmarshal(msg, &f) != nil {
			continue
		}
		switch f.Type {
		case "join":
			if strings.HasPrefix(f.Room, "deny") {
				s.write(c, []byte(`{"type":"error","code":"too_many_rooms","message":"no"}`))
				continue
			}
			s.mu.Lock()
			var others []net.Conn
			for o, room := range s.mem {
				if room == f.Room {
					others = append(others, o)
				}
			}
			s.mem[c] = f.Room
			s.peak[f.Room] = max(s.peak[f.Room], len(others)+1)
			seq := s.seq
			s.mu.Unlock()
			b, _ := json.Marshal(map[string]any{"type": "joined", "room": f.Room, "seq": seq})
			s.write(c, b)
			ann, _ := json.Marshal(map[string]any{"type": "member_joined", "room": f.Room, "name": "n", "node": "t1"})
			for _, o := range others {
				s.write(o, ann)
			}
			if strings.HasPrefix(f.Room, "kick") {
				s.mu.Lock()
				wmu := s.conn[c]
				s.mu.Unlock()
				wmu.Lock()
				_ = ws.WriteFrame(c, ws.NewCloseFrame(ws.NewCloseFrameBody(4008, "slow consumer")))
				wmu.Unlock()
			}
		case "send":
			s.mu.Lock()
			s.seq++
			seq := s.seq
			s.mu.Unlock()
			b, _ := json.Marshal(map[string]any{"type": "message", "room": f.Room, "seq": seq, "from": "n", "text": f.Text, "id": f.ID, "ts": 1})
			s.broadcast(b, f.Room)
			a, _ := json.Marshal(map[string]any{"type": "ack", "id": f.ID, "room": f.Room, "seq": seq})
			s.write(c, a)
		}
	}
}

func TestHistogramPercentiles(t *testing.T) {
	tests := []struct {
		name      string
		values    []int64 // µs
		p50, p99  float64 // ms, ±1 %
		max       float64
		wantCount int64
	}{
		{"uniform 1..1000 µs", seq(1, 1000), 0.5, 0.99, 1.0, 1000},
		{"constant 5 ms", repeat(5000, 100), 5, 5, 5, 100},
		{"tail", append(repeat(1000, 985), repeat(2_000_000, 15)...), 1, 2000, 2000, 1000},
		{"clamped", []int64{-5, 0, 200_000_000}, 0.001, 120_000, 120_000, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newLatencyRecorder(4)
			for i := 0; i < len(tc.values); i += 7 {
				r.recordBatch(i, tc.values[i:min(i+7, len(tc.values))])
			}
			s := summarize(r.snapshot())
			if s.Count != tc.wantCount {
				t.Fatalf("count %d, want %d", s.Count, tc.wantCount)
			}
			for _, c := range []struct {
				name      string
				got, want float64
			}{{"p50", s.P50, tc.p50}, {"p99", s.P99, tc.p99}, {"max", s.Max, tc.max}} {
				if d := c.got - c.want; d > c.want*0.01+0.001 || d < -c.want*0.01-0.001 {
					t.Errorf("%s = %g ms, want %g", c.name, c.got, c.want)
				}
			}
		})
	}
}

func seq(a, b int64) []int64 {
	var out []int64
	for v := a; v <= b; v++ {
		out = append(out, v)
	}
	return out
}

func repeat(v int64, n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func TestDeliveryTracker(t *testing.T) {
	type ev struct {
		sender int
		seq    uint64
	}
	tests := []struct {
		name                        string
		events                      []ev
		received, dup, ooo, foreign uint64
	}{
		{"in order", []ev{{0, 0}, {0, 1}, {1, 0}, {0, 2}, {1, 1}}, 5, 0, 0, 0},
		{"duplicate", []ev{{0, 0}, {0, 1}, {0, 1}, {0, 0}}, 2, 2, 0, 0},
		{"out of order", []ev{{0, 0}, {0, 2}, {0, 1}, {0, 3}}, 4, 0, 1, 0},
		{"gap is loss, not disorder", []ev{{0, 0}, {0, 5}, {0, 6}}, 3, 0, 0, 0},
		{"unknown sender", []ev{{2, 0}, {-1, 0}, {0, 0}}, 1, 0, 0, 2},
		{"large seq grows", []ev{{1, 1000}, {1, 999}, {1, 1000}}, 2, 1, 1, 0},
		{"absurd seq", []ev{{0, maxTrackedSeq}}, 0, 0, 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newDeliveryTracker(2)
			for _, e := range tc.events {
				tr.observe(e.sender, e.seq)
			}
			var tot deliveryTotals
			tot.add(tr)
			if tot.Received != tc.received || tot.Duplicates != tc.dup || tot.OutOfOrder != tc.ooo || tot.Foreign != tc.foreign {
				t.Fatalf("got received %d dup %d ooo %d foreign %d, want %d %d %d %d",
					tot.Received, tot.Duplicates, tot.OutOfOrder, tot.Foreign, tc.received, tc.dup, tc.ooo, tc.foreign)
			}
		})
	}
}

func TestLoopbackGuard(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{"ws://127.0.0.1:8080/ws", true},
		{"ws://127.1.2.3:80/", true},
		{"ws://localhost:8080/ws", true},
		{"ws://[::1]:8080/ws", true},
		{"ws://10.0.0.1:8080/ws", false},
		{"ws://192.168.1.1/ws", false},
		{"ws://example.com/ws", false},
		{"ws://8.8.8.8/ws", false},
		{"ws://[2001:db8::1]:80/", false},
		{"wss://127.0.0.1/ws", false},
		{"http://127.0.0.1/ws", false},
		{"ws:///ws", false},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			_, err := checkLoopbackURL(tc.url)
			if (err == nil) != tc.ok {
				t.Fatalf("checkLoopbackURL(%q) error = %v, want ok=%v", tc.url, err, tc.ok)
			}
		})
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"fanout", "--url", "ws://10.1.1.1:8080/ws"}, "loopback"},
		{[]string{"idle", "--url", "ws://127.0.0.1:1/ws", "--admin", "192.168.0.2:6060"}, "loopback"},
		{[]string{"fanout", "--url", "ws://evil.example:80/"}, "loopback"},
	} {
		err := run(tc.args, nil, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%v) = %v, want an error about %q", tc.args, err, tc.want)
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	tests := []struct {
		sender int
		seq    uint64
		ts     int64
		size   int
	}{
		{0, 0, 1, 64}, {99, 123456, time.Now().UnixNano(), 64}, {14999, 1 << 40, 1 << 62, 1000},
	}
	for _, tc := range tests {
		p := appendPayload(nil, tc.sender, tc.seq, tc.ts, tc.size)
		if len(p) < tc.size {
			t.Fatalf("payload %d bytes, want ≥ %d", len(p), tc.size)
		}
		s, q, ts, ok := parsePayload(p)
		if !ok || s != tc.sender || q != tc.seq || ts != tc.ts {
			t.Fatalf("parse %q = %d %d %d %v", p, s, q, ts, ok)
		}
	}
	for _, bad := range []string{"", "pb1 ", "pb1 1 2", "pb1 x 2 3 ", "connected to node n1", "pb1 1 2 3"} {
		if _, _, _, ok := parsePayload([]byte(bad)); ok {
			t.Errorf("parsePayload(%q) ok, want failure", bad)
		}
	}
}

func TestFrameParser(t *testing.T) {
	srv := func(op ws.OpCode, fin bool, p []byte) []byte {
		var b bytes.Buffer
		_ = ws.WriteHeader(&b, ws.Header{Fin: fin, OpCode: op, Length: int64(len(p))})
		b.Write(p)
		return b.Bytes()
	}
	big := bytes.Repeat([]byte("a"), 70000)
	mid := bytes.Repeat([]byte("b"), 300)
	stream := bytes.Join([][]byte{
		srv(ws.OpText, true, []byte("hello")),
		srv(ws.OpText, true, mid),
		srv(ws.OpPing, true, []byte("p")),
		srv(ws.OpText, false, []byte("frag-")),
		srv(ws.OpContinuation, true, []byte("ment")),
		srv(ws.OpBinary, true, big),
		appendClientFrame(nil, ws.OpText, []byte("masked")),
	}, nil)
	want := []string{"1:hello", "1:" + string(mid), "9:p", "1:frag-ment", "2:" + string(big), "1:masked"}
	for _, chunk := range []int{1, 3, 100, 4096, len(stream)} {
		var p frameParser
		var got []string
		for off := 0; off < len(stream); off += chunk {
			err := p.feed(stream[off:min(off+chunk, len(stream))], func(op ws.OpCode, b []byte) error {
				got = append(got, string(rune('0'+op))+":"+string(b))
				return nil
			})
			if err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("chunk %d: got %d frames, want %d", chunk, len(got), len(want))
		}
	}
	var p frameParser
	hdr := []byte{0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0}
	if err := p.feed(hdr, func(ws.OpCode, []byte) error { return nil }); !errors.Is(err, errFrameTooBig) {
		t.Fatalf("huge frame: err = %v, want errFrameTooBig", err)
	}
}

func TestAssignNodes(t *testing.T) {
	tests := []struct {
		clients, senders, targets int
		cross                     bool
		want                      []int // clients per target
	}{
		{10, 2, 1, false, []int{10}},
		{10, 2, 2, false, []int{5, 5}},
		{1000, 100, 2, true, []int{500, 500}},
		{10, 8, 2, true, []int{8, 2}},
		{9, 1, 3, true, []int{3, 3, 3}},
	}
	for _, tc := range tests {
		got := assignNodes(tc.clients, tc.senders, tc.targets, tc.cross)
		counts := make([]int, tc.targets)
		for i, n := range got {
			counts[n]++
			if tc.cross && i < tc.senders && n != 0 {
				t.Errorf("%+v: sender %d on target %d, want 0", tc, i, n)
			}
		}
		for i := range counts {
			if counts[i] != tc.want[i] {
				t.Errorf("%+v: counts %v, want %v", tc, counts, tc.want)
				break
			}
		}
	}
}

func TestFanoutEndToEnd(t *testing.T) {
	tests := []struct {
		name, proto, path string
		clients, senders  int
		rooms             int
		urls              int
		cross             bool
	}{
		{"json one room", "json", "/ws", 20, 5, 1, 1, false},
		{"json two rooms", "json", "/ws", 20, 4, 2, 1, false},
		{"plain", "plain", "/", 20, 5, 1, 1, false},
		{"plain cross-node", "plain", "/", 20, 5, 1, 2, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := startChatServer(t)
			var targets []target
			for range tc.urls {
				tg, err := newTarget("ws://" + srv.addr() + tc.path)
				if err != nil {
					t.Fatal(err)
				}
				targets = append(targets, tg)
			}
			res, err := runFanout(fanoutConfig{
				targets: targets, proto: tc.proto, roomPrefix: "r", clients: tc.clients, rooms: tc.rooms,
				senders: tc.senders, rate: 500, duration: 100 * time.Millisecond, size: 64,
				drain: 5 * time.Second, quiet: 3 * time.Second, connectTimeout: 5 * time.Second,
				concurrency: 8, sources: 4, crossNode: tc.cross,
			})
			if err != nil {
				t.Fatalf("runFanout: %v", err)
			}
			perRoom := int64(tc.clients / tc.rooms)
			if res.Sent != 50 || res.Expected != res.Sent*perRoom {
				t.Fatalf("sent %d expected %d, want 50 and %d", res.Sent, res.Expected, 50*perRoom)
			}
			if res.Loss != 0 || res.Duplicates != 0 || res.OutOfOrder != 0 || res.Foreign != 0 ||
				int64(res.Received) != res.Expected || res.Disconnects != 0 || res.ErrorFrames != 0 {
				t.Fatalf("accounting: %+v (first error %q)", res.deliveryTotals, res.FirstError)
			}
			if res.Latency.Count != res.Expected || res.Latency.Max <= 0 {
				t.Fatalf("latency %+v", res.Latency)
			}
			if _, err := fanoutHTML("test", res); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestIdleInProcess(t *testing.T) {
	srv := startChatServer(t)
	tg, err := newTarget("ws://" + srv.addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	res, err := runIdle(idleConfig{
		targets: []target{tg}, steps: []int{5, 30}, concurrency: 4, sources: 3, perProcess: 1000,
		connectTimeout: 5 * time.Second, hold0: true,
	}, "idle")
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || res.FinalAlive != 30 || len(res.Steps) != 2 || res.Steps[1].Opened != 30 || res.ConnectRate <= 0 {
		t.Fatalf("result %+v", res)
	}
	if _, err := idleHTML("test", res); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	printIdle(&out, res)
	if !strings.Contains(out.String(), "30 alive") {
		t.Fatalf("text report: %s", out.String())
	}
}
