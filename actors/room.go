package actors

import (
	"context"
	"errors"
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

// member is one local connection in a room. Owned by the room actor.
type member struct {
	pid       *actor.PID
	t         Transport // the member's socket: fan-out queues frames on it directly
	name      string
	session   string
	plain     bool
	replaying bool        // a since-join's history read is in flight
	gen       uint64      // room.gen when the replay started
	buffered  []heldFrame // live frames held while replaying
}

type presOp struct {
	add bool
	m   relay.Member
}

// room is the actor of one active room on this node. It alone owns the
// member list, the room's position (seq) and its broker queues.
type room struct {
	s        *System
	name     string
	seq      sequencer
	members  []*member
	index    map[string]int // member pid id -> index in members
	plains   int            // members with plain set
	joins    uint64         // joins seen (compared by the directory)
	waiting  []*roomOp      // joins waiting for the subscription
	gen      uint64         // bumped on every reset: replays started before are void
	pubQ     []*roomOp
	pubBusy  bool
	presQ    []presOp
	presBusy bool
	timer    *time.Timer
	steps    []step // scratch
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
		r.presBusy = false
		r.runPresence(ctx)
	case *fetchDone:
		if msg.err != nil {
			r.s.log.Warn("room: history read failed", "room", r.name, "err", msg.err)
			r.seq.fetchFailed()
			return
		}
		var fetch bool
		r.steps, fetch = r.seq.applyHistory(msg.res, msg.truncated, r.steps[:0])
		r.apply(ctx)
		if fetch {
			r.fetch(ctx)
		}
	case *replayDone:
		r.replayed(ctx, msg)
	case *relay.PresenceDelivery:
		r.presenceEvent(ctx, msg.Event)
	case *relay.Resync, *checkTick:
		if _, tick := msg.(*checkTick); tick {
			r.armTimer(ctx)
		}
		if r.seq.check() {
			r.s.count.checks.Add(1)
			r.fetch(ctx)
		}
	case *relay.Subscribed:
		r.subscribed(ctx, msg)
	case *actor.Terminated:
		if i, ok := r.index[msg.Who.Id]; ok {
			r.remove(ctx, i, false)
			r.checkEmpty(ctx)
		}
	case *roomInit:
		r.s, r.name = msg.s, msg.name
		r.index = make(map[string]int)
		ctx.Send(r.s.relayPID, &relay.Subscribe{Room: r.name, PID: ctx.Self()})
		r.armTimer(ctx)
	case *actor.Stopping:
		if r.s == nil {
			return
		}
		if r.timer != nil {
			r.timer.Stop()
		}
		ctx.Send(r.s.relayPID, &relay.Unsubscribe{Room: r.name, PID: ctx.Self()})
		for _, m := range r.members {
			r.presQ = append(r.presQ, presOp{m: r.presenceMember(m)})
		}
		if !r.presBusy && len(r.presQ) > 0 {
			// Last presence batch: nobody will read its result.
			r.runPresence(ctx)
		}
	}
}

func (r *room) armTimer(ctx actor.Context) {
	self, root := ctx.Self(), r.s.root
	r.timer = time.AfterFunc(r.s.cfg.CheckInterval, func() { root.Send(self, &checkTick{}) })
}

// subscribed handles the relay's answer: the room goes live, or every
// waiting join fails with "unavailable".
func (r *room) subscribed(ctx actor.Context, msg *relay.Subscribed) {
	waiting := r.waiting
	r.waiting = nil
	if msg.Err != nil {
		r.s.log.Warn("room: subscribe failed", "room", r.name, "err", msg.Err)
		for _, op := range waiting {
			switch op.kind {
			case opJoin:
				ctx.Send(op.conn, &dropRoom{room: r.name,
					frame: errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id, "room %q is unavailable: try again", r.name))})
			case opLeave:
				r.s.send(op.t, frameOf(protocol.Left{Type: protocol.TypeLeft, Room: r.name}))
			case opQuit:
			default:
				r.s.send(op.t, errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id, "room %q is unavailable", r.name)))
			}
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
}

