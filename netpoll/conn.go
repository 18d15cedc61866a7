package netpoll

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Handler receives a connection's messages and its end.
type Handler interface {
	// HandleMessage is called for each complete data message (op is
	// ws.OpText or ws.OpBinary), in order, never concurrently for one conn.
	// payload is owned by the handler (not reused).
	HandleMessage(c *Conn, op ws.OpCode, payload []byte)
	// HandleClose is called exactly once when the connection is finished
	// (peer close, EOF, error, protocol violation, our Close, Poller.Close).
	// err says why (nil for a clean close).
	HandleClose(c *Conn, err error)
}

// Conn state flags, guarded by Conn.mu.
const (
	fStarted       uint16 = 1 << iota // Start succeeded
	fArmed                            // Linux: armed in epoll, an event may come
	fRunning                          // a goroutine holds the read token
	fWantOut                          // a write hit EAGAIN: arm EPOLLOUT
	fWriting                          // a writer works outside mu (Linux: in its write call; else: the writer goroutine runs)
	fClosing                          // closing: Enqueue fails, data is dropped
	fCloseQueued                      // our close frame is in the queue
	fCloseSent                        // our close frame is written, write side shut
	fCloseRcvd                        // the peer's close frame was received
	fDiscard                          // inbound bytes are no longer parsed
	fAbort                            // finish as soon as the read token allows
	fFinished                         // socket closed, HandleClose called or due
	fFlushQueued                      // listed for a flusher (Send)
	fCloseByWriter                    // Linux: finished mid-write; the writer closes the socket
)

// Conn is one upgraded WebSocket connection registered with a Poller.
//
// Ownership: the goroutine holding the read token (fRunning: a worker, the
// non-Linux reader goroutine, or whoever finishes the conn) alone reads the
// socket, touches rd and calls the Handler; everything under mu may be used
// by any goroutine; pingAt belongs to the sweeper.
type Conn struct {
	sys      connSys // platform part
	p        *Poller
	h        Handler // set by Start before the first event
	id       uint64
	lastRecv atomic.Int64 // poller clock of the last received bytes
	pingAt   int64        // sweeper-owned: when the outstanding ping was sent
	rd       *reader      // read-token-owned: non-nil only mid-frame
	slot     int32

	mu      sync.Mutex // guards following
	flags   uint16
	pending uint32      // Linux: epoll events that came while running
	out     *outQueue   // non-nil only while frames wait
	cs      *closeState // non-nil once closing or failing
}

// closeState is what a closing conn needs; allocated on the way out only.
type closeState struct {
	deadline int64 // poller clock after which the sweeper aborts the conn
	err      error // reason given to HandleClose
	errSet   bool
}

// reader is a conn's read-side state while a frame or message is incomplete.
type reader struct {
	asm      Assembler
	buffered []byte // upgrade leftovers not yet parsed
}

var readerPool = sync.Pool{New: func() any { return new(reader) }}

// Frames built once.
var (
	pingFrame       = AppendFrame(nil, ws.OpPing, nil)
	emptyCloseFrame = AppendFrame(nil, ws.OpClose, nil)
)

// ID returns the connection's id, unique per poller.
func (c *Conn) ID() uint64 { return c.id }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remoteAddr() }

// Enqueue queues one complete frame (built with AppendFrame; the slice may be
// shared with other conns and is never modified). It returns ErrQueueFull
// when the frame would take the queue over MaxQueueBytes or MaxQueueFrames
// (the frame is not queued) and ErrClosed once the conn is closing. It does
// not write: call Flush.
func (c *Conn) Enqueue(frame []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flags&(fClosing|fFinished) != 0 {
		return ErrClosed
	}
	return c.pushLocked(frame, true)
}

// Write is Enqueue followed by Flush.
func (c *Conn) Write(frame []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flags&(fClosing|fFinished) != 0 {
		return ErrClosed
	}
	if err := c.pushLocked(frame, true); err != nil {
		return err
	}
	c.flushLocked()
	return nil
}

// Flush writes the queued frames now, coalesced in one write; what the
// socket does not take is written when it becomes writable. It never blocks.
func (c *Conn) Flush() {
	c.mu.Lock()
	c.flushLocked()
	c.mu.Unlock()
}

// keepBuffered holds the bytes an upgrade read past its handshake, so they
// are parsed before anything read from the socket (a copy: the caller's
// buffer may be pooled).
func (c *Conn) keepBuffered(buffered []byte) {
	if len(buffered) == 0 {
		return
	}
	c.rd = readerPool.Get().(*reader)
	c.rd.asm.MaxMessageSize = c.p.cfg.MaxMessageSize
	c.rd.buffered = bytes.Clone(buffered)
}

