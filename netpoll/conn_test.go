package netpoll

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"go.uber.org/goleak"
)

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{name: "zero", cfg: Config{}},
		{name: "pings disabled", cfg: Config{PingInterval: -1}},
		{name: "negative workers", cfg: Config{Workers: -1}, wantErr: true},
		{name: "negative flushers", cfg: Config{Flushers: -1}, wantErr: true},
		{name: "negative flush delay", cfg: Config{FlushDelay: -time.Millisecond}, wantErr: true},
		{name: "negative message size", cfg: Config{MaxMessageSize: -1}, wantErr: true},
		{name: "negative queue bytes", cfg: Config{MaxQueueBytes: -1}, wantErr: true},
		{name: "negative queue frames", cfg: Config{MaxQueueFrames: -1}, wantErr: true},
		{name: "negative close timeout", cfg: Config{CloseTimeout: -1}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.cfg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("New: err %v, wantErr %v", err, tc.wantErr)
			}
			if p != nil {
				if p.cfg.Workers <= 0 || p.cfg.MaxMessageSize != DefaultMaxMessageSize || p.cfg.MaxQueueBytes != DefaultMaxQueueBytes ||
					p.cfg.MaxQueueFrames != DefaultMaxQueueFrames || p.cfg.CloseTimeout != DefaultCloseTimeout || p.log == nil {
					t.Errorf("defaults not applied: %+v", p.cfg)
				}
				p.Close()
			}
		})
	}
}

func TestConnSize(t *testing.T) {
	if size := unsafe.Sizeof(Conn{}); size > 160 {
		t.Fatalf("Conn is %d bytes, want <= 160", size)
	}
}

func TestEcho(t *testing.T) {
	h := newRecorder(true)
	s := startServer(t, Config{Workers: 2}, h)
	cl := dial(t, s, nil)
	c := s.nextConn(t)
	if c.ID() == 0 || c.RemoteAddr().String() != cl.nc.LocalAddr().String() {
		t.Fatalf("ID %d, RemoteAddr %v (client %v)", c.ID(), c.RemoteAddr(), cl.nc.LocalAddr())
	}

	tests := []struct {
		name   string
		frames [][]byte
		op     ws.OpCode
		want   []byte
	}{
		{
			name:   "small text",
			frames: [][]byte{clientFrame(true, ws.OpText, []byte("hi"), maskA)},
			op:     ws.OpText,
			want:   []byte("hi"),
		},
		{
			name:   "126-byte binary",
			frames: [][]byte{clientFrame(true, ws.OpBinary, bytes.Repeat([]byte{9}, 126), maskB)},
			op:     ws.OpBinary,
			want:   bytes.Repeat([]byte{9}, 126),
		},
		{
			name:   "64 KiB text",
			frames: [][]byte{clientFrame(true, ws.OpText, bytes.Repeat([]byte("z"), 64<<10), maskA)},
			op:     ws.OpText,
			want:   bytes.Repeat([]byte("z"), 64<<10),
		},
		{
			name: "fragmented",
			frames: [][]byte{
				clientFrame(false, ws.OpText, []byte("frag"), maskA),
				clientFrame(false, ws.OpContinuation, []byte("men"), maskB),
				clientFrame(true, ws.OpContinuation, []byte("ted"), maskOnes),
			},
			op:   ws.OpText,
			want: []byte("fragmented"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cl.t = t
			for _, f := range tc.frames {
				cl.sendRaw(f)
			}
			got := cl.mustRead(tc.op)
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("echo %q, want %q", trim(got), trim(tc.want))
			}
			if m := h.nextMsg(t); m.c != c || m.op != tc.op {
				t.Fatalf("HandleMessage conn %v op %d", m.c.ID(), m.op)
			}
		})
	}

	t.Run("ping gets pong", func(t *testing.T) {
		cl.t = t
		cl.send(true, ws.OpPing, []byte("are you there"))
		if got := cl.mustRead(ws.OpPong); string(got) != "are you there" {
			t.Fatalf("pong payload %q", got)
		}
	})

	t.Run("peer close", func(t *testing.T) {
		cl.t = t
		cl.send(true, ws.OpClose, closeBody(ws.StatusNormalClosure, "done"))
		code, _, _ := cl.readClose()
		if code != ws.StatusNormalClosure {
			t.Fatalf("echoed close code %d", code)
		}
		cl.expectEOF()
		if e := h.nextClose(t); e.c != c || e.err != nil {
			t.Fatalf("HandleClose err %v, want nil", e.err)
		}
		eventually(t, testTimeout, func() error {
			if n := s.p.Len(); n != 0 {
				return fmt.Errorf("Len %d", n)
			}
			return nil
		})
	})
}