func (r *room) op(ctx actor.Context, op *roomOp) {
	if !r.seq.live {
		// Until the subscription is live every op waits, in order, so an
		// op that follows a join finds its member.
		r.waiting = append(r.waiting, op)
		return
	}
	switch op.kind {
	case opJoin:
		r.admit(ctx, op)
		return
	case opLeave, opQuit:
		if i, ok := r.index[op.conn.Id]; ok {
			r.remove(ctx, i, true)
		}
		if op.kind == opLeave {
			r.s.send(op.t, frameOf(protocol.Left{Type: protocol.TypeLeft, Room: r.name}))
		}
		r.checkEmpty(ctx)
		return
	}
	i, ok := r.index[op.conn.Id]
	if !ok {
		r.s.send(op.t, errFrame(protocol.Errorf(protocol.CodeNotJoined, op.id, "not joined to room %q", r.name)))
		return
	}
	m := r.members[i]
	switch op.kind {
	case opSend:
		op.name, op.plain = m.name, m.plain
		r.pubQ = append(r.pubQ, op)
		r.runPublish(ctx)
	case opHistory:
		r.history(ctx, op)
	case opPresence:
		r.presence(ctx, op)
	}
}

// admit adds (or re-joins) a member and sends it the joined frame, after a
// history replay if it asked for one.
func (r *room) admit(ctx actor.Context, op *roomOp) {
	i, ok := r.index[op.conn.Id]
	var m *member
	if ok {
		m = r.members[i]
	} else {
		m = &member{pid: op.conn, t: op.t, name: op.name, session: op.session, plain: op.plain}
		r.index[op.conn.Id] = len(r.members)
		r.members = append(r.members, m)
		if m.plain {
			r.plains++
		}
		ctx.Watch(op.conn)
		r.presQ = append(r.presQ, presOp{add: true, m: r.presenceMember(m)})
		r.runPresence(ctx)
	}
	if m.plain {
		r.s.send(m.t, netpoll.TextFrame([]byte("connected to node "+r.s.cfg.NodeID)))
		return
	}
	if op.since == nil {
		if m.replaying {
			m.replaying, m.buffered = false, nil
		}
		r.s.send(m.t, r.joinedFrame(true))
		return
	}
	// Replay: hold live frames for m until history is read.
	m.replaying, m.gen, m.buffered = true, r.gen, nil
	since, epoch, conn, gen := *op.since, op.epoch, op.conn, r.gen
	b, room, self, root := r.s.cfg.Broker, r.name, ctx.Self(), r.s.root
	r.s.goTask(func() {
		cctx, cancel := r.s.brokerCtx()
		defer cancel()
		res, err := b.History(cctx, room, relay.HistoryRequest{Since: since})
		root.Send(self, &replayDone{conn: conn, gen: gen, since: since, epoch: epoch, res: res, err: err})
	})
}

// replayed finishes a since-join: joined, then the replay, then the live
// frames held meanwhile, with no gap and no duplicate at the seam.
func (r *room) replayed(ctx actor.Context, d *replayDone) {
	i, ok := r.index[d.conn.Id]
	if !ok || !r.members[i].replaying {
		return
	}
	m := r.members[i]
	buffered := m.buffered
	m.replaying, m.buffered = false, nil
	res := d.res
	recovered := d.err == nil && d.gen == r.gen && res.Position.Epoch == r.seq.epoch &&
		(d.epoch == "" || d.epoch == r.seq.epoch) && d.since <= r.seq.last &&
		(res.Earliest == 0 && res.Position.Seq == d.since || res.Earliest != 0 && res.Earliest <= d.since+1)
	r.s.send(m.t, r.joinedFrame(recovered))
	if !recovered {
		// Nothing at or below last is promised: drop what was held.
		return
	}
	next := d.since + 1
	for _, hm := range res.Messages {
		if hm.Seq < next || hm.Seq > r.seq.last {
			continue
		}
		r.s.send(m.t, messageFrame(hm))
		next = hm.Seq + 1
	}
	for _, h := range buffered {
		if h.seq < next {
			continue
		}
		r.s.send(m.t, h.frame)
		next = h.seq + 1
	}
}

