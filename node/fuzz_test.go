package node

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"
)

// fuzzConn is the socket side the handshake writes its answer to.
type fuzzConn struct {
	net.Conn
	out bytes.Buffer
}

func (c *fuzzConn) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *fuzzConn) RemoteAddr() net.Addr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:40000"))
}

// FuzzHandshake runs the accept path's parsers on arbitrary bytes, as a
// trusted proxy's connection: the PROXY header, the request head scan and
// classification, and the zero-copy upgrade with admission. Whatever the
// input: no panic, the head scan agrees with a plain scan, an upgrade is
// answered with 101 or an HTTP error, and every admission slot taken is
// given back. Seeds: testdata/fuzz/FuzzHandshake.
func FuzzHandshake(f *testing.F) {
	const head = "GET /ws?name=alice HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, s := range []string{
		head + "\r\n",
		head + "Origin: http://h\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\n",
		head + "Origin: https://evil.example\r\n\r\n",
		"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\n" + head + "\r\n",
		string(proxyV2("198.51.100.2")) + head + "\r\n",
		"GET /ws?name=%E2%80%AE HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /ws HTTP/1.1\nUpgrade: websocket\n\n",
		"PROXY UNKNOWN\r\nGET /healthz HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, data []byte) {
		n := &Node{
			cfg: Config{MaxConns: 4, MaxConnsPerAddr: 2, HandshakeTimeout: time.Second,
				TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
			log: log, perAddr: make(map[netip.Addr]int), peekSize: 1024,
		}
		nc := &fuzzConn{}
		br := bufio.NewReaderSize(bytes.NewReader(data), n.peekSize)
		peer := netip.MustParseAddr("127.0.0.1")
		proxied, err := n.readProxy(nc, br, peer)
		if err != nil {
			return
		}
		before := br.Buffered()
		end, plain, fast, err := n.peekHead(br)
		if err != nil {
			return
		}
		buf, _ := br.Peek(end)
		if end < 2 || end > br.Buffered() || end > max(before, br.Buffered()) {
			t.Fatalf("head end %d of %d buffered", end, br.Buffered())
		}
		if !bytes.Contains(buf, []byte("\n\n")) && !bytes.Contains(buf, []byte("\n\r\n")) {
			t.Fatalf("head %q has no blank line", buf)
		}
		if fast && !bytes.HasPrefix(buf, []byte("GET /")) {
			t.Fatalf("fast upgrade for %q", buf)
		}
		if !fast {
			return
		}
		_ = plain
		a, _, err := n.upgradeFast(nc, br, end, plain, peer, proxied)
		out := nc.out.String()
		if err == nil {
			if len(out) < 12 || out[:12] != "HTTP/1.1 101" {
				t.Fatalf("admitted, answered %q", out)
			}
			n.release(a.key)
		} else if out != "" && (len(out) < 9 || out[:9] != "HTTP/1.1 ") {
			t.Fatalf("refused with %q", out)
		}
		if n.connCount != 0 || len(n.perAddr) != 0 {
			t.Fatalf("slots left after the handshake: %d %v", n.connCount, n.perAddr)
		}
		_, _ = io.Copy(io.Discard, br)
	})
}