// setHandlerLocked checks that the conn can be started and records h; the
// platform's Start then registers it.
func (c *Conn) setHandlerLocked(h Handler) error {
	switch {
	case h == nil:
		return errors.New("netpoll: start: nil handler")
	case c.flags&fFinished != 0:
		return ErrClosed
	case c.flags&fStarted != 0:
		return errors.New("netpoll: start: already started")
	}
	c.h = h
	return nil
}

// Close closes the conn gracefully: queued frames go first, then a close
// frame with code and reason (no payload if code is 0 or not valid on the
// wire, like 1005), then the conn
// waits up to CloseTimeout for the peer's close or EOF before its socket is
// closed and HandleClose is called. Messages that arrive meanwhile are
// dropped. A no-op if the conn is already closing.
func (c *Conn) Close(code ws.StatusCode, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flags&(fClosing|fFinished) != 0 {
		return
	}
	c.beginCloseLocked(code, reason, false)
	c.setReasonLocked(nil)
	c.flushLocked()
}

// Kick closes a conn that must go now (a slow consumer): queued frames not
// yet started are dropped (a partly written one is finished), then it is
// closed as by Close. HandleClose gets an error wrapping a *CloseError with
// code and reason.
func (c *Conn) Kick(code ws.StatusCode, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flags&(fClosing|fFinished) != 0 {
		return
	}
	c.beginCloseLocked(code, reason, true)
	c.setReasonLocked(fmt.Errorf("netpoll: kicked: %w", &CloseError{Code: code, Reason: reason}))
	c.flushLocked()
}

// Abort closes the connection without a close handshake: the socket is shut
// down at once and closed by the goroutine holding the read token (right
// away when it is idle, after the running HandleMessage returns otherwise).
// err is given to HandleClose unless a more specific reason was recorded
// first (nil means ErrClosed).
func (c *Conn) Abort(err error) {
	if err == nil {
		err = ErrClosed
	}
	c.mu.Lock()
	if c.flags&fFinished != 0 {
		c.mu.Unlock()
		return
	}
	c.setReasonLocked(err)
	c.flags |= fAbort
	if c.flags&(fStarted|fRunning) != 0 {
		c.abortIOLocked()
		c.mu.Unlock()
		return
	}
	c.flags |= fRunning // never started: nobody else can hold the token
	c.mu.Unlock()
	c.finish()
}

// pushLocked appends frame to the queue; capped applies the queue limits.
func (c *Conn) pushLocked(frame []byte, capped bool) error {
	if len(frame) == 0 {
		return nil
	}
	q := c.out
	if capped {
		frames, bytes := 0, 0
		if q != nil {
			frames, bytes = q.len(), q.bytes
		}
		if frames+1 > c.p.cfg.MaxQueueFrames || bytes+len(frame) > c.p.cfg.MaxQueueBytes {
			return ErrQueueFull
		}
	}
	if q == nil {
		q = getQueue()
		c.out = q
	}
	q.push(frame)
	return nil
}

// beginCloseLocked starts closing: the conn takes no more frames, a close
// frame is queued last and the close deadline runs.
func (c *Conn) beginCloseLocked(code ws.StatusCode, reason string, dropUnstarted bool) {
	side := SideServer
	if c.flags&fCloseRcvd != 0 {
		side = SideClient // peerClose: we echo the peer's code
	}
	c.p.closes.add(side, code)
	c.flags |= fClosing | fCloseQueued
	c.closeStateLocked().deadline = c.p.now() + int64(c.p.cfg.CloseTimeout)
	if dropUnstarted && c.out != nil {
		c.out.truncate(c.inFlightLocked())
	}
	frame := emptyCloseFrame
	if validCloseCode(code) {
		frame = AppendFrame(nil, ws.OpClose, ws.NewCloseFrameBody(code, truncateUTF8(reason, maxControlPayload-2)))
	}
	_ = c.pushLocked(frame, false)
}

// inFlightLocked returns how many queued frames are being or have been
// partly written: those handed to a write now running (connSys.inflight),
// else a partly written head.
func (c *Conn) inFlightLocked() int {
	if n := int(c.sys.inflight); n > 0 {
		return n
	}
	if c.out != nil && c.out.started {
		return 1
	}
	return 0
}

