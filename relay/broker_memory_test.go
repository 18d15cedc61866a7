package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func memPublishN(t *testing.T, b *Memory, room string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := b.Publish(context.Background(), Message{Room: room, Text: "x"}); err != nil {
			t.Fatal(err)
		}
	}
}

func seqs(ms []Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq
	}
	return out
}

func span(lo, hi uint64) []uint64 {
	var out []uint64
	for s := lo; s <= hi; s++ {
		out = append(out, s)
	}
	return out
}

func TestMemoryHistory(t *testing.T) {
	b := NewMemory(MemoryConfig{HistorySize: 10})
	memPublishN(t, b, "r", 15) // keeps 6..15
	tests := []struct {
		name     string
		req      HistoryRequest
		want     []uint64
		earliest uint64
	}{
		{"all kept", HistoryRequest{}, span(6, 15), 6},
		{"since inside", HistoryRequest{Since: 12}, span(13, 15), 6},
		{"since before window", HistoryRequest{Since: 2}, span(6, 15), 6},
		{"since at end", HistoryRequest{Since: 15}, nil, 6},
		{"before", HistoryRequest{Before: 9}, span(6, 8), 6},
		{"before with limit takes newest", HistoryRequest{Before: 12, Limit: 2}, span(10, 11), 6},
		{"limit takes oldest above since", HistoryRequest{Since: 7, Limit: 3}, span(8, 10), 6},
		{"since and before", HistoryRequest{Since: 8, Before: 11}, span(9, 10), 6},
		{"before huge", HistoryRequest{Before: 1 << 62, Limit: 3}, span(13, 15), 6},
		{"empty range", HistoryRequest{Since: 10, Before: 9}, nil, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := b.History(context.Background(), "r", tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if got := seqs(res.Messages); !slices.Equal(got, tt.want) {
				t.Fatalf("seqs = %v, want %v", got, tt.want)
			}
			if res.Earliest != tt.earliest || res.Position.Seq != 15 || res.Position.Epoch == "" {
				t.Fatalf("earliest %d position %+v", res.Earliest, res.Position)
			}
		})
	}
	res, _ := b.History(context.Background(), "empty", HistoryRequest{})
	if res.Earliest != 0 || res.Position.Seq != 0 || len(res.Messages) != 0 {
		t.Fatalf("empty room: %+v", res)
	}
}

