package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// The floor is the least any fan-out server must do, measured with the same
// clients as the nodes: accept WebSocket connections (plain protocol, like
// a node's "/"), and send every text frame any client sends to every client,
// its sender included. There is one broadcaster goroutine; no JSON, no
// rooms, no actors. Frames that arrive while the broadcaster is writing are
// encoded together and go out in the next pass, in one write per socket, so
// the number of writes per delivery falls as the load rises.
//
// Goroutines: one acceptor; one reader per connection (it alone reads its
// socket, and hands payloads and its own end to the broadcaster); one
// broadcaster, which alone owns the client list and alone writes to sockets.
// A socket whose write does not finish within floorWriteTimeout is dropped:
// the floor never lets one slow client hold the rest for longer than that.

// floorGreeting is the first frame each client gets; a plain-protocol bench
// client counts itself ready when it arrives.
const floorGreeting = "connected to floor"

// floorWriteTimeout bounds one write of one batch to one socket.
const floorWriteTimeout = 5 * time.Second

// floorMaxBatch caps the bytes of frames one pass sends (the batch is the
// same bytes for every socket).
const floorMaxBatch = 256 << 10

// floorServer is a running floor.
type floorServer struct {
	ln     net.Listener
	in     chan []byte     // payloads from readers, in arrival order
	join   chan *floorConn // upgraded connections, for the broadcaster
	leave  chan *floorConn // connections whose reader ended
	done   chan struct{}   // closed by close(): every goroutine returns
	wg     sync.WaitGroup
	stats  floorStats // written by the broadcaster, read after close
	closed sync.Once

	mu  sync.Mutex // guards all
	all map[net.Conn]struct{}
}

// floorConn is one client of the floor.
type floorConn struct {
	nc  net.Conn
	idx int // position in the broadcaster's list; broadcaster-owned
}

// floorStats counts the broadcaster's work.
type floorStats struct {
	passes int64 // batches sent
	frames int64 // frames encoded (each once, whatever the client count)
	writes int64 // socket writes
}

// startFloor listens on addr (a loopback host:port) and serves until close.
func startFloor(addr string) (*floorServer, error) {
	if err := checkLoopbackAddr(addr); err != nil {
		return nil, fmt.Errorf("floor --listen: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	f := &floorServer{
		ln:    ln,
		in:    make(chan []byte, 4096),
		join:  make(chan *floorConn, 256),
		leave: make(chan *floorConn, 256),
		done:  make(chan struct{}),
		all:   map[net.Conn]struct{}{},
	}
	f.wg.Add(2)
	go f.accept()
	go f.broadcast()
	return f, nil
}

// addr is the address the floor listens on.
func (f *floorServer) addr() string { return f.ln.Addr().String() }

// close stops accepting, closes every connection and waits for every
// goroutine of the floor; it returns the broadcaster's counters.
func (f *floorServer) close() floorStats {
	f.closed.Do(func() {
		close(f.done)
		_ = f.ln.Close()
		f.mu.Lock()
		for nc := range f.all {
			_ = nc.Close()
		}
		f.mu.Unlock()
	})
	f.wg.Wait()
	return f.stats
}

func (f *floorServer) accept() {
	defer f.wg.Done()
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.serve(nc)
	}
}

// serve upgrades nc, hands it to the broadcaster and reads it until it ends.
func (f *floorServer) serve(nc net.Conn) {
	defer f.wg.Done()
	f.mu.Lock()
	select {
	case <-f.done:
		f.mu.Unlock()
		_ = nc.Close()
		return
	default:
	}
	f.all[nc] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.all, nc)
		f.mu.Unlock()
	}()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := (ws.Upgrader{}).Upgrade(nc); err != nil {
		_ = nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	c := &floorConn{nc: nc, idx: -1}
	select {
	case f.join <- c:
	case <-f.done:
		_ = nc.Close()
		return
	}
	f.read(c)
	select {
	case f.leave <- c:
	case <-f.done:
	}
}

