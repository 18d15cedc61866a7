package relay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// rdsRecorder is a Handler that records everything it is given.
type rdsRecorder struct {
	mu      sync.Mutex // guards following
	msgs    []Message
	pres    []PresenceEvent
	resyncs int
	states  []error
}

func (h *rdsRecorder) HandleMessage(m Message) {
	h.mu.Lock()
	h.msgs = append(h.msgs, m)
	h.mu.Unlock()
}

func (h *rdsRecorder) HandlePresence(e PresenceEvent) {
	h.mu.Lock()
	h.pres = append(h.pres, e)
	h.mu.Unlock()
}

func (h *rdsRecorder) HandleResync() {
	h.mu.Lock()
	h.resyncs++
	h.mu.Unlock()
}

func (h *rdsRecorder) HandleState(err error) {
	h.mu.Lock()
	h.states = append(h.states, err)
	h.mu.Unlock()
}

// roomMsgs returns the messages received for room.
func (h *rdsRecorder) roomMsgs(room string) []Message {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Message
	for _, m := range h.msgs {
		if m.Room == room {
			out = append(out, m)
		}
	}
	return out
}

func (h *rdsRecorder) roomPres(room string) []PresenceEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []PresenceEvent
	for _, e := range h.pres {
		if e.Room == room {
			out = append(out, e)
		}
	}
	return out
}

func (h *rdsRecorder) snapshot() (resyncs int, states []error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.resyncs, slices.Clone(h.states)
}

// rdsEventually polls f every 10ms until it returns nil or timeout passes.
func rdsEventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

// rdsRoom returns a room name unique to this test run.
func rdsRoom(prefix string) string {
	return fmt.Sprintf("%s-%08x", prefix, rand.Uint32())
}

func rdsCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rdsContractHistory is the HistorySize the contract's broker factory must
// configure.
const rdsContractHistory = 10

