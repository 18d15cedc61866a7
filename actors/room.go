package actors

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"parley/netpoll"
	"parley/protocol"
	"parley/relay"
)

// roomInit is the first message of a room actor (rooms share one Props).
type roomInit struct {
	s    *System
	name string
}

// member is one local connection in a room. Owned by the room actor. It
// keeps no copy of what its Session holds (the connection's PID and session
// id, both fixed for the session's life) nor of its outbox's counter (the
// System's): a member entry is 80 bytes.
type member struct {
	sess   *Session
	t      Transport // the member's socket: fan-out queues frames on it directly (room.out)
	name   string
	user   string      // authenticated user id ("" without token auth)
	replay *replayHold // non-nil while a since-join's history read is in flight
	plain  bool
}

// replayHold is what a member replaying history holds aside, allocated only
// while it replays: a member entry stays at 80 bytes.
type replayHold struct {
	frames []heldFrame // live frames held while replaying
}

type presOp struct {
	add bool
	m   relay.Member
}

// room is the actor of one active room on this node. It alone owns the
// member list, the room's position (seq) and its broker queues.
//
// Answers keep each connection's order: a connection's sends are answered
// in order (one publish batch in flight), and any other op of a connection
// that still has sends queued or in flight waits behind them in the same
// queue, so left (or flushed, or joined) never overtakes an ack.
type room struct {
	s        *System
	name     string
	seq      sequencer
	members  []*member
	byConn   memberIndex    // member's connection PID id -> position in members
	byName   memberIndex    // member name -> position (names are unique per room: limits.go)
	plains   int            // members with plain set
	joins    uint64         // joins seen (compared by the directory)
	waiting  []*roomOp      // ops waiting for the subscription
	gen      uint64         // bumped on every reset: replays started before are void
	queue    []*roomOp      // sends, and ops ordered behind a connection's sends
	pending  map[string]int // conn pid id -> its ops in queue or in flight
	pubBusy  bool           // a publish batch is in flight
	queued   int            // sends in queue (capped: limits.go)
	queuedB  int            // bytes of text of the sends in queue
	presQ    []presOp
	presBusy bool
	presDone chan struct{} // closed when the presence batch in flight ends
	queries  int           // history/presence reads in flight
	presGate presenceGate  // member_joined/member_left on or off (presence_gate.go)
	steps    []step        // scratch
}

// Receive is the room actor's message loop.
func (r *room) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *relay.Delivery:
		var fetch bool
		r.steps, fetch = r.seq.offer(msg.Message, r.steps[:0])
		r.apply(ctx)
		if fetch {
			r.s.count.gapFills.Add(1)
			r.fetch(ctx)
		}
	case *roomOp:
		if msg.kind == opJoin {
			r.joins++ // counted once, on arrival (op may run later)
		}
		r.op(ctx, msg)
	case *publishDone:
		r.published(ctx, msg)
	case *presenceDone:
		r.presBusy, r.presDone = false, nil
		r.runPresence(ctx)
		r.checkEmpty(ctx)
	case *queryRead:
		r.queries--
		if msg.op.kind == opHistory {
			r.suspect(ctx, msg.pos, nil)
		}
		ctx.Send(msg.op.conn, &queryDone{frame: msg.frame})
		r.checkEmpty(ctx)
	case *fetchDone:
		if msg.err != nil {
			r.s.log.Warn("room: history read failed", "room", r.name, "err", msg.err)
			r.seq.fetchFailed()
			return
		}
		if r.seq.rolledBack(msg.res.Position) {
			r.rollover(ctx)
			return
		}
		var fetch bool
		r.steps, fetch = r.seq.applyHistory(msg.res, msg.truncated, r.steps[:0])
		r.apply(ctx)
		if fetch {
			r.fetch(ctx)
		}
	case *rolledOver:
		if msg.err != nil {
			r.s.log.Warn("room: rollover failed", "room", r.name, "err", msg.err)
			r.seq.fetchFailed()
			return
		}
		r.s.count.rollovers.Add(1)
		r.s.log.Warn("room: the bus went back in time: new epoch", "room", r.name, "epoch", msg.pos.Epoch)
		var fetch bool
		r.steps, fetch = r.seq.rolledOver(r.name, msg.pos, r.steps[:0])
		r.apply(ctx)
		if fetch {
			r.fetch(ctx)
		}
	case *replayDone:
		r.suspect(ctx, msg.res.Position, msg.err)
		r.replayed(ctx, msg)
	case *relay.Disconnect:
		r.disconnect(msg) // room_control.go
	case *relay.PresenceDelivery:
		r.presenceEvent(ctx, msg.Event)
	case *positionRead:
		r.presenceTick()
		if msg.err == nil && r.seq.current(msg.pos) {
			return // the bus holds what the room delivered: nothing to read
		}
		r.check(ctx)
	case *relay.Resync:
		r.check(ctx)
	case *relay.Subscribed:
		r.subscribed(ctx, msg)
	case *roomInit:
		r.s, r.name = msg.s, msg.name
		r.byName.byName = true // byConn: the zero value
		r.pending = make(map[string]int)
		ctx.Send(r.s.relayPID, &relay.Subscribe{Room: r.name, PID: ctx.Self()})
	case *actor.Stopping:
		if r.s != nil {
			r.stopping(ctx)
		}
	}
}

