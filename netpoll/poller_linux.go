//go:build linux && !netpoll_goroutines

package netpoll

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// readBufferSize is each worker's read buffer.
	readBufferSize = 16 << 10
	// writeScratchSize is the buffer each flusher and worker gathers a
	// conn's queued frames into for one write(2) (writeLocked).
	writeScratchSize = 16 << 10
	// maxReadsPerWakeup bounds the reads of one conn per event, for fairness;
	// a conn with more bytes waiting is re-armed and served again later.
	maxReadsPerWakeup = 4
	// maxIovecs bounds one writev: its iovec array lives on the writer's
	// stack (1 KiB, zeroed on every writeLocked call); a longer queue takes
	// more calls. Writers with a gather buffer (flushers, workers) use
	// writev only for a lone frame or one larger than the buffer.
	maxIovecs = 64
	// eventBatch is how many epoll events one epoll_wait returns at most.
	eventBatch = 256
	// taskQueue is the depth of the ready-conn queue feeding the workers.
	taskQueue = 1024

	armIn  = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT
	armOut = armIn | unix.EPOLLOUT
)

// slotsRecycled: on Linux a conn's slot is its fd, never handed out by us.
const slotsRecycled = false

// perConnGoroutines reports whether started conns park a goroutine.
const perConnGoroutines = false

type pollerSys struct {
	epfd     int
	evfd     int // eventfd written by Close to stop the epoll loop
	tasks    chan task
	loopDone chan struct{}
	workers  sync.WaitGroup
}

type connSys struct {
	fd       int32
	inflight int32 // frames in the writev now running (fWriting), guarded by mu
}

type task struct {
	c  *Conn
	ev uint32
}

// start creates the epoll set and starts the epoll loop and the workers.
func (p *Poller) start() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("netpoll: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf("netpoll: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(evfd)
		unix.Close(epfd)
		return fmt.Errorf("netpoll: epoll_ctl add eventfd: %w", err)
	}
	p.sys = pollerSys{
		epfd:     epfd,
		evfd:     evfd,
		tasks:    make(chan task, taskQueue),
		loopDone: make(chan struct{}),
	}
	p.sys.workers.Add(p.cfg.Workers)
	for range p.cfg.Workers {
		go p.worker()
	}
	go p.loop()
	return nil
}

// Close stops the epoll loop, the workers and the sweeper, then aborts every
// remaining conn (HandleClose gets ErrClosed) on the calling goroutine. No
// goroutine of the poller is left when it returns. It must not be called from
// a Handler.
func (p *Poller) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		close(p.stop)
		<-p.sweepDone
		p.flush.close()

		var one [8]byte
		one[0] = 1 // eventfd counters are host-endian; any non-zero value wakes
		if _, err := unix.Write(p.sys.evfd, one[:]); err != nil {
			p.log.Error("netpoll: wake epoll loop", "err", err)
		}
		<-p.sys.loopDone
		close(p.sys.tasks)
		p.sys.workers.Wait()

		for _, c := range p.appendConns(nil) {
			c.mu.Lock()
			if c.flags&fFinished != 0 {
				c.mu.Unlock()
				continue
			}
			c.setReasonLocked(ErrClosed)
			c.flags = c.flags&^fArmed | fRunning
			c.mu.Unlock()
			c.finish()
		}
		unix.Close(p.sys.evfd)
		unix.Close(p.sys.epfd)
	})
	return nil
}

// Add takes an upgraded connection: a *net.TCPConn or anything implementing
// syscall.Conn over a non-blocking socket. buffered holds bytes the upgrade
// read past the handshake (copied; parsed before anything read later). It
// does not start reading: call Start.
func (p *Poller) Add(nc net.Conn, buffered []byte) (*Conn, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("netpoll: add %T: not a syscall.Conn", nc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("netpoll: add: %w", err)
	}
	// Keep a duplicate of the fd and close the net.Conn: the runtime's
	// netFD, its poll descriptor and the two addresses it holds go away
	// (about 0.4 KiB of every idle connection), and only epoll watches the
	// socket. The dup is the only fd registered here, so closing it is
	// what ends the socket (epoll tracks the open file description, so a
	// registered dup would stay in the set after the original closes; we
	// never register the original).
	fd := -1
	var dupErr error
	// O_NONBLOCK belongs to the open file description, which the dup
	// shares: the runtime already made it non-blocking.
	if err := rc.Control(func(f uintptr) { fd, dupErr = dupFd(f) }); err != nil {
		return nil, fmt.Errorf("netpoll: add: %w", err)
	}
	if dupErr != nil {
		return nil, fmt.Errorf("netpoll: add: dup fd: %w", dupErr)
	}
	if err := nc.Close(); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netpoll: add: release net.Conn: %w", err)
	}
	c := &Conn{p: p, id: p.ids.Add(1)}
	c.sys.fd = int32(fd)
	c.lastRecv.Store(p.now())
	c.keepBuffered(buffered)
	if err := p.insert(c, fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netpoll: add fd %d: %w", fd, err)
	}
	return c, nil
}

