package actors

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"parley/relay"
)

// TestPresenceGateRule is the rule alone: off above max members, on again
// only after a whole check interval at max/2 or fewer.
func TestPresenceGateRule(t *testing.T) {
	const max = 10
	type step struct {
		tick bool // a periodic check (else a resize)
		n    int
		want bool // the call reports a switch
		off  bool // the gate is off afterwards
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"at max stays on", []step{{n: 10}, {tick: true, n: 10}}},
		{"above max switches off once", []step{{n: 11, want: true, off: true}, {n: 12, off: true}, {n: 11, off: true}}},
		{"ticks while on change nothing", []step{{tick: true, n: 3}, {tick: true, n: 0}}},
		{"above half stays off", []step{{n: 11, want: true, off: true}, {n: 6, off: true},
			{tick: true, n: 6, off: true}, {tick: true, n: 6, off: true}}},
		{"half for one whole interval switches on", []step{{n: 11, want: true, off: true}, {n: 5, off: true},
			{tick: true, n: 5, off: true}, {tick: true, n: 5, want: true}}},
		{"a burst above half restarts the interval", []step{{n: 11, want: true, off: true}, {n: 5, off: true},
			{tick: true, n: 5, off: true}, {n: 6, off: true}, {n: 5, off: true},
			{tick: true, n: 5, off: true}, {tick: true, n: 5, want: true}}},
		{"on again, off again", []step{{n: 11, want: true, off: true}, {n: 1, off: true},
			{tick: true, n: 1, off: true}, {tick: true, n: 1, want: true}, {n: 11, want: true, off: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var g presenceGate
			for i, s := range tc.steps {
				var got bool
				if s.tick {
					got = g.tick(s.n, max)
				} else {
					got = g.resize(s.n, max)
				}
				if got != s.want || g.off != s.off {
					t.Fatalf("step %d %+v: switched %v, off %v", i, s, got, g.off)
				}
				if want := map[bool]string{true: "off", false: ""}[s.off]; g.state() != want {
					t.Fatalf("step %d: state %q, want %q", i, g.state(), want)
				}
			}
		})
	}
}

// jsonFrame decodes a recorded frame; false for a plain text line.
func jsonFrame(raw string, v *frame) bool { return json.Unmarshal([]byte(raw), v) == nil }

// memberFrames counts the member_joined/member_left frames c received.
func (c *client) memberFrames() int {
	c.ft.mu.Lock()
	defer c.ft.mu.Unlock()
	n := 0
	for _, f := range c.ft.frames {
		var v frame
		if jsonFrame(f, &v) && (v["type"] == "member_joined" || v["type"] == "member_left") {
			n++
		}
	}
	return n
}