// stopping runs as the room stops. The directory stops a room only when it
// is empty and idle; at node shutdown it may still hold ops (answered
// here) and members (removed from presence, after the presence batch in
// flight, so a remove never overtakes its add).
func (r *room) stopping(ctx actor.Context) {
	ctx.Send(r.s.relayPID, &relay.Unsubscribe{Room: r.name, PID: ctx.Self()})
	for _, op := range append(r.waiting, r.queue...) {
		r.refuse(ctx, op, "room %q is closing", r.name)
	}
	r.waiting, r.queue = nil, nil
	for _, m := range r.members {
		r.presQ = append(r.presQ, presOp{m: r.presenceMember(m)})
	}
	r.s.count.sizes.resize(len(r.members), 0)
	r.members = nil
	if len(r.presQ) == 0 {
		return
	}
	batch, prev := r.presQ, r.presDone
	r.presQ = nil
	b, room, log := r.s.cfg.Broker, r.name, r.s.log
	r.s.goTask(func() {
		if prev != nil {
			<-prev
		}
		r.s.applyPresence(b, room, batch, log)
	})
}

// refuse answers an op the room will not run (the bus refused the
// subscription, or the room is closing): a send gets "unavailable", a join
// drops the room from the connection, a leave is done, a flush answered.
func (r *room) refuse(ctx actor.Context, op *roomOp, format string, args ...any) {
	switch op.kind {
	case opJoin:
		ctx.Send(op.conn, &dropRoom{room: r.name,
			frame: r.s.errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id, format+": try again", args...))})
	case opLeave:
		_ = op.out.send(frameOf(protocol.Left{Type: protocol.TypeLeft, Room: r.name}))
	case opFlush:
		ctx.Send(op.conn, &flushed{})
	case opHistory, opPresence:
		ctx.Send(op.conn, &queryDone{frame: r.s.errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id, format, args...))})
	case opSend:
		r.s.count.pubErrors.Add(1)
		r.sendFailed(op)
	case opQuit:
	}
}

// subscribed handles the relay's answer: the room goes live, or every
// waiting op is refused.
func (r *room) subscribed(ctx actor.Context, msg *relay.Subscribed) {
	waiting := r.waiting
	r.waiting = nil
	if msg.Err != nil {
		r.s.log.Warn("room: subscribe failed", "room", r.name, "err", msg.Err)
		for _, op := range waiting {
			r.refuse(ctx, op, "room %q is unavailable", r.name)
		}
		r.checkEmpty(ctx)
		return
	}
	r.steps = r.seq.start(msg.Position, r.steps[:0])
	r.apply(ctx)
	// Keep the rest queued while each op runs, so checkEmpty does not
	// report an empty room while ops are still to come.
	r.waiting = waiting
	for len(r.waiting) > 0 {
		op := r.waiting[0]
		r.waiting = r.waiting[1:]
		r.op(ctx, op)
	}
	r.waiting = nil
	r.checkEmpty(ctx)
}

