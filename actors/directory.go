package actors

import (
	"time"

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
//
// It also runs the periodic position check of every room (check): one
// timer and one batched read of all rooms' positions per CheckInterval,
// instead of a timer and a history read per room.
type directory struct {
	s     *System
	props *actor.Props
	rooms map[string]*dirRoom
	byID  map[string]string // room actor id -> room name
	// create is the room creation rate (limits.go).
	create *rate.Limiter
	timer  *time.Timer // the next checkTick
	check  bool        // a position check's read is in flight
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
	case *actor.Started:
		d.arm(ctx)
	case *checkTick:
		d.arm(ctx)
		d.checkRooms(ctx)
	case *checkDone:
		d.check = false
	case *actor.Stopping:
		if d.timer != nil {
			d.timer.Stop()
		}
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

// arm schedules the next position check.
func (d *directory) arm(ctx actor.Context) {
	self, root := ctx.Self(), d.s.root
	d.timer = time.AfterFunc(d.s.cfg.CheckInterval, func() { root.Send(self, &checkTick{}) })
}

// checkRooms reads the bus position of every room in one call
// (Broker.Positions: one pipeline on Redis) on a transient goroutine, and
// posts each room its position (positionRead); the room reads history only
// if the bus is not exactly where it delivered. One check is in flight at a
// time: a tick that finds the last one still reading is skipped. A room
// spawned or stopped meanwhile is checked next time.
func (d *directory) checkRooms(ctx actor.Context) {
	if d.check || len(d.rooms) == 0 {
		return
	}
	d.check = true
	names := make([]string, 0, len(d.rooms))
	pids := make([]*actor.PID, 0, len(d.rooms))
	for name, e := range d.rooms {
		names = append(names, name)
		pids = append(pids, e.pid)
	}
	b, self, root := d.s.cfg.Broker, ctx.Self(), d.s.root
	d.s.goTask(func() {
		cctx, cancel := d.s.brokerCtx()
		pos, err := b.Positions(cctx, names)
		cancel()
		if err != nil {
			d.s.log.Warn("directory: position check failed: every room reads for itself", "rooms", len(names), "err", err)
		}
		for i, pid := range pids {
			m := &positionRead{err: err}
			if err == nil {
				m.pos = pos[i]
			}
			root.Send(pid, m)
		}
		root.Send(self, &checkDone{})
	})
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
