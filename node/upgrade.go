package node

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"parley/actors"
)

// The public listener's accept path. Every accepted connection gets a
// short-lived goroutine (handshake) that peeks at the request head. A
// well-formed "GET / or /ws HTTP/1.1" with "Upgrade: websocket" is upgraded
// here with gobwas's zero-copy Upgrader and handed to netpoll, and the
// goroutine ends. Anything else (the page, /static/, /healthz, /readyz,
// 404s, /ws without Upgrade, odd or oversized requests) goes to the public
// http.Server through a chanListener, on a replayConn that first returns the
// bytes already read; the server's mux still has the upgrade handlers, so
// whatever this path declines behaves exactly as before.

// maxHeaderBytes bounds Config.MaxHeaderBytes: the peek buffer is that
// large, pooled, one per handshake in progress.
const maxHeaderBytes = 1 << 20

// errHeadTooLarge: the request head does not fit MaxHeaderBytes.
var errHeadTooLarge = errors.New("request head larger than the header cap")

// acceptLoop accepts on the public listener until it is closed.
func (n *Node) acceptLoop() {
	defer close(n.acceptDone)
	var backoff time.Duration
	for {
		nc, err := n.pubLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds and the like: back off as net/http does.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			n.log.Warn("accept failed", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !n.trackHandshake(nc, true) {
			nc.Close()
			continue
		}
		n.hsWG.Add(1)
		go n.handshake(nc)
	}
}

// trackHandshake adds (or removes) nc from the set of connections still in
// their handshake; Shutdown expires their deadlines. Adding fails once the
// node has stopped accepting.
func (n *Node) trackHandshake(nc net.Conn, add bool) bool {
	n.hsMu.Lock()
	defer n.hsMu.Unlock()
	if !add {
		delete(n.hsConns, nc)
		return true
	}
	if n.hsClosed {
		return false
	}
	n.hsConns[nc] = struct{}{}
	return true
}

// stopHandshakes stops the accept path: no new connections, and those
// still reading their request head fail at once. It returns when every
// handshake goroutine has ended (after the accept loop).
func (n *Node) stopHandshakes() {
	n.pubLn.Close()
	<-n.acceptDone
	n.hsMu.Lock()
	n.hsClosed = true
	past := time.Unix(1, 0)
	for nc := range n.hsConns {
		_ = nc.SetDeadline(past)
	}
	n.hsMu.Unlock()
	n.hsWG.Wait()
}

var peekPool sync.Pool // of *bufio.Reader, sized peekSize

func (n *Node) getPeekReader(nc net.Conn) *bufio.Reader {
	if br, ok := peekPool.Get().(*bufio.Reader); ok && br.Size() == n.peekSize {
		br.Reset(nc)
		return br
	}
	return bufio.NewReaderSize(nc, n.peekSize)
}

func putPeekReader(br *bufio.Reader) {
	br.Reset(nil)
	peekPool.Put(br)
}

// handshake reads nc's request head and either upgrades it or hands it to
// the http.Server. It owns nc until then.
func (n *Node) handshake(nc net.Conn) {
	defer n.hsWG.Done()
	defer n.trackHandshake(nc, false)
	if n.cfg.HandshakeTimeout > 0 {
		_ = nc.SetDeadline(time.Now().Add(n.cfg.HandshakeTimeout))
	}
	br := n.getPeekReader(nc)
	peer := addrOf(nc.RemoteAddr())
	proxied, err := n.readProxy(nc, br, peer)
	if err != nil {
		putPeekReader(br)
		n.log.Debug("connection refused", "remote", peer.String(), "err", err)
		nc.Close()
		return
	}
	head, plain, fast, err := n.peekHead(br)
	if errors.Is(err, errHeadTooLarge) {
		putPeekReader(br)
		fmt.Fprintf(nc, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"+
			"Connection: close\r\n\r\nrequest head larger than %d bytes\n", n.cfg.MaxHeaderBytes)
		nc.Close()
		return
	}
	if err != nil {
		// Timeout, EOF or reset before a full head: net/http closes such
		// connections without an answer too.
		putPeekReader(br)
		nc.Close()
		return
	}
	if !fast {
		n.toHTTP(nc, br, peer, proxied)
		return
	}
	a, req, err := n.upgradeFast(nc, br, head, plain, peer, proxied)
	if err != nil {
		putPeekReader(br)
		n.countFailedUpgrade(err)
		n.log.Debug("upgrade failed", "remote", req.client.String(), "err", err)
		nc.Close()
		return
	}
	var buffered []byte
	if k := br.Buffered(); k > 0 {
		p, _ := br.Peek(k)
		buffered = append([]byte(nil), p...)
	}
	putPeekReader(br)
	// The handshake deadline must not outlive the handshake.
	_ = nc.SetDeadline(time.Time{})
	n.register(nc, buffered, a, req)
}

// readProxy consumes a PROXY protocol header if the peer is a trusted proxy
// and sent one, and returns the client address it names (invalid if none).
// A PROXY header from an untrusted peer is answered with 400 and an error:
// it would let anyone claim any address.
func (n *Node) readProxy(nc net.Conn, br *bufio.Reader, peer netip.Addr) (netip.Addr, error) {
	kind, err := proxyHeaderKind(br)
	if err != nil || kind == 0 {
		return netip.Addr{}, err // a read error shows again in peekHead
	}
	if !n.trusted(peer) {
		_, _ = io.WriteString(nc, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"+
			"Connection: close\r\n\r\nPROXY protocol header from a peer not in --trusted-proxies\n")
		return netip.Addr{}, errors.New("PROXY protocol header from an untrusted peer")
	}
	return readProxyHeader(br, kind)
}

// toHTTP hands nc to the public http.Server with the bytes read so far and
// what the accept path learnt about its peer.
func (n *Node) toHTTP(nc net.Conn, br *bufio.Reader, peer, proxied netip.Addr) {
	var replay []byte
	if k := br.Buffered(); k > 0 {
		p, _ := br.Peek(k)
		replay = append([]byte(nil), p...)
	}
	putPeekReader(br)
	// net/http sets its own deadlines (ReadHeaderTimeout, IdleTimeout).
	_ = nc.SetDeadline(time.Time{})
	n.pubCh.push(&replayConn{Conn: nc, buf: replay, peer: peerInfo{peer: peer, proxied: proxied}})
}

// peekHead fills br until it holds a whole request head (through the blank
// line) and reports its length, and whether it is an upgrade this path
// takes (fast) and for which mode. A head that looks unusual is not fast
// (net/http will judge it); one that does not fit the peek buffer
// (MaxHeaderBytes, exactly) is errHeadTooLarge.
func (n *Node) peekHead(br *bufio.Reader) (head int, plain, fast bool, err error) {
	scanned := 0 // bytes known to hold no blank line end
	for {
		k := br.Buffered()
		if k > scanned {
			buf, _ := br.Peek(k)
			if end := headEnd(buf, scanned); end > 0 {
				plain, fast = classify(buf[:end])
				return end, plain, fast, nil
			}
			scanned = k
		}
		if k >= br.Size() {
			return 0, false, false, errHeadTooLarge
		}
		if _, err := br.Peek(k + 1); err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return 0, false, false, err
		}
	}
}