// brokerContract runs the semantics every Broker must share. newBroker
// returns a fresh broker (HistorySize rdsContractHistory) with h set as its
// handler; loseRoom simulates the loss of room's history (Redis FLUSHALL,
// TTL expiry).
func brokerContract(t *testing.T, newBroker func(t *testing.T, nodeID string, h Handler) Broker, loseRoom func(t *testing.T, room string)) {
	publishN := func(t *testing.T, b Broker, room string, n int) []Position {
		t.Helper()
		var out []Position
		for i := 0; i < n; i++ {
			p, err := b.Publish(rdsCtx(t), Message{Room: room, From: "ann", Node: "n1", Text: fmt.Sprintf("m%d", i+1), ID: fmt.Sprint(i + 1), TS: int64(1000 + i)})
			if err != nil {
				t.Fatalf("publish %d: %v", i+1, err)
			}
			out = append(out, p)
		}
		return out
	}
	seqs := func(ms []Message) []uint64 {
		out := make([]uint64, len(ms))
		for i, m := range ms {
			out[i] = m.Seq
		}
		return out
	}
	span := func(lo, hi uint64) []uint64 {
		out := []uint64{}
		for s := lo; s <= hi; s++ {
			out = append(out, s)
		}
		return out
	}

	cases := []struct {
		name string
		run  func(t *testing.T, b Broker, h *rdsRecorder, room string)
	}{
		{"seq order and delivery", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			pos, err := b.Subscribe(rdsCtx(t), room)
			if err != nil {
				t.Fatal(err)
			}
			if pos.Seq != 0 || pos.Epoch == "" {
				t.Fatalf("fresh room position = %+v, want seq 0 with an epoch", pos)
			}
			ps := publishN(t, b, room, 20)
			for i, p := range ps {
				if p.Seq != uint64(i+1) || p.Epoch != pos.Epoch {
					t.Fatalf("publish %d got %+v, want seq %d epoch %s", i+1, p, i+1, pos.Epoch)
				}
			}
			rdsEventually(t, 5*time.Second, func() error {
				if n := len(h.roomMsgs(room)); n < 20 {
					return fmt.Errorf("%d of 20 delivered", n)
				}
				return nil
			})
			got := h.roomMsgs(room)
			if !slices.Equal(seqs(got), span(1, 20)) {
				t.Fatalf("delivered seqs %v", seqs(got))
			}
			m := got[4]
			if m.Text != "m5" || m.From != "ann" || m.Node != "n1" || m.ID != "5" || m.TS != 1004 || m.Epoch != pos.Epoch || m.Room != room {
				t.Fatalf("delivered message 5 = %+v", m)
			}
			if st := b.Stats(); st.Publishes < 20 || st.Deliveries < 20 || st.Subscribed != 1 || !st.Up {
				t.Fatalf("stats %+v", st)
			}
		}},
		{"history window and earliest", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			publishN(t, b, room, 25)
			hr, err := b.History(rdsCtx(t), room, HistoryRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if hr.Position.Seq != 25 || hr.Earliest != 16 || !slices.Equal(seqs(hr.Messages), span(16, 25)) {
				t.Fatalf("history = pos %+v earliest %d seqs %v", hr.Position, hr.Earliest, seqs(hr.Messages))
			}
			if hr.Messages[9].Text != "m25" || hr.Messages[0].Epoch != hr.Position.Epoch {
				t.Fatalf("last message %+v", hr.Messages[9])
			}
			// Asking for what fell out of the window returns from Earliest.
			hr, err = b.History(rdsCtx(t), room, HistoryRequest{Since: 3, Limit: 4})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(seqs(hr.Messages), span(16, 19)) {
				t.Fatalf("since 3 limit 4: %v", seqs(hr.Messages))
			}
		}},
		{"since before limit", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			publishN(t, b, room, 8)
			for _, c := range []struct {
				req  HistoryRequest
				want []uint64
			}{
				{HistoryRequest{}, span(1, 8)},
				{HistoryRequest{Since: 3}, span(4, 8)},
				{HistoryRequest{Before: 5}, span(1, 4)},
				{HistoryRequest{Since: 2, Limit: 3}, span(3, 5)},
				{HistoryRequest{Before: 8, Limit: 2}, span(6, 7)},
				{HistoryRequest{Since: 2, Before: 6}, span(3, 5)},
				{HistoryRequest{Since: 2, Before: 6, Limit: 1}, span(5, 5)},
				{HistoryRequest{Since: 8}, nil},
				{HistoryRequest{Before: 1}, nil},
				{HistoryRequest{Limit: 100}, span(1, 8)},
			} {
				hr, err := b.History(rdsCtx(t), room, c.req)
				if err != nil {
					t.Fatal(err)
				}
				if got := seqs(hr.Messages); len(got) != len(c.want) || len(got) > 0 && !slices.Equal(got, c.want) {
					t.Errorf("%+v: got %v want %v", c.req, got, c.want)
				}
				if hr.Earliest != 1 || hr.Position.Seq != 8 {
					t.Errorf("%+v: earliest %d position %+v", c.req, hr.Earliest, hr.Position)
				}
			}
		}},
		{"empty room history", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			hr, err := b.History(rdsCtx(t), room, HistoryRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(hr.Messages) != 0 || hr.Earliest != 0 || hr.Position != (Position{}) {
				t.Fatalf("never used room: %+v, want nothing and Position{}", hr)
			}
			// Subscribe and Rollover start the epoch a read did not.
			pos, err := b.Rollover(rdsCtx(t), room, Position{})
			if err != nil || pos.Seq != 0 || pos.Epoch == "" {
				t.Fatalf("rollover of a new room: %+v %v", pos, err)
			}
			if hr, err = b.History(rdsCtx(t), room, HistoryRequest{}); err != nil || hr.Position != pos {
				t.Fatalf("history after rollover: %+v %v, want %+v", hr, err, pos)
			}
		}},
		{"epoch changes after data loss", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			old := publishN(t, b, room, 3)[2]
			loseRoom(t, room)
			p := publishN(t, b, room, 1)[0]
			if p.Seq != 1 || p.Epoch == old.Epoch || p.Epoch == "" {
				t.Fatalf("after loss: %+v (before: %+v)", p, old)
			}
			hr, err := b.History(rdsCtx(t), room, HistoryRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if hr.Position != p || !slices.Equal(seqs(hr.Messages), []uint64{1}) || hr.Messages[0].Text != "m1" {
				t.Fatalf("history after loss: %+v", hr)
			}
		}},
		{"idempotent retry", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			if _, err := b.Subscribe(rdsCtx(t), room); err != nil {
				t.Fatal(err)
			}
			first, err := b.Publish(rdsCtx(t), Message{Room: room, From: "ann", Text: "hi", ID: "a1"})
			if err != nil || first.Repeat {
				t.Fatal(first, err)
			}
			// The same id from the same sender, alone and inside a batch
			// (twice): the original's seq, marked, published once.
			again, err := b.Publish(rdsCtx(t), Message{Room: room, From: "ann", Text: "hi", ID: "a1"})
			if err != nil || again != (Position{Seq: first.Seq, Epoch: first.Epoch, Repeat: true}) {
				t.Fatalf("retry: %+v %v, want repeat of %+v", again, err, first)
			}
			ps, err := b.PublishBatch(rdsCtx(t), room, first, []Message{
				{From: "ann", Text: "hi", ID: "a1"},
				{From: "bob", Text: "hi", ID: "a1"},    // another sender, same id
				{From: "ann", User: "u-ann", ID: "a1"}, // an authenticated identity
				{From: "ann", Text: "no id"},
				{From: "ann", Text: "no id"},
				{From: "bob", Text: "hi", ID: "a1"}, // repeat within the batch
			})
			if err != nil {
				t.Fatal(err)
			}
			e := first.Epoch
			want := []Position{{1, e, true}, {2, e, false}, {3, e, false}, {4, e, false}, {5, e, false}, {2, e, true}}
			if !slices.Equal(ps, want) {
				t.Fatalf("batch %+v\nwant %+v", ps, want)
			}
			hr, err := b.History(rdsCtx(t), room, HistoryRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(seqs(hr.Messages), span(1, 5)) || hr.Messages[2].User != "u-ann" {
				t.Fatalf("history %+v", hr.Messages)
			}
			rdsEventually(t, 5*time.Second, func() error {
				if n := len(h.roomMsgs(room)); n < 5 {
					return fmt.Errorf("%d of 5 delivered", n)
				}
				return nil
			})
			if got := seqs(h.roomMsgs(room)); !slices.Equal(got, span(1, 5)) {
				t.Fatalf("delivered %v", got)
			}
			if st := b.Stats(); st.Publishes != 5 {
				t.Fatalf("publishes %d, want 5", st.Publishes)
			}
		}},
		{"rolled back bus starts a new epoch", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			last := publishN(t, b, room, 3)[2]
			// A node that delivered up to seq 5 of this epoch: the bus lost
			// seqs 4 and 5, so the next publish must not reuse them.
			known := Position{Seq: 5, Epoch: last.Epoch}
			ps, err := b.PublishBatch(rdsCtx(t), room, known, []Message{{From: "ann", Text: "after", ID: "n1"}})
			if err != nil {
				t.Fatal(err)
			}
			if ps[0].Epoch == last.Epoch || ps[0].Seq != 1 || ps[0].Repeat {
				t.Fatalf("after rollback: %+v, want seq 1 of a new epoch", ps[0])
			}
			// An idempotency key of the old epoch is published anew.
			p, err := b.Publish(rdsCtx(t), Message{Room: room, From: "ann", Text: "m1", ID: "1"})
			if err != nil || p != (Position{Seq: 2, Epoch: ps[0].Epoch}) {
				t.Fatalf("old epoch's id: %+v %v", p, err)
			}
			hr, err := b.History(rdsCtx(t), room, HistoryRequest{})
			if err != nil || !slices.Equal(seqs(hr.Messages), span(1, 2)) || hr.Messages[0].Text != "after" {
				t.Fatalf("history after rollback: %+v %v", hr, err)
			}
			// Known at or below the bus, or of another epoch: no change.
			for _, k := range []Position{{}, {Seq: 2, Epoch: p.Epoch}, {Seq: 1, Epoch: p.Epoch}, {Seq: 9, Epoch: "other"}} {
				if pos, err := b.Rollover(rdsCtx(t), room, k); err != nil || pos != p {
					t.Fatalf("rollover(%+v) = %+v %v, want %+v", k, pos, err, p)
				}
			}
			// Known above the bus in its epoch: a new epoch at seq 0.
			pos, err := b.Rollover(rdsCtx(t), room, Position{Seq: 3, Epoch: p.Epoch})
			if err != nil || pos.Seq != 0 || pos.Epoch == p.Epoch || pos.Epoch == "" {
				t.Fatalf("rollover after loss: %+v %v", pos, err)
			}
			if hr, err := b.History(rdsCtx(t), room, HistoryRequest{}); err != nil || len(hr.Messages) != 0 || hr.Position != pos {
				t.Fatalf("history after rollover: %+v %v", hr, err)
			}
		}},
		{"presence", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			if _, err := b.Subscribe(rdsCtx(t), room); err != nil {
				t.Fatal(err)
			}
			a := Member{Session: "s-a", Name: "ann", Node: "n1"}
			c := Member{Session: "s-c", Name: "cid", Node: "n1"}
			d := Member{Session: "s-d", Name: "dee", Node: "n1"}
			ctx := rdsCtx(t)
			for _, m := range []Member{a, c} {
				if err := b.AddPresence(ctx, room, m); err != nil {
					t.Fatal(err)
				}
			}
			ms, err := b.Presence(ctx, room)
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(ms, func(x, y Member) int { return cmpString(x.Session, y.Session) })
			if !slices.Equal(ms, []Member{a, c}) {
				t.Fatalf("presence %+v", ms)
			}
			if err := b.RemovePresence(ctx, room, a); err != nil {
				t.Fatal(err)
			}
			if err := b.RemovePresence(ctx, room, a); err != nil { // twice: no second event
				t.Fatal(err)
			}
			if err := b.AddPresence(ctx, room, d); err != nil {
				t.Fatal(err)
			}
			if ms, err = b.Presence(ctx, room); err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(ms, func(x, y Member) int { return cmpString(x.Session, y.Session) })
			if !slices.Equal(ms, []Member{c, d}) {
				t.Fatalf("presence after remove %+v", ms)
			}
			want := []PresenceEvent{{room, a, true}, {room, c, true}, {room, a, false}, {room, d, true}}
			rdsEventually(t, 5*time.Second, func() error {
				if got := h.roomPres(room); len(got) < len(want) {
					return fmt.Errorf("%d of %d events", len(got), len(want))
				}
				return nil
			})
			if got := h.roomPres(room); !slices.Equal(got, want) {
				t.Fatalf("events %+v\nwant %+v", got, want)
			}
		}},
		{"positions of many rooms in one read", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			// Rooms the bus holds nothing of read as Position{}; the others
			// as History says, in the order asked, a lost room as nothing
			// again (the periodic check takes that for a rollback).
			rooms := []string{room + "-a", room + "-never", room + "-b", room + "-lost"}
			publishN(t, b, rooms[3], 2)
			loseRoom(t, rooms[3]) // may lose every room: publish the others after
			publishN(t, b, rooms[0], 3)
			publishN(t, b, rooms[2], 1)
			pos, err := b.Positions(rdsCtx(t), rooms)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]Position, len(rooms))
			for i, r := range rooms {
				hr, err := b.History(rdsCtx(t), r, HistoryRequest{})
				if err != nil {
					t.Fatal(err)
				}
				want[i] = hr.Position
			}
			if !slices.Equal(pos, want) {
				t.Fatalf("positions %+v\nwant (as History reads them) %+v", pos, want)
			}
			if pos[0].Seq != 3 || pos[0].Epoch == "" || pos[1] != (Position{}) || pos[2].Seq != 1 || pos[3] != (Position{}) {
				t.Fatalf("positions %+v: want a at 3, never at zero, b at 1, lost at zero", pos)
			}
			if pos, err := b.Positions(rdsCtx(t), nil); err != nil || len(pos) != 0 {
				t.Fatalf("positions of no room: %v, %v", pos, err)
			}
		}},
		{"unsubscribe stops delivery", func(t *testing.T, b Broker, h *rdsRecorder, room string) {
			other := room + "-other"
			for _, r := range []string{room, other} {
				if _, err := b.Subscribe(rdsCtx(t), r); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Unsubscribe(rdsCtx(t), room); err != nil {
				t.Fatal(err)
			}
			publishN(t, b, room, 2)
			publishN(t, b, other, 1) // barrier: same connection, later
			rdsEventually(t, 5*time.Second, func() error {
				if len(h.roomMsgs(other)) == 0 {
					return errors.New("barrier not delivered")
				}
				return nil
			})
			if got := h.roomMsgs(room); len(got) != 0 {
				t.Fatalf("delivered after unsubscribe: %+v", got)
			}
			if st := b.Stats(); st.Subscribed != 1 {
				t.Fatalf("subscribed %d", st.Subscribed)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := &rdsRecorder{}
			b := newBroker(t, "n1", h)
			c.run(t, b, h, rdsRoom("contract"))
		})
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestMemoryBrokerContract(t *testing.T) {
	var clocks sync.Map // test name -> *memClock of its broker
	brokerContract(t, func(t *testing.T, nodeID string, h Handler) Broker {
		clk := newMemClock()
		b := NewMemory(MemoryConfig{HistorySize: rdsContractHistory, Now: clk.Now})
		b.SetHandler(h)
		clocks.Store(t.Name(), clk)
		t.Cleanup(func() { _ = b.Close() })
		return b
	}, func(t *testing.T, room string) {
		clk, _ := clocks.Load(t.Name())
		clk.(*memClock).Advance(DefaultHistoryTTL + time.Second)
	})
}
