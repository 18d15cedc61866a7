package relay

import (
	"context"
	"errors"
	"slices"
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

func TestMemoryDeliveryAndHooks(t *testing.T) {
	b := NewMemory(MemoryConfig{})
	rec := &rdsRecorder{}
	b.SetHandler(rec)
	memPublishN(t, b, "r", 1) // not subscribed: not delivered
	pos, err := b.Subscribe(context.Background(), "r")
	if err != nil || pos.Seq != 1 {
		t.Fatalf("subscribe: %v %v", pos, err)
	}
	b.SetDeliveryFilter(func(m Message) int {
		switch m.Seq {
		case 3:
			return 0
		case 4:
			return 2
		}
		return 1
	})
	memPublishN(t, b, "r", 4) // 2, (3 dropped), 4, 4, 5
	if got := seqs(rec.msgs); !slices.Equal(got, []uint64{2, 4, 4, 5}) {
		t.Fatalf("delivered %v", got)
	}
	b.SetDeliveryFilter(nil)
	b.SetUnavailable(true)
	if _, err := b.Publish(context.Background(), Message{Room: "r"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("publish while unavailable: %v", err)
	}
	if _, err := b.History(context.Background(), "r", HistoryRequest{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("history while unavailable: %v", err)
	}
	b.SetUnavailable(false)
	b.Resync()
	b.SetState(errors.New("down"))
	b.SetState(nil)
	if rec.resyncs != 1 || len(rec.states) != 2 {
		t.Fatalf("resyncs %d states %v", rec.resyncs, rec.states)
	}
	if err := b.Unsubscribe(context.Background(), "r"); err != nil {
		t.Fatal(err)
	}
	memPublishN(t, b, "r", 1)
	st := b.Stats()
	if len(rec.msgs) != 4 || st.Publishes != 6 || st.Deliveries != 4 || st.Subscribed != 0 || st.Kind != "memory" {
		t.Fatalf("after unsubscribe: %d msgs, stats %+v", len(rec.msgs), st)
	}
}

func TestMemoryPresence(t *testing.T) {
	b := NewMemory(MemoryConfig{})
	rec := &rdsRecorder{}
	b.SetHandler(rec)
	ctx := context.Background()
	if _, err := b.Subscribe(ctx, "r"); err != nil {
		t.Fatal(err)
	}
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
