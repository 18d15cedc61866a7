package node

import (
	"fmt"
	"testing"

	"parley/actors"
)

// awaitLogged reads c's frames into log until one of type typ for which
// match holds, and returns it.
func awaitLogged(c *client, log *[]map[string]any, typ string, match func(map[string]any) bool) map[string]any {
	c.t.Helper()
	for i := 0; i < 10000; i++ {
		m := c.nextJSON()
		*log = append(*log, m)
		if m["type"] == typ && (match == nil || match(m)) {
			return m
		}
	}
	c.t.Fatalf("no matching %q frame among 10000", typ)
	return nil
}

// TestPresenceEventsOffOnTheWire: with --presence-events-max-members 2, the
// third member of a room switches member_joined/member_left off: the two
// already there get presence_events{state:"off"}, the later ones see
// presence_events:"off" on joined, nobody hears of the third and fourth
// joins, and presence still lists all four.
func TestPresenceEventsOffOnTheWire(t *testing.T) {
	n := startNode(t, Config{Limits: actors.Limits{PresenceEventsMaxMembers: 2}})
	names := []string{"a", "b", "c", "d"}
	cs := make([]*client, len(names))
	logs := make([][]map[string]any, len(names))
	for i, name := range names {
		cs[i] = dial(t, n, "/ws?name="+name)
		awaitLogged(cs[i], &logs[i], "welcome", nil)
	}
	named := func(name string) func(map[string]any) bool {
		return func(m map[string]any) bool { return m["name"] == name }
	}
	for i := 0; i < 2; i++ {
		cs[i].send(map[string]any{"type": "join", "room": "big"})
		if j := awaitLogged(cs[i], &logs[i], "joined", nil); j["presence_events"] != nil {
			t.Fatalf("%s: joined %v in a room of %d", names[i], j, i+1)
		}
	}
	awaitLogged(cs[0], &logs[0], "member_joined", named("b"))
	for i := 2; i < 4; i++ {
		cs[i].send(map[string]any{"type": "join", "room": "big"})
		if j := awaitLogged(cs[i], &logs[i], "joined", nil); j["presence_events"] != "off" {
			t.Fatalf("%s: joined %v in a room of %d, want presence_events off", names[i], j, i+1)
		}
	}
	for i := 0; i < 2; i++ {
		p := awaitLogged(cs[i], &logs[i], "presence_events", nil)
		if p["state"] != "off" || p["room"] != "big" {
			t.Fatalf("%s: %v", names[i], p)
		}
	}
	for i := range cs {
		cs[i].send(map[string]any{"type": "presence", "room": "big"})
		if p := awaitLogged(cs[i], &logs[i], "presence", nil); len(p["members"].([]any)) != 4 {
			t.Fatalf("%s: presence %v", names[i], p)
		}
		for _, m := range logs[i] {
			if m["type"] == "member_joined" && (m["name"] == "c" || m["name"] == "d") {
				t.Errorf("%s got %v while presence events are off", names[i], m)
			}
		}
	}
}

// TestJoinStormNoSlowConsumers: 100 clients join one room at once through
// real sockets on a node whose queues hold 16 frames and whose rooms send
// presence events up to 5 members: everyone joins and learns that presence
// events are off, presence lists all 100, nobody is kicked with 4008.
func TestJoinStormNoSlowConsumers(t *testing.T) {
	const clients = 100
	n := startNode(t, Config{MaxQueueFrames: 16, MaxConnsPerAddr: -1,
		Limits: actors.Limits{PresenceEventsMaxMembers: 5, MessageRate: 1e6}})
	cs := make([]*client, clients)
	for i := range cs {
		cs[i] = dial(t, n, fmt.Sprintf("/ws?name=m%03d", i))
		cs[i].await("welcome")
	}
	for _, c := range cs {
		c.send(map[string]any{"type": "join", "room": "storm"})
	}
	for i, c := range cs {
		var log []map[string]any
		if j := awaitLogged(c, &log, "joined", nil); j["presence_events"] != "off" {
			if p := awaitLogged(c, &log, "presence_events", nil); p["state"] != "off" {
				t.Fatalf("m%03d: %v", i, p)
			}
		}
	}
	cs[0].send(map[string]any{"type": "presence", "room": "storm"})
	if p := cs[0].await("presence"); len(p["members"].([]any)) != clients {
		t.Fatalf("presence lists %d members, want %d", len(p["members"].([]any)), clients)
	}
	if k := n.Stats().SlowKicks; k != 0 {
		t.Fatalf("%d clients kicked as slow consumers", k)
	}
}
