package node

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"parley/actors"
	"parley/relay"
	"parley/relay/relaytest"
)

// TestDrainAnswersFramesAlreadyRead: through a real socket, a connection
// told to drain while its sends are still with the bus answers every send
// it had read, with an ack once the bus took it, and closes with 1001 only
// after those acks. A frame the client writes after it received reconnect
// is not read: no answer, and the close still comes.
func TestDrainAnswersFramesAlreadyRead(t *testing.T) {
	fb := relaytest.Wrap(relay.NewMemory(relay.MemoryConfig{}))
	// No rate limit: the client pipelines 200 sends and a ping at once.
	n := startNode(t, Config{Broker: fb, ShutdownGrace: 8 * time.Second, Limits: actors.Limits{MessageRate: 1e6}})
	c := dial(t, n, "/ws?name=ann")
	c.await("welcome")
	c.joinRoom("r")

	hold := make(chan struct{})
	entered := make(chan struct{}, 1)
	fb.Before(func(ctx context.Context, op relaytest.Op, room string) error {
		if op != relaytest.OpPublish {
			return nil
		}
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-hold:
		case <-ctx.Done():
		}
		return nil
	})
	const sends = 200
	for i := 0; i < sends; i++ {
		c.send(map[string]any{"type": "send", "room": "r", "text": "m", "id": fmt.Sprint("s", i)})
	}
	// The pong proves the node read every send before it.
	c.send(map[string]any{"type": "ping"})
	c.await("pong")
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no publish reached the bus")
	}

	done := make(chan error, 1)
	go func() { done <- n.Shutdown(context.Background()) }()
	acks := map[string]int{}
	for {
		m := c.nextJSON()
		if m["type"] == "reconnect" {
			break
		}
		if m["type"] == "ack" {
			t.Fatalf("ack %v while the bus holds every publish", m)
		}
	}
	c.send(map[string]any{"type": "send", "room": "r", "text": "too late", "id": "late"})
	close(hold)
	for {
		e := c.next()
		if e.closed {
			if e.closeCode != 1001 {
				t.Fatalf("close %d, want 1001", e.closeCode)
			}
			break
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(e.text), &m); err != nil {
			t.Fatal(err)
		}
		switch m["type"] {
		case "ack":
			acks[m["id"].(string)]++
		case "error":
			t.Fatalf("error %v", m)
		}
	}
	for i := 0; i < sends; i++ {
		if id := fmt.Sprint("s", i); acks[id] != 1 {
			t.Fatalf("send %s acked %d times before the close", id, acks[id])
		}
	}
	if acks["late"] != 0 {
		t.Fatal("a frame written after reconnect was served")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not finish")
	}
}
