package actors

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/gobwas/ws"

	"parley/netpoll"
	"parley/protocol"
)

// Close codes used by the connection actor (4008 is the outbox's).
const (
	closeUnsupported ws.StatusCode = ws.StatusUnsupportedData // 1003
	closeGoingAway   ws.StatusCode = ws.StatusGoingAway       // 1001
	closeInternal    ws.StatusCode = ws.StatusInternalServerError
	closePolicy      ws.StatusCode = ws.StatusPolicyViolation // 1008: auth refused or timed out, rate limit kept broken, name taken on /
)

// conn is the connection actor: one per socket. It alone touches its
// fields; it queues its replies through its outbox. Kept small: it lives as
// long as the socket (fields ordered so it packs into 144 bytes).
type conn struct {
	s     *System
	out   outbox
	sess  *Session
	name  string
	rooms []string      // joined (or joining) rooms
	limit *inboundLimit // rate limit (limits.go); nil until the first frame

	drainReason string
	auth        connAuth // token auth (auth.go)
	flushes     int32    // drain: opFlush sent to rooms and not yet answered

	plain   bool
	closing bool // Close/Kick called: send nothing more
	query   bool // a history or presence request is in flight

	// Drain (see drainStep): told to go, reading stopped, flushes awaited.
	draining    bool
	readStopped bool
}

// Receive is the connection actor's message loop.
func (c *conn) Receive(ctx actor.Context) {
	defer c.recoverPanic(ctx)
	switch msg := ctx.Message().(type) {
	case *inbound:
		c.inbound(ctx, msg)
	case *queryDone:
		c.query = false
		c.enqueue(ctx, msg.frame)
		c.drainStep(ctx)
	case *flushed:
		c.flushes--
		c.drainStep(ctx)
	case *dropRoom:
		c.removeRoom(msg.room)
		if msg.query {
			c.query = false
		}
		if c.plain {
			// Plain mode lives in the lobby: without it, the connection ends.
			code, reason := closeInternal, "lobby unavailable"
			if msg.err != nil {
				c.enqueue(ctx, netpoll.TextFrame([]byte("error: "+msg.err.Message)))
				if msg.err.Code == protocol.CodeNameTaken {
					code, reason = closePolicy, "name taken"
				}
			}
			c.close(ctx, code, reason)
			return
		}
		c.enqueue(ctx, msg.frame)
		c.drainStep(ctx)
	case *connInit:
		c.s, c.sess, c.name, c.plain = msg.sess.sys, msg.sess, msg.name, msg.plain
		c.out = c.s.outbox(msg.t)
		if msg.needAuth {
			c.awaitAuth(ctx)
			return
		}
		if msg.id != nil {
			c.authenticated(ctx, msg.id)
		}
		if c.plain {
			c.rooms = []string{LobbyRoom}
			c.toRoom(ctx, &roomOp{kind: opJoin, room: LobbyRoom, name: c.name, user: c.auth.user(), sess: c.sess, plain: true})
			return
		}
		c.welcome(ctx)
	case *authTimer:
		c.authTimer(ctx, msg)
	case *drain:
		if c.closing || c.sess == nil || c.draining {
			return
		}
		// Tell the client first, then stop reading: every frame read before
		// that point is still answered (drainStep).
		c.draining, c.drainReason = true, msg.reason
		if !c.plain {
			c.reply(ctx, protocol.Reconnect{Type: protocol.TypeReconnect, Reason: msg.reason, AfterMS: spread(msg.after).Milliseconds()})
		}
		c.sess.stopReading()
	case *readStopped:
		// Every frame the session read is behind us: ask each room to
		// answer what it holds of ours.
		c.readStopped = true
		for _, r := range c.rooms {
			c.flushes++
			c.toRoom(ctx, &roomOp{kind: opFlush, room: r})
		}
		c.drainStep(ctx)
	case *closed:
		c.closing = true
		ctx.Stop(ctx.Self())
	case *actor.Stopping:
		if c.sess == nil {
			return
		}
		c.auth.stop()
		c.sess.flags.Or(sessDone)
		for _, r := range c.rooms {
			c.toRoom(ctx, &roomOp{kind: opQuit, room: r})
		}
		c.rooms = nil
		if !c.closing {
			c.closing = true
			c.out.close(closeGoingAway, "server shutting down")
		}
	case *actor.Stopped:
		if c.sess != nil {
			c.s.forget(c.sess)
		}
	}
}

