package actors

import (
	"github.com/asynkron/protoactor-go/actor"
	"golang.org/x/time/rate"

	"parley/protocol"
)

// directory is the one actor that maps room names to room actors. It spawns
// a room (as its child) on the first join, forwards every op of every
// connection to the room, and stops a room that reports itself empty unless
// a join raced with the report. A room reports itself empty only when it is
// idle as well (nothing queued or in flight: publishes, presence changes,
// history and presence requests), so stopping it never loses an answer.
type directory struct {
	s     *System
	props *actor.Props
	rooms map[string]*dirRoom
	byID  map[string]string // room actor id -> room name
	// create is the room creation rate (limits.go).
	create *rate.Limiter
}

// dirRoom is the directory's entry for one live room actor.
type dirRoom struct {
	pid   *actor.PID
	joins uint64 // joins forwarded to this room actor
}

func newDirectory(s *System) actor.Actor {
	d := &directory{s: s, rooms: make(map[string]*dirRoom), byID: make(map[string]string),
		create: newCreateLimiter(s.cfg.RoomCreateRate)}
	d.props = actor.PropsFromProducer(func() actor.Actor { return &room{} },
		actor.WithMailbox(actor.UnboundedLockfree()))
	return d
}

// Receive is the directory's message loop.
func (d *directory) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *roomOp:
		e := d.rooms[msg.room]
		if e == nil {
			if msg.kind != opJoin {
				d.noRoom(ctx, msg)
				return
			}
			if err := d.admitRoom(msg); err != nil {
				ctx.Send(msg.conn, &dropRoom{room: msg.room, frame: d.s.errFrame(err), err: err})
				return
			}
			pid := ctx.Spawn(d.props)
			ctx.Send(pid, &roomInit{s: d.s, name: msg.room})
			e = &dirRoom{pid: pid}
			d.rooms[msg.room] = e
			d.byID[pid.Id] = msg.room
			d.s.rooms.Store(int64(len(d.rooms)))
		}
		if msg.kind == opJoin {
			e.joins++
		}
		ctx.Send(e.pid, msg)
	case *roomEmpty:
		e := d.rooms[msg.room]
		if e == nil || !e.pid.Equal(msg.pid) || e.joins != msg.joins {
			return // a join is on its way to the room: it is not empty
		}
		d.forget(msg.room, e.pid)
		ctx.Stop(e.pid)
	case *actor.Terminated:
		// A room stopped without being asked (panic): forget it; members
		// find out on their next op.
		if name, ok := d.byID[msg.Who.Id]; ok {
			if e := d.rooms[name]; e != nil && e.pid.Equal(msg.Who) {
				d.forget(name, e.pid)
			}
			delete(d.byID, msg.Who.Id)
		}
	}
}

func (d *directory) forget(name string, pid *actor.PID) {
	delete(d.rooms, name)
	d.s.rooms.Store(int64(len(d.rooms)))
	_ = pid
}

// noRoom answers an op for a room that has no actor (the connection
// believes it is a member of a room that is gone).
func (d *directory) noRoom(ctx actor.Context, op *roomOp) {
	switch op.kind {
	case opQuit:
	case opFlush:
		ctx.Send(op.conn, &flushed{})
	case opLeave:
		_ = op.out.send(frameOf(protocol.Left{Type: protocol.TypeLeft, Room: op.room}))
	default:
		ctx.Send(op.conn, &dropRoom{room: op.room, query: op.kind == opHistory || op.kind == opPresence,
			frame: d.s.errFrame(protocol.Errorf(protocol.CodeNotJoined, op.id, "not joined to room %q", op.room))})
	}
}
