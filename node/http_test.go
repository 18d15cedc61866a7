package node

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestBodyNeverSentIsClosed: a request that declares a body and never
// sends it is closed within the HTTP read timeout, on both listeners
// (pprof's symbol handler reads POST bodies).
func TestBodyNeverSentIsClosed(t *testing.T) {
	const timeout = 300 * time.Millisecond
	n := startNode(t, Config{HTTPReadTimeout: timeout})
	for _, tc := range []struct{ addr, req string }{
		{n.AdminAddr(), "POST /debug/pprof/symbol HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0x1"},
		{n.Addr(), "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"},
	} {
		conn, err := net.DialTimeout("tcp", tc.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second)) // the test's own bound
		start := time.Now()
		io.WriteString(conn, tc.req)
		_, err = io.ReadAll(conn)
		el := time.Since(start)
		conn.Close()
		if err != nil {
			t.Fatalf("%s: %v after %v, want the server to close within %v", tc.req[:20], err, el, timeout)
		}
		if el > timeout+2*time.Second {
			t.Fatalf("%s: closed after %v, want within %v", tc.req[:20], el, timeout)
		}
	}
}

func TestHeaderCapIsExact(t *testing.T) {
	const limit = 1024
	n := startNode(t, Config{MaxHeaderBytes: limit})
	for _, path := range []string{"/healthz", "/ws"} {
		head := func(size int) string {
			base := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Pad: ", path)
			return base + strings.Repeat("a", size-len(base)-4) + "\r\n\r\n"
		}
		for _, tc := range []struct {
			size   int
			status int
		}{{limit, 0}, {limit + 1, 431}} {
			conn := rawDial(t, n)
			go io.WriteString(conn, head(tc.size))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("%s, head of %d bytes: %v", path, tc.size, err)
			}
			if tc.status == 431 && resp.StatusCode != 431 || tc.status == 0 && resp.StatusCode == 431 {
				t.Errorf("%s, head of %d bytes (cap %d): %d", path, tc.size, limit, resp.StatusCode)
			}
			conn.Close()
		}
	}
}

func TestPageHeaders(t *testing.T) {
	n := startNode(t, Config{})
	resp, err := http.Get("http://" + n.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP %q, want frame-ancestors 'none'", csp)
	}
	if xfo := resp.Header.Get("X-Frame-Options"); xfo != "DENY" {
		t.Errorf("X-Frame-Options %q", xfo)
	}
	for _, p := range []string{"/static/", "/static"} {
		if code, body := httpGet(t, n.Addr(), p); code == 200 || strings.Contains(body, "app.js") {
			t.Errorf("GET %s: %d %q, want no directory listing", p, code, trunc(body))
		}
	}
	if code, _ := httpGet(t, n.Addr(), "/static/app.js"); code != 200 {
		t.Errorf("GET /static/app.js: %d", code)
	}
}

func TestAdminListenerStaysLocal(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:6060", false, true},
		{"[::1]:6060", false, true},
		{"localhost:6060", false, true},
		{"-", false, true},
		{":6060", false, false},
		{"0.0.0.0:6060", false, false},
		{"192.0.2.10:6060", false, false},
		{"admin.example:6060", false, false},
		{"0.0.0.0:6060", true, true},
	} {
		if tc.ok {
			// (New would start a poller: check the rule alone.)
			if err := checkAdminAddr(tc.addr, tc.remote); err != nil {
				t.Errorf("admin %q (allow remote %v): %v", tc.addr, tc.remote, err)
			}
			continue
		}
		if _, err := New(Config{Admin: tc.addr, AdminAllowRemote: tc.remote}); err == nil || !strings.Contains(err.Error(), "admin-allow-remote") {
			t.Errorf("admin %q (allow remote %v): New gave %v, want a refusal naming --admin-allow-remote", tc.addr, tc.remote, err)
		}
	}
}

func TestCmdlineHidesSecrets(t *testing.T) {
	args := []string{"parley", "--redis=redis://:hunter2@10.0.0.5:6379/0", "--redis-sentinel", "mymaster@10.0.0.6:26379",
		"--redis", "redis://user:s3cret@host:6379", "--auth-secret", "k3y", "--api-token=t0ken", "--listen", ":8080"}
	got := strings.Join(RedactArgs(args), " ")
	for _, secret := range []string{"hunter2", "s3cret", "k3y", "t0ken"} {
		if strings.Contains(got, secret) {
			t.Errorf("redacted command line %q still shows %q", got, secret)
		}
	}
	for _, keep := range []string{"10.0.0.5:6379", "mymaster@10.0.0.6:26379", "user:", ":8080"} {
		if !strings.Contains(got, keep) {
			t.Errorf("redacted command line %q lost %q", got, keep)
		}
	}
	// And through the admin listener.
	old := os.Args
	os.Args = args
	t.Cleanup(func() { os.Args = old })
	n := startNode(t, Config{})
	code, body := httpGet(t, n.AdminAddr(), "/debug/pprof/cmdline")
	if code != 200 || strings.Contains(body, "hunter2") || !strings.Contains(body, "10.0.0.5") {
		t.Fatalf("cmdline: %d %q", code, body)
	}
}