// op takes one op of a connection. A send joins the publish queue; any
// other op waits in that queue behind the connection's sends, or runs now
// if it has none.
func (r *room) op(ctx actor.Context, op *roomOp) {
	if !r.seq.live {
		// Until the subscription is live every op waits, in order, so an
		// op that follows a join finds its member.
		r.waiting = append(r.waiting, op)
		return
	}
	if op.kind == opQuit {
		// The connection is gone: it leaves now, whatever is in flight;
		// what it queued is not run (its sends find no member).
		r.purge(op.conn.Id)
		if i, ok := r.byConn.find(r.members, op.conn.Id); ok {
			r.remove(ctx, i)
		}
		r.checkEmpty(ctx)
		return
	}
	if op.kind == opSend {
		if r.pubQueueFull(op) {
			r.queueFull(op)
			return
		}
		r.queued++
		r.queuedB += len(op.text)
	}
	if op.kind == opSend || r.pending[op.conn.Id] > 0 {
		r.queue = append(r.queue, op)
		r.pending[op.conn.Id]++
		r.runQueue(ctx)
		return
	}
	r.exec(ctx, op)
	r.checkEmpty(ctx)
}

// exec runs an op other than send and quit.
func (r *room) exec(ctx actor.Context, op *roomOp) {
	switch op.kind {
	case opJoin:
		r.admit(ctx, op)
	case opLeave:
		if i, ok := r.byConn.find(r.members, op.conn.Id); ok {
			r.remove(ctx, i)
		}
		_ = op.out.send(frameOf(protocol.Left{Type: protocol.TypeLeft, Room: r.name}))
	case opFlush:
		ctx.Send(op.conn, &flushed{})
	case opHistory, opPresence:
		if _, ok := r.byConn.find(r.members, op.conn.Id); !ok {
			ctx.Send(op.conn, &queryDone{frame: r.s.errFrame(protocol.Errorf(protocol.CodeNotJoined, op.id, "not joined to room %q", r.name))})
			return
		}
		if op.kind == opHistory {
			r.history(ctx, op)
		} else {
			r.presence(ctx, op)
		}
	}
}

// purge drops the queued ops of a connection that is gone, except its
// sends: those stay in line and are answered "not joined" (to nobody)
// when their turn comes, so the queue's accounting stays in one place.
func (r *room) purge(connID string) {
	if r.pending[connID] == 0 {
		return
	}
	kept := r.queue[:0]
	for _, op := range r.queue {
		if op.kind != opSend && op.conn.Id == connID {
			r.doneOp(op)
			continue
		}
		kept = append(kept, op)
	}
	clear(r.queue[len(kept):])
	r.queue = kept
}

// doneOp ends the accounting of one queued or in-flight op.
func (r *room) doneOp(op *roomOp) {
	if n := r.pending[op.conn.Id] - 1; n > 0 {
		r.pending[op.conn.Id] = n
	} else {
		delete(r.pending, op.conn.Id)
	}
}