func TestPeerCloseCodes(t *testing.T) {
	tests := []struct {
		name     string
		payload  []byte
		wantEcho []byte // echoed close payload
		wantErr  ws.StatusCode
	}{
		{name: "1000", payload: closeBody(1000, "bye"), wantEcho: closeBody(1000, "")},
		{name: "1001", payload: closeBody(1001, ""), wantEcho: closeBody(1001, "")},
		{name: "no status", payload: nil, wantEcho: []byte{}},
		{name: "4001", payload: closeBody(4001, "custom"), wantEcho: closeBody(4001, ""), wantErr: 4001},
	}
	h := newRecorder(false)
	s := startServer(t, Config{}, h)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cl := dial(t, s, nil)
			s.nextConn(t)
			cl.send(true, ws.OpClose, tc.payload)
			got := cl.mustRead(ws.OpClose)
			if !bytes.Equal(got, tc.wantEcho) {
				t.Fatalf("echo %v, want %v", got, tc.wantEcho)
			}
			cl.expectEOF()
			e := h.nextClose(t)
			if tc.wantErr == 0 && e.err != nil {
				t.Fatalf("HandleClose err %v, want nil", e.err)
			}
			if tc.wantErr != 0 {
				if err := wantCloseCode(e.err, tc.wantErr); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestUpgradeLeftoverIsParsedFirst(t *testing.T) {
	h := newRecorder(true)
	s := startServer(t, Config{}, h)
	extra := cat(
		clientFrame(true, ws.OpText, []byte("early"), maskA),
		clientFrame(false, ws.OpText, []byte("par"), maskB),
	)
	cl := dial(t, s, extra)
	s.nextConn(t)
	cl.send(true, ws.OpContinuation, []byte("tial"))
	if got := cl.mustRead(ws.OpText); string(got) != "early" {
		t.Fatalf("first echo %q", got)
	}
	if got := cl.mustRead(ws.OpText); string(got) != "partial" {
		t.Fatalf("second echo %q", got)
	}
}

func TestBadFramesGetCloseCode(t *testing.T) {
	h := newRecorder(false)
	s := startServer(t, Config{}, h)
	for _, tc := range assemblerCases {
		if tc.code == 0 || tc.onlyUT {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			cl := dial(t, s, nil)
			s.nextConn(t)
			cl.sendRaw(tc.input)
			code, _, _ := cl.readClose()
			if code != tc.code {
				t.Fatalf("close code %d, want %d", code, tc.code)
			}
			// The server shut its write side after the close frame and waits
			// for our EOF; we close after reading its EOF.
			cl.expectEOF()
			cl.nc.Close()
			e := h.nextClose(t)
			if err := wantCloseCode(e.err, tc.code); err != nil {
				t.Fatal(err)
			}
			for range tc.want {
				h.nextMsg(t)
			}
		})
	}
}

func TestPartialFrameStallsNothing(t *testing.T) {
	if perConnGoroutines {
		t.Skip("goroutine-per-conn fallback")
	}
	h := newRecorder(true)
	s := startServer(t, Config{Workers: 1}, h)
	// Warm up: one conn through its whole life so pools and runtime
	// goroutines exist before counting.
	warm := dial(t, s, nil)
	s.nextConn(t)
	warm.send(true, ws.OpText, []byte("warm"))
	warm.mustRead(ws.OpText)

	before := runtime.NumGoroutine()
	staller := dial(t, s, nil)
	s.nextConn(t)
	frame := clientFrame(true, ws.OpText, bytes.Repeat([]byte("s"), 1000), maskA)
	staller.sendRaw(frame[:500])

	other := dial(t, s, nil)
	s.nextConn(t)
	for i := range 20 {
		msg := []byte(fmt.Sprintf("msg %d", i))
		other.send(true, ws.OpText, msg)
		if got := other.mustRead(ws.OpText); !bytes.Equal(got, msg) {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Fatalf("goroutines %d -> %d with a stalled partial frame", before, after)
	}
	staller.sendRaw(frame[500:])
	if got := staller.mustRead(ws.OpText); !bytes.Equal(got, bytes.Repeat([]byte("s"), 1000)) {
		t.Fatal("staller's echo differs")
	}
}

func TestIdleConnsAddNoGoroutines(t *testing.T) {
	if perConnGoroutines {
		t.Skip("goroutine-per-conn fallback")
	}
	const n = 1000
	h := newRecorder(false)
	s := startServer(t, Config{}, h)
	warm := dial(t, s, nil)
	s.nextConn(t)
	warm.send(true, ws.OpPing, nil)
	warm.mustRead(ws.OpPong)

	before := runtime.NumGoroutine()
	for range n {
		dial(t, s, nil)
		s.nextConn(t)
	}
	eventually(t, testTimeout, func() error {
		if l := s.p.Len(); l != n+1 {
			return fmt.Errorf("Len %d, want %d", l, n+1)
		}
		return nil
	})
	if after := runtime.NumGoroutine(); after > before+3 {
		t.Fatalf("goroutines %d -> %d after %d idle conns", before, after, n)
	}
	count := 0
	s.p.Range(func(c *Conn) bool {
		count++
		return true
	})
	if count != n+1 {
		t.Fatalf("Range saw %d conns, want %d", count, n+1)
	}
}

func TestQueueCaps(t *testing.T) {
	tests := []struct {
		name      string
		cfg       Config
		frameSize int
		wantOK    int // Enqueue calls that succeed before ErrQueueFull
	}{
		{name: "frame cap", cfg: Config{MaxQueueFrames: 4}, frameSize: 10, wantOK: 4},
		{name: "byte cap", cfg: Config{MaxQueueBytes: 1000}, frameSize: 300, wantOK: 3},
		{name: "frame over byte cap", cfg: Config{MaxQueueBytes: 100}, frameSize: 200, wantOK: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newRecorder(false)
			s := startServer(t, tc.cfg, h)
			cl := dial(t, s, nil)
			c := s.nextConn(t)
			frame := AppendFrame(nil, ws.OpBinary, make([]byte, tc.frameSize-2))
			for i := range tc.wantOK {
				if err := c.Enqueue(frame); err != nil {
					t.Fatalf("Enqueue %d: %v", i, err)
				}
			}
			if err := c.Enqueue(frame); !errors.Is(err, ErrQueueFull) {
				t.Fatalf("Enqueue over cap: %v, want ErrQueueFull", err)
			}
			c.Flush()
			for range tc.wantOK {
				cl.mustRead(ws.OpBinary)
			}
			if tc.wantOK > 0 {
				// The fallback's writer advances the queue after the client
				// may have read the bytes.
				eventually(t, testTimeout, func() error { return c.Enqueue(frame) })
			}
		})
	}
}

func TestSlowConsumerKick(t *testing.T) {
	h := newRecorder(false)
	small := func(tc *net.TCPConn) { tc.SetWriteBuffer(8 << 10) }
	s := startServerTuned(t, Config{MaxQueueBytes: 64 << 10}, h, small)
	cl := dial(t, s, nil)
	c := s.nextConn(t)

	frame := AppendFrame(nil, ws.OpBinary, make([]byte, 4<<10))
	full, written := false, 0
	start := time.Now()
	for i := 0; i < 100_000 && !full; i++ {
		err := c.Write(frame)
		switch {
		case errors.Is(err, ErrQueueFull):
			full = true
		case err != nil:
			t.Fatalf("Write %d: %v", i, err)
		default:
			written++
		}
	}
	if !full {
		t.Fatal("queue never reported full")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("writes to a slow consumer took %v", d)
	}
	c.Kick(ws.StatusPolicyViolation, "slow consumer")
	if err := c.Enqueue(frame); !errors.Is(err, ErrClosed) {
		t.Fatalf("Enqueue after Kick: %v, want ErrClosed", err)
	}
	cl.nc.SetDeadline(time.Now().Add(testTimeout))
	code, reason, data := cl.readClose()
	if code != ws.StatusPolicyViolation || reason != "slow consumer" {
		t.Fatalf("close %d %q", code, reason)
	}
	if data >= written {
		t.Fatalf("client got all %d frames: Kick dropped nothing", written)
	}
	cl.send(true, ws.OpClose, closeBody(ws.StatusPolicyViolation, ""))
	e := h.nextClose(t)
	if err := wantCloseCode(e.err, ws.StatusPolicyViolation); err != nil || !contains(e.err, "kicked") {
		t.Fatalf("HandleClose err %v", e.err)
	}
}

func TestCloseAfterQueuedFrames(t *testing.T) {
	h := newRecorder(false)
	s := startServer(t, Config{}, h)
	cl := dial(t, s, nil)
	c := s.nextConn(t)
	for i := range 10 {
		if err := c.Enqueue(TextFrame([]byte(fmt.Sprint(i)))); err != nil {
			t.Fatal(err)
		}
	}
	c.Close(ws.StatusGoingAway, "bye")
	if err := c.Write(TextFrame([]byte("late"))); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v, want ErrClosed", err)
	}
	for i := range 10 {
		if got := cl.mustRead(ws.OpText); string(got) != fmt.Sprint(i) {
			t.Fatalf("frame %d = %q", i, got)
		}
	}
	code, reason, _ := cl.readClose()
	if code != ws.StatusGoingAway || reason != "bye" {
		t.Fatalf("close %d %q", code, reason)
	}
	cl.send(true, ws.OpClose, closeBody(ws.StatusGoingAway, ""))
	cl.expectEOF()
	if e := h.nextClose(t); e.err != nil {
		t.Fatalf("HandleClose err %v, want nil", e.err)
	}
}

