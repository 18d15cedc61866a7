package relaytest_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"parley/relay"
	"parley/relay/relaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Handler that records what it is given.
type recorder struct {
	mu      sync.Mutex // guards following
	seqs    []uint64
	resyncs int
	states  []error
}

func (h *recorder) HandleMessage(m relay.Message) {
	h.mu.Lock()
	h.seqs = append(h.seqs, m.Seq)
	h.mu.Unlock()
}
func (h *recorder) HandlePresence(relay.PresenceEvent) {}
func (h *recorder) HandleResync()                      { h.mu.Lock(); h.resyncs++; h.mu.Unlock() }
func (h *recorder) HandleState(err error) {
	h.mu.Lock()
	h.states = append(h.states, err)
	h.mu.Unlock()
}

func TestFaults(t *testing.T) {
	b := relaytest.Wrap(relay.NewMemory(relay.MemoryConfig{}))
	rec := &recorder{}
	b.SetHandler(rec)
	ctx := context.Background()
	if _, err := b.Subscribe(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	publish := func(id string) (relay.Position, error) {
		return b.Publish(ctx, relay.Message{Room: "r", From: "ann", ID: id})
	}

	// Deliveries dropped and duplicated.
	b.SetDeliveryFilter(func(m relay.Message) int {
		switch m.Seq {
		case 2:
			return 0
		case 3:
			return 2
		}
		return 1
	})
	for _, id := range []string{"1", "2", "3", "4"} {
		if _, err := publish(id); err != nil {
			t.Fatal(err)
		}
	}
	b.SetDeliveryFilter(nil)
	if !slices.Equal(rec.seqs, []uint64{1, 3, 3, 4}) {
		t.Fatalf("delivered %v", rec.seqs)
	}

	// Unavailable: nothing reaches the bus.
	b.SetUnavailable(true)
	if _, err := publish("5"); !errors.Is(err, relay.ErrUnavailable) {
		t.Fatalf("publish while unavailable: %v", err)
	}
	if _, err := b.History(ctx, "r", relay.HistoryRequest{}); !errors.Is(err, relay.ErrUnavailable) {
		t.Fatalf("history while unavailable: %v", err)
	}
	if b.Stats().Up {
		t.Fatal("stats up while unavailable")
	}
	b.SetUnavailable(false)
	if hr, _ := b.History(ctx, "r", relay.HistoryRequest{}); hr.Position.Seq != 4 {
		t.Fatalf("position after refused publish %+v", hr.Position)
	}

	// A lost reply: published, but the caller hears an error; the retry
	// with the same id is a repeat of the original.
	b.After(func(ctx context.Context, op relaytest.Op, room string) error {
		if op == relaytest.OpPublish {
			return relay.ErrUnavailable
		}
		return nil
	})
	if _, err := publish("5"); !errors.Is(err, relay.ErrUnavailable) {
		t.Fatalf("lost reply: %v", err)
	}
	b.After(nil)
	if p, err := publish("5"); err != nil || !p.Repeat || p.Seq != 5 {
		t.Fatalf("retry after a lost reply: %+v %v", p, err)
	}

	// A stall bounded by the caller's context.
	b.Before(func(ctx context.Context, op relaytest.Op, room string) error {
		<-ctx.Done()
		return ctx.Err()
	})
	sctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, err := b.PublishBatch(sctx, "r", relay.Position{}, []relay.Message{{From: "ann", ID: "6"}})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stalled publish: %v", err)
	}
	b.Before(nil)

	b.Resync()
	b.SetState(errors.New("down"))
	if b.Stats().Up {
		t.Fatal("stats up after SetState(down)")
	}
	b.SetState(nil)
	if rec.resyncs != 1 || len(rec.states) != 2 || rec.states[0] == nil || rec.states[1] != nil || !b.Stats().Up {
		t.Fatalf("resyncs %d states %v", rec.resyncs, rec.states)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
