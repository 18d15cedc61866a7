package conformance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/goleak"

	"parley/node"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// maxMessage is the suite node's --max-message-size.
const maxMessage = 256 << 10

const timeout = 10 * time.Second

func startNode(t *testing.T) *node.Node {
	t.Helper()
	n, err := node.New(node.Config{Listen: "127.0.0.1:0", Admin: "-", NodeID: "conf",
		MaxMessageSize: maxMessage, CloseTimeout: 2 * time.Second, PingInterval: -1,
		MaxConnsPerAddr: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
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

// conn is one raw client connection to an endpoint.
type conn struct {
	t     *testing.T
	nc    net.Conn
	br    *bufio.Reader
	plain bool
}

// endpoint is "/" (plain) or "/ws" (JSON).
func dial(t *testing.T, n *node.Node, endpoint string) *conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", n.Addr(), timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(timeout))
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", endpoint, n.Addr())
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("upgrade: %d %v", resp.StatusCode, resp.Header)
	}
	c := &conn{t: t, nc: nc, br: br, plain: endpoint == "/"}
	if c.plain {
		if op, p := c.read(); op != ws.OpText || !strings.HasPrefix(string(p), "connected to node") {
			t.Fatalf("first plain frame %d %q", op, p)
		}
	} else {
		c.expectJSON("welcome")
		c.sendFrame(frame(true, ws.OpText, []byte(`{"type":"join","room":"conf"}`)))
		c.expectJSON("joined")
	}
	return c
}

// frame builds one masked client frame.
func frame(fin bool, op ws.OpCode, payload []byte) []byte {
	return rawFrame(fin, 0, op, payload, true)
}

// rawFrame builds a frame with the given RSV bits (0-7) and masking.
func rawFrame(fin bool, rsv byte, op ws.OpCode, payload []byte, masked bool) []byte {
	b0 := byte(op) | rsv<<4
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	mbit := byte(0)
	if masked {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n <= 125:
		out = append(out, mbit|byte(n))
	case n <= 0xffff:
		out = append(out, mbit|126)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, mbit|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	p := append([]byte(nil), payload...)
	if masked {
		mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
		out = append(out, mask[:]...)
		ws.Cipher(p, mask, 0)
	}
	return append(out, p...)
}

func (c *conn) sendFrame(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// sendChopped writes b in pieces of size k, each its own write.
func (c *conn) sendChopped(b []byte, k int) {
	c.t.Helper()
	for len(b) > 0 {
		n := min(k, len(b))
		c.sendFrame(b[:n])
		b = b[n:]
	}
}

// read reads one server frame; server frames must be unmasked, with no
// RSV bits.
func (c *conn) read() (ws.OpCode, []byte) {
	c.t.Helper()
	h, err := ws.ReadHeader(c.br)
	if err != nil {
		c.t.Fatalf("read header: %v", err)
	}
	if h.Masked || h.Rsv != 0 {
		c.t.Fatalf("server frame masked %v rsv %d", h.Masked, h.Rsv)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("read payload: %v", err)
	}
	if !h.Fin {
		c.t.Fatalf("server sent a fragment")
	}
	return h.OpCode, p
}

// expectJSON reads frames until a JSON frame of type typ.
func (c *conn) expectJSON(typ string) map[string]any {
	c.t.Helper()
	for range 100 {
		op, p := c.read()
		if op != ws.OpText {
			c.t.Fatalf("waiting for %q: got op %d %q", typ, op, p)
		}
		var m map[string]any
		if err := json.Unmarshal(p, &m); err != nil {
			c.t.Fatalf("frame %q: %v", p, err)
		}
		if m["type"] == typ {
			return m
		}
	}
	c.t.Fatalf("no %q frame", typ)
	return nil
}

// message wraps text as this endpoint's message: raw on /, a send frame
// on /ws.
func (c *conn) message(text []byte) []byte {
	if c.plain {
		return text
	}
	b, _ := json.Marshal(map[string]string{"type": "send", "room": "conf", "text": string(text)})
	return b
}

// expectEcho waits for text to come back: as itself on /, as a message
// frame on /ws.
func (c *conn) expectEcho(text []byte) {
	c.t.Helper()
	if c.plain {
		op, p := c.read()
		if op != ws.OpText || !bytes.Equal(p, text) {
			c.t.Fatalf("echo: op %d %q, want text %q", op, trunc(p), trunc(text))
		}
		return
	}
	m := c.expectJSON("message")
	if m["text"] != string(text) {
		c.t.Fatalf("message text %q, want %q", trunc([]byte(fmt.Sprint(m["text"]))), trunc(text))
	}
}

// expectClose reads (skipping data frames) until a close frame, checks its
// code, and checks the server then closes the TCP connection (RFC 6455
// §7.1.1) after we answer.
func (c *conn) expectClose(want ws.StatusCode) {
	c.t.Helper()
	for range 1000 {
		op, p := c.read()
		if op != ws.OpClose {
			continue
		}
		code := ws.StatusNoStatusRcvd
		if len(p) >= 2 {
			code = ws.StatusCode(binary.BigEndian.Uint16(p))
		}
		if code != want {
			c.t.Fatalf("close code %d (%q), want %d", code, p[min(2, len(p)):], want)
		}
		c.nc.Write(frame(true, ws.OpClose, p[:min(2, len(p))]))
		c.expectEOF()
		return
	}
	c.t.Fatal("no close frame")
}

// expectEOF checks the server closes the TCP connection.
func (c *conn) expectEOF() {
	c.t.Helper()
	_, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("server did not close the TCP connection")
	}
}

func trunc(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}

// forEndpoint runs f against / and /ws on one node.
func forEndpoint(t *testing.T, f func(t *testing.T, n *node.Node, ep string)) {
	n := startNode(t)
	for _, ep := range []string{"/", "/ws"} {
		t.Run(strings.TrimPrefix(ep, "/")+"endpoint", func(t *testing.T) { f(t, n, ep) })
	}
}

// Group 1: framing — text messages of every length encoding, sent whole,
// and byte by byte (the node must assemble frames from any split).
func TestFraming(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		for _, size := range []int{1, 125, 126, 127, 128, 65535, 65536, 200 << 10} {
			text := bytes.Repeat([]byte("*"), size)
			c := dial(t, n, ep)
			c.sendFrame(frame(true, ws.OpText, c.message(text)))
			c.expectEcho(text)
			if size <= 65536 {
				c.sendChopped(frame(true, ws.OpText, c.message(text)), 1+size/64)
				c.expectEcho(text)
			}
		}
		c := dial(t, n, ep) // 1.1.1 empty text: nothing to say in chat, not an error
		c.sendFrame(frame(true, ws.OpText, nil))
		c.sendFrame(frame(true, ws.OpText, c.message([]byte("after empty"))))
		if ep == "/ws" {
			c.expectJSON("error") // an empty frame is not JSON
		}
		c.expectEcho([]byte("after empty"))
		// 1.2: binary messages are refused by policy (Autobahn echoes them).
		c = dial(t, n, ep)
		c.sendFrame(frame(true, ws.OpBinary, []byte{0, 1, 2}))
		c.expectClose(ws.StatusUnsupportedData)
	})
}