func (c *Conn) closeStateLocked() *closeState {
	if c.cs == nil {
		c.cs = &closeState{}
	}
	return c.cs
}

// setReasonLocked records why the conn ends. The first reason wins, except
// that a nil reason (a clean close so far) yields to a later error.
func (c *Conn) setReasonLocked(err error) {
	cs := c.closeStateLocked()
	if !cs.errSet || (cs.err == nil && err != nil) {
		cs.err, cs.errSet = err, true
	}
}

// queueDrainedLocked runs when the queue has been fully written.
func (c *Conn) queueDrainedLocked() {
	if c.out != nil {
		putQueue(c.out)
		c.out = nil
	}
	c.flags &^= fWantOut
	if c.flags&(fCloseQueued|fCloseSent) == fCloseQueued {
		c.flags |= fCloseSent
		c.closeSentLocked()
	}
}

// writeFailedLocked gives up writing: the conn is aborted.
func (c *Conn) writeFailedLocked(err error) {
	c.setReasonLocked(fmt.Errorf("netpoll: write: %w", err))
	c.flags |= fAbort
	if c.out != nil {
		putQueue(c.out)
		c.out = nil
	}
	c.abortIOLocked()
}

// consume parses received bytes and acts on what completes. The caller holds
// the read token.
func (c *Conn) consume(data []byte) {
	c.lastRecv.Store(c.p.now())
	c.mu.Lock()
	discard := c.flags&fDiscard != 0
	c.mu.Unlock()
	if discard {
		return
	}
	if c.rd == nil {
		c.rd = readerPool.Get().(*reader)
		c.rd.asm.MaxMessageSize = c.p.cfg.MaxMessageSize
	}
	flush := false
loop:
	for len(data) > 0 {
		n, op, payload, err := c.rd.asm.Next(data)
		data = data[n:]
		if err != nil {
			c.protocolFailure(err)
			break
		}
		switch op {
		case ws.OpText, ws.OpBinary:
			c.mu.Lock()
			closing := c.flags&fClosing != 0
			c.mu.Unlock()
			if !closing && !c.deliver(op, payload) {
				break loop
			}
		case ws.OpPing:
			c.mu.Lock()
			if c.flags&fClosing == 0 {
				_ = c.pushLocked(AppendFrame(nil, ws.OpPong, payload), true) // dropped when full
				flush = true
			}
			c.mu.Unlock()
		case ws.OpClose:
			c.peerClose(payload)
			break loop
		}
	}
	if flush {
		c.Flush()
	}
	c.releaseReader()
}

// deliver hands one message to the Handler. A panic in it is this
// connection's alone: it is logged once with its stack, the connection is
// closed with 1011, and deliver reports false; the worker and every other
// connection carry on.
func (c *Conn) deliver(op ws.OpCode, payload []byte) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			c.p.log.Error("netpoll: handler panicked: closing the connection with 1011",
				"conn", c.id, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			c.protocolFailure(&CloseError{Code: ws.StatusInternalServerError, Reason: "internal error"})
			ok = false
		}
	}()
	c.h.HandleMessage(c, op, payload)
	return true
}