// dupFd duplicates fd (close-on-exec) without telling the scheduler: the
// call never waits for I/O, but under a connection ramp it can wait on the
// kernel's fd-table lock long enough that a scheduler-aware call has its P
// handed off, and each handoff may start an OS thread the runtime keeps for
// good (a ramp of 13,000 upgrades grew a node from ~12 to ~57 threads, about
// 48 KiB of stacks each, all counted in the idle connections' RSS).
func dupFd(fd uintptr) (int, error) {
	r, _, errno := unix.RawSyscall(unix.SYS_FCNTL, fd, unix.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// Start registers the conn with epoll and begins delivering to h.
func (c *Conn) Start(h Handler) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.setHandlerLocked(h); err != nil {
		return err
	}
	events := uint32(armIn)
	if c.flags&fWantOut != 0 || c.rd != nil {
		// Writable at once: the first event comes straight away and the
		// worker parses the upgrade leftovers first.
		events = armOut
	}
	ev := unix.EpollEvent{Events: events, Fd: c.sys.fd, Pad: int32(uint32(c.id))}
	if err := unix.EpollCtl(c.p.sys.epfd, unix.EPOLL_CTL_ADD, int(c.sys.fd), &ev); err != nil {
		return fmt.Errorf("netpoll: start: epoll_ctl add fd %d: %w", c.sys.fd, err)
	}
	c.flags |= fStarted | fArmed
	return nil
}

// loop is the epoll goroutine: it turns ready fds into worker tasks.
func (p *Poller) loop() {
	defer close(p.sys.loopDone)
	events := make([]unix.EpollEvent, eventBatch)
	batch := make([]task, 0, eventBatch)
	for {
		n, err := unix.EpollWait(p.sys.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.log.Error("netpoll: epoll_wait", "err", err)
			return
		}
		stop := false
		p.mu.RLock()
		for _, ev := range events[:n] {
			if int(ev.Fd) == p.sys.evfd {
				stop = true
				continue
			}
			c := p.lookupLocked(int(ev.Fd))
			if c == nil || uint32(c.id) != uint32(ev.Pad) {
				continue // stale event of a finished conn
			}
			batch = append(batch, task{c: c, ev: ev.Events})
		}
		p.mu.RUnlock()
		for _, t := range batch {
			p.dispatch(t)
		}
		clear(batch)
		batch = batch[:0]
		if stop {
			return
		}
	}
}

// dispatch hands a ready conn to a worker unless one already holds it.
func (p *Poller) dispatch(t task) {
	c := t.c
	c.mu.Lock()
	if c.flags&fFinished != 0 {
		c.mu.Unlock()
		return
	}
	c.flags &^= fArmed
	if c.flags&fRunning != 0 {
		c.pending |= t.ev
		c.mu.Unlock()
		return
	}
	c.flags |= fRunning
	c.mu.Unlock()
	p.sys.tasks <- t
}

// worker handles ready conns with its own read buffer.
func (p *Poller) worker() {
	defer p.sys.workers.Done()
	buf, scratch := make([]byte, readBufferSize), make([]byte, writeScratchSize)
	for t := range p.sys.tasks {
		t.c.handle(t.ev, buf, scratch)
	}
}

// handle serves one readiness event; the caller holds the read token, and
// handle gives it back by re-arming the fd or by finishing the conn.
func (c *Conn) handle(ev uint32, buf, scratch []byte) {
	for {
		var eof bool
		var rerr error
		if c.rd != nil && c.rd.buffered != nil {
			b := c.rd.buffered
			c.rd.buffered = nil
			c.consume(b)
		}
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			eof, rerr = c.readSome(buf)
		}
		c.mu.Lock()
		if ev&unix.EPOLLOUT != 0 {
			c.writeLocked(scratch)
		}
		if c.shouldFinishLocked(eof, rerr) {
			c.mu.Unlock()
			c.finish()
			return
		}
		if c.pending != 0 {
			ev, c.pending = c.pending, 0
			c.mu.Unlock()
			continue
		}
		if err := c.armLocked(); err != nil {
			c.setReasonLocked(err)
			c.mu.Unlock()
			c.finish()
			return
		}
		c.flags = c.flags&^fRunning | fArmed
		c.mu.Unlock()
		return
	}
}