// Group 2: pings and pongs (RFC 6455 §5.5.2, §5.5.3).
func TestPingPong(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		for _, p := range [][]byte{nil, []byte("Hello, world!"), {0, 0xff, 0xfe, 0xfd, 0xfc}, bytes.Repeat([]byte{0xfe}, 125)} {
			c := dial(t, n, ep)
			c.sendFrame(frame(true, ws.OpPing, p))
			if op, got := c.read(); op != ws.OpPong || !bytes.Equal(got, p) {
				t.Fatalf("ping %q: got op %d %q, want pong with the same payload", p, op, got)
			}
		}
		c := dial(t, n, ep) // 2.5: a control frame over 125 bytes
		c.sendFrame(frame(true, ws.OpPing, bytes.Repeat([]byte("x"), 126)))
		c.expectClose(ws.StatusProtocolError)

		c = dial(t, n, ep) // 2.6: ping sent byte by byte
		c.sendChopped(frame(true, ws.OpPing, []byte("chopped ping")), 1)
		if op, got := c.read(); op != ws.OpPong || string(got) != "chopped ping" {
			t.Fatalf("chopped ping: %d %q", op, got)
		}
		c = dial(t, n, ep) // 2.7, 2.8: unsolicited pongs are ignored
		c.sendFrame(frame(true, ws.OpPong, nil))
		c.sendFrame(frame(true, ws.OpPong, []byte("unsolicited")))
		c.sendFrame(frame(true, ws.OpText, c.message([]byte("after pongs"))))
		c.expectEcho([]byte("after pongs"))

		c = dial(t, n, ep) // 2.10: ten pings in a row, ten pongs in order
		var all []byte
		for i := range 10 {
			all = append(all, frame(true, ws.OpPing, []byte(fmt.Sprint("ping ", i)))...)
		}
		c.sendFrame(all)
		for i := range 10 {
			if op, got := c.read(); op != ws.OpPong || string(got) != fmt.Sprint("ping ", i) {
				t.Fatalf("pong %d: %d %q", i, op, got)
			}
		}
		c = dial(t, n, ep) // 5.1 (control frames must not be fragmented)
		c.sendFrame(frame(false, ws.OpPing, []byte("frag")))
		c.expectClose(ws.StatusProtocolError)
	})
}