// reportClose calls HandleClose; a panic in it is logged once with its
// stack and goes no further (the socket is closed already).
func (c *Conn) reportClose(err error) {
	defer func() {
		if v := recover(); v != nil {
			c.p.log.Error("netpoll: close handler panicked", "conn", c.id, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	c.h.HandleClose(c, err)
}

// releaseReader returns rd to its pool when no frame is in progress.
func (c *Conn) releaseReader() {
	if rd := c.rd; rd != nil && rd.buffered == nil && (rd.asm.Idle() || rd.asm.Err() != nil) {
		rd.asm.Reset()
		readerPool.Put(rd)
		c.rd = nil
	}
}

// peerClose handles the peer's close frame (payload already validated).
func (c *Conn) peerClose(payload []byte) {
	code, reason := parseClosePayload(payload)
	var why error
	switch code {
	case ws.StatusNormalClosure, ws.StatusGoingAway, ws.StatusNoStatusRcvd:
	default:
		why = fmt.Errorf("netpoll: peer closed: %w", &CloseError{Code: code, Reason: reason})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flags |= fCloseRcvd | fDiscard
	if c.flags&fClosing == 0 {
		c.beginCloseLocked(code, "", false) // echo the peer's code
	}
	c.setReasonLocked(why)
	c.flushLocked()
}

// protocolFailure answers a bad frame stream with the close code it calls
// for, then waits for the peer's EOF (or CloseTimeout).
func (c *Conn) protocolFailure(err error) {
	var ce *CloseError
	if !errors.As(err, &ce) {
		ce = &CloseError{Code: ws.StatusInternalServerError, Reason: "internal error"}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flags |= fDiscard
	if c.flags&fClosing == 0 {
		c.beginCloseLocked(ce.Code, ce.Reason, true)
	}
	c.setReasonLocked(fmt.Errorf("netpoll: read: %w", err))
	c.flushLocked()
}

// shouldFinishLocked decides, at the end of a read turn, whether the conn is
// done. eof and rerr come from the read.
func (c *Conn) shouldFinishLocked(eof bool, rerr error) bool {
	switch {
	case c.flags&fFinished != 0:
		return false
	case c.flags&fAbort != 0:
		return true
	case rerr != nil:
		c.setReasonLocked(fmt.Errorf("netpoll: read: %w", rerr))
		return true
	case eof:
		if c.flags&(fCloseSent|fCloseRcvd) == 0 {
			c.setReasonLocked(fmt.Errorf("netpoll: peer closed without a close frame: %w", io.ErrUnexpectedEOF))
		}
		return true
	case c.flags&(fCloseSent|fCloseRcvd) == fCloseSent|fCloseRcvd:
		return true
	}
	return false
}

// finish closes the socket and reports the end. Only the read token holder
// calls it.
func (c *Conn) finish() {
	c.mu.Lock()
	if c.flags&fFinished != 0 {
		c.mu.Unlock()
		return
	}
	if c.flags&(fCloseQueued|fCloseRcvd) == 0 {
		c.p.closes.add(SideNetwork, ws.StatusAbnormalClosure)
	}
	c.flags |= fFinished
	c.releaseIOLocked()
	if c.out != nil {
		putQueue(c.out)
		c.out = nil
	}
	var err error
	if c.cs != nil {
		err = c.cs.err
	}
	started := c.flags&fStarted != 0
	deferred := c.deferCloseLocked()
	c.mu.Unlock()

	c.p.remove(c, slotsRecycled)
	if !deferred {
		if cerr := c.closeSocket(); cerr != nil {
			c.p.log.Debug("netpoll: close socket", "conn", c.id, "err", cerr)
		}
	}
	if rd := c.rd; rd != nil {
		c.rd = nil
		rd.asm.Reset()
		rd.buffered = nil
		readerPool.Put(rd)
	}
	c.p.log.Debug("netpoll: conn finished", "conn", c.id, "err", err)
	if started {
		c.reportClose(err)
	}
}

// sweep is the sweeper's look at one conn.
func (c *Conn) sweep(now int64) {
	p := c.p
	c.mu.Lock()
	flags := c.flags
	switch {
	case flags&fFinished != 0:
		c.mu.Unlock()
		return
	case flags&(fAbort|fRunning|fArmed) == fAbort|fArmed:
		// Aborted, yet no worker came: finish here.
		c.flags = c.flags&^fArmed | fRunning
		c.mu.Unlock()
		c.finish()
		return
	case flags&fClosing != 0 && now >= c.cs.deadline:
		c.mu.Unlock()
		c.Abort(ErrCloseTimeout)
		return
	}
	c.mu.Unlock()
	if p.cfg.PingInterval < 0 || flags&(fStarted|fClosing) != fStarted {
		return
	}
	interval := int64(p.cfg.PingInterval)
	last := c.lastRecv.Load()
	if c.pingAt != 0 && last >= c.pingAt {
		c.pingAt = 0
	}
	switch {
	case now-last < interval:
	case c.pingAt == 0:
		c.pingAt = now
		c.mu.Lock()
		if c.flags&(fClosing|fFinished) == 0 {
			_ = c.pushLocked(pingFrame, true) // a full queue: the conn will time out
			c.flushLocked()
		}
		c.mu.Unlock()
	case now-c.pingAt >= interval:
		// Dead: send the close frame if the socket takes it, and give it
		// one sweeper tick before the conn is aborted.
		c.mu.Lock()
		if c.flags&(fClosing|fFinished) == 0 {
			c.beginCloseLocked(ws.StatusGoingAway, "ping timeout", true)
			c.cs.deadline = now + int64(p.cfg.sweepTick())
			c.setReasonLocked(ErrPingTimeout)
			c.flushLocked()
		}
		c.mu.Unlock()
	}
}

// truncateUTF8 cuts s to at most n bytes without splitting a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
