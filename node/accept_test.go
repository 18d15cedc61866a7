package node

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// rawDial opens a plain TCP connection to the node with a safety deadline.
func rawDial(t *testing.T, n *Node) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", n.Addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn
}

const upgradeHead = "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

func TestOversizedRequestHead(t *testing.T) {
	n := startNode(t, Config{MaxHeaderBytes: 1024})
	big := "X-Big: " + strings.Repeat("a", 16<<10) + "\r\n"
	for _, head := range []string{
		"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + "\r\n",
		strings.Replace(upgradeHead, "%s", "/ws", 1) + big + "\r\n",
	} {
		conn := rawDial(t, n)
		// The server may answer and close before it has read everything.
		go conn.Write([]byte(head))
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.Contains(line, " 431 ") {
			t.Fatalf("oversized head: %q %v, want 431", line, err)
		}
		conn.Close()
	}
	if code, body := httpGet(t, n.Addr(), "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz after oversized head: %d %q", code, body)
	}
	c := dial(t, n, "/ws?name=after")
	c.await("welcome")
}

func TestSilentClientClosedAfterHandshakeTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	n := startNode(t, Config{HandshakeTimeout: timeout})
	for _, sent := range []string{"", "GET /ws HTTP/1.1\r\nHost: x\r\n"} {
		conn := rawDial(t, n)
		start := time.Now()
		if sent != "" {
			conn.Write([]byte(sent))
		}
		b, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("sent %q: read: %v, want EOF after the handshake timeout", sent, err)
		}
		if len(b) != 0 {
			t.Fatalf("sent %q: got %q, want a silent close", sent, b)
		}
		if el := time.Since(start); el < timeout/2 {
			t.Fatalf("sent %q: closed after %v, before the handshake timeout", sent, el)
		}
		conn.Close()
	}
	// Still serving.
	c := dial(t, n, "/ws")
	c.await("welcome")
}

func TestUpgradeWithFrameInSamePacket(t *testing.T) {
	n := startNode(t, Config{})
	for _, path := range []string{"/ws?name=eager", "/?name=eagerplain"} {
		conn := rawDial(t, n)
		head := strings.Replace(upgradeHead, "%s", path, 1) + "\r\n"
		var first []byte
		plain := strings.HasPrefix(path, "/?")
		if plain {
			first = frame(0x81, []byte("hi in the same packet"))
		} else {
			first = frame(0x81, []byte(`{"type":"join","room":"r"}`))
		}
		if _, err := conn.Write(append([]byte(head), first...)); err != nil {
			t.Fatalf("write: %v", err)
		}
		br := bufio.NewReader(conn)
		status, err := br.ReadString('\n')
		if err != nil || !strings.Contains(status, " 101 ") {
			t.Fatalf("%s: status %q %v, want 101", path, status, err)
		}
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: response head: %v", path, err)
			}
			if line == "\r\n" {
				break
			}
		}
		c := &client{t: t, conn: conn, events: make(chan event, 64), done: make(chan struct{})}
		go c.readLoop(io.MultiReader(br, conn))
		if plain {
			if e := c.next(); !strings.HasPrefix(e.text, "connected to node") {
				t.Fatalf("first plain frame %q", e.text)
			}
			if e := c.next(); e.text != "hi in the same packet" {
				t.Fatalf("echo %q, want the frame sent with the handshake", e.text)
			}
		} else {
			c.await("welcome")
			if j := c.await("joined"); j["room"] != "r" {
				t.Fatalf("joined %v", j)
			}
		}
		hangUp(c)
	}
}

// TestShutdownClosesPendingHandshakes: a client that connected but sent no
// request head does not hold Shutdown up (goleak in TestMain checks the
// handshake goroutine ended).
func TestShutdownClosesPendingHandshakes(t *testing.T) {
	n := startNode(t, Config{})
	conn := rawDial(t, n)
	conn.Write([]byte("GET /ws HTTP/1.1\r\n"))
	c := dial(t, n, "/ws") // the half-sent head is in its handshake by now
	c.await("welcome")
	done := make(chan error, 1)
	go func() { done <- n.Shutdown(t.Context()) }()
	if _, err := io.ReadAll(conn); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("pending handshake read: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}