// Group 3: reserved bits without a negotiated extension (§5.2).
func TestReservedBits(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		for rsv := byte(1); rsv <= 7; rsv++ {
			for _, op := range []ws.OpCode{ws.OpText, ws.OpPing} {
				c := dial(t, n, ep)
				var p []byte
				if op == ws.OpText {
					p = c.message([]byte("rsv"))
				}
				c.sendFrame(rawFrame(true, rsv, op, p, true))
				c.expectClose(ws.StatusProtocolError)
			}
		}
		// 3.2: a good message, then a bad frame in the same write: the close
		// is 1002; the good message's echo may come first or be cut by the
		// close (the node fails fast: Autobahn's "non-strict").
		c := dial(t, n, ep)
		c.sendFrame(append(frame(true, ws.OpText, c.message([]byte("before"))), rawFrame(true, 2, ws.OpText, c.message([]byte("bad")), true)...))
		c.expectClose(ws.StatusProtocolError)
	})
}

// Group 4: reserved opcodes (§5.2).
func TestReservedOpcodes(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		for _, op := range []ws.OpCode{3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf} {
			for _, p := range [][]byte{nil, []byte("reserved")} {
				c := dial(t, n, ep)
				c.sendFrame(frame(true, op, p))
				c.expectClose(ws.StatusProtocolError)
			}
		}
	})
}

// Group 5: fragmentation (§5.4).
func TestFragmentation(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		fragments := func(c *conn, msg []byte, k int, interleave bool) []byte {
			var out []byte
			for i := 0; i < len(msg); i += k {
				op := ws.OpContinuation
				if i == 0 {
					op = ws.OpText
				}
				out = append(out, frame(i+k >= len(msg), op, msg[i:min(i+k, len(msg))])...)
				if interleave && i+k < len(msg) {
					out = append(out, frame(true, ws.OpPing, []byte("between"))...)
				}
			}
			return out
		}
		text := []byte("fragmented message of some length")
		c := dial(t, n, ep) // 5.3–5.5: text in fragments, whole or chopped
		c.sendFrame(fragments(c, c.message(text), 4, false))
		c.expectEcho(text)
		c.sendChopped(fragments(c, c.message(text), 3, false), 1)
		c.expectEcho(text)

		c = dial(t, n, ep) // 5.6–5.8: pings between fragments are answered at once
		c.sendFrame(fragments(c, c.message(text), 8, true))
		pongs := 0
		for pongs < (len(c.message(text))+7)/8-1 {
			if op, p := c.read(); op != ws.OpPong || string(p) != "between" {
				t.Fatalf("want a pong between fragments, got %d %q", op, p)
			}
			pongs++
		}
		c.expectEcho(text)

		c = dial(t, n, ep) // 5.9–5.11: a continuation with nothing to continue
		c.sendFrame(frame(true, ws.OpContinuation, []byte("orphan")))
		c.expectClose(ws.StatusProtocolError)

		c = dial(t, n, ep) // 5.18: a new text frame inside a fragmented message
		c.sendFrame(append(frame(false, ws.OpText, []byte("first")), frame(true, ws.OpText, []byte("second"))...))
		c.expectClose(ws.StatusProtocolError)

		c = dial(t, n, ep) // 5.2: a fragmented message's pieces are all continuations
		c.sendFrame(append(frame(false, ws.OpText, []byte("a")), frame(false, ws.OpContinuation, []byte("b"))...))
		c.sendFrame(frame(true, ws.OpContinuation, nil))
		if ep == "/" {
			c.expectEcho([]byte("ab"))
		} else {
			c.expectJSON("error") // "ab" is not JSON; the connection stays
		}
	})
}