func TestCloseTimeout(t *testing.T) {
	h := newRecorder(false)
	s := startServer(t, Config{CloseTimeout: 100 * time.Millisecond}, h)
	cl := dial(t, s, nil)
	c := s.nextConn(t)
	c.Close(ws.StatusNormalClosure, "")
	if code, _, _ := cl.readClose(); code != ws.StatusNormalClosure {
		t.Fatalf("close code %d", code)
	}
	// No reply: the server gives up after CloseTimeout.
	if e := h.nextClose(t); !errors.Is(e.err, ErrCloseTimeout) {
		t.Fatalf("HandleClose err %v, want ErrCloseTimeout", e.err)
	}
	cl.expectEOF()
}

func TestAbort(t *testing.T) {
	h := newRecorder(false)
	s := startServer(t, Config{}, h)
	cl := dial(t, s, nil)
	c := s.nextConn(t)
	boom := errors.New("boom")
	c.Abort(boom)
	if e := h.nextClose(t); !errors.Is(e.err, boom) {
		t.Fatalf("HandleClose err %v, want boom", e.err)
	}
	cl.expectEOF()
	c.Abort(nil) // no second HandleClose
	if err := c.Write(TextFrame(nil)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Abort: %v", err)
	}
	select {
	case e := <-h.closes:
		t.Fatalf("second HandleClose: %v", e.err)
	default:
	}
}

