package node

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// upgradeReq describes one raw upgrade attempt.
type upgradeReq struct {
	path    string   // "/ws?name=x"
	headers []string // extra header lines, "Origin: …"
	proxy   []byte   // written before the request (a PROXY header)
	viaHTTP bool     // take the net/http path (absolute-form target)
}

// tryUpgrade sends a raw upgrade request and returns the response status and
// body; on 101 the connection stays open until the test ends.
func tryUpgrade(t *testing.T, n *Node, r upgradeReq) (int, string) {
	t.Helper()
	conn := rawDial(t, n)
	target := r.path
	if r.viaHTTP {
		target = "http://" + n.Addr() + r.path
	}
	var b strings.Builder
	b.Write(r.proxy)
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n", target, n.Addr())
	for _, h := range r.headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%+v: read response: %v", r, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp.StatusCode, ""
	}
	body, _ := io.ReadAll(resp.Body)
	conn.Close()
	return resp.StatusCode, string(body)
}

func TestOriginCheck(t *testing.T) {
	same := startNode(t, Config{})
	listed := startNode(t, Config{AllowedOrigins: []string{"https://chat.example.com"}})
	required := startNode(t, Config{RequireOrigin: true})
	cases := []struct {
		name   string
		n      *Node
		origin string // "" : no Origin header
		status int
		body   string
	}{
		{"no origin is a non-browser client", same, "", 101, ""},
		{"same origin", same, "http://" + same.Addr(), 101, ""},
		{"same origin, other case", same, "HTTP://" + strings.ToUpper(same.Addr()), 101, ""},
		{"foreign origin", same, "https://evil.example", 403, "origin not allowed"},
		{"same host, other port", same, "http://127.0.0.1:1", 403, "origin not allowed"},
		{"null origin (sandboxed frame)", same, "null", 403, "origin not allowed"},
		{"listed origin", listed, "https://chat.example.com", 101, ""},
		{"same origin not listed", listed, "http://" + listed.Addr(), 403, "not in --allowed-origins"},
		{"required and missing", required, "", 403, "Origin header is required"},
		{"required and same origin", required, "http://" + required.Addr(), 101, ""},
	}
	for _, tc := range cases {
		for _, viaHTTP := range []bool{false, true} {
			var hdr []string
			if tc.origin != "" {
				hdr = []string{"Origin: " + tc.origin}
			}
			for _, path := range []string{"/ws", "/"} {
				st, body := tryUpgrade(t, tc.n, upgradeReq{path: path, headers: hdr, viaHTTP: viaHTTP})
				if st != tc.status || !strings.Contains(body, tc.body) {
					t.Errorf("%s (%s, net/http path %v): %d %q, want %d with %q", tc.name, path, viaHTTP, st, body, tc.status, tc.body)
				}
			}
		}
	}
}

func TestAnyOriginNeedsAuth(t *testing.T) {
	_, err := New(Config{AllowedOrigins: []string{"*"}, Admin: "-"})
	if err == nil || !strings.Contains(err.Error(), "auth") {
		t.Fatalf("New with origins * and no auth: %v, want an error about auth", err)
	}
	if _, err := New(Config{AllowedOrigins: []string{"chat.example.com/x"}, Admin: "-"}); err == nil {
		t.Fatal("New accepted a malformed origin")
	}
}

func TestNameRefusedOnBothPaths(t *testing.T) {
	n := startNode(t, Config{})
	for _, viaHTTP := range []bool{false, true} {
		for _, tc := range []struct {
			name   string
			status int
		}{
			{"Zo%C3%AB", 101},
			{"ali%E2%80%8Bce", 400},        // zero-width space
			{"%EF%BB%BFalice", 400},        // BOM
			{"alice%E2%80%AEgnp", 400},     // right-to-left override
			{"ali%C2%85ce", 400},           // C1 control
			{"%D0%B0lice", 400},            // Cyrillic а
			{strings.Repeat("a", 33), 400}, // too long
		} {
			st, body := tryUpgrade(t, n, upgradeReq{path: "/ws?name=" + tc.name, viaHTTP: viaHTTP})
			if st != tc.status || (st == 400 && !strings.HasPrefix(body, "bad name: ")) {
				t.Errorf("name %s (net/http path %v): %d %q, want %d", tc.name, viaHTTP, st, body, tc.status)
			}
		}
	}
	c := dial(t, n, "/ws?name=Zoe%CC%88") // decomposed ë
	if w := c.await("welcome"); w["name"] != "Zoë" {
		t.Fatalf("welcome name %q, want the NFC form", w["name"])
	}
}