// Group 6: UTF-8 handling (§8.1): valid texts pass, invalid ones close with
// 1007, whole or split across fragments.
func TestUTF8(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		valid := []string{"κόσμε", "Hello-µ@ßöäüàá-UTF-8!!", "\u0080", "\u07ff", "\u0800", "\uffff", "\U00010000", "\U0010ffff", "\uFEFF text", "𝄞"}
		for _, s := range valid {
			c := dial(t, n, ep)
			msg := c.message([]byte(s))
			c.sendFrame(frame(true, ws.OpText, msg))
			c.expectEcho([]byte(s))
			// Split at every byte: a code point across fragments is fine.
			var frags []byte
			for i := range msg {
				op := ws.OpContinuation
				if i == 0 {
					op = ws.OpText
				}
				frags = append(frags, frame(i == len(msg)-1, op, msg[i:i+1])...)
			}
			c.sendFrame(frags)
			c.expectEcho([]byte(s))
		}
		invalid := [][]byte{
			{0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80, 0x65, 0x64, 0x69, 0x74, 0x65, 0x64}, // 6.3: a surrogate
			{0xc0, 0xaf},             // overlong "/"
			{0xe0, 0x80, 0xaf},       // overlong
			{0xf4, 0x90, 0x80, 0x80}, // above U+10FFFF
			{0xed, 0xa0, 0x80},       // U+D800
			{0x80},                   // lone continuation
			{0xfe}, {0xff},
			{'a', 0xc3},                    // truncated at the end
			{0xf8, 0x88, 0x80, 0x80, 0x80}, // five-byte form
		}
		for _, b := range invalid {
			// On /ws the text travels inside JSON; the invalid bytes are
			// still in the frame, which is what the node must catch.
			c := dial(t, n, ep)
			msg := append([]byte(nil), b...)
			if !c.plain {
				msg = append(append([]byte(`{"type":"send","room":"conf","text":"`), b...), `"}`...)
			}
			c.sendFrame(frame(true, ws.OpText, msg))
			c.expectClose(ws.StatusInvalidFramePayloadData)

			c = dial(t, n, ep) // and fragmented, one byte a frame
			var frags []byte
			for i := range msg {
				op := ws.OpContinuation
				if i == 0 {
					op = ws.OpText
				}
				frags = append(frags, frame(i == len(msg)-1, op, msg[i:i+1])...)
			}
			c.sendFrame(frags)
			c.expectClose(ws.StatusInvalidFramePayloadData)
		}
	})
}