// armLocked re-arms the one-shot registration.
func (c *Conn) armLocked() error {
	events := uint32(armIn)
	if c.flags&fWantOut != 0 {
		events = armOut
	}
	ev := unix.EpollEvent{Events: events, Fd: c.sys.fd, Pad: int32(uint32(c.id))}
	if err := unix.EpollCtl(c.p.sys.epfd, unix.EPOLL_CTL_MOD, int(c.sys.fd), &ev); err != nil {
		return fmt.Errorf("netpoll: epoll_ctl mod fd %d: %w", c.sys.fd, err)
	}
	return nil
}

// readSome reads until EAGAIN, EOF, an error, or the per-wakeup bound.
func (c *Conn) readSome(buf []byte) (eof bool, err error) {
	for range maxReadsPerWakeup {
		n, err := unix.Read(int(c.sys.fd), buf)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return false, nil
		case err != nil:
			return false, err
		case n == 0:
			return true, nil
		}
		c.consume(buf[:n])
		if n < len(buf) {
			return false, nil // drained; level-triggered re-arm covers a race
		}
	}
	return false, nil
}

// flushLocked writes the queue now unless the socket was found full and a
// worker is already due to continue on EPOLLOUT.
func (c *Conn) flushLocked() { c.flushWithLocked(nil) }

// newWriteScratch returns a flusher's gather buffer (writeLocked).
func newWriteScratch() []byte { return make([]byte, writeScratchSize) }

// flushWithLocked is flushLocked for a goroutine that owns scratch, a
// buffer it may gather queued frames into (see writeLocked).
func (c *Conn) flushWithLocked(scratch []byte) {
	if c.flags&fWantOut != 0 {
		return
	}
	c.writeLocked(scratch)
}

// writeLocked writes the queue until it is empty or the socket is full;
// then EPOLLOUT is armed and a worker continues.
//
// The write runs with mu released (fWriting says a goroutine is in it), so
// fan-out keeps queueing frames on this conn while its socket is written,
// and the epoll loop never waits for a write to learn of a read. One writer
// at a time: a caller that finds fWriting set returns at once, and the
// writer loops until the queue is empty, so it also takes whatever was
// queued during its write. Callers hold mu; it is released and re-taken
// inside, so they must not rely on state read before the call.
//
// With a scratch buffer (flushers and workers own one), several queued
// frames are first copied into it under mu and leave in one write(2) from
// one buffer, as the floor's do: cheaper in the kernel than a writev of as
// many small iovecs. Otherwise, or for a frame larger than scratch, the
// frames go out by writev straight from the queue.
func (c *Conn) writeLocked(scratch []byte) {
	if c.flags&(fFinished|fWriting) != 0 {
		return
	}
	c.flags |= fWriting
	var iovs [maxIovecs]unix.Iovec
	for {
		q := c.out
		if q == nil || q.len() == 0 {
			c.flags &^= fWriting
			c.queueDrainedLocked()
			return
		}
		frames, gathered := 0, 0
		if len(scratch) > 0 && q.len() > 1 {
			frames, gathered = q.gather(scratch)
		}
		if frames < 2 {
			frames, gathered = q.iovecs(iovs[:]), 0
		}
		c.sys.inflight = int32(frames)
		c.mu.Unlock()
		if testHookWritev != nil {
			testHookWritev(c)
		}
		var w int
		var err error
		if gathered > 0 {
			w, err = unix.Write(int(c.sys.fd), scratch[:gathered])
		} else {
			w, err = writev(c.sys.fd, iovs[:frames])
		}
		c.mu.Lock()
		c.sys.inflight = 0
		if c.flags&fFinished != 0 || c.out != q {
			// Finished during the write: finish left the socket to us.
			c.flags &^= fWriting
			c.closeDeferredLocked()
			return
		}
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			c.flags &^= fWriting
			c.wantOutLocked()
			return
		case err != nil:
			c.flags &^= fWriting
			c.writeFailedLocked(err)
			return
		}
		c.writtenLocked(q, w)
	}
}