func TestConnectionLimits(t *testing.T) {
	t.Run("per address", func(t *testing.T) {
		n := startNode(t, Config{MaxConnsPerAddr: 3})
		var first *client
		for i := range 3 {
			c := dial(t, n, "/ws")
			c.await("welcome")
			if i == 0 {
				first = c
			}
		}
		for _, viaHTTP := range []bool{false, true} {
			if st, body := tryUpgrade(t, n, upgradeReq{path: "/ws", viaHTTP: viaHTTP}); st != 429 || !strings.Contains(body, "too many connections") {
				t.Fatalf("4th connection (net/http path %v): %d %q, want 429", viaHTTP, st, body)
			}
		}
		first.conn.Close()
		eventually(t, 10*time.Second, func() error {
			if st, _ := tryUpgrade(t, n, upgradeReq{path: "/ws"}); st != 101 {
				return fmt.Errorf("status %d after one closed", st)
			}
			return nil
		})
	})
	t.Run("per node", func(t *testing.T) {
		n := startNode(t, Config{MaxConns: 2})
		dial(t, n, "/ws").await("welcome")
		dial(t, n, "/").next()
		if st, body := tryUpgrade(t, n, upgradeReq{path: "/ws"}); st != 503 || !strings.Contains(body, "node is full") {
			t.Fatalf("3rd connection: %d %q, want 503", st, body)
		}
		// HTTP still answers: the cap is on WebSockets.
		if code, _ := httpGet(t, n.Addr(), "/healthz"); code != 200 {
			t.Fatalf("healthz on a full node: %d", code)
		}
	})
}

// proxyV2 builds a PROXY protocol v2 header for a TCP/IPv4 client.
func proxyV2(src string) []byte {
	a := netip.MustParseAddr(src).As4()
	b := append([]byte(nil), proxyV2Sig...)
	b = append(b, 0x21, 0x11, 0, 12)
	b = append(b, a[:]...)
	b = append(b, 127, 0, 0, 1)
	b = binary.BigEndian.AppendUint16(b, 40000)
	b = binary.BigEndian.AppendUint16(b, 8080)
	return b
}

func TestPROXYProtocolFromTrustedPeer(t *testing.T) {
	n := startNode(t, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, MaxConnsPerAddr: 2})
	v1 := func(src string) []byte { return []byte("PROXY TCP4 " + src + " 127.0.0.1 40000 8080\r\n") }
	for _, viaHTTP := range []bool{false, true} {
		// Two per address: the third from 203.0.113.7 is refused, another
		// client (another address, same proxy) is not.
		src := "203.0.113.7"
		if viaHTTP {
			src = "203.0.113.9"
		}
		for i, h := range [][]byte{proxyV2(src), v1(src)} {
			if st, body := tryUpgrade(t, n, upgradeReq{path: "/ws", proxy: h, viaHTTP: viaHTTP}); st != 101 {
				t.Fatalf("upgrade %d through the proxy: %d %q", i, st, body)
			}
		}
		if st, _ := tryUpgrade(t, n, upgradeReq{path: "/ws", proxy: proxyV2(src), viaHTTP: viaHTTP}); st != 429 {
			t.Fatalf("3rd from %s: %d, want 429", src, st)
		}
		if st, _ := tryUpgrade(t, n, upgradeReq{path: "/ws", proxy: proxyV2("198.51.100.1"), viaHTTP: viaHTTP}); st != 101 {
			t.Fatalf("another client behind the proxy: %d, want 101", st)
		}
	}
	// A health check: PROXY v2 LOCAL, then plain HTTP.
	conn := rawDial(t, n)
	local := append(append([]byte(nil), proxyV2Sig...), 0x20, 0x00, 0, 0)
	conn.Write(append(local, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"...))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz after PROXY LOCAL: %v %v", resp, err)
	}
	// A malformed header is refused.
	conn = rawDial(t, n)
	conn.Write([]byte("PROXY TCP4 not-an-address 127.0.0.1 1 2\r\nGET /readyz HTTP/1.1\r\n\r\n"))
	if b, _ := io.ReadAll(conn); len(b) != 0 {
		t.Fatalf("malformed PROXY header answered %q, want a close", b)
	}
}

func TestPROXYProtocolFromUntrustedPeerRefused(t *testing.T) {
	n := startNode(t, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	for _, h := range [][]byte{proxyV2("203.0.113.7"), []byte("PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n")} {
		st, body := tryUpgrade(t, n, upgradeReq{path: "/ws", proxy: h})
		if st != 400 || !strings.Contains(body, "--trusted-proxies") {
			t.Fatalf("PROXY header from an untrusted peer: %d %q, want 400", st, body)
		}
	}
}

func TestXForwardedFor(t *testing.T) {
	trusting := startNode(t, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, MaxConnsPerAddr: 1})
	for _, viaHTTP := range []bool{false, true} {
		src := "203.0.113.20"
		if viaHTTP {
			src = "203.0.113.21"
		}
		// The client's own claim (left) is ignored: the proxy appended src.
		xff := "X-Forwarded-For: 192.0.2.1, " + src
		if st, _ := tryUpgrade(t, trusting, upgradeReq{path: "/ws", headers: []string{xff}, viaHTTP: viaHTTP}); st != 101 {
			t.Fatalf("first from %s: %d", src, st)
		}
		if st, _ := tryUpgrade(t, trusting, upgradeReq{path: "/ws", headers: []string{"X-Forwarded-For: 192.0.2.2, " + src}, viaHTTP: viaHTTP}); st != 429 {
			t.Fatalf("second from %s: %d, want 429", src, st)
		}
	}
	// Not trusted: X-Forwarded-For is the client's word and counts for nothing.
	plain := startNode(t, Config{MaxConnsPerAddr: 1})
	if st, _ := tryUpgrade(t, plain, upgradeReq{path: "/ws", headers: []string{"X-Forwarded-For: 192.0.2.3"}}); st != 101 {
		t.Fatalf("first: %d", st)
	}
	if st, _ := tryUpgrade(t, plain, upgradeReq{path: "/ws", headers: []string{"X-Forwarded-For: 192.0.2.4"}}); st != 429 {
		t.Fatalf("second with another forged X-Forwarded-For: %d, want 429", st)
	}
}

