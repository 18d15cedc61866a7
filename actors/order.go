package actors

import (
	"sort"

	"parley/relay"
)

// stepKind says what a room must do with one step of its sequencer's output.
type stepKind uint8

const (
	// stepDeliver: fan msg out to the members.
	stepDeliver stepKind = iota
	// stepReset: the position jumped (new epoch, or messages lost for good):
	// members get a joined{seq: msg.Seq, epoch: msg.Epoch, recovered:false}
	// notice; msg.Seq is the new last seq.
	stepReset
)

// step is one output of the sequencer, in the order it must be applied.
type step struct {
	kind stepKind
	msg  relay.Message
}

// sequencer holds a room's position and applies the ordering rules. It is a
// plain struct (no goroutines, no locks) owned by the room actor:
//
//   - before start (subscription not yet live) messages are held;
//   - within an epoch messages are delivered strictly in seq order;
//   - seq <= last is a duplicate and is dropped;
//   - seq > last+1 is held, and a history read for the gap is requested
//     (at most one read in flight);
//   - a message of another epoch resets the position to seq 0 of that epoch
//     (stepReset) and is then handled like any message of it: seq 1 is
//     delivered, a later seq is held while history fills the gap, so every
//     message of the new epoch still reaches the members;
//   - history is authoritative: its epoch wins (reset, then read the new
//     epoch from its start), and seqs it can no longer supply are skipped
//     with a stepReset;
//   - a history read that was requested before a reset is stale: it is
//     dropped and read again.
type sequencer struct {
	epoch    string
	last     uint64
	live     bool
	fetching bool            // a history read is in flight
	held     []relay.Message // ascending seq, all > last+1 (or anything before start)

	// fetchEpoch and fetchSince are the position the read in flight was
	// requested at: the caller reads history with seq > fetchSince.
	fetchEpoch string
	fetchSince uint64
}

// startFetch marks a history read of seq > s.last as in flight.
func (s *sequencer) startFetch() {
	s.fetching, s.fetchEpoch, s.fetchSince = true, s.epoch, s.last
}

// reset moves to seq 0 of epoch, keeping held messages of that epoch.
func (s *sequencer) reset(room, epoch string, out []step) []step {
	s.epoch, s.last = epoch, 0
	kept := s.held[:0]
	for _, m := range s.held {
		if m.Epoch == epoch {
			kept = append(kept, m)
		}
	}
	clear(s.held[len(kept):])
	s.held = kept
	return append(out, step{kind: stepReset, msg: relay.Message{Room: room, Seq: 0, Epoch: epoch}})
}

// start makes the sequencer live at pos and replays what was held.
func (s *sequencer) start(pos relay.Position, out []step) []step {
	s.epoch, s.last, s.live = pos.Epoch, pos.Seq, true
	s.fetchEpoch, s.fetchSince = pos.Epoch, pos.Seq
	held := s.held
	s.held = nil
	sort.SliceStable(held, func(i, j int) bool { return held[i].Seq < held[j].Seq })
	for _, m := range held {
		out, _ = s.offer(m, out)
	}
	return out
}

// offer applies one live message. fetch reports that the caller must read
// history after s.last (and then call applyHistory).
func (s *sequencer) offer(m relay.Message, out []step) (_ []step, fetch bool) {
	if !s.live {
		s.held = append(s.held, m)
		return out, false
	}
	if m.Epoch != s.epoch {
		out = s.reset(m.Room, m.Epoch, out)
	}
	switch {
	case m.Seq <= s.last:
		return out, false
	case m.Seq == s.last+1:
		s.last = m.Seq
		out = append(out, step{kind: stepDeliver, msg: m})
		return s.drain(out), false
	}
	s.hold(m)
	if s.fetching {
		return out, false
	}
	s.startFetch()
	return out, true
}

// hold inserts m into held (ascending, no duplicates).
func (s *sequencer) hold(m relay.Message) {
	i := sort.Search(len(s.held), func(i int) bool { return s.held[i].Seq >= m.Seq })
	if i < len(s.held) && s.held[i].Seq == m.Seq {
		return
	}
	s.held = append(s.held, relay.Message{})
	copy(s.held[i+1:], s.held[i:])
	s.held[i] = m
}