// headEnd returns the length of the request head in buf (through the empty
// line ending it), or 0 if buf does not hold one yet. from is where to
// resume scanning: buf[:from] is known to hold no end.
func headEnd(buf []byte, from int) int {
	i := from
	if i > 0 {
		i-- // the end may straddle the previous scan's last byte
	}
	for {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			return 0
		}
		i += j + 1
		// A line "\n" or "\r\n" right after a previous line ends the head.
		if i >= 2 && buf[i-2] == '\n' {
			return i
		}
		if i >= 3 && buf[i-2] == '\r' && buf[i-3] == '\n' {
			return i
		}
	}
}

// classify reports whether head is a plain WebSocket upgrade this path
// takes: "GET / HTTP/1.1" (plain mode) or "GET /ws HTTP/1.1" (JSON mode),
// optionally with a query, and an Upgrade: websocket header.
func classify(head []byte) (plain, fast bool) {
	line, rest, _ := bytes.Cut(head, []byte{'\n'})
	line = bytes.TrimSuffix(line, []byte{'\r'})
	after, ok := bytes.CutPrefix(line, []byte("GET "))
	if !ok {
		return false, false
	}
	target, proto, ok := bytes.Cut(after, []byte{' '})
	if !ok || string(proto) != "HTTP/1.1" {
		return false, false
	}
	path, _, _ := bytes.Cut(target, []byte{'?'})
	switch string(path) {
	case "/":
		plain = true
	case "/ws":
	default:
		return false, false
	}
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte{'\n'})
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return false, false // obsolete line folding: leave it to net/http
		}
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			return false, false
		}
		if bytes.EqualFold(k, []byte("Upgrade")) {
			// net/http's Header.Get sees the first one only.
			return plain, bytes.EqualFold(bytes.TrimSpace(v), []byte("websocket"))
		}
	}
	return false, false
}