// TestJoinStormPresenceBounded: 200 members join one room at once, with
// presence events capped at 20 members and every member's socket holding
// only 48 frames that are never written (a client that reads nothing during
// the storm). Nobody is kicked (4008); everyone learns that presence events
// are off (on joined or with presence_events); then 190 leave at once, the
// 10 left are told the events are on again and see the next join. No member
// gets more than 2×20 member_* frames in all (without the gate the first
// ones would get 199 member_joined and 190 member_left).
func TestJoinStormPresenceBounded(t *testing.T) {
	const members, max = 200, 20
	const queueCap = 2*max + 8
	env := newEnv(t, Config{CheckInterval: 100 * time.Millisecond,
		Limits: Limits{PresenceEventsMaxMembers: max}}, relay.MemoryConfig{})
	cs := make([]*client, members)
	for i := range cs {
		cs[i] = env.connect(t, fmt.Sprintf("m%03d", i), false)
		cs[i].ft.mu.Lock()
		cs[i].ft.max = queueCap
		cs[i].ft.mu.Unlock()
	}
	for _, c := range cs {
		c.send(`{"type":"join","room":"big"}`)
	}
	for i, c := range cs {
		if j := c.next("joined"); j["presence_events"] == nil {
			// Joined while the room was small: told when it grew.
			if p := c.next("presence_events"); p["state"] != "off" || p["room"] != "big" {
				t.Fatalf("member %d: %v", i, p)
			}
		} else if j["presence_events"] != "off" {
			t.Fatalf("member %d: joined %v", i, j)
		}
	}
	if k := env.sys.Stats().SlowKicks; k != 0 {
		t.Fatalf("%d members kicked as slow consumers during the join storm", k)
	}
	stay, leave := cs[:max/2], cs[max/2:]
	for _, c := range leave {
		c.send(`{"type":"leave","room":"big"}`)
	}
	for _, c := range leave {
		c.next("left")
	}
	for i, c := range stay {
		if p := c.next("presence_events"); p["state"] != "on" {
			t.Fatalf("member %d: %v", i, p)
		}
	}
	// The sentinel's member_joined comes after every earlier presence event
	// (one bus, one relay, one room, in order): a barrier for the counts.
	sentinel := env.connect(t, "sentinel", false)
	if j := sentinel.join("big"); j["presence_events"] != nil {
		t.Fatalf("sentinel joined %v", j)
	}
	for i, c := range stay {
		for {
			if m := c.next("member_joined"); m["name"] == "sentinel" {
				break
			}
		}
		if i == 0 {
			c.send(`{"type":"presence","room":"big","id":"p"}`)
			if p := c.next("presence"); len(p["members"].([]any)) != max/2+1 {
				t.Fatalf("presence %v", p)
			}
		}
	}
	if k := env.sys.Stats().SlowKicks; k != 0 {
		t.Fatalf("%d members kicked as slow consumers", k)
	}
	for i, c := range cs {
		if code, _ := c.closedWith(); code != 0 {
			t.Fatalf("member %d closed with %d", i, code)
		}
		if n := c.memberFrames(); n > 2*max {
			t.Fatalf("member %d got %d member_joined/member_left frames, want ≤ %d", i, n, 2*max)
		}
	}
}

// TestSmallRoomPresenceUnchanged: below the cap (the default, 1000) every
// join and leave reaches every other member exactly once, as before, and
// joined has no presence_events field. A watcher w, joined first, sees each
// join and leave before the next one happens, so each member's events are
// exactly those after its own join (frames about w, whose own announcement
// may come back after s0 joined, are not counted).
func TestSmallRoomPresenceUnchanged(t *testing.T) {
	const members = 6
	env := newEnv(t, Config{CheckInterval: 50 * time.Millisecond}, relay.MemoryConfig{})
	w := env.connect(t, "w", false)
	w.join("small")
	cs := make([]*client, members)
	name := func(i int) string { return fmt.Sprintf("s%d", i) }
	for i := range cs {
		cs[i] = env.connect(t, name(i), false)
		if j := cs[i].join("small"); j["presence_events"] != nil {
			t.Fatalf("joined %v", j)
		}
		if m := w.next("member_joined"); m["name"] != name(i) {
			t.Fatalf("w: member_joined %v, want %s", m, name(i))
		}
	}
	for i, c := range cs {
		c.send(`{"type":"leave","room":"small"}`)
		c.next("left")
		if m := w.next("member_left"); m["name"] != name(i) {
			t.Fatalf("w: member_left %v, want %s", m, name(i))
		}
	}
	for i, c := range cs {
		// Member i saw the joins after its own, then the leaves before its own.
		var want, got []string
		for j := i + 1; j < members; j++ {
			want = append(want, "member_joined "+name(j))
		}
		for j := 0; j < i; j++ {
			want = append(want, "member_left "+name(j))
		}
		c.ft.mu.Lock()
		for _, f := range c.ft.frames {
			var v frame
			if !jsonFrame(f, &v) {
				continue
			}
			switch v["type"] {
			case "presence_events":
				t.Errorf("member %d got %s", i, f)
			case "member_joined", "member_left":
				if v["name"] != "w" {
					got = append(got, fmt.Sprint(v["type"], " ", v["name"]))
				}
			}
		}
		c.ft.mu.Unlock()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("member %d got %v, want %v", i, got, want)
		}
	}
}