func TestClientAddr(t *testing.T) {
	n := &Node{cfg: Config{TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}}}
	a := netip.MustParseAddr
	for _, tc := range []struct {
		peer, proxied netip.Addr
		xff, want     string
	}{
		{a("192.0.2.1"), netip.Addr{}, "1.2.3.4", "192.0.2.1"},                  // untrusted peer: XFF ignored
		{a("127.0.0.1"), netip.Addr{}, "1.2.3.4", "1.2.3.4"},                    // trusted peer
		{a("127.0.0.1"), netip.Addr{}, "6.6.6.6, 1.2.3.4, 10.1.1.1", "1.2.3.4"}, // right-most untrusted
		{a("127.0.0.1"), netip.Addr{}, "garbage, 1.2.3.4", "1.2.3.4"},
		{a("127.0.0.1"), netip.Addr{}, "10.0.0.1, 10.0.0.2", "10.0.0.1"},
		{a("127.0.0.1"), netip.Addr{}, "", "127.0.0.1"},
		{a("127.0.0.1"), a("198.51.100.7"), "1.2.3.4", "198.51.100.7"}, // PROXY names an untrusted client: its XFF is its own claim
		{a("127.0.0.1"), a("10.9.9.9"), "1.2.3.4", "1.2.3.4"},
		{a("::ffff:127.0.0.1"), netip.Addr{}, "2001:db8::1", "2001:db8::1"},
	} {
		if got := n.clientAddr(tc.peer, tc.proxied, tc.xff); got != a(tc.want) {
			t.Errorf("clientAddr(%v, %v, %q) = %v, want %s", tc.peer, tc.proxied, tc.xff, got, tc.want)
		}
	}
	if k1, k2 := addrKey(a("2001:db8:1:2::1")), addrKey(a("2001:db8:1:2:ffff::9")); k1 != k2 {
		t.Errorf("IPv6 addresses of one /64 counted apart: %v %v", k1, k2)
	}
}

func TestParseProxyHeaders(t *testing.T) {
	for _, tc := range []struct {
		line string
		want string // "" : no address; "err" : refused
	}{
		{"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\n", "192.0.2.1"},
		{"PROXY TCP6 2001:db8::1 ::1 5000 80\r\n", "2001:db8::1"},
		{"PROXY UNKNOWN\r\n", ""},
		{"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", ""},
		{"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\n", "err"},
		{"PROXY TCP4 2001:db8::1 127.0.0.1 5000 80\r\n", "err"},
		{"PROXY TCP4 192.0.2.1 127.0.0.1 65536 80\r\n", "err"},
		{"PROXY TCP4 192.0.2.1 127.0.0.1 080 80\r\n", "err"},
		{"PROXY TCP4 192.0.2.1 127.0.0.1 5000\r\n", "err"},
		{"PROXY UDP4 192.0.2.1 127.0.0.1 5000 80\r\n", "err"},
	} {
		got, err := parseProxyV1([]byte(tc.line))
		switch {
		case tc.want == "err" && err == nil:
			t.Errorf("%q: accepted (%v)", tc.line, got)
		case tc.want != "err" && err != nil:
			t.Errorf("%q: %v", tc.line, err)
		case tc.want != "err" && tc.want != "" && got != netip.MustParseAddr(tc.want):
			t.Errorf("%q: %v, want %s", tc.line, got, tc.want)
		case tc.want == "" && got.IsValid():
			t.Errorf("%q: %v, want none", tc.line, got)
		}
	}
	if got, err := parseProxyV2(proxyV2("192.0.2.9")); err != nil || got != netip.MustParseAddr("192.0.2.9") {
		t.Errorf("v2 TCP4: %v %v", got, err)
	}
	bad := proxyV2("192.0.2.9")
	bad[12] = 0x11 // version 1 in a v2 header
	if _, err := parseProxyV2(bad); err == nil {
		t.Error("v2 with version 1 accepted")
	}
	short := append(append([]byte(nil), proxyV2Sig...), 0x21, 0x11, 0, 4, 1, 2, 3, 4)
	if _, err := parseProxyV2(short); err == nil {
		t.Error("v2 TCP4 with a 4-byte block accepted")
	}
}

// TestUntrustedPeerSendingProxyBytesToHTTP: an HTTP client starting with
// "P" (a POST) is not mistaken for a PROXY header.
func TestPostIsNotAProxyHeader(t *testing.T) {
	n := startNode(t, Config{})
	conn := rawDial(t, n)
	io.WriteString(conn, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /healthz: %v %v, want 405", resp, err)
	}
}