// admit adds (or re-joins) a member and sends it the joined frame, after a
// history replay if it asked for one.
func (r *room) admit(ctx actor.Context, op *roomOp) {
	i, ok := r.byConn.find(r.members, op.conn.Id)
	var m *member
	if ok {
		m = r.members[i]
	} else {
		if r.nameTaken(op) {
			e := protocol.Errorf(protocol.CodeNameTaken, op.id, "the name %q is taken in room %q: choose another name", op.name, r.name)
			ctx.Send(op.conn, &dropRoom{room: r.name, frame: r.s.errFrame(e), err: e})
			return
		}
		m = &member{sess: op.sess, t: op.out.t, name: op.name, user: op.user, plain: op.plain}
		r.addMember(m)
		r.s.count.sizes.resize(len(r.members)-1, len(r.members))
		if m.plain {
			r.plains++
		}
		// Not Watched: a connection actor quits every room it joined as it
		// stops (opQuit, conn.go), behind its earlier ops. A watch cost each
		// member ~0.6 KiB (protoactor's context extras and a watcher set).
		r.presenceResized(m)
		r.presQ = append(r.presQ, presOp{add: true, m: r.presenceMember(m)})
		r.runPresence(ctx)
	}
	if m.plain {
		_ = r.out(m).send(netpoll.TextFrame([]byte("connected to node " + r.s.cfg.NodeID)))
		return
	}
	if op.since == nil {
		m.replay = nil
		_ = r.out(m).send(r.joinedFrame(true))
		return
	}
	// Replay: hold live frames for m until history is read.
	m.replay = &replayHold{}
	since, epoch, conn, gen, id := *op.since, op.epoch, op.conn, r.gen, op.id
	b, room, self, root := r.s.cfg.Broker, r.name, ctx.Self(), r.s.root
	r.s.goTask(func() {
		cctx, cancel := r.s.brokerCtx()
		defer cancel()
		res, err := b.History(cctx, room, relay.HistoryRequest{Since: since})
		root.Send(self, &replayDone{conn: conn, id: id, gen: gen, since: since, epoch: epoch, res: res, err: err})
	})
}

// replayed finishes a since-join: joined, then the replay, then the live
// frames held meanwhile, with no gap and no duplicate at the seam.
func (r *room) replayed(ctx actor.Context, d *replayDone) {
	i, ok := r.byConn.find(r.members, d.conn.Id)
	if !ok || r.members[i].replay == nil {
		return
	}
	m := r.members[i]
	if d.err != nil && d.gen == r.gen {
		// The bus could not be read now (stopped, restarting): the history
		// is not lost, so do not say it is. Refuse the join as a failed
		// subscribe does; the client joins again with the same since.
		r.s.log.Warn("room: replay read failed, join refused", "room", r.name, "err", d.err)
		r.remove(ctx, i)
		e := protocol.Errorf(protocol.CodeUnavailable, d.id, "room %q: history unavailable: try again", r.name)
		ctx.Send(d.conn, &dropRoom{room: r.name, frame: r.s.errFrame(e), err: e})
		r.checkEmpty(ctx)
		return
	}
	buffered := m.replay.frames
	m.replay = nil
	res := d.res
	recovered := d.err == nil && d.gen == r.gen && res.Position.Epoch == r.seq.epoch &&
		(d.epoch == "" || d.epoch == r.seq.epoch) && d.since <= r.seq.last &&
		(res.Earliest == 0 && res.Position.Seq == d.since || res.Earliest != 0 && res.Earliest <= d.since+1)
	_ = r.out(m).send(r.joinedFrame(recovered))
	if !recovered {
		// Nothing at or below last is promised: drop what was held.
		return
	}
	next := d.since + 1
	for _, hm := range res.Messages {
		if hm.Seq < next || hm.Seq > r.seq.last {
			continue
		}
		_ = r.out(m).send(messageFrame(hm))
		next = hm.Seq + 1
	}
	for _, h := range buffered {
		if h.seq < next {
			continue
		}
		_ = r.out(m).send(h.frame)
		next = h.seq + 1
	}
}

func (r *room) joinedFrame(recovered bool) []byte {
	return frameOf(protocol.Joined{Type: protocol.TypeJoined, Room: r.name, Seq: r.seq.last,
		Epoch: r.seq.epoch, Recovered: recovered, PresenceEvents: r.presGate.state()})
}

func (r *room) presenceMember(m *member) relay.Member {
	return relay.Member{Session: m.sess.id, Name: m.name, Node: r.s.cfg.NodeID}
}

// out is member m's outbox.
func (r *room) out(m *member) outbox { return r.s.outbox(m.t) }