func TestPeerEOF(t *testing.T) {
	h := newRecorder(false)
	s := startServer(t, Config{}, h)
	cl := dial(t, s, nil)
	s.nextConn(t)
	cl.sendRaw(clientFrame(true, ws.OpText, []byte("cut"), maskA)[:5])
	cl.nc.Close()
	if e := h.nextClose(t); e.err == nil || !contains(e.err, "without a close frame") {
		t.Fatalf("HandleClose err %v", e.err)
	}
}

func TestPingSweeper(t *testing.T) {
	t.Run("silent peer is closed", func(t *testing.T) {
		h := newRecorder(false)
		s := startServer(t, Config{PingInterval: 50 * time.Millisecond}, h)
		cl := dial(t, s, nil)
		c := s.nextConn(t)
		cl.mustRead(ws.OpPing)
		code, reason, _ := cl.readClose()
		if code != ws.StatusGoingAway || reason != "ping timeout" {
			t.Fatalf("close %d %q", code, reason)
		}
		e := h.nextClose(t)
		if e.c != c || !errors.Is(e.err, ErrPingTimeout) {
			t.Fatalf("HandleClose err %v, want ErrPingTimeout", e.err)
		}
		cl.expectEOF()
	})

	t.Run("answering peer stays", func(t *testing.T) {
		// A longer interval: the test goroutine must answer each ping
		// within it even on a loaded machine.
		h := newRecorder(false)
		s := startServer(t, Config{PingInterval: 150 * time.Millisecond}, h)
		cl := dial(t, s, nil)
		s.nextConn(t)
		for range 3 {
			p := cl.mustRead(ws.OpPing)
			cl.send(true, ws.OpPong, p)
		}
		select {
		case e := <-h.closes:
			t.Fatalf("answering conn closed: %v", e.err)
		default:
		}
		// Then it goes silent.
		code, _, _ := cl.readClose()
		if code != ws.StatusGoingAway {
			t.Fatalf("close code %d", code)
		}
		if e := h.nextClose(t); !errors.Is(e.err, ErrPingTimeout) {
			t.Fatalf("HandleClose err %v", e.err)
		}
	})
}