func TestMemoryEpochResetAfterTTL(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b := NewMemory(MemoryConfig{HistoryTTL: time.Minute, Now: clock})
	p1, err := b.Publish(context.Background(), Message{Room: "r"})
	if err != nil || p1.Seq != 1 {
		t.Fatalf("%v %v", p1, err)
	}
	p2, _ := b.Publish(context.Background(), Message{Room: "r"})
	if p2.Seq != 2 || p2.Epoch != p1.Epoch {
		t.Fatalf("same epoch expected: %v %v", p1, p2)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	p3, _ := b.Publish(context.Background(), Message{Room: "r"})
	if p3.Seq != 1 || p3.Epoch == p1.Epoch {
		t.Fatalf("after TTL: want seq 1 in a new epoch, got %v (old %v)", p3, p1)
	}
	res, _ := b.History(context.Background(), "r", HistoryRequest{})
	if !slices.Equal(seqs(res.Messages), []uint64{1}) || res.Messages[0].Epoch != p3.Epoch {
		t.Fatalf("history after reset: %+v", res)
	}
}

func TestMemoryDelivery(t *testing.T) {
	b := NewMemory(MemoryConfig{})
	rec := &rdsRecorder{}
	b.SetHandler(rec)
	memPublishN(t, b, "r", 1) // not subscribed: not delivered
	pos, err := b.Subscribe(context.Background(), "r")
	if err != nil || pos.Seq != 1 {
		t.Fatalf("subscribe: %v %v", pos, err)
	}
	memPublishN(t, b, "r", 3)
	if got := seqs(rec.msgs); !slices.Equal(got, []uint64{2, 3, 4}) {
		t.Fatalf("delivered %v", got)
	}
	if err := b.Unsubscribe(context.Background(), "r"); err != nil {
		t.Fatal(err)
	}
	memPublishN(t, b, "r", 1)
	st := b.Stats()
	if len(rec.msgs) != 3 || st.Publishes != 5 || st.Deliveries != 3 || st.Subscribed != 0 || st.Kind != "memory" {
		t.Fatalf("after unsubscribe: %d msgs, stats %+v", len(rec.msgs), st)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(context.Background(), Message{Room: "r"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("publish after close: %v", err)
	}
}

// memClock is a settable clock for MemoryConfig.Now.
type memClock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func newMemClock() *memClock { return &memClock{now: time.Unix(1000, 0)} }

func (c *memClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *memClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestMemoryIdempotencyWindow(t *testing.T) {
	clk := newMemClock()
	b := NewMemory(MemoryConfig{IdempotencyWindow: time.Minute, Now: clk.Now})
	ctx := context.Background()
	m := Message{Room: "r", From: "ann", Text: "x", ID: "k"}
	first, err := b.Publish(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	if p, _ := b.Publish(ctx, m); p != (Position{Seq: first.Seq, Epoch: first.Epoch, Repeat: true}) {
		t.Fatalf("retry within the window: %+v", p)
	}
	clk.Advance(2 * time.Second)
	if p, _ := b.Publish(ctx, m); p.Repeat || p.Seq != 2 {
		t.Fatalf("retry after the window: %+v, want a new publish", p)
	}
	// Records expire: 1,000 keyed sends, then the window passes; the next
	// publish leaves only its own record.
	for i := range 1000 {
		if _, err := b.Publish(ctx, Message{Room: "r", From: "ann", ID: fmt.Sprint("id", i)}); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(2 * time.Minute)
	if _, err := b.Publish(ctx, Message{Room: "r", From: "ann", ID: "last"}); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	n, q := len(b.rooms["r"].idem), len(b.rooms["r"].idemQ)
	b.mu.Unlock()
	if n != 1 || q != 1 {
		t.Fatalf("idempotency records after the window: map %d queue %d, want 1", n, q)
	}
}

func TestMemoryHistoryMaxBytes(t *testing.T) {
	text := strings.Repeat("<", 1000)
	size := memSize(Message{From: "ann", Text: text})
	b := NewMemory(MemoryConfig{HistoryMaxBytes: 5 * size})
	ctx := context.Background()
	for range 8 {
		if _, err := b.Publish(ctx, Message{Room: "r", From: "ann", Text: text}); err != nil {
			t.Fatal(err)
		}
	}
	hr, _ := b.History(ctx, "r", HistoryRequest{})
	if !slices.Equal(seqs(hr.Messages), span(4, 8)) || hr.Earliest != 4 {
		t.Fatalf("kept %v earliest %d, want 4..8", seqs(hr.Messages), hr.Earliest)
	}
	// One message larger than the cap is still kept, alone.
	big := strings.Repeat("x", 10*size)
	p, err := b.Publish(ctx, Message{Room: "r", From: "ann", Text: big})
	if err != nil {
		t.Fatal(err)
	}
	hr, _ = b.History(ctx, "r", HistoryRequest{})
	if len(hr.Messages) != 1 || hr.Messages[0].Seq != p.Seq || hr.Earliest != p.Seq {
		t.Fatalf("after a large message: %v", seqs(hr.Messages))
	}
}

// TestMemoryBounded: churn leaves nothing behind — reads of unknown rooms
// create nothing, rooms that never had a message go with their last
// subscriber, presence of empty rooms is dropped, idle rooms are forgotten.
func TestMemoryBounded(t *testing.T) {
	clk := newMemClock()
	b := NewMemory(MemoryConfig{HistoryTTL: time.Hour, Now: clk.Now})
	ctx := context.Background()
	for i := range 1000 {
		room := fmt.Sprint("room-", i%20)
		if _, err := b.History(ctx, fmt.Sprint("never-", i), HistoryRequest{}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Subscribe(ctx, room); err != nil {
			t.Fatal(err)
		}
		m := Member{Session: fmt.Sprint("s", i), Name: "x", Node: "n1"}
		if err := b.AddPresence(ctx, room, m); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := b.Publish(ctx, Message{Room: room, ID: fmt.Sprint(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.RemovePresence(ctx, room, m); err != nil {
			t.Fatal(err)
		}
		if err := b.Unsubscribe(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
	b.mu.Lock()
	rooms, pres := len(b.rooms), len(b.presence)
	b.mu.Unlock()
	if rooms != 10 || pres != 0 {
		t.Fatalf("after churn: %d rooms (want the 10 with history), %d presence sets", rooms, pres)
	}
	clk.Advance(2 * time.Hour)
	if _, err := b.History(ctx, "any", HistoryRequest{}); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	rooms = len(b.rooms)
	b.mu.Unlock()
	if rooms != 0 {
		t.Fatalf("after the TTL: %d rooms kept", rooms)
	}
}

// subscribedMemory is a memory bus subscribed to room "r", its events
// recorded.
func subscribedMemory(t *testing.T) (*Memory, *rdsRecorder) {
	t.Helper()
	b := NewMemory(MemoryConfig{})
	rec := &rdsRecorder{}
	b.SetHandler(rec)
	if _, err := b.Subscribe(context.Background(), "r"); err != nil {
		t.Fatal(err)
	}
	return b, rec
}

func TestMemoryPresence(t *testing.T) {
	b, rec := subscribedMemory(t)
	ctx := context.Background()
	steps := []struct {
		add  bool
		m    Member
		want []string // names after the step
		evts int
	}{
		{true, Member{Session: "s1", Name: "bob", Node: "n1"}, []string{"bob"}, 1},
		{true, Member{Session: "s2", Name: "alice", Node: "n1"}, []string{"alice", "bob"}, 2},
		{false, Member{Session: "s1", Name: "bob", Node: "n1"}, []string{"alice"}, 3},
		{false, Member{Session: "s1", Name: "bob", Node: "n1"}, []string{"alice"}, 3}, // absent: no event
		{false, Member{Session: "s2", Name: "alice", Node: "n1"}, nil, 4},
	}
	for i, st := range steps {
		var err error
		if st.add {
			err = b.AddPresence(ctx, "r", st.m)
		} else {
			err = b.RemovePresence(ctx, "r", st.m)
		}
		if err != nil {
			t.Fatal(err)
		}
		list, err := b.Presence(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, m := range list {
			names = append(names, m.Name)
		}
		if len(names) != len(st.want) || (len(names) > 0 && names[0] != st.want[0]) || len(rec.pres) != st.evts {
			t.Fatalf("step %d: names %v want %v, events %d want %d", i, names, st.want, len(rec.pres), st.evts)
		}
		if e := rec.pres[len(rec.pres)-1]; e.Joined != st.add && st.evts == i+1 {
			t.Fatalf("step %d: event %+v", i, e)
		}
	}
}

// TestMemoryPresenceNodes: members of two nodes sharing one Memory keep
// their node names through adds, removes and re-adds; a session is present
// once, on the node of its latest add; empty rooms leave nothing behind.
func TestMemoryPresenceNodes(t *testing.T) {
	type op struct {
		add     bool
		session string
		name    string
		node    string
	}
	cases := []struct {
		name   string
		ops    []op
		want   []Member // Presence after the ops, sorted by name then session
		events int      // presence events delivered
	}{
		{"one node", []op{{true, "a", "ann", "n1"}, {true, "b", "bob", "n1"}},
			[]Member{{"a", "ann", "n1"}, {"b", "bob", "n1"}}, 2},
		{"two nodes", []op{{true, "a", "ann", "n1"}, {true, "b", "bob", "n2"}, {true, "c", "cy", "n1"}},
			[]Member{{"a", "ann", "n1"}, {"b", "bob", "n2"}, {"c", "cy", "n1"}}, 3},
		{"remove one of each node", []op{{true, "a", "ann", "n1"}, {true, "b", "bob", "n2"}, {true, "c", "cy", "n2"},
			{false, "a", "ann", "n1"}, {false, "b", "bob", "n2"}},
			[]Member{{"c", "cy", "n2"}}, 5},
		{"readd after remove", []op{{true, "a", "ann", "n1"}, {false, "a", "ann", "n1"}, {true, "a", "ann", "n1"}},
			[]Member{{"a", "ann", "n1"}}, 3},
		{"readd renames", []op{{true, "a", "ann", "n1"}, {true, "a", "anna", "n1"}},
			[]Member{{"a", "anna", "n1"}}, 2},
		{"readd on another node moves", []op{{true, "a", "ann", "n1"}, {true, "b", "bob", "n1"}, {true, "a", "ann", "n2"}},
			[]Member{{"a", "ann", "n2"}, {"b", "bob", "n1"}}, 3},
		{"move empties the first node", []op{{true, "a", "ann", "n1"}, {true, "a", "ann", "n2"}, {false, "a", "ann", "n2"}},
			nil, 3},
		{"remove absent: no event", []op{{true, "a", "ann", "n1"}, {false, "b", "bob", "n2"}, {false, "a", "ann", "n1"}, {false, "a", "ann", "n1"}},
			nil, 2},
		{"remove names the session only", []op{{true, "a", "ann", "n1"}, {false, "a", "", "n2"}},
			nil, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, rec := subscribedMemory(t)
			ctx := context.Background()
			for _, o := range tc.ops {
				m := Member{Session: o.session, Name: o.name, Node: o.node}
				var err error
				if o.add {
					err = b.AddPresence(ctx, "r", m)
				} else {
					err = b.RemovePresence(ctx, "r", m)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			got, err := b.Presence(ctx, "r")
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || len(got) != len(tc.want) {
				t.Fatalf("presence %v, want %v", got, tc.want)
			}
			rec.mu.Lock()
			events := len(rec.pres)
			rec.mu.Unlock()
			if events != tc.events {
				t.Fatalf("%d presence events, want %d", events, tc.events)
			}
			b.mu.Lock()
			sets, kept := len(b.presence["r"]), len(b.presence)
			b.mu.Unlock()
			nodes := map[string]bool{}
			for _, m := range tc.want {
				nodes[m.Node] = true
			}
			if len(tc.want) == 0 && kept != 0 || sets != len(nodes) {
				t.Fatalf("%d rooms with presence kept, %d node sets in r (want %d)", kept, sets, len(nodes))
			}
		})
	}
}