// addMember appends m to members and its indexes: m is found by its
// connection, and holds its name (replacing a member with the same name,
// which only token auth allows: nameTaken).
func (r *room) addMember(m *member) {
	r.members = append(r.members, m)
	r.byConn.set(r.members, len(r.members)-1)
	r.byName.set(r.members, len(r.members)-1)
}

// dropMember removes member i from members (the last member takes its
// place) and from its indexes; the name is freed only if i held it.
func (r *room) dropMember(i int) {
	last := len(r.members) - 1
	// The indexes change while members[i] and members[last] are in place.
	r.byConn.remove(r.members, i)
	r.byName.remove(r.members, i)
	if i != last {
		r.byConn.move(r.members, last, i)
		r.byName.move(r.members, last, i)
		r.members[i] = r.members[last]
	}
	r.members[last] = nil
	r.members = r.members[:last]
}

// remove drops member i (left, quit, or its replay failed).
func (r *room) remove(ctx actor.Context, i int) {
	m := r.members[i]
	r.dropMember(i)
	r.s.count.sizes.resize(len(r.members)+1, len(r.members))
	if m.plain {
		r.plains--
	}
	r.presenceResized(nil)
	r.presQ = append(r.presQ, presOp{m: r.presenceMember(m)})
	r.runPresence(ctx)
}

// checkEmpty reports a room that is empty and idle to the directory, with
// the joins it has seen; the directory stops it only if no join is on its
// way. Idle: no op waiting or queued, no publish batch, presence change or
// history/presence read in flight, so stopping loses no answer and no
// presence removal.
func (r *room) checkEmpty(ctx actor.Context) {
	if len(r.members) == 0 && len(r.waiting) == 0 && len(r.queue) == 0 && !r.pubBusy &&
		len(r.presQ) == 0 && !r.presBusy && r.queries == 0 {
		ctx.Send(ctx.Parent(), &roomEmpty{room: r.name, pid: ctx.Self(), joins: r.joins})
	}
}

// apply turns sequencer steps into frames: each message is encoded once
// per flavour and the same bytes are queued on every member's socket.
func (r *room) apply(ctx actor.Context) {
	for _, st := range r.steps {
		if st.kind == stepReset {
			r.s.count.resets.Add(1)
			r.gen++
			f := frameOf(protocol.Joined{Type: protocol.TypeJoined, Room: r.name, Seq: st.msg.Seq,
				Epoch: st.msg.Epoch, Recovered: false})
			for _, m := range r.members {
				if m.plain {
					continue
				}
				if m.replay != nil {
					m.replay.frames = nil // its replay is void (gen changed)
					continue
				}
				_ = r.out(m).send(f)
			}
			continue
		}
		r.fanout(ctx, st.msg)
	}
	clear(r.steps)
}

func (r *room) fanout(ctx actor.Context, msg relay.Message) {
	jf := messageFrame(msg)
	var pf []byte
	if r.plains > 0 {
		pf = netpoll.TextFrame([]byte(msg.Text))
	}
	r.s.count.deliveries.Add(uint64(len(r.members)))
	last, kicks := len(r.members)-1, &r.s.count.slowKicks
	for i, m := range r.members {
		out := outbox{t: m.t, kicks: kicks} // r.out(m)
		switch {
		case m.plain:
			_ = out.send(pf)
		case m.replay != nil:
			m.replay.frames = append(m.replay.frames, heldFrame{seq: msg.Seq, frame: jf})
		case i == last:
			// The fan-out's tail: its write completion is the message's
			// end-to-end latency on this node (stats.go).
			_ = out.sendTraced(jf, msg.TS)
		default:
			_ = out.send(jf)
		}
	}
}

// suspect starts a position check when a history read made for another
// reason (a replay, a client's history request) shows the bus behind the
// room; the check decides (sequencer.rolledBack).
func (r *room) suspect(ctx actor.Context, pos relay.Position, err error) {
	if err != nil || !r.seq.live || pos.Epoch != "" && (pos.Epoch != r.seq.epoch || pos.Seq >= r.seq.last) {
		return
	}
	r.check(ctx)
}