// recoverPanic keeps a panic while handling one connection to that
// connection: it is logged once with its stack and the connection is closed
// with 1011 (the actor stops); the node and every other connection carry
// on. (protoactor would otherwise log it and stop the actor, closing with
// 1001 as if the server were going away.)
func (c *conn) recoverPanic(ctx actor.Context) {
	v := recover()
	if v == nil {
		return
	}
	if c.s == nil || c.sess == nil {
		ctx.Stop(ctx.Self()) // before connInit: no socket to close yet
		return
	}
	c.s.log.Error("actors: connection actor panicked: closing the connection with 1011",
		"session", c.sess.id, "message", fmt.Sprintf("%T", ctx.Message()), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if c.closing {
		ctx.Stop(ctx.Self())
		return
	}
	c.close(ctx, closeInternal, "internal error")
}

// drainStep closes a draining connection with 1001 once reading has stopped
// and every frame read was answered: each room flushed, no history or
// presence request in flight. Close sends the queued answers before the
// close frame.
func (c *conn) drainStep(ctx actor.Context) {
	if c.draining && c.readStopped && c.flushes == 0 && !c.query {
		c.close(ctx, closeGoingAway, c.drainReason)
	}
}

// enqueue queues frame on the socket; netpoll flushes it soon, together
// with whatever else was queued meanwhile (rooms queue on the same socket).
// A socket that cannot take it (slow consumer, already closing) ends the
// actor.
func (c *conn) enqueue(ctx actor.Context, frame []byte) {
	if c.closing {
		return
	}
	if err := c.out.send(frame); err != nil {
		c.closing = true
		ctx.Stop(ctx.Self())
	}
}

func (c *conn) reply(ctx actor.Context, v any) {
	c.enqueue(ctx, frameOf(v))
}

func (c *conn) replyErr(ctx actor.Context, e *protocol.Error) {
	c.enqueue(ctx, c.s.errFrame(e))
}

func (c *conn) close(ctx actor.Context, code ws.StatusCode, reason string) {
	if c.closing {
		return
	}
	c.closing = true
	c.out.close(code, reason)
	ctx.Stop(ctx.Self())
}

func (c *conn) toRoom(ctx actor.Context, op *roomOp) {
	op.conn, op.out = ctx.Self(), c.out
	ctx.Send(c.s.dirPID, op)
}

func (c *conn) joined(room string) bool {
	for _, r := range c.rooms {
		if r == room {
			return true
		}
	}
	return false
}

func (c *conn) removeRoom(room string) {
	for i, r := range c.rooms {
		if r == room {
			c.rooms[i] = c.rooms[len(c.rooms)-1]
			c.rooms = c.rooms[:len(c.rooms)-1]
			if len(c.rooms) == 0 {
				c.rooms = nil
			}
			return
		}
	}
}

func (c *conn) inbound(ctx actor.Context, in *inbound) {
	if c.closing || c.sess == nil {
		return
	}
	switch in.op {
	case ws.OpText:
	case ws.OpBinary:
		c.close(ctx, closeUnsupported, "binary frames are not supported")
		return
	default:
		return
	}
	if !c.allowFrame(ctx, in.payload) {
		return
	}
	if c.plain {
		if len(in.payload) == 0 {
			return
		}
		c.toRoom(ctx, &roomOp{kind: opSend, room: LobbyRoom, text: string(in.payload)})
		return
	}
	f, err := protocol.Decode(in.payload)
	if c.auth.waiting && (err != nil || f.Type != protocol.TypeAuth) {
		c.close(ctx, closePolicy, `authenticate first: {"type":"auth","token":…}`)
		return
	}
	if err != nil {
		var pe *protocol.Error
		if !errors.As(err, &pe) {
			pe = protocol.Errorf(protocol.CodeBadRequest, "", "%v", err)
		}
		c.replyErr(ctx, pe)
		return
	}
	switch f.Type {
	case protocol.TypePing:
		c.reply(ctx, protocol.Pong{Type: protocol.TypePong})
	case protocol.TypeAuth:
		c.authFrame(ctx, f.Token)
	case protocol.TypeJoin:
		if id := c.auth.id; id != nil && !id.MayJoin(f.Room) {
			c.replyErr(ctx, protocol.Errorf(protocol.CodeForbidden, f.ID, "your token does not allow room %q", f.Room))
			return
		}
		if c.draining {
			// A join on a node that is going away would be undone at once.
			c.replyErr(ctx, protocol.Errorf(protocol.CodeDraining, f.ID, "node is draining: join on the node you reconnect to"))
			return
		}
		if !c.joined(f.Room) {
			if len(c.rooms) >= c.s.cfg.MaxRoomsPerConn {
				c.replyErr(ctx, protocol.Errorf(protocol.CodeTooMany, f.ID, "at most %d rooms per connection", c.s.cfg.MaxRoomsPerConn))
				return
			}
			c.rooms = append(c.rooms, f.Room)
		}
		c.toRoom(ctx, &roomOp{kind: opJoin, room: f.Room, id: f.ID, name: c.name, user: c.auth.user(), sess: c.sess,
			since: f.Since, epoch: f.Epoch})
	default:
		if !c.joined(f.Room) {
			c.replyErr(ctx, protocol.Errorf(protocol.CodeNotJoined, f.ID, "not joined to room %q", f.Room))
			return
		}
		op := &roomOp{room: f.Room, id: f.ID}
		switch f.Type {
		case protocol.TypeLeave:
			op.kind = opLeave
			c.removeRoom(f.Room)
		case protocol.TypeSend:
			op.kind, op.text = opSend, f.Text
		case protocol.TypeHistory, protocol.TypePresence:
			if c.query {
				c.replyErr(ctx, protocol.Errorf(protocol.CodeBusy, f.ID, "a history or presence request is already in flight: wait for its answer"))
				return
			}
			c.query = true
			op.kind, op.before, op.limit = opPresence, f.Before, f.Limit
			if f.Type == protocol.TypeHistory {
				op.kind = opHistory
			}
		}
		c.toRoom(ctx, op)
	}
}

// spread picks a reconnect delay in [d, 2d), so a draining node's clients
// do not all come back in the same instant.
func spread(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + rand.N(d)
}
