package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func startTestFloor(t *testing.T) *floorServer {
	t.Helper()
	f, err := startFloor("127.0.0.1:0")
	if err != nil {
		t.Fatalf("startFloor: %v", err)
	}
	t.Cleanup(func() { f.close() })
	return f
}

// TestFloorEveryClientEveryFrameInOrder: clients send concurrently; every
// client receives every frame, all clients in the same order, and each
// sender's frames in the order sent.
func TestFloorEveryClientEveryFrameInOrder(t *testing.T) {
	const clients, perClient = 8, 60
	f := startTestFloor(t)
	tg, err := newTarget("ws://" + f.addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		frames []string
		err    error
	}
	results := make([]got, clients)
	conns := make([]*fanClient, clients)
	greeted := make([]chan struct{}, clients)
	var wg sync.WaitGroup
	for i := range clients {
		nc, pre, err := dialWS(tg, fmt.Sprintf("c%d", i), sourceIP(i, 4), 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns[i] = &fanClient{id: i, nc: nc}
		greeted[i] = make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i].frames, results[i].err = readFrames(nc, pre, clients*perClient, greeted[i])
		}()
	}
	for i := range clients {
		select {
		case <-greeted[i]:
		case <-time.After(10 * time.Second):
			t.Fatalf("client %d was never greeted", i)
		}
	}
	var swg sync.WaitGroup
	for i, c := range conns {
		swg.Add(1)
		go func() {
			defer swg.Done()
			for k := range perClient {
				if err := c.write(ws.OpText, []byte(fmt.Sprintf("%d-%03d", i, k))); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
		}()
	}
	swg.Wait()
	wg.Wait()
	for _, c := range conns {
		_ = c.nc.Close()
	}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("client %d: %v after %d frames", i, r.err, len(r.frames))
		}
		if len(r.frames) != clients*perClient {
			t.Fatalf("client %d got %d frames, want %d", i, len(r.frames), clients*perClient)
		}
		if i > 0 && strings.Join(r.frames, ",") != strings.Join(results[0].frames, ",") {
			t.Fatalf("client %d saw a different order than client 0", i)
		}
	}
	next := make([]int, clients)
	for _, fr := range results[0].frames {
		var s, k int
		if _, err := fmt.Sscanf(fr, "%d-%d", &s, &k); err != nil {
			t.Fatalf("frame %q: %v", fr, err)
		}
		if k != next[s] {
			t.Fatalf("sender %d: got frame %d, want %d (sender order broken)", s, k, next[s])
		}
		next[s]++
	}
	st := f.close()
	if st.frames != clients*perClient {
		t.Fatalf("floor encoded %d frames, want %d (each once)", st.frames, clients*perClient)
	}
	if st.writes > st.passes*clients {
		t.Fatalf("floor made %d writes in %d passes to %d clients: more than one write per socket per pass", st.writes, st.passes, clients)
	}
}

// readFrames reads text frames after the greeting until it has want.
func readFrames(nc io.Reader, pre []byte, want int, greeted chan struct{}) ([]string, error) {
	var (
		p      frameParser
		frames []string
		hello  bool
	)
	handle := func(op ws.OpCode, b []byte) error {
		if op != ws.OpText {
			return fmt.Errorf("unexpected opcode %d", op)
		}
		if !hello {
			if string(b) != floorGreeting {
				return fmt.Errorf("first frame %q, want the greeting", b)
			}
			hello = true
			close(greeted)
			return nil
		}
		frames = append(frames, string(b))
		return nil
	}
	if err := p.feed(pre, handle); err != nil {
		return frames, err
	}
	buf := make([]byte, 4096)
	deadline := time.Now().Add(20 * time.Second)
	for len(frames) < want {
		if time.Now().After(deadline) {
			return frames, fmt.Errorf("timed out")
		}
		n, err := nc.Read(buf)
		if n > 0 {
			if ferr := p.feed(buf[:n], handle); ferr != nil {
				return frames, ferr
			}
		}
		if err != nil {
			return frames, err
		}
	}
	return frames, nil
}

