//go:build !linux || netpoll_goroutines

package netpoll

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// This file is the portable fallback: one reader goroutine per started conn
// (blocking reads fed into the same Assembler) and a writer goroutine that
// exists only while frames are being written.

// fallbackReadBuffer is the read buffer a reader goroutine holds while it
// waits for bytes.
const fallbackReadBuffer = 4 << 10

// slotsRecycled: the fallback hands out slots itself.
const slotsRecycled = true

// perConnGoroutines reports whether started conns park a goroutine.
const perConnGoroutines = true

// aLongTimeAgo is a deadline in the past: it makes blocked I/O return.
var aLongTimeAgo = time.Unix(1, 0)

type pollerSys struct {
	wg sync.WaitGroup // reader and writer goroutines
}

type connSys struct {
	nc       net.Conn // the upgraded socket; the conn closes it when finished
	inflight int32    // frames handed to the writer goroutine, guarded by mu
}

var readBufPool = sync.Pool{New: func() any { b := make([]byte, fallbackReadBuffer); return &b }}

func (p *Poller) start() error { return nil }

// Close stops the sweeper, aborts every conn (HandleClose gets ErrClosed)
// and waits for their goroutines. It must not be called from a Handler.
func (p *Poller) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		close(p.stop)
		<-p.sweepDone
		p.flush.close()
		for _, c := range p.appendConns(nil) {
			c.Abort(ErrClosed)
		}
		p.sys.wg.Wait()
	})
	return nil
}

// Add takes an upgraded connection. buffered holds bytes the upgrade read
// past the handshake (copied; parsed first). It does not start reading: call
// Start.
func (p *Poller) Add(nc net.Conn, buffered []byte) (*Conn, error) {
	c := &Conn{p: p, sys: connSys{nc: nc}, id: p.ids.Add(1)}
	c.lastRecv.Store(p.now())
	c.keepBuffered(buffered)
	if err := p.insert(c, -1); err != nil {
		return nil, err
	}
	return c, nil
}

// Start begins delivering to h: a reader goroutine is started for the conn.
func (c *Conn) Start(h Handler) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.setHandlerLocked(h); err != nil {
		return err
	}
	c.flags |= fStarted | fRunning
	c.p.sys.wg.Add(1)
	go c.readLoop()
	return nil
}

// readLoop is the conn's reader goroutine; it holds the read token for the
// conn's whole life.
func (c *Conn) readLoop() {
	defer c.p.sys.wg.Done()
	bp := readBufPool.Get().(*[]byte)
	defer readBufPool.Put(bp)
	buf := *bp
	if c.rd != nil && c.rd.buffered != nil {
		b := c.rd.buffered
		c.rd.buffered = nil
		c.consume(b)
	}
	for {
		c.mu.Lock()
		done := c.shouldFinishLocked(false, nil)
		c.mu.Unlock()
		if done {
			break
		}
		n, err := c.sys.nc.Read(buf)
		if n > 0 {
			c.consume(buf[:n])
		}
		var eof bool
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			eof, err = true, nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			err = nil // an abort or a finished handshake woke us
		}
		if eof || err != nil {
			c.mu.Lock()
			c.shouldFinishLocked(eof, err)
			c.mu.Unlock()
			break
		}
	}
	c.finish()
}

// newWriteScratch: the writer goroutine writes with net.Buffers; no
// gather buffer.
func newWriteScratch() []byte { return nil }

// flushWithLocked is flushLocked: the writer goroutine needs no scratch.
func (c *Conn) flushWithLocked([]byte) { c.flushLocked() }

// flushLocked hands the queue to the writer goroutine, starting it if needed.
func (c *Conn) flushLocked() {
	if c.flags&(fFinished|fWriting) != 0 || c.out == nil || c.out.len() == 0 {
		return
	}
	c.flags |= fWriting
	c.p.sys.wg.Add(1)
	go c.writeLoop()
}

// writeLoop writes the queue with blocking writes, then exits.
func (c *Conn) writeLoop() {
	defer c.p.sys.wg.Done()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		q := c.out
		if c.flags&fFinished != 0 || q == nil || q.len() == 0 {
			c.flags &^= fWriting
			if c.flags&fFinished == 0 {
				c.queueDrainedLocked()
			}
			return
		}
		bufs := net.Buffers(append([][]byte(nil), q.pending()...))
		c.sys.inflight = int32(len(bufs))
		c.mu.Unlock()
		n, err := bufs.WriteTo(c.sys.nc)
		c.mu.Lock()
		c.sys.inflight = 0
		if c.out == q {
			c.writtenLocked(q, int(n))
		}
		if err != nil {
			c.flags &^= fWriting
			if c.flags&fFinished == 0 {
				c.writeFailedLocked(err)
			}
			return
		}
	}
}

// pending returns the unwritten frames, the first one possibly a tail.
func (q *outQueue) pending() [][]byte { return q.frames[q.head:] }

// closeSentLocked runs once our close frame is written.
func (c *Conn) closeSentLocked() {
	if cw, ok := c.sys.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	if c.flags&fCloseRcvd != 0 {
		_ = c.sys.nc.SetReadDeadline(aLongTimeAgo) // wake the reader to finish
	}
}

// abortIOLocked makes blocked reads and writes return.
func (c *Conn) abortIOLocked() {
	_ = c.sys.nc.SetDeadline(aLongTimeAgo)
}

func (c *Conn) releaseIOLocked() {}

// deferCloseLocked: net.Conn.Close is safe while the writer goroutine
// writes (it makes the write fail), so finish always closes at once.
func (c *Conn) deferCloseLocked() bool { return false }

// closeSocket closes the conn's net.Conn.
func (c *Conn) closeSocket() error { return c.sys.nc.Close() }

func (c *Conn) remoteAddr() net.Addr { return c.sys.nc.RemoteAddr() }
