package actors

import (
	"fmt"
	"strings"
	"testing"

	"parley/relay"
)

func msg(epoch string, seq uint64) relay.Message {
	return relay.Message{Room: "r", Epoch: epoch, Seq: seq}
}

// render writes steps as "d1 d2 r(E:5)" for compact expectations.
func render(steps []step) string {
	var parts []string
	for _, s := range steps {
		if s.kind == stepReset {
			parts = append(parts, fmt.Sprintf("r(%s:%d)", s.msg.Epoch, s.msg.Seq))
		} else {
			parts = append(parts, fmt.Sprintf("d%d", s.msg.Seq))
		}
	}
	return strings.Join(parts, " ")
}

func TestSequencer(t *testing.T) {
	type ev struct {
		offer   *relay.Message
		history *relay.HistoryResult
		want    string // steps rendered
		fetch   bool
	}
	o := func(e string, s uint64, want string, fetch bool) ev {
		m := msg(e, s)
		return ev{offer: &m, want: want, fetch: fetch}
	}
	h := func(epoch string, pos, earliest uint64, seqs []uint64, want string, fetch bool) ev {
		res := relay.HistoryResult{Position: relay.Position{Epoch: epoch, Seq: pos}, Earliest: earliest}
		for _, s := range seqs {
			res.Messages = append(res.Messages, msg(epoch, s))
		}
		return ev{history: &res, want: want, fetch: fetch}
	}
	tests := []struct {
		name  string
		start relay.Position
		pre   []relay.Message // offered before start
		preW  string          // steps of start
		evs   []ev
	}{
		{name: "in order", start: relay.Position{Epoch: "A", Seq: 3},
			evs: []ev{o("A", 4, "d4", false), o("A", 5, "d5", false), o("A", 6, "d6", false)}},
		{name: "duplicate and stale dropped", start: relay.Position{Epoch: "A", Seq: 3},
			evs: []ev{o("A", 3, "", false), o("A", 4, "d4", false), o("A", 4, "", false), o("A", 2, "", false)}},
		{name: "gap fetches then fills in order", start: relay.Position{Epoch: "A", Seq: 1},
			evs: []ev{
				o("A", 4, "", true), o("A", 5, "", false), // one fetch in flight only
				h("A", 5, 1, []uint64{2, 3, 4, 5}, "d2 d3 d4 d5", false),
				o("A", 5, "", false), o("A", 6, "d6", false),
			}},
		{name: "gap lost from history skips with reset", start: relay.Position{Epoch: "A", Seq: 1},
			evs: []ev{
				o("A", 9, "", true),
				h("A", 9, 6, []uint64{6, 7, 8, 9}, "r(A:5) d6 d7 d8 d9", false),
			}},
		{name: "history empty but position ahead", start: relay.Position{Epoch: "A", Seq: 1},
			evs: []ev{h("A", 4, 0, nil, "r(A:4)", false), o("A", 5, "d5", false)}},
		{name: "held newer than history read fetches again", start: relay.Position{Epoch: "A", Seq: 1},
			evs: []ev{
				o("A", 3, "", true), o("A", 6, "", false),
				h("A", 4, 1, []uint64{2, 3, 4}, "d2 d3 d4", true),
				h("A", 6, 1, []uint64{5, 6}, "d5 d6", false),
			}},
		{name: "new epoch live resets", start: relay.Position{Epoch: "A", Seq: 7},
			evs: []ev{o("B", 1, "r(B:0) d1", false), o("B", 2, "d2", false), o("B", 1, "", false)}},
		{name: "new epoch mid-sequence keeps the new epoch whole", start: relay.Position{Epoch: "A", Seq: 7},
			evs: []ev{o("A", 9, "", true), o("B", 3, "r(B:0)", false),
				h("B", 3, 1, []uint64{1, 2, 3}, "", true), // stale: requested in epoch A
				h("B", 3, 1, []uint64{1, 2, 3}, "d1 d2 d3", false), o("B", 4, "d4", false)}},
		{name: "new epoch live after a gap fetches its start", start: relay.Position{Epoch: "A", Seq: 7},
			evs: []ev{o("B", 3, "r(B:0)", true), h("B", 3, 1, []uint64{1, 2, 3}, "d1 d2 d3", false), o("B", 4, "d4", false)}},
		{name: "history in new epoch resets and rereads from its start", start: relay.Position{Epoch: "A", Seq: 7},
			evs: []ev{o("A", 9, "", true), h("B", 2, 1, []uint64{1, 2}, "r(B:0)", true),
				h("B", 2, 1, []uint64{1, 2}, "d1 d2", false), o("B", 3, "d3", false)}},
		{name: "new epoch whose start is gone", start: relay.Position{Epoch: "A", Seq: 7},
			evs: []ev{o("B", 5, "r(B:0)", true), h("B", 5, 4, []uint64{4, 5}, "r(B:3) d4 d5", false)}},
		{name: "held before start replayed after", start: relay.Position{Epoch: "A", Seq: 2},
			pre: []relay.Message{msg("A", 4), msg("A", 2), msg("A", 3)}, preW: "d3 d4",
			evs: []ev{o("A", 5, "d5", false)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s sequencer
			for _, m := range tt.pre {
				if out, f := s.offer(m, nil); len(out) != 0 || f {
					t.Fatalf("pre-start offer produced %v %v", render(out), f)
				}
			}
			if got := render(s.start(tt.start, nil)); got != tt.preW {
				t.Fatalf("start: %q, want %q", got, tt.preW)
			}
			for i, e := range tt.evs {
				var out []step
				var fetch bool
				if e.offer != nil {
					out, fetch = s.offer(*e.offer, nil)
				} else {
					out, fetch = s.applyHistory(*e.history, false, nil)
				}
				if got := render(out); got != e.want || fetch != e.fetch {
					t.Fatalf("event %d: steps %q fetch %v, want %q fetch %v", i, got, fetch, e.want, e.fetch)
				}
			}
		})
	}
}