// check starts a position check, a history read after the last seq
// delivered, unless a read is in flight (sequencer.check); the read
// decides (fetchDone: rolledBack, applyHistory).
func (r *room) check(ctx actor.Context) {
	if r.seq.check() {
		r.s.count.checks.Add(1)
		r.fetch(ctx)
	}
}

// rollover asks the bus to start a new epoch if it holds the room behind
// the position the read in flight began at (Broker.Rollover, which checks
// again atomically); the answer comes back as rolledOver.
func (r *room) rollover(ctx actor.Context) {
	known := relay.Position{Seq: r.seq.fetchSince, Epoch: r.seq.fetchEpoch}
	b, room, self, root := r.s.cfg.Broker, r.name, ctx.Self(), r.s.root
	r.s.goTask(func() {
		cctx, cancel := r.s.brokerCtx()
		defer cancel()
		pos, err := b.Rollover(cctx, room, known)
		root.Send(self, &rolledOver{pos: pos, err: err})
	})
}

// fetch reads history after the last delivered seq (gap, resync or check).
func (r *room) fetch(ctx actor.Context) {
	since, limit := r.seq.fetchSince, 0
	b, room, self, root := r.s.cfg.Broker, r.name, ctx.Self(), r.s.root
	r.s.goTask(func() {
		cctx, cancel := r.s.brokerCtx()
		defer cancel()
		res, err := b.History(cctx, room, relay.HistoryRequest{Since: since, Limit: limit})
		// Limit 0 is the broker's whole window: the read is never truncated.
		root.Send(self, &fetchDone{res: res, err: err})
	})
}

// runQueue runs the queue while no publish batch is in flight: ops other
// than send at its head run now; then up to PublishBatch consecutive sends
// go to the broker as one batch.
func (r *room) runQueue(ctx actor.Context) {
	for !r.pubBusy && len(r.queue) > 0 {
		if op := r.queue[0]; op.kind != opSend {
			r.popQueue()
			r.doneOp(op)
			r.exec(ctx, op)
			continue
		}
		var batch []*roomOp
		for len(batch) < r.s.cfg.PublishBatch && len(r.queue) > 0 && r.queue[0].kind == opSend {
			op := r.popQueue()
			i, ok := r.byConn.find(r.members, op.conn.Id)
			if !ok {
				// Left (or gone) before its send's turn came.
				r.doneOp(op)
				_ = op.out.send(r.s.errFrame(protocol.Errorf(protocol.CodeNotJoined, op.id, "not joined to room %q", r.name)))
				continue
			}
			op.name, op.user, op.plain = r.members[i].name, r.members[i].user, r.members[i].plain
			batch = append(batch, op)
		}
		if len(batch) > 0 {
			r.publish(ctx, batch)
		}
	}
}

func (r *room) popQueue() *roomOp {
	op := r.queue[0]
	r.queue[0] = nil
	r.queue = r.queue[1:]
	if op.kind == opSend {
		r.queued--
		r.queuedB -= len(op.text)
	}
	if len(r.queue) == 0 {
		r.queue = nil
	}
	return op
}

// publish hands one batch to the broker on a transient goroutine.
func (r *room) publish(ctx actor.Context, batch []*roomOp) {
	r.pubBusy = true
	b, room, node, self, root := r.s.cfg.Broker, r.name, r.s.cfg.NodeID, ctx.Self(), r.s.root
	known := relay.Position{Seq: r.seq.last, Epoch: r.seq.epoch}
	r.s.goTask(func() {
		msgs := make([]relay.Message, len(batch))
		start := time.Now()
		now := start.UnixMilli()
		for i, op := range batch {
			msgs[i] = relay.Message{Room: room, From: op.name, User: op.user, Node: node, Text: op.text, ID: op.id, TS: now}
		}
		results := publishAll(b, r.s.brokerCtx, room, known, msgs)
		if obs := r.s.cfg.ObservePublish; obs != nil {
			obs(time.Since(start))
		}
		root.Send(self, &publishDone{batch: batch, results: results})
	})
}