func (r *room) joinedFrame(recovered bool) []byte {
	return frameOf(protocol.Joined{Type: protocol.TypeJoined, Room: r.name, Seq: r.seq.last,
		Epoch: r.seq.epoch, Recovered: recovered})
}

func (r *room) presenceMember(m *member) relay.Member {
	return relay.Member{Session: m.session, Name: m.name, Node: r.s.cfg.NodeID}
}

// remove drops member i (left, quit or terminated).
func (r *room) remove(ctx actor.Context, i int, unwatch bool) {
	m := r.members[i]
	last := len(r.members) - 1
	if i != last {
		r.members[i] = r.members[last]
		r.index[r.members[i].pid.Id] = i
	}
	r.members[last] = nil
	r.members = r.members[:last]
	delete(r.index, m.pid.Id)
	if m.plain {
		r.plains--
	}
	if unwatch {
		ctx.Unwatch(m.pid)
	}
	r.presQ = append(r.presQ, presOp{m: r.presenceMember(m)})
	r.runPresence(ctx)
}

// checkEmpty reports an empty room to the directory with the joins it has
// seen; the directory stops it only if no join is on its way.
func (r *room) checkEmpty(ctx actor.Context) {
	if len(r.members) == 0 && len(r.waiting) == 0 {
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
				if m.replaying {
					m.buffered = nil // its replay is void (gen changed)
					continue
				}
				r.s.send(m.t, f)
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
	for _, m := range r.members {
		switch {
		case m.plain:
			r.s.send(m.t, pf)
		case m.replaying:
			m.buffered = append(m.buffered, heldFrame{seq: msg.Seq, frame: jf})
		default:
			r.s.send(m.t, jf)
		}
	}
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

// runPublish hands the queued sends to the broker, in order, one batch in
// flight at a time.
func (r *room) runPublish(ctx actor.Context) {
	if r.pubBusy || len(r.pubQ) == 0 {
		return
	}
	n := min(len(r.pubQ), r.s.cfg.PublishBatch)
	batch := append([]*roomOp(nil), r.pubQ[:n]...)
	r.pubQ = append(r.pubQ[:0], r.pubQ[n:]...)
	r.pubBusy = true
	b, room, node, self, root := r.s.cfg.Broker, r.name, r.s.cfg.NodeID, ctx.Self(), r.s.root
	known := relay.Position{Seq: r.seq.last, Epoch: r.seq.epoch}
	r.s.goTask(func() {
		msgs := make([]relay.Message, len(batch))
		now := time.Now().UnixMilli()
		for i, op := range batch {
			msgs[i] = relay.Message{Room: room, From: op.name, Node: node, Text: op.text, ID: op.id, TS: now}
		}
		root.Send(self, &publishDone{batch: batch, results: publishAll(b, r.s.brokerCtx, room, known, msgs)})
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

func (r *room) published(ctx actor.Context, d *publishDone) {
	r.pubBusy = false
	for i, op := range d.batch {
		res := d.results[i]
		if res.err != nil {
			r.s.count.pubErrors.Add(1)
			if !errors.Is(res.err, relay.ErrUnavailable) {
				r.s.log.Warn("room: publish failed", "room", r.name, "err", res.err)
			}
			if op.plain {
				r.s.send(op.t, netpoll.TextFrame([]byte("error: message not sent: bus unavailable")))
			} else {
				r.s.send(op.t, errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id, "message not sent: bus unavailable")))
			}
			continue
		}
		if !op.plain {
			r.s.send(op.t, frameOf(protocol.Ack{Type: protocol.TypeAck, ID: op.id, Room: r.name, Seq: res.pos.Seq}))
		}
	}
	r.runPublish(ctx)
}

// runPresence runs queued presence changes in order, one batch in flight.
func (r *room) runPresence(ctx actor.Context) {
	if r.presBusy || len(r.presQ) == 0 {
		return
	}
	batch := r.presQ
	r.presQ = nil
	r.presBusy = true
	b, room, self, root, log := r.s.cfg.Broker, r.name, ctx.Self(), r.s.root, r.s.log
	r.s.goTask(func() {
		for _, p := range batch {
			cctx, cancel := r.s.brokerCtx()
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
		root.Send(self, &presenceDone{})
	})
}

// presenceEvent fans a member_joined/member_left out to the local JSON
// members, except the member the event is about.
func (r *room) presenceEvent(ctx actor.Context, e relay.PresenceEvent) {
	typ := protocol.TypeMemberLeft
	if e.Joined {
		typ = protocol.TypeMemberJoined
	}
	f := frameOf(protocol.MemberEvent{Type: typ, Room: r.name, Name: e.Member.Name, Node: e.Member.Node})
	for _, m := range r.members {
		if m.plain || m.session == e.Member.Session {
			continue
		}
		r.s.send(m.t, f)
	}
}

func (r *room) history(ctx actor.Context, op *roomOp) {
	limit := op.limit
	if limit <= 0 || limit > r.s.cfg.HistoryLimit {
		limit = r.s.cfg.HistoryLimit
	}
	b, room, t, id := r.s.cfg.Broker, r.name, op.t, op.id
	req := relay.HistoryRequest{Before: op.before, Limit: limit}
	if op.before == 0 {
		// Newest messages: the newest Limit below "infinity".
		req.Before = math.MaxInt64
	}
	r.s.goTask(func() {
		cctx, cancel := r.s.brokerCtx()
		defer cancel()
		res, err := b.History(cctx, room, req)
		if err != nil {
			r.s.send(t, errFrame(protocol.Errorf(protocol.CodeUnavailable, id, "history unavailable")))
			return
		}
		out := protocol.History{Type: protocol.TypeHistory, Room: room, Messages: make([]protocol.Message, len(res.Messages))}
		for i, m := range res.Messages {
			out.Messages[i] = protocol.Message{Room: m.Room, Seq: m.Seq, Epoch: m.Epoch, From: m.From, Text: m.Text, ID: m.ID, TS: m.TS}
		}
		r.s.send(t, frameOf(out))
	})
}

func (r *room) presence(ctx actor.Context, op *roomOp) {
	b, room, t, id := r.s.cfg.Broker, r.name, op.t, op.id
	r.s.goTask(func() {
		cctx, cancel := r.s.brokerCtx()
		defer cancel()
		list, err := b.Presence(cctx, room)
		if err != nil {
			r.s.send(t, errFrame(protocol.Errorf(protocol.CodeUnavailable, id, "presence unavailable")))
			return
		}
		out := protocol.Presence{Type: protocol.TypePresence, Room: room, Members: make([]protocol.Member, len(list))}
		for i, m := range list {
			out.Members[i] = protocol.Member{Name: m.Name, Node: m.Node}
		}
		r.s.send(t, frameOf(out))
	})
}

// heldFrame is a live message frame held for a member while its replay is read.
type heldFrame struct {
	seq   uint64
	frame []byte
}

// send queues frame on a member's socket (safe from any goroutine: the
// socket's queue has its own lock). A queue over its cap kicks the member
// as a slow consumer; its actor then stops and the room drops it. A closed
// socket drops the frame: its actor is already on its way out.
func (s *System) send(t Transport, frame []byte) {
	if err := t.Send(frame); errors.Is(err, netpoll.ErrQueueFull) {
		s.count.slowKicks.Add(1)
		t.Kick(closeSlowConsumer, "slow consumer")
	}
}

// frameOf encodes a node frame as a complete text frame.
// The JSON is encoded into a pooled buffer and copied once, into the frame.
func frameOf(v any) []byte { return protocol.EncodeWith(v, netpoll.TextFrame) }

func errFrame(e *protocol.Error) []byte { return frameOf(e.Frame()) }

// messageFrame encodes m as a message frame.
func messageFrame(m relay.Message) []byte {
	return frameOf(protocol.Message{Type: protocol.TypeMessage, Room: m.Room, Seq: m.Seq, Epoch: m.Epoch,
		From: m.From, Text: m.Text, ID: m.ID, TS: m.TS})
}
