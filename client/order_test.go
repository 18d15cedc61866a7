package client

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestOrderingRules feeds node frames to a client's state machine, as its
// reader would, and checks what reaches the application: messages once and
// in order, resets where history was lost.
func TestOrderingRules(t *testing.T) {
	cases := []struct {
		name string
		// state before: the room's position (hasPos false when epoch is "").
		epoch   string
		last    uint64
		joining bool
		frames  []string
		want    []string // "m<seq>@<epoch>" per message, "reset<seq>@<epoch>" per reset
		dups    uint64
		gaps    uint64
	}{
		{
			name:    "first join then live messages, a repeat dropped",
			joining: true,
			frames: []string{
				`{"type":"joined","room":"r","seq":5,"epoch":"e1","recovered":true}`,
				`{"type":"message","room":"r","seq":6,"epoch":"e1"}`,
				`{"type":"message","room":"r","seq":7,"epoch":"e1"}`,
				`{"type":"message","room":"r","seq":7,"epoch":"e1"}`,
				`{"type":"message","room":"r","seq":8,"epoch":"e1"}`,
			},
			want: []string{"m6@e1", "m7@e1", "m8@e1"},
			dups: 1,
		},
		{
			name:  "resume recovered: the replay continues after the last seq seen",
			epoch: "e1", last: 6, joining: true,
			frames: []string{
				`{"type":"joined","room":"r","seq":9,"epoch":"e1","recovered":true}`,
				`{"type":"message","room":"r","seq":5,"epoch":"e1"}`,
				`{"type":"message","room":"r","seq":7,"epoch":"e1"}`,
				`{"type":"message","room":"r","seq":8,"epoch":"e1"}`,
				`{"type":"message","room":"r","seq":9,"epoch":"e1"}`,
			},
			want: []string{"m7@e1", "m8@e1", "m9@e1"},
			dups: 1,
		},
		{
			name:  "resume not recovered: a reset, then the new epoch",
			epoch: "e1", last: 6, joining: true,
			frames: []string{
				`{"type":"joined","room":"r","seq":2,"epoch":"e2","recovered":false}`,
				`{"type":"message","room":"r","seq":3,"epoch":"e2"}`,
			},
			want: []string{"reset2@e2", "m3@e2"},
		},
		{
			name:  "resync notice while joined",
			epoch: "e1", last: 40,
			frames: []string{
				`{"type":"message","room":"r","seq":41,"epoch":"e1"}`,
				`{"type":"joined","room":"r","seq":0,"epoch":"e2","recovered":false}`,
				`{"type":"message","room":"r","seq":1,"epoch":"e2"}`,
				`{"type":"message","room":"r","seq":2,"epoch":"e2"}`,
			},
			want: []string{"m41@e1", "reset0@e2", "m1@e2", "m2@e2"},
		},
		{
			name:  "a new epoch without a notice is a reset",
			epoch: "e1", last: 40,
			frames: []string{
				`{"type":"message","room":"r","seq":3,"epoch":"e9"}`,
				`{"type":"message","room":"r","seq":4,"epoch":"e9"}`,
			},
			want: []string{"reset2@e9", "m3@e9", "m4@e9"},
		},
		{
			name:  "a gap is delivered and counted",
			epoch: "e1", last: 1,
			frames: []string{
				`{"type":"message","room":"r","seq":2,"epoch":"e1"}`,
				`{"type":"message","room":"r","seq":4,"epoch":"e1"}`,
			},
			want: []string{"m2@e1", "m4@e1"},
			gaps: 1,
		},
		{
			name:  "presence events turned off and on in a large room",
			epoch: "e1", last: 1,
			frames: []string{
				`{"type":"presence_events","room":"r","state":"off"}`,
				`{"type":"message","room":"r","seq":2,"epoch":"e1"}`,
				`{"type":"presence_events","room":"r","state":"on"}`,
				`{"type":"presence_events","room":"other","state":"off"}`,
			},
			want: []string{"presence-off", "m2@e1", "presence-on"},
		},
		{
			name:  "other rooms' frames are ignored",
			epoch: "e1", last: 1,
			frames: []string{
				`{"type":"message","room":"other","seq":2,"epoch":"e1"}`,
				`{"type":"joined","room":"other","seq":2,"epoch":"e1","recovered":false}`,
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &Client{events: newEventQueue(), rooms: map[string]*roomState{}, sends: map[string]*pendingSend{},
				reqs: map[string][]*request{}, leaves: map[string][]chan error{}}
			r := &roomState{name: "r", joining: tc.joining, joined: !tc.joining}
			if tc.epoch != "" {
				r.hasPos, r.epoch, r.last = true, tc.epoch, tc.last
			}
			c.rooms["r"] = r
			for _, s := range tc.frames {
				var f frame
				if err := json.Unmarshal([]byte(s), &f); err != nil {
					t.Fatal(err)
				}
				c.handle(nil, &f)
			}
			var got []string
			for {
				e, ok := c.events.pop()
				if !ok {
					break
				}
				switch e.Kind {
				case EventMessage:
					got = append(got, fmt.Sprintf("m%d@%s", e.Message.Seq, e.Message.Epoch))
				case EventReset:
					got = append(got, fmt.Sprintf("reset%d@%s", e.Seq, e.Epoch))
				case EventPresenceEvents:
					got = append(got, "presence-"+e.State)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("delivered %s, want %s", strings.Join(got, " "), strings.Join(tc.want, " "))
			}
			if c.stats.Duplicates != tc.dups || c.stats.Gaps != tc.gaps {
				t.Fatalf("duplicates %d gaps %d, want %d %d", c.stats.Duplicates, c.stats.Gaps, tc.dups, tc.gaps)
			}
			if tc.joining && !r.joined {
				t.Fatal("the join's answer did not mark the room joined")
			}
		})
	}
}

// TestWSURL checks how configured addresses become upgrade URLs.
func TestWSURL(t *testing.T) {
	cases := []struct {
		addr, name, want string
		bad              bool
	}{
		{addr: "127.0.0.1:8080", name: "ann", want: "ws://127.0.0.1:8080/ws?name=ann"},
		{addr: "ws://h:1", want: "ws://h:1/ws"},
		{addr: "ws://h:1/", name: "a b", want: "ws://h:1/ws?name=a+b"},
		{addr: "ws://h:1/chat/ws?x=1", name: "x", want: "ws://h:1/chat/ws?name=x&x=1"},
		{addr: "http://h:1", bad: true},
		{addr: "ws://[::1", bad: true},
	}
	for _, tc := range cases {
		got, err := wsURL(tc.addr, tc.name)
		if tc.bad {
			if err == nil {
				t.Errorf("wsURL(%q) = %q, want an error", tc.addr, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("wsURL(%q, %q) = %q, %v; want %q", tc.addr, tc.name, got, err, tc.want)
		}
	}
}
