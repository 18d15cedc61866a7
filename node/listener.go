package node

import (
	"context"
	"net"
	"net/netip"
	"sync"
)

// chanListener is the in-memory net.Listener the public http.Server serves:
// the accept loop (see upgrade.go) hands it every connection that is not a
// WebSocket upgrade it can take itself.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// Accept returns the next handed-over connection, or net.ErrClosed once the
// listener is closed.
func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops Accept; connections handed over afterwards are closed by push.
func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// push hands c to the http.Server, or closes it if the listener is closed.
func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

// replayConn is a net.Conn whose first reads return bytes already read from
// the socket (the request head the accept path peeked at). It carries what
// the accept path learnt about the peer (the http.Server puts it in each
// request's context: peerInfoKey), and reports the client's address as its
// remote address.
type replayConn struct {
	net.Conn
	buf  []byte
	peer peerInfo
}

// peerInfo is who is at the other end of an accepted connection.
type peerInfo struct {
	peer    netip.Addr // the TCP peer
	proxied netip.Addr // the client its trusted PROXY header named (or invalid)
}

// peerInfoKey is the request context key of a peerInfo.
type peerInfoKey struct{}

// RemoteAddr is the client's address as the PROXY header gave it, else the
// TCP peer's.
func (c *replayConn) RemoteAddr() net.Addr {
	if c.peer.proxied.IsValid() {
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(c.peer.proxied, 0))
	}
	return c.Conn.RemoteAddr()
}

// connContext is the public http.Server's ConnContext: it puts the accept
// path's peerInfo into every request's context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if rc, ok := c.(*replayConn); ok {
		return context.WithValue(ctx, peerInfoKey{}, rc.peer)
	}
	return ctx
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		if len(c.buf) == 0 {
			c.buf = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite lets net/http half-close the socket before closing it, as it
// does with a *net.TCPConn.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// unwrapConn returns the socket under a replayConn and the bytes it has not
// replayed yet; any other conn is returned as is.
func unwrapConn(nc net.Conn) (net.Conn, []byte) {
	if rc, ok := nc.(*replayConn); ok {
		b := rc.buf
		rc.buf = nil
		return rc.Conn, b
	}
	return nc, nil
}