func TestSequencerCheck(t *testing.T) {
	var s sequencer
	if s.check() {
		t.Fatal("check before start")
	}
	s.start(relay.Position{Epoch: "A"}, nil)
	if !s.check() || s.check() {
		t.Fatal("one check in flight at a time")
	}
	s.fetchFailed()
	if !s.check() {
		t.Fatal("check after failure")
	}
}

func TestSequencerRolledBack(t *testing.T) {
	tests := []struct {
		name string
		pos  relay.Position
		want bool
	}{
		{"same position", relay.Position{Seq: 7, Epoch: "e"}, false},
		{"ahead", relay.Position{Seq: 9, Epoch: "e"}, false},
		{"behind in the same epoch", relay.Position{Seq: 6, Epoch: "e"}, true},
		{"no epoch: the bus lost the room", relay.Position{}, true},
		{"another epoch: an ordinary reset", relay.Position{Seq: 1, Epoch: "f"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s sequencer
			s.start(relay.Position{Seq: 7, Epoch: "e"}, nil)
			if !s.check() {
				t.Fatal("check refused")
			}
			if got := s.rolledBack(tt.pos); got != tt.want {
				t.Fatalf("rolledBack(%+v) = %v", tt.pos, got)
			}
		})
	}
	// A read made stale by a reset proves nothing.
	var s sequencer
	s.start(relay.Position{Seq: 7, Epoch: "e"}, nil)
	s.check()
	s.offer(relay.Message{Room: "r", Seq: 1, Epoch: "f"}, nil)
	if s.rolledBack(relay.Position{}) {
		t.Fatal("stale read taken as a rollback")
	}
	// The rollover resets to the bus's new epoch and reads it from its start.
	s = sequencer{}
	s.start(relay.Position{Seq: 7, Epoch: "e"}, nil)
	s.check()
	out, fetch := s.rolledOver("r", relay.Position{Seq: 0, Epoch: "g"}, nil)
	if !fetch || len(out) != 1 || out[0].kind != stepReset || out[0].msg.Epoch != "g" || s.fetchSince != 0 {
		t.Fatalf("rolledOver: %+v fetch %v since %d", out, fetch, s.fetchSince)
	}
}