// publishAll publishes msgs of one room in order, all or none, in one
// broker call; known is the room's position as delivered (the broker's
// rollback check).
func publishAll(b relay.Broker, newCtx func() (context.Context, context.CancelFunc), room string, known relay.Position, msgs []relay.Message) []pubResult {
	results := make([]pubResult, len(msgs))
	cctx, cancel := newCtx()
	pos, err := b.PublishBatch(cctx, room, known, msgs)
	cancel()
	for i := range results {
		if err != nil {
			results[i].err = err
		} else {
			results[i].pos = pos[i]
		}
	}
	return results
}

// published answers every send of a batch, in order, then runs the queue on.
func (r *room) published(ctx actor.Context, d *publishDone) {
	r.pubBusy = false
	for i, op := range d.batch {
		r.doneOp(op)
		res := d.results[i]
		if res.err != nil {
			r.s.count.pubErrors.Add(1)
			if !errors.Is(res.err, relay.ErrUnavailable) {
				r.s.log.Warn("room: publish failed", "room", r.name, "err", res.err)
			}
			r.sendFailed(op)
			continue
		}
		r.s.count.published.Add(1)
		if res.pos.Repeat {
			r.s.count.repeats.Add(1)
		}
		if !op.plain {
			_ = op.out.send(frameOf(protocol.Ack{Type: protocol.TypeAck, ID: op.id, Room: r.name, Seq: res.pos.Seq, Repeat: res.pos.Repeat}))
		}
	}
	r.runQueue(ctx)
	r.checkEmpty(ctx)
}

// sendFailed tells a sender its message was not sent (or, after a timeout,
// may have been: retrying with the same id is safe either way).
func (r *room) sendFailed(op *roomOp) {
	if op.plain {
		r.s.count.refused.add(protocol.CodeUnavailable)
		_ = op.out.send(netpoll.TextFrame([]byte("error: message not sent: bus unavailable")))
		return
	}
	_ = op.out.send(r.s.errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id, "message not sent (or not known to be): retry with the same id")))
}

// runPresence runs queued presence changes in order, one batch in flight.
func (r *room) runPresence(ctx actor.Context) {
	if r.presBusy || len(r.presQ) == 0 {
		return
	}
	batch := r.presQ
	r.presQ = nil
	r.presBusy = true
	done := make(chan struct{})
	r.presDone = done
	b, room, self, root, log := r.s.cfg.Broker, r.name, ctx.Self(), r.s.root, r.s.log
	r.s.goTask(func() {
		defer close(done)
		r.s.applyPresence(b, room, batch, log)
		root.Send(self, &presenceDone{})
	})
}

// applyPresence makes the presence changes of batch, in order. A change
// the bus refuses is logged; the bus's own expiry of a node's members is
// the backstop.
func (s *System) applyPresence(b relay.Broker, room string, batch []presOp, log *slog.Logger) {
	for _, p := range batch {
		cctx, cancel := s.brokerCtx()
		var err error
		if p.add {
			err = b.AddPresence(cctx, room, p.m)
		} else {
			err = b.RemovePresence(cctx, room, p.m)
		}
		cancel()
		if err != nil {
			log.Warn("room: presence update failed", "room", room, "add", p.add, "err", err)
		}
	}
}

// presenceEvent fans a member_joined/member_left out to the local JSON
// members, except the member the event is about; nothing while the room is
// too large for presence events (presence_gate.go).
func (r *room) presenceEvent(ctx actor.Context, e relay.PresenceEvent) {
	if r.presGate.off {
		return
	}
	typ := protocol.TypeMemberLeft
	if e.Joined {
		typ = protocol.TypeMemberJoined
	}
	f := frameOf(protocol.MemberEvent{Type: typ, Room: r.name, Name: e.Member.Name, Node: e.Member.Node})
	for _, m := range r.members {
		if m.plain || m.sess.id == e.Member.Session {
			continue
		}
		_ = r.out(m).send(f)
	}
}

