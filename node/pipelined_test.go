package node

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"parley/actors"
	"parley/relay"
	"parley/relay/redistest"
)

// TestPipelinedSendsThenLeaveRedis: issue 7's first scenario through a real
// socket and a real Redis. A client alone in a room writes 2,000 sends
// back to back, then leave: it gets exactly one answer per send, left after
// all of them, and history holds exactly the acked messages.
func TestPipelinedSendsThenLeaveRedis(t *testing.T) {
	const sends = 2000
	srv := redistest.Start(t)
	bus, err := relay.NewRedis(relay.RedisConfig{URL: srv.URL(), NodeID: "t1", HistorySize: 5000})
	if err != nil {
		t.Fatal(err)
	}
	// A client this eager is what the rate limit is for: lift it here.
	n := startNode(t, Config{Broker: bus, Limits: actors.Limits{MessageRate: 1e9, MessageBurst: 1 << 20, MaxPublishQueue: sends}})
	c := dial(t, n, "/ws?name=ann")
	c.await("welcome")
	c.joinRoom("r")
	wrote := make(chan error, 1)
	go func() { // not the test goroutine: report, do not Fatal
		for i := 0; i < sends; i++ {
			if err := wsutil.WriteClientText(c.conn, []byte(fmt.Sprintf(`{"type":"send","room":"r","text":"m","id":"s%d"}`, i))); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- wsutil.WriteClientText(c.conn, []byte(`{"type":"leave","room":"r"}`))
	}()
	answers, acked := map[string]int{}, map[string]uint64{}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		e := c.next()
		if e.closed {
			t.Fatalf("closed %d (%v) after %d answers", e.closeCode, e.err, len(answers))
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(e.text), &m); err != nil {
			t.Fatal(err)
		}
		if m["type"] == "left" {
			break
		}
		if m["type"] == "ack" || m["type"] == "error" {
			id := m["id"].(string)
			answers[id]++
			if m["type"] == "ack" {
				acked[id] = uint64(m["seq"].(float64))
			}
		}
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	for i := 0; i < sends; i++ {
		if id := fmt.Sprint("s", i); answers[id] != 1 {
			t.Fatalf("send %s answered %d times before left", id, answers[id])
		}
	}
	res, err := bus.History(context.Background(), "r", relay.HistoryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Messages) != len(acked) {
		t.Fatalf("history holds %d, %d acked", len(res.Messages), len(acked))
	}
	for _, m := range res.Messages {
		if acked[m.ID] != m.Seq {
			t.Fatalf("history %s seq %d, acked seq %d", m.ID, m.Seq, acked[m.ID])
		}
	}
}