// TestFloorUnderTheBench: the bench's own plain fan-out against the floor
// loses, duplicates and reorders nothing.
func TestFloorUnderTheBench(t *testing.T) {
	f := startTestFloor(t)
	tg, err := newTarget("ws://" + f.addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	res, err := runFanout(fanoutConfig{
		targets: []target{tg}, proto: "plain", clients: 30, rooms: 1, senders: 6, rate: 600,
		duration: 100 * time.Millisecond, size: 64, drain: 5 * time.Second, quiet: 3 * time.Second,
		connectTimeout: 5 * time.Second, concurrency: 8, sources: 4,
	})
	if err != nil {
		t.Fatalf("runFanout: %v", err)
	}
	if res.Sent != 60 || res.Expected != 60*30 || res.Loss != 0 || res.Duplicates != 0 || res.OutOfOrder != 0 || res.Disconnects != 0 {
		t.Fatalf("sent %d expected %d loss %d dup %d ooo %d disconnects %d (%s)",
			res.Sent, res.Expected, res.Loss, res.Duplicates, res.OutOfOrder, res.Disconnects, res.FirstError)
	}
	if st := f.close(); st.frames != res.Sent {
		t.Fatalf("floor encoded %d frames, the bench sent %d", st.frames, res.Sent)
	}
}

func TestFloorListensOnLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "10.1.2.3:0", "example.com:80", "[::]:0", "127.0.0.1"} {
		if f, err := startFloor(addr); err == nil {
			f.close()
			t.Errorf("startFloor(%q) listened, want a refusal", addr)
		}
	}
	err := run([]string{"floor", "--listen", "192.168.1.1:0"}, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("floor on 192.168.1.1: %v, want a loopback refusal", err)
	}
	if err := run([]string{"floor"}, nil, io.Discard); err == nil {
		t.Fatal("floor without --listen: no error")
	}
}

// TestCollectBatch: everything queued goes into one batch, in order, until
// the byte cap.
func TestCollectBatch(t *testing.T) {
	tests := []struct {
		name      string
		queued    []string
		max       int
		wantN     int
		wantAfter int // left on the channel
	}{
		{"nothing queued", nil, 1 << 20, 1, 0},
		{"all queued", []string{"b", "c", "d"}, 1 << 20, 4, 0},
		{"cap", []string{"b", "c", "d"}, 6, 2, 2}, // 3 bytes per frame: 'a', then 'b' reaches 6
		{"long frame", []string{strings.Repeat("x", 300)}, 1 << 20, 2, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := make(chan []byte, len(tc.queued)+1)
			for _, q := range tc.queued {
				in <- []byte(q)
			}
			batch, n := collectBatch([]byte("junk")[:0], []byte("a"), in, tc.max)
			if n != tc.wantN || len(in) != tc.wantAfter {
				t.Fatalf("n %d, left %d; want %d, %d", n, len(in), tc.wantN, tc.wantAfter)
			}
			var p frameParser
			var got []string
			if err := p.feed(batch, func(op ws.OpCode, b []byte) error {
				got = append(got, string(b))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			want := append([]string{"a"}, tc.queued...)[:n]
			if strings.Join(got, "|") != strings.Join(want, "|") || len(p.buf) != 0 {
				t.Fatalf("batch frames %q, want %q", got, want)
			}
		})
	}
}

func TestAppendServerFrameLengths(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536, 200000} {
		payload := bytes.Repeat([]byte("z"), n)
		b := appendServerFrame(nil, ws.OpText, payload)
		h, err := ws.ReadHeader(bytes.NewReader(b))
		if err != nil || h.Length != int64(n) || h.Masked || !h.Fin || h.OpCode != ws.OpText {
			t.Fatalf("len %d: header %+v, err %v", n, h, err)
		}
		if !bytes.Equal(b[len(b)-n:], payload) {
			t.Fatalf("len %d: payload differs", n)
		}
	}
}