// iovecs fills iovs with the unwritten frames, as many as fit, and returns
// how many it filled (at least one if the queue is not empty).
func (q *outQueue) iovecs(iovs []unix.Iovec) int {
	n := 0
	for _, f := range q.frames[q.head:] {
		if n == len(iovs) {
			break
		}
		iovs[n].Base = &f[0]
		iovs[n].SetLen(len(f))
		n++
	}
	return n
}

// gather copies unwritten frames, whole and in order, into buf while they
// fit, and returns how many frames and bytes it copied.
func (q *outQueue) gather(buf []byte) (frames, n int) {
	for _, f := range q.frames[q.head:] {
		if n+len(f) > len(buf) {
			break
		}
		n += copy(buf[n:], f)
		frames++
	}
	return frames, n
}

// testHookWritev, set by tests only, runs after a writer released mu and
// before its writev.
var testHookWritev func(c *Conn)

// writev writes iovs to fd in one system call.
func writev(fd int32, iovs []unix.Iovec) (int, error) {
	n, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// deferCloseLocked is asked by finish whether it may close the socket now:
// not while a writev runs outside mu, or the fd number could be reused by a
// new connection before that writer's next writev. The writer closes it
// (closeDeferredLocked) when its writev returns.
func (c *Conn) deferCloseLocked() bool {
	if c.flags&fWriting == 0 {
		return false
	}
	c.flags |= fCloseByWriter
	return true
}

// closeDeferredLocked closes the socket finish left to the writer.
func (c *Conn) closeDeferredLocked() {
	if c.flags&fCloseByWriter == 0 {
		return
	}
	c.flags &^= fCloseByWriter
	if err := c.closeSocket(); err != nil {
		c.p.log.Debug("netpoll: close socket", "conn", c.id, "err", err)
	}
}

// wantOutLocked makes sure a worker continues the flush when the socket
// becomes writable.
func (c *Conn) wantOutLocked() {
	if c.flags&fWantOut != 0 {
		return
	}
	c.flags |= fWantOut
	c.pokeLocked()
}

// pokeLocked re-arms an idle registration with EPOLLOUT. A running worker
// (or Start) arms it itself.
func (c *Conn) pokeLocked() {
	if c.flags&(fArmed|fRunning) != fArmed {
		return
	}
	ev := unix.EpollEvent{Events: armOut, Fd: c.sys.fd, Pad: int32(uint32(c.id))}
	if err := unix.EpollCtl(c.p.sys.epfd, unix.EPOLL_CTL_MOD, int(c.sys.fd), &ev); err != nil {
		c.p.log.Warn("netpoll: arm EPOLLOUT", "conn", c.id, "err", err)
	}
}

// closeSentLocked runs once our close frame is written: the write side is
// shut so the peer sees EOF after it.
func (c *Conn) closeSentLocked() {
	if err := unix.Shutdown(int(c.sys.fd), unix.SHUT_WR); err != nil {
		c.p.log.Debug("netpoll: shutdown write", "conn", c.id, "err", err)
	}
	if c.flags&fCloseRcvd != 0 {
		c.pokeLocked() // handshake complete: have a worker finish the conn
	}
}

// abortIOLocked shuts the socket down both ways; epoll then reports it and a
// worker finishes the conn.
func (c *Conn) abortIOLocked() {
	if c.flags&fStarted == 0 {
		return
	}
	if err := unix.Shutdown(int(c.sys.fd), unix.SHUT_RDWR); err != nil {
		c.p.log.Debug("netpoll: shutdown", "conn", c.id, "err", err)
	}
}

// releaseIOLocked removes the fd from epoll; finish closes it afterwards
// through the net.Conn, so the runtime forgets it too.
func (c *Conn) releaseIOLocked() {
	if c.flags&fStarted == 0 {
		return
	}
	if err := unix.EpollCtl(c.p.sys.epfd, unix.EPOLL_CTL_DEL, int(c.sys.fd), nil); err != nil {
		c.p.log.Debug("netpoll: epoll_ctl del", "conn", c.id, "err", err)
	}
}

// closeSocket closes the conn's fd (already removed from epoll).
func (c *Conn) closeSocket() error { return unix.Close(int(c.sys.fd)) }

// remoteAddr asks the kernel for the peer's address (nil once closed).
func (c *Conn) remoteAddr() net.Addr {
	sa, err := unix.Getpeername(int(c.sys.fd))
	if err != nil {
		return nil
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	}
	return nil
}