func TestPollerCloseFinishesEverything(t *testing.T) {
	const n = 20
	ignore := goleak.IgnoreCurrent()
	h := newRecorder(false)
	p, err := New(Config{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &server{p: p, ln: ln, h: h, conns: make(chan *Conn, n)}
	s.wg.Add(1)
	go s.accept(t)
	var clients []*client
	for range n {
		clients = append(clients, dial(t, s, nil))
		s.nextConn(t)
	}
	clients[0].sendRaw(clientFrame(true, ws.OpText, []byte("never finished"), maskA)[:9])
	notStarted, err := p.Add(&net.TCPConn{}, nil)
	if !perConnGoroutines && (err == nil || notStarted != nil) {
		// A zero TCPConn has no socket; Add must refuse it.
		t.Fatalf("Add of a socketless conn: %v", err)
	}
	ln.Close()
	s.wg.Wait()

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for range n {
		if e := h.nextClose(t); !errors.Is(e.err, ErrClosed) {
			t.Fatalf("HandleClose err %v, want ErrClosed", e.err)
		}
	}
	if l := p.Len(); l != 0 {
		t.Fatalf("Len %d after Close", l)
	}
	if _, err := p.Add(clients[0].nc, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
	for _, cl := range clients {
		cl.expectEOF()
	}
	goleak.VerifyNone(t, ignore)
}

// writeMethods are the two ways to queue and write a frame: Write flushes on
// the caller's goroutine, Send leaves it to a flusher.
var writeMethods = []struct {
	name  string
	write func(c *Conn, frame []byte) error
}{
	{"Write", (*Conn).Write},
	{"Send", (*Conn).Send},
}

func TestSlowReaderGetsEverythingViaEPOLLOUT(t *testing.T) {
	for _, m := range writeMethods {
		t.Run(m.name, func(t *testing.T) {
			const frames = 300
			h := newRecorder(false)
			small := func(tc *net.TCPConn) { tc.SetWriteBuffer(8 << 10) }
			s := startServerTuned(t, Config{MaxQueueBytes: 4 << 20, MaxQueueFrames: 4096}, h, small)
			cl := dial(t, s, nil)
			c := s.nextConn(t)
			payload := bytes.Repeat([]byte("w"), 4<<10)
			for i := range frames {
				p := append([]byte(fmt.Sprintf("%04d", i)), payload...)
				if err := m.write(c, AppendFrame(nil, ws.OpBinary, p)); err != nil {
					t.Fatalf("%s %d: %v", m.name, i, err)
				}
			}
			// Nothing calls Flush again: the rest must go out on EPOLLOUT.
			for i := range frames {
				got := cl.mustRead(ws.OpBinary)
				if want := fmt.Sprintf("%04d", i); string(got[:4]) != want || len(got) != 4+len(payload) {
					t.Fatalf("frame %d starts %q (len %d)", i, got[:4], len(got))
				}
			}
		})
	}
}

func TestConcurrentWritersDoNotInterleave(t *testing.T) {
	for _, m := range writeMethods {
		t.Run(m.name, func(t *testing.T) {
			const writers, each = 4, 200
			h := newRecorder(false)
			s := startServer(t, Config{MaxQueueFrames: writers * each}, h)
			cl := dial(t, s, nil)
			c := s.nextConn(t)
			errs := make(chan error, writers)
			for w := range writers {
				go func() {
					for i := range each {
						p := fmt.Appendf(nil, "%d:%04d:%s", w, i, bytes.Repeat([]byte{'a' + byte(w)}, 100*w))
						if err := m.write(c, AppendFrame(nil, ws.OpText, p)); err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
			}
			next := make([]int, writers)
			for range writers * each {
				got := cl.mustRead(ws.OpText)
				var w, i int
				if _, err := fmt.Sscanf(string(got[:6]), "%d:%04d", &w, &i); err != nil {
					t.Fatalf("frame %q: %v", trim(got), err)
				}
				if i != next[w] || len(got) != 7+100*w {
					t.Fatalf("writer %d frame %d (len %d), want frame %d", w, i, len(got), next[w])
				}
				next[w]++
			}
			for range writers {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestSendWithFlushDelay: with a batching window every frame still arrives,
// in order.
func TestSendWithFlushDelay(t *testing.T) {
	h := newRecorder(false)
	s := startServer(t, Config{FlushDelay: 20 * time.Millisecond}, h)
	cl := dial(t, s, nil)
	c := s.nextConn(t)
	const frames = 100
	for i := range frames {
		if err := c.Send(AppendFrame(nil, ws.OpText, fmt.Appendf(nil, "%03d", i))); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	for i := range frames {
		if got, want := string(cl.mustRead(ws.OpText)), fmt.Sprintf("%03d", i); got != want {
			t.Fatalf("frame %d is %q, want %q", i, got, want)
		}
	}
}
