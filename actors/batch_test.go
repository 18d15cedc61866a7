package actors

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"parley/relay"
	"parley/relay/relaytest"
)

// TestPublishBatchFaults drives the batch-publish path the rooms use
// (Broker.PublishBatch) through faults in the middle of a pipelined run: a
// batch refused by the bus, and a batch whose reply is lost after the bus
// took it. Every send is answered exactly once, acks keep the send order,
// the refused batch's sends are not in history, and the lost reply's sends
// are — so their retries with the same id are acked as repeats with the
// original seqs, and history holds each message once.
func TestPublishBatchFaults(t *testing.T) {
	tests := []struct {
		name    string
		inBus   bool // the failed batch took effect (lost reply)
		install func(b *relaytest.Broker, hook relaytest.Hook)
	}{
		{"refused before the bus", false, func(b *relaytest.Broker, h relaytest.Hook) { b.Before(h) }},
		{"reply lost after the bus", true, func(b *relaytest.Broker, h relaytest.Hook) { b.After(h) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := relay.NewMemory(relay.MemoryConfig{HistorySize: 1000})
			fb := relaytest.Wrap(mem)
			env := newEnvOn(t, Config{PublishBatch: 10}, fb)
			c := env.connect(t, "ann", false)
			c.join("r")
			var calls atomic.Int32
			tt.install(fb, func(ctx context.Context, op relaytest.Op, room string) error {
				if op == relaytest.OpPublish && calls.Add(1) == 3 {
					return fmt.Errorf("injected: %w", relay.ErrUnavailable)
				}
				return nil
			})
			const n = 100
			for i := 0; i < n; i++ {
				c.send(fmt.Sprintf(`{"type":"send","room":"r","text":"m%d","id":"s%d"}`, i, i))
			}
			answered := func() map[string][]string { got, _ := c.transcript().answers(); return got }
			eventually(t, "every send answered", func() bool { return len(answered()) == n })

			var failed []string
			var last float64
			for _, f := range c.transcript() {
				switch f["type"] {
				case "ack":
					if s := f["seq"].(float64); s <= last {
						t.Fatalf("ack %v out of order after seq %v", f, last)
					} else {
						last = s
					}
				case "error":
					if f["code"] != "unavailable" {
						t.Fatalf("error %v", f)
					}
					failed = append(failed, f["id"].(string))
				}
			}
			for id, a := range answered() {
				if len(a) != 1 {
					t.Fatalf("%s answered %v", id, a)
				}
			}
			if len(failed) == 0 || len(failed) > 10 {
				t.Fatalf("failed sends %v: want one batch", failed)
			}
			res, err := mem.History(context.Background(), "r", relay.HistoryRequest{})
			if err != nil {
				t.Fatal(err)
			}
			want := n - len(failed)
			if tt.inBus {
				want = n
			}
			if len(res.Messages) != want {
				t.Fatalf("history holds %d, want %d", len(res.Messages), want)
			}
			// Retry what failed, with the same ids.
			seqOf := map[string]uint64{}
			for _, m := range res.Messages {
				seqOf[m.ID] = m.Seq
			}
			for _, id := range failed {
				c.send(fmt.Sprintf(`{"type":"send","room":"r","text":"retry","id":%q}`, id))
			}
			eventually(t, "retries answered", func() bool {
				got := answered()
				for _, id := range failed {
					if len(got[id]) != 2 {
						return false
					}
				}
				return true
			})
			for _, f := range c.transcript() {
				if f["type"] != "ack" || f["repeat"] != true {
					continue
				}
				if !tt.inBus {
					t.Fatalf("repeat ack for a send the bus never took: %v", f)
				}
				if seqOf[f["id"].(string)] != uint64(f["seq"].(float64)) {
					t.Fatalf("repeat ack %v, original seq %d", f, seqOf[f["id"].(string)])
				}
			}
			res, _ = mem.History(context.Background(), "r", relay.HistoryRequest{})
			if len(res.Messages) != n {
				t.Fatalf("history holds %d after the retries, want %d, each once", len(res.Messages), n)
			}
		})
	}
}