// headReader feeds gobwas's Upgrader the first n bytes of br (the request
// head, no more) and writes its answer straight to the socket.
type headReader struct {
	br *bufio.Reader
	n  int
	w  io.Writer
}

func (h *headReader) Read(p []byte) (int, error) {
	if h.n <= 0 {
		return 0, io.EOF
	}
	if len(p) > h.n {
		p = p[:h.n]
	}
	k, err := h.br.Read(p)
	h.n -= k
	return k, err
}

func (h *headReader) Write(p []byte) (int, error) { return h.w.Write(p) }

// upgradeFast runs the WebSocket handshake on the head peeked in br (head
// bytes) and admits it (admit). On error the Upgrader has answered with an
// HTTP error status already (a refusal's status, or 400/426 for a bad
// handshake) and no slot is held.
func (n *Node) upgradeFast(nc net.Conn, br *bufio.Reader, head int, plain bool, peer, proxied netip.Addr) (admission, *upgradeRequest, error) {
	req := &upgradeRequest{plain: plain, client: peer}
	var xff []byte
	var a admission
	admitted := false
	up := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			req.target = string(uri)
			return nil
		},
		OnHost: func(host []byte) error {
			req.host = string(host)
			return nil
		},
		OnHeader: func(key, value []byte) error {
			switch string(key) { // canonical form
			case "Origin":
				if !req.hasOrigin {
					req.origin, req.hasOrigin = string(value), true
				}
			case "X-Forwarded-For":
				if len(xff) > 0 {
					xff = append(xff, ',')
				}
				xff = append(xff, value...)
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			req.client = n.clientAddr(peer, proxied, string(xff))
			var r *refusal
			if a, r = n.admit(req); r != nil {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(r.status()), ws.RejectionReason(r.body()))
			}
			admitted = true
			return nil, nil
		},
	}
	hr := &headReader{br: br, n: head, w: nc}
	if _, err := up.Upgrade(hr); err != nil {
		if admitted {
			n.release(a.key) // the 101 could not be written
		}
		return admission{}, req, err
	}
	if hr.n > 0 {
		_, _ = br.Discard(hr.n) // not expected: gobwas reads through the blank line
	}
	return a, req, nil
}

// register hands an upgraded socket to netpoll and starts its connection
// actor. buffered holds bytes the client sent after its handshake. The
// admission's slot is released when the connection ends, or here if it
// cannot start.
func (n *Node) register(nc net.Conn, buffered []byte, a admission, req *upgradeRequest) {
	h := &sessionHandler{n: n, key: a.key}
	c, err := n.poller.Add(nc, buffered)
	if err != nil {
		n.log.Warn("netpoll add failed", "err", err)
		nc.Close()
		h.release()
		return
	}
	sess, err := n.sys.Connect(c, actors.ConnInfo{Name: a.name, Plain: req.plain, Remote: req.client.String(),
		Identity: a.id, NeedAuth: n.cfg.Auth != nil && a.id == nil})
	if err != nil {
		n.log.Warn("connect failed", "err", err)
		c.Abort(err)
		h.release()
		return
	}
	h.s = sess
	if err := c.Start(h); err != nil {
		n.log.Warn("netpoll start failed", "err", err)
		sess.HandleClose(err)
		c.Abort(err)
		h.release()
		return
	}
	n.upgrades.accepted.Add(1)
	if n.log.Enabled(context.Background(), slog.LevelDebug) {
		n.log.Debug("connection open", "conn", c.ID(), "session", sess.ID(), "plain", req.plain, "remote", req.client.String())
	}
}