// read hands every text payload of c to the broadcaster until c ends.
func (f *floorServer) read(c *floorConn) {
	var p frameParser
	buf := make([]byte, 4<<10)
	handle := func(op ws.OpCode, payload []byte) error {
		switch op {
		case ws.OpText:
			select {
			case f.in <- append([]byte(nil), payload...):
				return nil
			case <-f.done:
				return net.ErrClosed
			}
		case ws.OpClose:
			return io.EOF
		}
		return nil
	}
	for {
		n, err := c.nc.Read(buf)
		if n > 0 {
			if ferr := p.feed(buf[:n], handle); ferr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// broadcast is the broadcaster: it owns the client list and every write.
func (f *floorServer) broadcast() {
	defer f.wg.Done()
	var (
		conns []*floorConn
		batch []byte
	)
	greeting := appendServerFrame(nil, ws.OpText, []byte(floorGreeting))
	drop := func(c *floorConn) {
		if c.idx < 0 {
			return
		}
		last := conns[len(conns)-1]
		conns[c.idx], last.idx = last, c.idx
		conns = conns[:len(conns)-1]
		c.idx = -1
		_ = c.nc.Close()
	}
	defer func() {
		for _, c := range conns {
			_ = c.nc.Close()
		}
	}()
	for {
		select {
		case <-f.done:
			return
		case c := <-f.join:
			c.idx = len(conns)
			conns = append(conns, c)
			if !floorWrite(c, greeting) {
				drop(c)
			}
		case c := <-f.leave:
			drop(c)
		case p := <-f.in:
			var n int
			batch, n = collectBatch(batch[:0], p, f.in, floorMaxBatch)
			f.stats.passes++
			f.stats.frames += int64(n)
			for i := 0; i < len(conns); {
				c := conns[i]
				f.stats.writes++
				if !floorWrite(c, batch) {
					drop(c) // moves the last connection to i
					continue
				}
				i++
			}
		}
	}
}

// collectBatch appends the frame of first, then of every payload already
// queued on in (without waiting), up to about max bytes, and returns the
// batch and the number of frames in it.
func collectBatch(dst, first []byte, in <-chan []byte, max int) ([]byte, int) {
	dst = appendServerFrame(dst, ws.OpText, first)
	n := 1
	for len(dst) < max {
		select {
		case p := <-in:
			dst = appendServerFrame(dst, ws.OpText, p)
			n++
		default:
			return dst, n
		}
	}
	return dst, n
}

// floorWrite writes b to c, bounded by floorWriteTimeout.
func floorWrite(c *floorConn, b []byte) bool {
	_ = c.nc.SetWriteDeadline(time.Now().Add(floorWriteTimeout))
	_, err := c.nc.Write(b)
	return err == nil
}

// appendServerFrame appends one final, unmasked server frame to dst.
func appendServerFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	dst = append(dst, 0x80|byte(op))
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xffff:
		dst = append(dst, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, payload...)
}

// runFloor serves a floor on addr until ctx ends, printing its address on
// out once it listens and its counters when it stops. With admin (a
// loopback host:port) it also serves /debug/pprof/ there, to profile the
// floor as the nodes are profiled.
func runFloor(ctx context.Context, addr, admin string, out io.Writer) error {
	if addr == "" {
		return errors.New("floor: --listen ADDR is required (a loopback host:port)")
	}
	var adminLn net.Listener
	if admin != "" {
		var err error
		if adminLn, err = net.Listen("tcp", admin); err != nil {
			return fmt.Errorf("floor --admin: %w", err)
		}
		defer adminLn.Close()
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		go func() { _ = (&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}).Serve(adminLn) }()
	}
	f, err := startFloor(addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "floor listening on ws://%s/\n", f.addr())
	<-ctx.Done()
	st := f.close()
	fmt.Fprintf(out, "floor: %d passes, %d frames, %d writes\n", st.passes, st.frames, st.writes)
	return nil
}
