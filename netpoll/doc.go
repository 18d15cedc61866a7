// Package netpoll is Parley's socket layer: it watches every upgraded
// WebSocket connection from one Linux epoll set, with no goroutine parked per
// connection, parses client frames incrementally without ever blocking, and
// writes each connection's bounded outbound queue when its socket can take it.
//
// # Goroutines
//
//   - The epoll loop (one per Poller) waits in epoll_wait and turns each
//     ready fd into a task for the workers. It owns nothing but the event
//     buffer; it only flips a Conn's armed/running flags under Conn.mu.
//   - Workers (Config.Workers) each own a read buffer. A worker that takes
//     a task holds that conn's read token: it alone reads the socket, feeds
//     the conn's Assembler, answers pings, calls Handler.HandleMessage and,
//     at the end of the conn, closes the socket and calls Handler.HandleClose.
//     It gives the token back by re-arming the fd.
//   - Flushers (Config.Flushers, default 1) write what Send queued: Send
//     appends a frame under Conn.mu and, if the conn is not listed yet,
//     lists it; a flusher takes listed conns in chunks and writes each
//     queue in one write, its frames gathered into the flusher's buffer.
//     Frames that pile up behind a conn while the flusher works through a
//     fan-out leave together, so one flusher coalesces more than several
//     (BENCHMARKS.md). Fan-out never writes on the room's goroutine.
//   - The sweeper (one per Poller, no timer per conn) pings silent conns,
//     closes dead ones with 1001 "ping timeout", and aborts closing conns
//     whose CloseTimeout passed. It alone owns Conn.pingAt.
//
// Outside Linux (or with the build tag netpoll_goroutines) the fallback runs
// one reader goroutine per started conn, which holds the read token for the
// conn's life, and a writer goroutine only while frames are being written.
//
// # State and ownership
//
//   - Poller.mu guards the conn table (indexed by fd on Linux), the count and
//     the closed flag.
//   - Conn.mu guards the conn's flags, its outbound queue and its close
//     state. There is one writer at a time: whoever finds the fWriting flag
//     clear under Conn.mu and sets it (Write/Flush callers, a flusher, a
//     worker on EPOLLOUT, the sweeper). The writer builds the iovecs under
//     Conn.mu (or gathers the frames into its own buffer), then releases it
//     for the system call itself, so Send (fan-out) and the epoll loop never
//     wait for a socket write; it loops until the queue is empty, taking
//     frames queued meanwhile. Frames in a write now
//     running count as started: Kick keeps them.
//     Writes never block: the socket takes what it can, the rest waits
//     for EPOLLOUT and a worker continues it.
//   - Conn.rd (the Assembler and the upgrade leftovers) belongs to the read
//     token holder. It is taken from a pool when a frame starts and given
//     back when the conn sits between messages, so an idle conn holds no
//     buffer; its outbound queue is likewise pooled and dropped when drained.
//   - Conn.lastRecv is atomic: written by the reader, read by the sweeper.
//
// Lock order: no goroutine holds Poller.mu and a Conn.mu at the same time
// (the epoll loop looks conns up under Poller.mu, releases it, then locks
// each conn); no lock is held while a Handler method runs.
//
// # Why EPOLLONESHOT
//
// Every fd is registered with EPOLLONESHOT|EPOLLRDHUP (level-triggered), so
// the kernel reports it once and then disarms it until the worker that took
// the event re-arms it (EPOLL_CTL_MOD) when done. One fd is therefore never
// handled by two workers at once, and a worker that stops reading early (the
// per-wakeup bound, for fairness) is woken again because the re-armed level
// trigger fires while bytes remain; edge-triggered epoll would lose them.
// Because Flush may need EPOLLOUT while a worker runs, the running flag under
// Conn.mu is the final arbiter: an event for a conn that is running is merged
// into its pending events and served by the same worker.
//
// # Closing
//
// The fd is never closed while it can be used: only the read token holder
// finishes a conn, and it first marks it finished under Conn.mu (so no writer
// starts on the fd again), removes it from epoll (EPOLL_CTL_DEL), removes it
// from the table, and only then closes it, unless a writer is in a write
// outside Conn.mu: then that writer closes the fd when its writev returns,
// so the fd number cannot be reused by a new connection under it. On Linux, Add keeps a duplicate
// of the upgraded socket's fd and closes the net.Conn at once: the runtime's
// netFD, poll descriptor and addresses are freed (about 0.4 KiB per idle
// connection) and the dup, the only fd ever registered with our epoll set,
// is the socket's last reference (the fallback keeps the net.Conn). A stale
// event for a
// reused fd number is recognised by the conn id stored in the epoll data.
// Abort shuts the socket down, which makes epoll report it, so the conn is
// finished by a worker; HandleClose therefore runs on a worker, except for
// conns finished by the sweeper's fallback or by Poller.Close. It never runs
// concurrently with, or before, that conn's HandleMessage calls.
//
// When the peer breaks the protocol, the close frame with the matching code
// (1002, 1007, 1009) is queued, the write side is shut once it is written,
// and the conn waits for the peer's EOF (or CloseTimeout) before closing, so
// the peer reads the close frame instead of a reset.
package netpoll