// Group 7: the closing handshake (§5.5.1, §7).
func TestClose(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		code := func(c ws.StatusCode, reason string) []byte {
			return append(binary.BigEndian.AppendUint16(nil, uint16(c)), reason...)
		}
		for _, tc := range []struct {
			name    string
			payload []byte
			want    ws.StatusCode
		}{
			{"7.3.1 no payload", nil, ws.StatusNoStatusRcvd},
			{"7.3.2 one byte", []byte{0x03}, ws.StatusProtocolError},
			{"7.3.3 code only", code(1000, ""), 1000},
			{"7.3.4 code and reason", code(1000, "bye"), 1000},
			{"7.3.5 reason of 123 bytes", code(1000, strings.Repeat("r", 123)), 1000},
			{"7.3.6 reason of 124 bytes", code(1000, strings.Repeat("r", 124)), ws.StatusProtocolError},
			{"7.5.1 reason not UTF-8", code(1000, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"), ws.StatusInvalidFramePayloadData},
		} {
			c := dial(t, n, ep)
			c.sendFrame(frame(true, ws.OpClose, tc.payload))
			c.expectClose(tc.want)
		}
		// 7.7: valid codes are echoed; 7.9: invalid ones get 1002. 1012–1014
		// were registered with IANA after RFC 6455 (service restart, try
		// again later, bad gateway): valid here, though Autobahn's 7.9 still
		// lists them as invalid.
		for _, cc := range []ws.StatusCode{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
			c := dial(t, n, ep)
			c.sendFrame(frame(true, ws.OpClose, code(cc, "")))
			c.expectClose(cc)
		}
		for _, cc := range []ws.StatusCode{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
			c := dial(t, n, ep)
			c.sendFrame(frame(true, ws.OpClose, code(cc, "")))
			c.expectClose(ws.StatusProtocolError)
		}
		// 7.1.2–7.1.4: nothing after a close counts.
		c := dial(t, n, ep)
		c.sendFrame(append(frame(true, ws.OpClose, code(1000, "")),
			append(frame(true, ws.OpText, c.message([]byte("after close"))), frame(true, ws.OpPing, []byte("after close"))...)...))
		c.expectClose(1000)
		// 7.1.6: a close right behind a large message: the close is echoed at
		// once; the message's echo may or may not make it before (it goes
		// through the room and the bus while the close is answered by the
		// socket layer).
		c = dial(t, n, ep)
		big := c.message(bytes.Repeat([]byte("b"), 100<<10))
		c.sendFrame(append(frame(true, ws.OpText, big), frame(true, ws.OpClose, code(1000, ""))...))
		c.expectClose(1000)
	})
}

// RFC 6455 §5.1: a client frame must be masked.
func TestUnmaskedFrame(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		c := dial(t, n, ep)
		c.sendFrame(rawFrame(true, 0, ws.OpText, c.message([]byte("unmasked")), false))
		c.expectClose(ws.StatusProtocolError)
	})
}

// Group 9 (limits and performance, scaled to this suite): large messages
// whole, in many fragments, chopped into small writes; one over the cap is
// closed with 1009 before its declared length is read.
func TestLargeMessages(t *testing.T) {
	forEndpoint(t, func(t *testing.T, n *node.Node, ep string) {
		text := bytes.Repeat([]byte("0123456789abcdef"), 12<<10) // 192 KiB
		c := dial(t, n, ep)
		msg := c.message(text)
		c.sendFrame(frame(true, ws.OpText, msg))
		c.expectEcho(text)
		for _, k := range []int{64, 4 << 10, 64 << 10} { // 9.3/9.4: fragment sizes
			var frags []byte
			for i := 0; i < len(msg); i += k {
				op := ws.OpContinuation
				if i == 0 {
					op = ws.OpText
				}
				frags = append(frags, frame(i+k >= len(msg), op, msg[i:min(i+k, len(msg))])...)
			}
			c.sendChopped(frags, 1500)
			c.expectEcho(text)
		}
		for range 20 { // 9.7: many messages in a row, in order
			c.sendFrame(frame(true, ws.OpText, c.message([]byte("again"))))
		}
		for range 20 {
			c.expectEcho([]byte("again"))
		}
		// Over the cap: a declared length past it is refused at once.
		c = dial(t, n, ep)
		hdr := rawFrame(true, 0, ws.OpText, nil, true)[:0]
		hdr = append(hdr, 0x81, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, 1<<40)
		c.sendFrame(append(hdr, 1, 2, 3, 4))
		c.expectClose(ws.StatusMessageTooBig)
		c = dial(t, n, ep) // and in fragments that add up past it
		piece := bytes.Repeat([]byte("z"), 64<<10)
		var frags []byte
		for i := 0; i*len(piece) <= maxMessage; i++ {
			op := ws.OpContinuation
			if i == 0 {
				op = ws.OpText
			}
			frags = append(frags, frame(false, op, piece)...)
		}
		c.sendFrame(frags)
		c.expectClose(ws.StatusMessageTooBig)
	})
}
