package node

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestDrainReadyzFirstThenClients: the drain a load balancer needs. On
// Shutdown /readyz answers 503 at once, while the node keeps serving for
// the drain delay: its clients keep chatting, and an upgrade that a load
// balancer still sends is accepted. Only after the delay do clients get
// reconnect, in batches of DrainBatch, then close 1001, and the node is
// done within its grace.
func TestDrainReadyzFirstThenClients(t *testing.T) {
	const delay = 1500 * time.Millisecond
	n := startNode(t, Config{ShutdownGrace: 8 * time.Second, DrainDelay: delay, DrainBatch: 2})
	var cs []*client
	for i := 0; i < 6; i++ {
		c := dial(t, n, fmt.Sprintf("/ws?name=u%d", i))
		c.await("welcome")
		c.joinRoom("r")
		cs = append(cs, c)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- n.Shutdown(context.Background()) }()

	// Readiness goes first, at once.
	eventually(t, 500*time.Millisecond, func() error {
		if code, _ := httpGet(t, n.Addr(), "/readyz"); code != 503 {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
	if code, _ := httpGet(t, n.Addr(), "/healthz"); code != 200 {
		t.Fatalf("healthz during drain delay: %d", code)
	}
	// Still serving: a late upgrade is accepted and can chat.
	late := dial(t, n, "/ws?name=late")
	late.await("welcome")
	late.joinRoom("r")
	late.send(map[string]any{"type": "send", "room": "r", "text": "still here", "id": "x1"})
	late.await("ack")
	if time.Since(start) >= delay {
		t.Skipf("machine too slow to observe the drain delay (%v passed)", time.Since(start))
	}
	// Then every client, the late one included, gets reconnect and 1001,
	// and none before the delay. Each client's reader notes when.
	all := append(cs, late)
	at := make(chan time.Duration, len(all))
	for _, c := range all {
		go func() {
			for e := range c.events {
				if strings.Contains(e.text, `"type":"reconnect"`) {
					at <- time.Since(start)
					return
				}
				if e.closed {
					at <- -1
					return
				}
			}
		}()
	}
	var told []time.Duration
	for range all {
		select {
		case d := <-at:
			if d < 0 {
				t.Fatal("closed without a reconnect notice")
			}
			if d < delay {
				t.Fatalf("reconnect after %v, before the drain delay %v", d, delay)
			}
			told = append(told, d)
		case <-time.After(10 * time.Second):
			t.Fatal("no reconnect notice")
		}
	}
	for _, c := range all {
		if code := c.awaitClose(); code != ws.StatusGoingAway {
			t.Fatalf("close %d, want 1001", code)
		}
	}
	// 7 clients in batches of 2 (4 batches): well over one batch interval between the
	// first and the last notice.
	first, last := told[0], told[0]
	for _, d := range told {
		first, last = min(first, d), max(last, d)
	}
	if last-first < 2*DrainBatchInterval {
		t.Errorf("notices spread over %v; batches of 2 for 7 clients take about %v", last-first, 3*DrainBatchInterval)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not finish within its grace")
	}
}

// TestDrainDelayShorterThanGrace: a drain delay that leaves no time to
// tell the clients is a configuration error.
func TestDrainDelayShorterThanGrace(t *testing.T) {
	_, err := New(Config{Listen: "127.0.0.1:0", Admin: "-", ShutdownGrace: time.Second, DrainDelay: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "drain delay") {
		t.Fatalf("New: %v, want an error about the drain delay", err)
	}
}
