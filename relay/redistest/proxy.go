package redistest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP forwarder on a free 127.0.0.1 port in front of a Redis
// server, so a test can move a client to another server the way a virtual
// IP or a DNS failover would: Retarget sends new connections to another
// address and cuts the current ones, and the client reconnects to the new
// server without knowing.
//
// Its goroutines: one accept loop, and two copy loops per proxied
// connection; Close stops them all and waits.
type Proxy struct {
	ln   net.Listener
	wg   sync.WaitGroup // the accept loop and every copy loop
	drop atomic.Bool    // discard what servers send to clients

	mu     sync.Mutex // guards following
	target string
	conns  map[net.Conn]struct{} // both ends of every proxied connection
	closed bool
}

// StartProxy listens on a free 127.0.0.1 port and forwards to target
// (host:port). It is closed in t.Cleanup.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns redis://<proxy>/0.
func (p *Proxy) URL() string { return "redis://" + p.Addr() + "/0" }

// Retarget forwards new connections to target and closes every current
// one.
func (p *Proxy) Retarget(target string) {
	p.mu.Lock()
	p.target = target
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}

// DropReplies makes the proxy discard what the server sends back while on:
// commands still reach the server and run, their replies are lost, as in
// a network partition right after a request was sent.
func (p *Proxy) DropReplies(on bool) { p.drop.Store(on) }

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	_ = p.ln.Close()
	for c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target, closed := p.target, p.closed
		p.mu.Unlock()
		if closed {
			_ = in.Close()
			return
		}
		out, err := net.Dial("tcp", target)
		if err != nil {
			_ = in.Close()
			continue
		}
		p.mu.Lock()
		if p.closed || p.target != target {
			p.mu.Unlock()
			_ = in.Close()
			_ = out.Close()
			continue
		}
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out, true)
		go p.pipe(out, in, false)
	}
}

// pipe copies from src to dst until either side fails, then closes both;
// replies (server to client) are discarded while DropReplies is on.
func (p *Proxy) pipe(dst, src net.Conn, replies bool) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !(replies && p.drop.Load()) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}
