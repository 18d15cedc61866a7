package node

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// startNode starts a node on a free 127.0.0.1 port with cfg (Listen and
// Admin are overridden) and shuts it down when the test ends.
func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin = "127.0.0.1:0"
	if cfg.NodeID == "" {
		cfg.NodeID = "t1"
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 3 * time.Second
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("node.New: %v", err)
	}
	if err := n.Start(); err != nil {
		t.Fatalf("node.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return n
}

// client is a test WebSocket client: one reader goroutine turns frames into
// events on a channel, so tests wait for events instead of sleeping.
type client struct {
	t      testing.TB
	conn   net.Conn
	events chan event
	done   chan struct{}
}

// event is one thing the client observed: a text frame, or the close.
type event struct {
	text        string
	closed      bool
	closeCode   ws.StatusCode
	closeReason string
	err         error
}

// dial connects a client to path on node n.
func dial(t testing.TB, n *Node, path string) *client {
	t.Helper()
	return dialURL(t, "ws://"+n.Addr()+path)
}

// dialURL connects a client to a WebSocket URL.
func dialURL(t testing.TB, url string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c := &client{t: t, conn: conn, events: make(chan event, 4096), done: make(chan struct{})}
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	go c.readLoop(r)
	t.Cleanup(func() { hangUp(c) })
	return c
}

// hangUp closes a client's connection and waits for its reader, discarding
// the events nobody read: a reader blocked on a full channel must not hold
// a test's cleanup forever.
func hangUp(c *client) {
	c.conn.Close()
	for {
		select {
		case <-c.events:
		case <-c.done:
			return
		}
	}
}

func (c *client) readLoop(r io.Reader) {
	defer close(c.done)
	for {
		h, err := ws.ReadHeader(r)
		if err != nil {
			c.events <- event{closed: true, closeCode: ws.StatusAbnormalClosure, err: err}
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(r, payload); err != nil {
			c.events <- event{closed: true, closeCode: ws.StatusAbnormalClosure, err: err}
			return
		}
		switch h.OpCode {
		case ws.OpText, ws.OpBinary:
			c.events <- event{text: string(payload)}
		case ws.OpPing:
			// answered by writeFrame from the test goroutine would race; the
			// tests keep ping intervals long unless they test pings.
		case ws.OpClose:
			code := ws.StatusNoStatusRcvd
			if len(payload) >= 2 {
				code = ws.StatusCode(binary.BigEndian.Uint16(payload))
			}
			// Answer like a browser: echo the close, then hang up.
			c.conn.Write(frame(0x88, payload[:min(len(payload), 2)]))
			c.conn.Close()
			var reason string
			if len(payload) > 2 {
				reason = string(payload[2:])
			}
			c.events <- event{closed: true, closeCode: code, closeReason: reason}
			return
		}
	}
}

// next waits for the next event.
func (c *client) next() event {
	c.t.Helper()
	select {
	case e := <-c.events:
		return e
	case <-time.After(5 * time.Second):
		c.t.Fatalf("no frame within 5s")
		return event{}
	}
}

// nextJSON waits for the next frame and decodes it.
func (c *client) nextJSON() map[string]any {
	c.t.Helper()
	e := c.next()
	if e.closed {
		c.t.Fatalf("connection closed (code %d, %v) while waiting for a frame", e.closeCode, e.err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(e.text), &m); err != nil {
		c.t.Fatalf("frame %q is not JSON: %v", e.text, err)
	}
	return m
}

// await skips frames until one of type typ arrives.
func (c *client) await(typ string) map[string]any {
	c.t.Helper()
	for i := 0; i < 1000; i++ {
		m := c.nextJSON()
		if m["type"] == typ {
			return m
		}
	}
	c.t.Fatalf("no %q frame among 1000", typ)
	return nil
}

// awaitClose skips frames until the close arrives and returns its code.
func (c *client) awaitClose() ws.StatusCode {
	c.t.Helper()
	for i := 0; i < 10000; i++ {
		if e := c.next(); e.closed {
			return e.closeCode
		}
	}
	c.t.Fatalf("no close among 10000 frames")
	return 0
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendText(string(b))
}

func (c *client) sendText(s string) {
	c.t.Helper()
	if err := wsutil.WriteClientText(c.conn, []byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// writeRaw writes bytes as they are: for malformed frames.
func (c *client) writeRaw(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write raw: %v", err)
	}
}

// frame builds a masked client frame with the given first byte (FIN, RSV,
// opcode) and payload.
func frame(b0 byte, payload []byte) []byte {
	return frameLen(b0, payload, int64(len(payload)))
}

func frameLen(b0 byte, payload []byte, declared int64) []byte {
	var out []byte
	out = append(out, b0)
	switch {
	case declared <= 125:
		out = append(out, 0x80|byte(declared))
	case declared <= 0xffff:
		out = append(out, 0x80|126, byte(declared>>8), byte(declared))
	default:
		out = append(out, 0x80|127)
		out = binary.BigEndian.AppendUint64(out, uint64(declared))
	}
	mask := [4]byte{1, 2, 3, 4}
	out = append(out, mask[:]...)
	p := append([]byte(nil), payload...)
	ws.Cipher(p, mask, 0)
	return append(out, p...)
}

// joinRoom joins room and returns the joined frame.
func (c *client) joinRoom(room string) map[string]any {
	c.t.Helper()
	c.send(map[string]any{"type": "join", "room": room})
	return c.await("joined")
}

// httpGet fetches path from addr and returns the status and body.
func httpGet(t testing.TB, addr, path string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read status: %v", err)
	}
	var code int
	fmt.Sscanf(strings.TrimPrefix(line, "HTTP/1.1 "), "%d", &code)
	rest, _ := io.ReadAll(br)
	body := string(rest)
	if i := strings.Index(body, "\r\n\r\n"); i >= 0 {
		body = body[i+4:]
	}
	return code, body
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
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")