// history reads a page of history on a transient goroutine, which encodes
// the reply (historyFrame) and posts it back; the room hands it to the
// asking connection (queryRead).
func (r *room) history(ctx actor.Context, op *roomOp) {
	limit := op.limit
	if limit <= 0 || limit > r.s.cfg.HistoryLimit {
		limit = r.s.cfg.HistoryLimit
	}
	req := relay.HistoryRequest{Before: op.before, Limit: limit}
	if op.before == 0 {
		// Newest messages: the newest Limit below "infinity".
		req.Before = math.MaxInt64
	}
	r.queries++
	b, room, self, root, maxBytes := r.s.cfg.Broker, r.name, ctx.Self(), r.s.root, r.s.cfg.HistoryBytes
	r.s.goTask(func() {
		cctx, cancel := r.s.brokerCtx()
		defer cancel()
		res, err := b.History(cctx, room, req)
		d := &queryRead{op: op, pos: res.Position}
		if err != nil {
			d.frame = r.s.errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id, "history unavailable"))
		} else {
			d.frame = historyFrame(room, res, maxBytes)
		}
		root.Send(self, d)
	})
}

// historyFrame encodes a history reply: the newest of res.Messages whose
// encoded size stays within maxBytes (at least one, so paging goes on),
// with more:true when older messages exist than the first one sent.
func historyFrame(room string, res relay.HistoryResult, maxBytes int) []byte {
	msgs := res.Messages
	size, from := 0, len(msgs)
	for from > 0 {
		m := msgs[from-1]
		n := len(protocol.Encode(protocol.Message{Room: m.Room, Seq: m.Seq, Epoch: m.Epoch, From: m.From, User: m.User, Text: m.Text, ID: m.ID, TS: m.TS})) + 1
		if size+n > maxBytes && from < len(msgs) {
			break
		}
		size += n
		from--
	}
	msgs = msgs[from:]
	out := protocol.History{Type: protocol.TypeHistory, Room: room, Messages: make([]protocol.Message, len(msgs))}
	for i, m := range msgs {
		out.Messages[i] = protocol.Message{Room: m.Room, Seq: m.Seq, Epoch: m.Epoch, From: m.From, User: m.User, Text: m.Text, ID: m.ID, TS: m.TS}
	}
	out.More = len(msgs) > 0 && res.Earliest != 0 && msgs[0].Seq > res.Earliest
	return frameOf(out)
}

// presence reads the room's presence on a transient goroutine, which
// encodes the reply and posts it back (queryRead).
func (r *room) presence(ctx actor.Context, op *roomOp) {
	r.queries++
	b, room, self, root := r.s.cfg.Broker, r.name, ctx.Self(), r.s.root
	r.s.goTask(func() {
		cctx, cancel := r.s.brokerCtx()
		defer cancel()
		list, err := b.Presence(cctx, room)
		d := &queryRead{op: op}
		if err != nil {
			d.frame = r.s.errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id, "presence unavailable"))
		} else {
			out := protocol.Presence{Type: protocol.TypePresence, Room: room, Members: make([]protocol.Member, len(list))}
			for i, m := range list {
				out.Members[i] = protocol.Member{Name: m.Name, Node: m.Node}
			}
			d.frame = frameOf(out)
		}
		root.Send(self, d)
	})
}

// heldFrame is a live message frame held for a member while its replay is read.
type heldFrame struct {
	seq   uint64
	frame []byte
}

// frameOf encodes a node frame as a complete text frame.
// The JSON is encoded into a pooled buffer and copied once, into the frame.
func frameOf(v any) []byte { return protocol.EncodeWith(v, netpoll.TextFrame) }

// messageFrame encodes m as a message frame.
func messageFrame(m relay.Message) []byte {
	return frameOf(protocol.Message{Type: protocol.TypeMessage, Room: m.Room, Seq: m.Seq, Epoch: m.Epoch,
		From: m.From, User: m.User, Text: m.Text, ID: m.ID, TS: m.TS})
}
