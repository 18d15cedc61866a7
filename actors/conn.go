package actors

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/gobwas/ws"

	"parley/netpoll"
	"parley/protocol"
)

// Close codes used by the connection actor.
const (
	closeSlowConsumer ws.StatusCode = 4008
	closeUnsupported  ws.StatusCode = ws.StatusUnsupportedData // 1003
	closeGoingAway    ws.StatusCode = ws.StatusGoingAway       // 1001
	closeInternal     ws.StatusCode = ws.StatusInternalServerError
)

// conn is the connection actor: one per socket. It alone touches its
// Transport and its fields. Kept small: it lives as long as the socket.
type conn struct {
	s       *System
	t       Transport
	sess    *Session
	name    string
	rooms   []string // joined (or joining) rooms
	plain   bool
	closing bool // Close/Kick called: send nothing more
}

// Receive is the connection actor's message loop.
func (c *conn) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *inbound:
		c.inbound(ctx, msg)
	case *dropRoom:
		c.removeRoom(msg.room)
		if c.plain {
			c.close(ctx, closeInternal, "lobby unavailable")
			return
		}
		c.enqueue(ctx, msg.frame)
	case *connInit:
		c.s, c.t, c.sess, c.name, c.plain = msg.sess.sys, msg.t, msg.sess, msg.name, msg.plain
		if c.plain {
			c.rooms = []string{LobbyRoom}
			c.toRoom(ctx, &roomOp{kind: opJoin, room: LobbyRoom, name: c.name, session: c.sess.id, plain: true})
			return
		}
		c.reply(ctx, protocol.Welcome{Type: protocol.TypeWelcome, Node: c.s.cfg.NodeID, Session: c.sess.id, Name: c.name})
	case *drain:
		if c.closing || c.t == nil {
			return
		}
		if !c.plain {
			c.reply(ctx, protocol.Reconnect{Type: protocol.TypeReconnect, Reason: msg.reason, AfterMS: spread(msg.after).Milliseconds()})
		}
		c.close(ctx, closeGoingAway, msg.reason)
	case *closed:
		c.closing = true
		ctx.Stop(ctx.Self())
	case *actor.Stopping:
		if c.sess == nil {
			return
		}
		c.sess.done.Store(true)
		for _, r := range c.rooms {
			c.toRoom(ctx, &roomOp{kind: opQuit, room: r})
		}
		c.rooms = nil
		if !c.closing {
			c.closing = true
			c.t.Close(closeGoingAway, "server shutting down")
		}
	case *actor.Stopped:
		if c.sess != nil {
			c.s.forget(c.sess)
		}
	}
}

// enqueue queues frame on the socket; netpoll flushes it soon, together
// with whatever else was queued meanwhile (rooms queue on the same socket).
func (c *conn) enqueue(ctx actor.Context, frame []byte) {
	if c.closing {
		return
	}
	if err := c.t.Send(frame); err != nil {
		c.closing = true
		if errors.Is(err, netpoll.ErrQueueFull) {
			c.t.Kick(closeSlowConsumer, "slow consumer")
		}
		ctx.Stop(ctx.Self())
		return
	}
}

func (c *conn) reply(ctx actor.Context, v any) {
	c.enqueue(ctx, frameOf(v))
}

func (c *conn) replyErr(ctx actor.Context, e *protocol.Error) {
	c.enqueue(ctx, errFrame(e))
}

func (c *conn) close(ctx actor.Context, code ws.StatusCode, reason string) {
	if c.closing {
		return
	}
	c.closing = true
	c.t.Close(code, reason)
	ctx.Stop(ctx.Self())
}

func (c *conn) toRoom(ctx actor.Context, op *roomOp) {
	op.conn, op.t = ctx.Self(), c.t
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
	if c.closing || c.t == nil {
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
	if c.plain {
		if len(in.payload) == 0 {
			return
		}
		c.toRoom(ctx, &roomOp{kind: opSend, room: LobbyRoom, text: string(in.payload)})
		return
	}
	f, err := protocol.Decode(in.payload)
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
	case protocol.TypeJoin:
		if !c.joined(f.Room) {
			if len(c.rooms) >= c.s.cfg.MaxRoomsPerConn {
				c.replyErr(ctx, protocol.Errorf(protocol.CodeTooMany, f.ID, "at most %d rooms per connection", c.s.cfg.MaxRoomsPerConn))
				return
			}
			c.rooms = append(c.rooms, f.Room)
		}
		c.toRoom(ctx, &roomOp{kind: opJoin, room: f.Room, id: f.ID, name: c.name, session: c.sess.id,
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
		case protocol.TypeHistory:
			op.kind, op.before, op.limit = opHistory, f.Before, f.Limit
		case protocol.TypePresence:
			op.kind = opPresence
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
