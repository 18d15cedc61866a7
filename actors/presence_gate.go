package actors

import (
	"parley/protocol"
)

// DefaultPresenceEventsMaxMembers is the room size on one node above which
// member_joined/member_left stop (Limits.PresenceEventsMaxMembers).
const DefaultPresenceEventsMaxMembers = 1000

// presenceGate decides whether a room fans member_joined/member_left out
// to its members (docs/PROTOCOL.md, "Large rooms"). Every join and leave
// costs one frame per member, so a join storm into a room of N members
// costs N² frames and fills the members' queues (4008); above max members
// on this node the events are switched off, and the members are told.
//
// Off as soon as the room has more than max members; on again only once it
// has had max/2 or fewer for a whole check interval: one tick to become
// calm, the next to switch (the events of a leave storm come back from the
// bus after the leaves, and must not all reach the few members left).
//
// A plain value owned by its room actor.
type presenceGate struct {
	off  bool // events are off
	calm bool // off, and at most max/2 members since the last tick
}

// resize takes the room's new size n after a join or leave; it reports
// whether the events just switched off.
func (g *presenceGate) resize(n, max int) (switchedOff bool) {
	if !g.off {
		if n > max {
			g.off, g.calm = true, false
			return true
		}
		return false
	}
	if n > max/2 {
		g.calm = false
	}
	return false
}

// tick is called at each periodic check with the room's size n; it reports
// whether the events just switched on again.
func (g *presenceGate) tick(n, max int) (switchedOn bool) {
	if !g.off {
		return false
	}
	if n > max/2 {
		g.calm = false
		return false
	}
	if g.calm {
		g.off, g.calm = false, false
		return true
	}
	g.calm = true
	return false
}

// state is the presence_events value of joined: "off", or "" while on (the
// field is then left out, as before).
func (g *presenceGate) state() string {
	if g.off {
		return protocol.PresenceEventsOff
	}
	return ""
}

// presenceResized applies the gate after the room's size changed. When
// the events switch off, every JSON member but joiner (whose joined says
// so) and those still replaying (same) gets a presence_events frame.
func (r *room) presenceResized(joiner *member) {
	if r.presGate.resize(len(r.members), r.s.cfg.PresenceEventsMaxMembers) {
		r.tellPresenceEvents(protocol.PresenceEventsOff, joiner)
	}
}

// presenceTick applies the gate at the room's periodic check.
func (r *room) presenceTick() {
	if r.presGate.tick(len(r.members), r.s.cfg.PresenceEventsMaxMembers) {
		r.tellPresenceEvents(protocol.PresenceEventsOn, nil)
	}
}

func (r *room) tellPresenceEvents(state string, skip *member) {
	f := frameOf(protocol.PresenceEvents{Type: protocol.TypePresenceEvents, Room: r.name, State: state})
	for _, m := range r.members {
		if m.plain || m.replay != nil || m == skip {
			continue
		}
		_ = r.out(m).send(f)
	}
}
