package netpoll

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

const testTimeout = 10 * time.Second

// eventually polls f until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not reached within %v: %v", timeout, err)
		}
		runtime.Gosched()
		time.Sleep(2 * time.Millisecond) // polling interval, not synchronisation
	}
}

type message struct {
	c       *Conn
	op      ws.OpCode
	payload []byte
}

type closed struct {
	c   *Conn
	err error
}

// recorder is a Handler that records what it gets and can echo.
type recorder struct {
	echo   bool
	msgs   chan message
	closes chan closed
}

func newRecorder(echo bool) *recorder {
	return &recorder{echo: echo, msgs: make(chan message, 4096), closes: make(chan closed, 4096)}
}

func (r *recorder) HandleMessage(c *Conn, op ws.OpCode, payload []byte) {
	if r.echo {
		if err := c.Write(AppendFrame(nil, op, payload)); err != nil && !errors.Is(err, ErrClosed) {
			panic(err)
		}
	}
	select {
	case r.msgs <- message{c, op, payload}:
	default:
		panic("recorder: message channel full")
	}
}

func (r *recorder) HandleClose(c *Conn, err error) {
	select {
	case r.closes <- closed{c, err}:
	default:
		panic("recorder: close channel full")
	}
}

func (r *recorder) nextClose(t *testing.T) closed {
	t.Helper()
	select {
	case e := <-r.closes:
		return e
	case <-time.After(testTimeout):
		t.Fatal("no HandleClose")
		return closed{}
	}
}

func (r *recorder) nextMsg(t *testing.T) message {
	t.Helper()
	select {
	case m := <-r.msgs:
		return m
	case <-time.After(testTimeout):
		t.Fatal("no HandleMessage")
		return message{}
	}
}

// server is a Poller behind a listener on 127.0.0.1 that upgrades every
// connection itself (so upgrade leftovers are visible) and starts it.
type server struct {
	p     *Poller
	ln    net.Listener
	h     Handler
	conns chan *Conn
	tune  func(*net.TCPConn)
	wg    sync.WaitGroup
}

func startServer(t *testing.T, cfg Config, h Handler) *server {
	t.Helper()
	return startServerTuned(t, cfg, h, nil)
}

func startServerTuned(t *testing.T, cfg Config, h Handler, tune func(*net.TCPConn)) *server {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.Close()
		t.Fatal(err)
	}
	s := &server{p: p, ln: ln, h: h, conns: make(chan *Conn, 2048), tune: tune}
	s.wg.Add(1)
	go s.accept(t)
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
		p.Close()
	})
	return s
}

func (s *server) accept(t *testing.T) {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		if s.tune != nil {
			s.tune(nc.(*net.TCPConn))
		}
		leftover, err := serverHandshake(nc)
		if err != nil {
			t.Errorf("handshake: %v", err)
			nc.Close()
			continue
		}
		c, err := s.p.Add(nc, leftover)
		if err != nil {
			t.Errorf("add: %v", err)
			nc.Close()
			continue
		}
		if err := c.Start(s.h); err != nil {
			t.Errorf("start: %v", err)
		}
		s.conns <- c
	}
}

func (s *server) nextConn(t *testing.T) *Conn {
	t.Helper()
	select {
	case c := <-s.conns:
		return c
	case <-time.After(testTimeout):
		t.Fatal("no conn accepted")
		return nil
	}
}

// serverHandshake answers a WebSocket upgrade request and returns the bytes
// read past it.
func serverHandshake(nc net.Conn) ([]byte, error) {
	nc.SetDeadline(time.Now().Add(testTimeout))
	defer nc.SetDeadline(time.Time{})
	br := bufio.NewReaderSize(nc, 4096)
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, err
	}
	key := req.Header.Get("Sec-WebSocket-Key")
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
	if _, err := io.WriteString(nc, resp); err != nil {
		return nil, err
	}
	leftover, _ := br.Peek(br.Buffered())
	return leftover, nil
}

// client is a raw WebSocket client.
type client struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

const upgradeRequest = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// dial connects and upgrades; extra is sent in the same write as the request.
func dial(t *testing.T, s *server, extra []byte) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.ln.Addr().String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(testTimeout))
	if _, err := nc.Write(append([]byte(upgradeRequest), extra...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade status %d", resp.StatusCode)
	}
	return &client{t: t, nc: nc, br: br}
}

func (cl *client) send(fin bool, op ws.OpCode, payload []byte) {
	cl.t.Helper()
	cl.sendRaw(clientFrame(fin, op, payload, maskA))
}

func (cl *client) sendRaw(b []byte) {
	cl.t.Helper()
	if _, err := cl.nc.Write(b); err != nil {
		cl.t.Fatalf("client write: %v", err)
	}
}

// read reads one server frame.
func (cl *client) read() (ws.Header, []byte, error) {
	h, err := ws.ReadHeader(cl.br)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server frame is masked")
	}
	if h.Length > 1<<24 {
		return h, nil, fmt.Errorf("server frame length %d", h.Length)
	}
	p := make([]byte, h.Length)
	_, err = io.ReadFull(cl.br, p)
	return h, p, err
}

func (cl *client) mustRead(wantOp ws.OpCode) []byte {
	cl.t.Helper()
	h, p, err := cl.read()
	if err != nil {
		cl.t.Fatalf("client read: %v", err)
	}
	if h.OpCode != wantOp {
		cl.t.Fatalf("client read op %d (%q), want %d", h.OpCode, trim(p), wantOp)
	}
	return p
}

// readClose reads frames until a close frame and returns its code and
// reason, and how many data frames came before it.
func (cl *client) readClose() (ws.StatusCode, string, int) {
	cl.t.Helper()
	data := 0
	for {
		h, p, err := cl.read()
		if err != nil {
			cl.t.Fatalf("client read while waiting for close: %v", err)
		}
		switch h.OpCode {
		case ws.OpClose:
			code, reason := parseClosePayload(p)
			return code, reason, data
		case ws.OpText, ws.OpBinary:
			data++
		}
	}
}

// expectEOF reads until EOF (or a reset), failing on a timeout.
func (cl *client) expectEOF() {
	cl.t.Helper()
	for {
		_, _, err := cl.read()
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			cl.t.Fatalf("client: no EOF: %v", err)
		}
		return
	}
}

func wantCloseCode(err error, code ws.StatusCode) error {
	var ce *CloseError
	if !errors.As(err, &ce) {
		return fmt.Errorf("error %v is no *CloseError", err)
	}
	if ce.Code != code {
		return fmt.Errorf("close code %d, want %d", ce.Code, code)
	}
	return nil
}

func contains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }
