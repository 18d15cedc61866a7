package actors

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"parley/netpoll"
	"parley/relay"
	"parley/relay/relaytest"
)

// waitFor bounds every wait of the actor tests: generous, for a loaded machine
// (a replica's first sync alone waits repl-diskless-sync-delay, 5s by default).
const waitFor = 20 * time.Second

// fakeTransport records frames; it can be made to return ErrQueueFull.
type fakeTransport struct {
	mu     sync.Mutex
	frames []string // payloads of text frames, in order
	code   ws.StatusCode
	reason string
	kicked bool
	closed bool
	full   bool
	max    int // >0: a queue that holds max frames and is never written (a client that stopped reading)
	notify chan struct{}
	sess   *Session // told of a Kick, as netpoll's HandleClose would
}

func newFake() *fakeTransport { return &fakeTransport{notify: make(chan struct{}, 1)} }

func (f *fakeTransport) signal() {
	select {
	case f.notify <- struct{}{}:
	default:
	}
}

func (f *fakeTransport) Send(frame []byte) error {
	defer f.signal()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return netpoll.ErrClosed
	}
	if f.full || f.max > 0 && len(f.frames) >= f.max {
		return netpoll.ErrQueueFull
	}
	h, err := ws.ReadHeader(bytes.NewReader(frame))
	if err != nil || h.OpCode != ws.OpText || !h.Fin {
		panic(fmt.Sprintf("bad frame %v %v", h, err))
	}
	f.frames = append(f.frames, string(frame[len(frame)-int(h.Length):]))
	return nil
}

func (f *fakeTransport) Close(code ws.StatusCode, reason string) {
	f.mu.Lock()
	if !f.closed {
		f.closed, f.code, f.reason = true, code, reason
	}
	f.mu.Unlock()
	f.signal()
}

func (f *fakeTransport) Kick(code ws.StatusCode, reason string) {
	f.mu.Lock()
	first := !f.closed
	if first {
		f.closed, f.kicked, f.code, f.reason = true, true, code, reason
	}
	sess := f.sess
	f.mu.Unlock()
	f.signal()
	if first && sess != nil {
		sess.HandleClose(&netpoll.CloseError{Code: code, Reason: reason})
	}
}

// await waits until cond (called under the lock) holds.
func (f *fakeTransport) await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		f.mu.Lock()
		ok := cond()
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-f.notify:
		case <-deadline:
			f.mu.Lock()
			defer f.mu.Unlock()
			t.Fatalf("timeout waiting for %s; frames: %q", what, f.frames)
		}
	}
}

// client is a test connection: a Session plus its fake transport.
type client struct {
	t      *testing.T
	sess   *Session
	ft     *fakeTransport
	cursor int            // for nextRaw
	typed  map[string]int // per-type cursors for next
}

type testEnv struct {
	sys    *System
	broker *relaytest.Broker // the bus of newEnv: the memory broker, wrapped for fault injection (nil for newEnvOn's own bus)
	bus    relay.Broker
}

func newEnv(t *testing.T, cfg Config, mcfg relay.MemoryConfig) *testEnv {
	t.Helper()
	return newEnvOn(t, cfg, relaytest.Wrap(relay.NewMemory(mcfg)))
}

// newEnvOn starts a system on bus b (shut down in t.Cleanup; closing b is
// the caller's, registered before this call so it runs after).
func newEnvOn(t *testing.T, cfg Config, b relay.Broker) *testEnv {
	t.Helper()
	if cfg.NodeID == "" {
		cfg.NodeID = "n1"
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = time.Hour
	}
	if cfg.MessageRate == 0 {
		// Tests that pipeline hundreds of frames are not about the rate
		// limit (limits_test.go is).
		cfg.MessageRate = 1e9
	}
	cfg.Broker = b
	sys, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sys.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	wrapped, _ := b.(*relaytest.Broker)
	return &testEnv{sys: sys, broker: wrapped, bus: b}
}

func (e *testEnv) connect(t *testing.T, name string, plain bool) *client {
	t.Helper()
	ft := newFake()
	sess, err := e.sys.Connect(ft, ConnInfo{Name: name, Plain: plain})
	ft.mu.Lock()
	ft.sess = sess
	ft.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, sess: sess, ft: ft, typed: make(map[string]int)}
	if !plain {
		if w := c.next("welcome"); w["name"] != name || w["node"] != e.sys.cfg.NodeID || w["session"] != sess.ID() {
			t.Fatalf("welcome %v", w)
		}
	}
	return c
}

func (c *client) send(s string) { c.sess.HandleMessage(ws.OpText, []byte(s)) }

// frame is a decoded JSON frame.
type frame map[string]any

// next returns the next frame of type typ (each type has its own cursor).
func (c *client) next(typ string) frame {
	c.t.Helper()
	var out frame
	c.ft.await(c.t, "frame "+typ, func() bool {
		for c.typed[typ] < len(c.ft.frames) {
			var f frame
			raw := c.ft.frames[c.typed[typ]]
			c.typed[typ]++
			if err := json.Unmarshal([]byte(raw), &f); err != nil {
				continue
			}
			if f["type"] == typ {
				out = f
				return true
			}
		}
		return false
	})
	return out
}

// nextRaw returns the next frame, whatever it is.
func (c *client) nextRaw() string {
	c.t.Helper()
	var out string
	c.ft.await(c.t, "any frame", func() bool {
		if c.cursor < len(c.ft.frames) {
			out = c.ft.frames[c.cursor]
			c.cursor++
			return true
		}
		return false
	})
	return out
}

// join joins room and waits for joined.
func (c *client) join(room string) frame {
	c.t.Helper()
	c.send(fmt.Sprintf(`{"type":"join","room":%q}`, room))
	return c.next("joined")
}

// messages collects the next n message frames' seqs (as uint64) and texts.
func (c *client) messages(n int) (seqs []uint64, texts []string) {
	c.t.Helper()
	for i := 0; i < n; i++ {
		f := c.next("message")
		seqs = append(seqs, uint64(f["seq"].(float64)))
		texts = append(texts, f["text"].(string))
	}
	return seqs, texts
}

func (c *client) closedWith() (ws.StatusCode, bool) {
	c.ft.mu.Lock()
	defer c.ft.mu.Unlock()
	return c.ft.code, c.ft.kicked
}

func (c *client) awaitClosed() {
	c.t.Helper()
	c.ft.await(c.t, "close", func() bool { return c.ft.closed })
}

// eventually polls cond until it holds (for state that has no event).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timeout waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func seqRange(lo, hi uint64) []uint64 {
	var out []uint64
	for s := lo; s <= hi; s++ {
		out = append(out, s)
	}
	return out
}
