package actors

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"parley/relay"
	"parley/relay/relaytest"
)

// checkBus records the periodic check's reads: every Positions call (the
// rooms it asked for) and every History call; fail makes Positions fail.
type checkBus struct {
	relay.Broker
	fail atomic.Bool

	mu        sync.Mutex
	positions [][]string
	histories int
}

func (b *checkBus) Positions(ctx context.Context, rooms []string) ([]relay.Position, error) {
	b.mu.Lock()
	b.positions = append(b.positions, slices.Clone(rooms))
	b.mu.Unlock()
	if b.fail.Load() {
		return nil, fmt.Errorf("checkBus: %w", relay.ErrUnavailable)
	}
	return b.Broker.Positions(ctx, rooms)
}

func (b *checkBus) History(ctx context.Context, room string, req relay.HistoryRequest) (relay.HistoryResult, error) {
	b.mu.Lock()
	b.histories++
	b.mu.Unlock()
	return b.Broker.History(ctx, room, req)
}

// reads returns the Positions calls so far and the History calls.
func (b *checkBus) reads() ([][]string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.positions), b.histories
}

// TestPeriodicCheckBatched: the periodic position check of a node's rooms
// is one Positions read for all of them per interval, and a room reads
// history only when the bus is not where it delivered: quiet rooms read
// none; a room that missed a delivery reads it and delivers it; if the
// batched read fails, every room checks for itself as before.
func TestPeriodicCheckBatched(t *testing.T) {
	const rooms = 30
	tests := []struct {
		name   string
		fail   bool // Positions fails
		lose   bool // the bus drops the deliveries of room c0's second message
		checks bool // want history reads for checks (Stats.Checks > 0)
	}{
		{name: "quiet rooms read no history"},
		{name: "a lost delivery is read from history", lose: true, checks: true},
		{name: "a failed read: every room checks for itself", fail: true, lose: true, checks: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner := relaytest.Wrap(relay.NewMemory(relay.MemoryConfig{}))
			bus := &checkBus{Broker: inner}
			env := newEnvOn(t, Config{CheckInterval: 20 * time.Millisecond}, bus)
			var clients []*client
			for i := range rooms {
				c := env.connect(t, fmt.Sprintf("u%d", i), false)
				c.join(fmt.Sprintf("c%d", i))
				c.send(fmt.Sprintf(`{"type":"send","room":"c%d","text":"first"}`, i))
				c.messages(1)
				clients = append(clients, c)
			}
			bus.fail.Store(tt.fail)
			if tt.lose {
				inner.SetDeliveryFilter(func(m relay.Message) int {
					if m.Room == "c0" {
						return 0
					}
					return 1
				})
				clients[0].send(`{"type":"send","room":"c0","text":"lost"}`)
				if seqs, texts := clients[0].messages(1); seqs[0] != 2 || texts[0] != "lost" {
					t.Fatalf("after the lost delivery: %v %v", seqs, texts)
				}
			}
			// Three whole checks from here on.
			calls0, before := bus.reads()
			checks0, n0 := env.sys.Stats().Checks, len(calls0)
			eventually(t, "three periodic checks", func() bool {
				calls, _ := bus.reads()
				return len(calls) >= n0+3
			})
			calls, after := bus.reads()
			for _, c := range calls[n0:] {
				if len(c) != rooms {
					t.Fatalf("a Positions call asked for %d rooms, want all %d in one call", len(c), rooms)
				}
			}
			checks := env.sys.Stats().Checks - checks0
			if !tt.checks && (checks != 0 || after != before) {
				t.Fatalf("quiet rooms: %d checks, %d history reads during three checks; want none", checks, after-before)
			}
			if tt.checks && env.sys.Stats().Checks == 0 {
				t.Fatalf("no history read for a check")
			}
			if tt.fail && checks < rooms {
				t.Fatalf("%d checks during three failed Positions reads, want every one of %d rooms to read", checks, rooms)
			}
		})
	}
}