// drain delivers held messages that are now next in line and drops stale ones.
func (s *sequencer) drain(out []step) []step {
	n := 0
	for n < len(s.held) && s.held[n].Seq <= s.last+1 {
		if s.held[n].Seq == s.last+1 {
			s.last++
			out = append(out, step{kind: stepDeliver, msg: s.held[n]})
		}
		n++
	}
	if n > 0 {
		s.held = append(s.held[:0], s.held[n:]...)
	}
	return out
}

// check reports whether a position check may start now (live and no read
// in flight); if so the caller must read history after s.last.
func (s *sequencer) check() bool {
	if !s.live || s.fetching {
		return false
	}
	s.startFetch()
	return true
}

// current reports whether pos, the room's position on the bus as a
// periodic check read it, shows nothing to do: live, no read in flight,
// nothing held, and the bus at exactly the epoch and seq delivered. Anything
// else (the bus ahead, behind, in another epoch or holding nothing) calls
// for a check, whose history read decides (rolledBack, applyHistory): the
// position was read a moment ago, so a difference may be a message still on
// its way, and proves nothing by itself.
func (s *sequencer) current(pos relay.Position) bool {
	return s.live && !s.fetching && len(s.held) == 0 && pos.Epoch == s.epoch && pos.Seq == s.last
}

// fetchFailed ends a history read that failed; held messages wait for the
// next check.
func (s *sequencer) fetchFailed() { s.fetching = false }

// rolledBack reports whether the history read in flight found the bus
// behind what the room had delivered when the read began: no epoch at all
// (the bus lost the room), or the same epoch with a lower seq (a failover
// lost writes). A read made stale by a reset meanwhile proves nothing.
func (s *sequencer) rolledBack(pos relay.Position) bool {
	if !s.live || s.fetchEpoch != s.epoch {
		return false
	}
	return pos.Epoch == "" || pos.Epoch == s.fetchEpoch && pos.Seq < s.fetchSince
}

// rolledOver applies the bus's answer to a rollover (its position after
// starting a new epoch, if it had to): the room resets to that epoch, and
// the caller must read history from its start (fetch is always true; the
// read stays in flight).
func (s *sequencer) rolledOver(room string, pos relay.Position, out []step) (_ []step, fetch bool) {
	if s.fetchEpoch == s.epoch && pos.Epoch != s.epoch {
		out = s.reset(room, pos.Epoch, out)
	}
	s.startFetch()
	return out, true
}

// applyHistory applies a history read of seq > s.last. truncated says the
// read hit its limit (more may follow). fetch reports that another read is
// needed.
func (s *sequencer) applyHistory(res relay.HistoryResult, truncated bool, out []step) (_ []step, fetch bool) {
	s.fetching = false
	if !s.live {
		return out, false
	}
	room := ""
	if len(res.Messages) > 0 {
		room = res.Messages[0].Room
	} else if len(s.held) > 0 {
		room = s.held[0].Room
	}
	if s.fetchEpoch != s.epoch {
		// A reset happened while the read was in flight: read again from
		// the new position.
		s.startFetch()
		return out, true
	}
	if res.Position.Epoch != s.epoch {
		from := s.fetchSince
		out = s.reset(room, res.Position.Epoch, out)
		if from != 0 {
			// The read began after the old epoch's seq: read the new epoch
			// from its start.
			s.startFetch()
			return out, true
		}
	}
	for _, m := range res.Messages {
		if m.Seq <= s.last {
			continue
		}
		if m.Seq > s.last+1 {
			// History no longer reaches s.last+1: those are lost.
			s.last = m.Seq - 1
			out = append(out, step{kind: stepReset, msg: relay.Message{Room: m.Room, Seq: s.last, Epoch: s.epoch}})
		}
		s.last = m.Seq
		out = append(out, step{kind: stepDeliver, msg: m})
	}
	if truncated {
		out = s.drain(out)
		if len(s.held) > 0 || res.Position.Seq > s.last {
			s.startFetch()
			return out, true
		}
		return out, false
	}
	if res.Position.Seq > s.last {
		// Sequenced before the read but not in it: lost.
		s.last = res.Position.Seq
		out = append(out, step{kind: stepReset, msg: relay.Message{Room: room, Seq: s.last, Epoch: s.epoch}})
	}
	out = s.drain(out)
	if len(s.held) > 0 {
		// Held messages newer than the read with a gap before them.
		s.startFetch()
		return out, true
	}
	return out, false
}
