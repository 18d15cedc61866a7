package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// maxFrame caps one inbound message (a history reply can be large; this only
// stops a broken peer from making the client allocate without bound).
const maxFrame = 64 << 20

// writeTimeout bounds one socket write.
const writeTimeout = 10 * time.Second

// conn is one WebSocket connection. Its reader goroutine alone reads the
// socket; its writer goroutine alone writes it.
type conn struct {
	nc      net.Conn
	r       io.Reader
	addr    string
	node    string // from welcome
	session string
	name    string
	// maxMessage is the node's max_message_size from welcome (0: not said).
	maxMessage int

	mu      sync.Mutex // guards the following
	out     [][]byte   // complete, masked frames waiting for the writer
	closing bool       // no more frames are queued

	wake chan struct{} // the writer has work (capacity 1)
	done chan struct{} // closed when the reader has ended

	readTimeout time.Duration // set before the reader starts: the longest silence
	killMu      sync.Mutex    // guards kill
	kill        *time.Timer   // cuts the socket if a close handshake hangs

	// Set by the reader before done is closed.
	closeCode ws.StatusCode // 0: no close frame (network loss)
	closeText string
	readErr   error
}

// frame is any frame a node sends, with the union of their fields.
type frame struct {
	Type         string            `json:"type"`
	Room         string            `json:"room"`
	Seq          uint64            `json:"seq"`
	Epoch        string            `json:"epoch"`
	Recovered    bool              `json:"recovered"`
	From         string            `json:"from"`
	Text         string            `json:"text"`
	ID           string            `json:"id"`
	TS           int64             `json:"ts"`
	Repeat       bool              `json:"repeat"`
	Code         string            `json:"code"`
	Message      string            `json:"message"`
	RetryAfterMS int64             `json:"retry_after_ms"`
	Reason       string            `json:"reason"`
	AfterMS      int64             `json:"after_ms"`
	Node         string            `json:"node"`
	Session      string            `json:"session"`
	Name         string            `json:"name"`
	More         bool              `json:"more"`
	Messages     []json.RawMessage `json:"messages"`
	Members      []Member          `json:"members"`
	MaxMessage   int               `json:"max_message_size"`
	State        string            `json:"state"`
}

