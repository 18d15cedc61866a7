package actors

import (
	"errors"
	"sync/atomic"

	"github.com/gobwas/ws"

	"parley/netpoll"
)

// closeSlowConsumer is the close code of a client whose outbound queue
// passed its cap.
const closeSlowConsumer ws.StatusCode = 4008

// outbox is the one way an actor queues a frame on a client's socket. The
// connection actor (its replies), room actors (fan-out, acks, joined, events,
// history and presence replies) and the directory (answers for rooms that are
// gone) all go through it, so the slow-consumer policy lives here alone: a
// frame the socket's queue cannot take kicks the client with 4008 and counts
// it. It is two words, copied freely; Transport.Send is safe from any
// goroutine, so an outbox may be used by any actor.
type outbox struct {
	t     Transport
	kicks *atomic.Uint64 // System.count.slowKicks
}

// send queues frame. A full queue kicks the client (4008, counted) and
// returns netpoll.ErrQueueFull; a closing socket returns netpoll.ErrClosed
// and the frame is dropped (its connection actor is on its way out, and the
// client will learn nothing more from this socket).
func (o outbox) send(frame []byte) error { return o.sent(o.t.Send(frame)) }

// sent applies the slow-consumer policy to the result of queueing a frame.
func (o outbox) sent(err error) error {
	if errors.Is(err, netpoll.ErrQueueFull) {
		o.kicks.Add(1)
		o.t.Kick(closeSlowConsumer, "slow consumer")
	}
	return err
}

// close sends what is queued, then a close frame with code and reason.
func (o outbox) close(code ws.StatusCode, reason string) { o.t.Close(code, reason) }