// wsURL turns a configured address ("host:port", "ws://host:port" or a URL
// with a path) into the /ws URL with the client's name.
func wsURL(addr, name string) (string, error) {
	if !strings.Contains(addr, "://") {
		addr = "ws://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return "", fmt.Errorf("address %q: scheme must be ws or wss", addr)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/ws"
	}
	if name != "" {
		q := u.Query()
		q.Set("name", name)
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

// dial opens a connection to addr and reads its welcome. A refusal comes
// back as a *RefusedError.
func dial(ctx context.Context, cfg *Config, addr string) (*conn, error) {
	u, err := wsURL(addr, cfg.Name)
	if err != nil {
		return nil, &RefusedError{Addr: addr, Reason: err.Error()}
	}
	token := cfg.Token
	if cfg.TokenFunc != nil {
		if token, err = cfg.TokenFunc(ctx); err != nil {
			return nil, fmt.Errorf("client: token for %s: %w", addr, err)
		}
	}
	var reason []byte
	d := ws.Dialer{
		Timeout: cfg.DialTimeout,
		NetDial: cfg.NetDial,
		OnStatusError: func(status int, r []byte, raw io.Reader) {
			// raw is the response from its status line on: read its body
			// as HTTP frames it (Content-Length), not to the end of the
			// connection.
			reason = r
			resp, err := http.ReadResponse(bufio.NewReader(raw), nil)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			reason = append([]byte(string(r)+": "), b...)
		},
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	nc, br, _, err := d.Dial(dctx, u)
	if err != nil {
		var se ws.StatusError
		if errors.As(err, &se) {
			status := int(se)
			e := &StatusError{Addr: addr, Status: status, Reason: strings.TrimSpace(string(reason))}
			if refusedStatus(status) {
				return nil, &RefusedError{Addr: addr, Status: status, Reason: e.Reason}
			}
			return nil, e
		}
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	c := &conn{nc: nc, r: nc, addr: addr, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if br != nil {
		c.r = io.MultiReader(br, nc)
	}
	if token != "" {
		// With token auth the node speaks only after the auth frame.
		b, _ := json.Marshal(map[string]string{"type": "auth", "token": token})
		_ = nc.SetWriteDeadline(time.Now().Add(cfg.DialTimeout))
		if _, err := nc.Write(textFrame(b)); err != nil {
			nc.Close()
			return nil, fmt.Errorf("client: %s: auth frame: %w", addr, err)
		}
		_ = nc.SetWriteDeadline(time.Time{})
	}
	// The welcome comes first; read it here, under the dial deadline.
	_ = nc.SetReadDeadline(time.Now().Add(cfg.DialTimeout))
	for {
		op, payload, err := c.readMessage()
		if err != nil {
			nc.Close()
			if c.closeCode == ws.StatusPolicyViolation {
				return nil, &RefusedError{Addr: addr, CloseCode: int(c.closeCode), Reason: c.closeText}
			}
			return nil, fmt.Errorf("client: %s: waiting for welcome: %w", addr, err)
		}
		if op != ws.OpText {
			continue
		}
		var f frame
		if err := json.Unmarshal(payload, &f); err != nil || f.Type != "welcome" {
			nc.Close()
			return nil, &RefusedError{Addr: addr, Reason: fmt.Sprintf("first frame is not a welcome: %.80q", payload)}
		}
		c.node, c.session, c.name, c.maxMessage = f.Node, f.Session, f.Name, f.MaxMessage
		break
	}
	_ = nc.SetReadDeadline(time.Time{})
	return c, nil
}

// refusedStatus reports whether an HTTP status at the upgrade means "do
// not come back" (bad name, auth, forbidden origin, not found) rather than
// "come back later" (429, 5xx: a draining or overloaded node).
func refusedStatus(status int) bool {
	return status >= 400 && status < 500 && status != 408 && status != 429
}

// readMessage reads one complete data message (or one control frame, which
// it answers itself: a ping with a pong, a close with a close). It returns an
// error once the connection is over; closeCode is then set if the peer
// closed.
func (c *conn) readMessage() (ws.OpCode, []byte, error) {
	var msg []byte
	var op ws.OpCode
	for {
		if c.readTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.readTimeout))
		}
		h, err := ws.ReadHeader(c.r)
		if err != nil {
			return 0, nil, err
		}
		if h.Length > maxFrame || int64(len(msg))+h.Length > maxFrame {
			return 0, nil, fmt.Errorf("frame of %d bytes is larger than %d", h.Length, maxFrame)
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(c.r, payload); err != nil {
			return 0, nil, err
		}
		if h.Masked {
			ws.Cipher(payload, h.Mask, 0)
		}
		switch h.OpCode {
		case ws.OpPing:
			c.queue(controlFrame(ws.OpPong, payload))
			continue
		case ws.OpPong:
			continue
		case ws.OpClose:
			code := ws.StatusNoStatusRcvd
			if len(payload) >= 2 {
				code = ws.StatusCode(binary.BigEndian.Uint16(payload))
				c.closeText = string(payload[2:])
			}
			c.closeCode = code
			c.queueClose(payload[:min(len(payload), 2)])
			return 0, nil, fmt.Errorf("closed by the node: %d %s", code, c.closeText)
		case ws.OpContinuation:
			msg = append(msg, payload...)
		default:
			op, msg = h.OpCode, payload
		}
		if h.Fin {
			return op, msg, nil
		}
	}
}

// controlFrame builds a masked client control frame.
func controlFrame(op ws.OpCode, payload []byte) []byte {
	f := ws.NewFrame(op, true, append([]byte(nil), payload...))
	f = ws.MaskFrameInPlace(f)
	b, _ := ws.CompileFrame(f)
	return b
}

// textFrame builds a masked client text frame.
func textFrame(payload []byte) []byte {
	f := ws.MaskFrameInPlace(ws.NewTextFrame(payload))
	b, _ := ws.CompileFrame(f)
	return b
}

// queue hands a frame to the writer. It reports false once the connection
// is closing.
func (c *conn) queue(b []byte) bool {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	c.out = append(c.out, b)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return true
}

// queueClose queues a close frame with payload and stops taking frames.
func (c *conn) queueClose(payload []byte) {
	c.mu.Lock()
	if !c.closing {
		c.out = append(c.out, controlFrame(ws.OpClose, payload))
		c.closing = true
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop is the connection's writer goroutine: it writes queued frames
// (and a ping every pingEvery) until the reader has ended and the queue is
// empty, then closes the socket.
func (c *conn) writeLoop(wg *sync.WaitGroup, pingEvery time.Duration) {
	defer wg.Done()
	defer func() {
		c.killMu.Lock()
		if c.kill != nil {
			c.kill.Stop()
		}
		c.killMu.Unlock()
		c.nc.Close()
	}()
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	for {
		select {
		case <-c.wake:
		case <-ping.C:
			c.queue(controlFrame(ws.OpPing, nil))
			continue
		case <-c.done:
			_ = c.flush()
			return
		}
		if err := c.flush(); err != nil {
			// A broken socket: make the reader end too.
			c.nc.Close()
			<-c.done
			return
		}
	}
}

func (c *conn) flush() error {
	for {
		c.mu.Lock()
		out := c.out
		c.out = nil
		c.mu.Unlock()
		if len(out) == 0 {
			return nil
		}
		_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		for _, b := range out {
			if _, err := c.nc.Write(b); err != nil {
				return err
			}
		}
	}
}

// abort cuts the connection at once (the reader then ends).
func (c *conn) abort() { c.nc.Close() }

// closeGracefully sends a normal close; the reader ends with the node's
// reply, or the socket is cut after timeout.
func (c *conn) closeGracefully(timeout time.Duration) {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, uint16(ws.StatusNormalClosure))
	c.queueClose(b)
	c.killMu.Lock()
	if c.kill == nil {
		c.kill = time.AfterFunc(timeout, c.abort)
	}
	c.killMu.Unlock()
}

// writeJSON encodes v and queues it as a text frame.
func (c *conn) writeJSON(v any) bool {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("client: encode %T: %v", v, err)) // our own frame types always encode
	}
	return c.queue(textFrame(b))
}
