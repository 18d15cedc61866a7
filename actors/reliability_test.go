package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"parley/relay"
	"parley/relay/redistest"
)

// bus is a named way to get a broker for a test.
type bus struct {
	name string
	new  func(t *testing.T, node string) relay.Broker
}

// buses are the embedded bus and a real redis-server started per test.
var buses = []bus{
	{"memory", func(t *testing.T, _ string) relay.Broker {
		return relay.NewMemory(relay.MemoryConfig{HistorySize: 5000})
	}},
	{"redis", func(t *testing.T, node string) relay.Broker {
		srv := redistest.Start(t)
		return redisOn(t, srv, node)
	}},
}

// redisOn returns a Redis broker on srv, closed in t.Cleanup.
func redisOn(t *testing.T, srv *redistest.Server, node string) relay.Broker {
	t.Helper()
	b, err := relay.NewRedis(relay.RedisConfig{URL: srv.URL(), NodeID: node, HistorySize: 5000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// gateBroker wraps a broker; while a gate is set, the calls it guards wait
// until it is closed.
type gateBroker struct {
	relay.Broker
	mu      sync.Mutex
	publish chan struct{} // nil: open
	history chan struct{}
	entered chan string // receives "publish"/"history" as a guarded call waits
}

func newGate(b relay.Broker) *gateBroker {
	return &gateBroker{Broker: b, entered: make(chan string, 64)}
}

func (g *gateBroker) hold(which string) (release func()) {
	ch := make(chan struct{})
	g.mu.Lock()
	if which == "publish" {
		g.publish = ch
	} else {
		g.history = ch
	}
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		if which == "publish" {
			g.publish = nil
		} else {
			g.history = nil
		}
		g.mu.Unlock()
		close(ch)
	}
}

func (g *gateBroker) wait(which string) {
	g.mu.Lock()
	ch := g.publish
	if which == "history" {
		ch = g.history
	}
	g.mu.Unlock()
	if ch != nil {
		g.entered <- which
		<-ch
	}
}

func (g *gateBroker) Publish(ctx context.Context, m relay.Message) (relay.Position, error) {
	g.wait("publish")
	return g.Broker.Publish(ctx, m)
}

func (g *gateBroker) PublishBatch(ctx context.Context, room string, known relay.Position, msgs []relay.Message) ([]relay.Position, error) {
	g.wait("publish")
	return g.Broker.PublishBatch(ctx, room, known, msgs)
}

func (g *gateBroker) History(ctx context.Context, room string, req relay.HistoryRequest) (relay.HistoryResult, error) {
	g.wait("history")
	return g.Broker.History(ctx, room, req)
}

func (g *gateBroker) awaitEntered(t *testing.T, which string) {
	t.Helper()
	select {
	case got := <-g.entered:
		if got != which {
			t.Fatalf("entered %s, want %s", got, which)
		}
	case <-timeout():
		t.Fatalf("timeout waiting for a %s call", which)
	}
}

// transcript is what a client received, decoded, in order.
type transcript []frame

func (c *client) transcript() transcript {
	c.ft.mu.Lock()
	defer c.ft.mu.Unlock()
	out := make(transcript, 0, len(c.ft.frames))
	for _, raw := range c.ft.frames {
		var f frame
		if err := json.Unmarshal([]byte(raw), &f); err != nil {
			f = frame{"raw": raw}
		}
		out = append(out, f)
	}
	return out
}

// answers maps each id of an ack or error frame to the types it got, and
// returns the index of the last such frame.
func (tr transcript) answers() (map[string][]string, int) {
	got, last := map[string][]string{}, -1
	for i, f := range tr {
		if f["type"] == "ack" || f["type"] == "error" {
			id, _ := f["id"].(string)
			got[id] = append(got[id], f["type"].(string))
			last = i
		}
	}
	return got, last
}

func (tr transcript) index(typ string) int {
	return slices.IndexFunc(tr, func(f frame) bool { return f["type"] == typ })
}

// TestPipelinedSendsThenLeave is issue 7's first scenario: a client alone in
// a room pipelines 2,000 sends and leaves; the room then empties and stops.
// Every send is answered exactly once, left comes after every answer, and
// history holds exactly the acked messages.
func TestPipelinedSendsThenLeave(t *testing.T) {
	for _, b := range buses {
		t.Run(b.name, func(t *testing.T) {
			bus := b.new(t, "n1")
			const n = 2000
			// Room for every send in the room's queue (the cap is
			// limits_test.go's subject).
			env := newEnvOn(t, Config{PublishBatch: 64, Limits: Limits{MaxPublishQueue: n}}, bus)
			c := env.connect(t, "ann", false)
			c.join("r")
			for i := 0; i < n; i++ {
				c.send(fmt.Sprintf(`{"type":"send","room":"r","text":"m%d","id":"s%d"}`, i, i))
			}
			c.send(`{"type":"leave","room":"r"}`)
			c.next("left")
			eventually(t, "room stopped", func() bool { return env.sys.Stats().Rooms == 0 })

			tr := c.transcript()
			got, last := tr.answers()
			acked := map[string]uint64{}
			for _, f := range tr {
				if f["type"] == "ack" {
					acked[f["id"].(string)] = uint64(f["seq"].(float64))
				}
			}
			for i := 0; i < n; i++ {
				id := fmt.Sprintf("s%d", i)
				if len(got[id]) != 1 {
					t.Fatalf("send %s answered %v, want exactly one answer", id, got[id])
				}
			}
			if left := tr.index("left"); left < last {
				t.Fatalf("left at frame %d before the last answer at %d", left, last)
			}
			res, err := bus.History(context.Background(), "r", relay.HistoryRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Messages) != len(acked) {
				t.Fatalf("history holds %d messages, %d were acked", len(res.Messages), len(acked))
			}
			for _, m := range res.Messages {
				if seq, ok := acked[m.ID]; !ok || seq != m.Seq {
					t.Fatalf("history message %s seq %d: acked %v (seq %d)", m.ID, m.Seq, ok, seq)
				}
			}
			if len(acked) != n {
				t.Fatalf("%d of %d sends acked on a healthy bus", len(acked), n)
			}
		})
	}
}

// TestLeaveRejoinKeepsOrder: a leave and a join behind queued sends wait
// for them, so the client sees every ack, then left, then joined, then the
// ack of its next send.
func TestLeaveRejoinKeepsOrder(t *testing.T) {
	g := newGate(relay.NewMemory(relay.MemoryConfig{}))
	env := newEnvOn(t, Config{}, g)
	c := env.connect(t, "ann", false)
	c.join("r")
	release := g.hold("publish")
	c.send(`{"type":"send","room":"r","text":"a","id":"a"}`)
	g.awaitEntered(t, "publish")
	c.send(`{"type":"send","room":"r","text":"b","id":"b"}`)
	c.send(`{"type":"leave","room":"r"}`)
	c.send(`{"type":"join","room":"r"}`)
	c.send(`{"type":"send","room":"r","text":"c","id":"c"}`)
	release()
	for c.next("ack")["id"] != "c" {
	}
	var order []string
	for _, f := range c.transcript() {
		switch f["type"] {
		case "ack":
			order = append(order, "ack:"+f["id"].(string))
		case "left", "joined":
			order = append(order, f["type"].(string))
		}
	}
	want := []string{"joined", "ack:a", "ack:b", "left", "joined", "ack:c"}
	if !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
}

// TestQueryBusy: one history or presence request in flight per connection;
// the next one is refused with busy until the first is answered.
func TestQueryBusy(t *testing.T) {
	g := newGate(relay.NewMemory(relay.MemoryConfig{}))
	env := newEnvOn(t, Config{}, g)
	c := env.connect(t, "ann", false)
	c.join("r")
	c.join("q")
	release := g.hold("history")
	c.send(`{"type":"history","room":"r","id":"h1"}`)
	g.awaitEntered(t, "history")
	for _, in := range []string{
		`{"type":"history","room":"r","id":"h2"}`,
		`{"type":"presence","room":"q","id":"p1"}`,
	} {
		c.send(in)
		var want map[string]any
		_ = json.Unmarshal([]byte(in), &want)
		if e := c.next("error"); e["code"] != "busy" || e["id"] != want["id"] {
			t.Fatalf("second request: %v", e)
		}
	}
	release()
	if h := c.next("history"); h["room"] != "r" {
		t.Fatalf("history %v", h)
	}
	c.send(`{"type":"presence","room":"q","id":"p2"}`)
	if p := c.next("presence"); p["room"] != "q" {
		t.Fatalf("presence %v", p)
	}
	// A request for a room the connection is not in does not hold the slot.
	c.send(`{"type":"history","room":"zz","id":"h3"}`)
	if e := c.next("error"); e["code"] != "not_joined" {
		t.Fatalf("not joined %v", e)
	}
	c.send(`{"type":"history","room":"r","id":"h4"}`)
	c.next("history")
}

// TestHistoryBytesCap: a history reply stays within HistoryBytes, says
// more:true while older messages exist, and paging with before walks the
// whole history exactly once.
func TestHistoryBytesCap(t *testing.T) {
	const maxBytes = 2000
	env := newEnv(t, Config{HistoryBytes: maxBytes, HistoryLimit: 100}, relay.MemoryConfig{HistorySize: 200})
	ctx := context.Background()
	for i := 1; i <= 60; i++ {
		text := strings.Repeat("x", 100)
		if i == 30 {
			text = strings.Repeat("<", 3000) // larger than the cap alone
		}
		if _, err := env.broker.Publish(ctx, relay.Message{Room: "r", Text: text, From: "p"}); err != nil {
			t.Fatal(err)
		}
	}
	c := env.connect(t, "ann", false)
	c.join("r")
	var seen []uint64
	before := uint64(0)
	for page := 0; ; page++ {
		if page > 60 {
			t.Fatal("paging does not end")
		}
		c.send(fmt.Sprintf(`{"type":"history","room":"r","before":%d}`, before))
		h := c.next("history")
		msgs := h["messages"].([]any)
		if len(msgs) == 0 {
			t.Fatalf("empty page %v", h)
		}
		b, _ := json.Marshal(h)
		if len(b) > maxBytes+200 && len(msgs) > 1 {
			t.Fatalf("page of %d messages is %d bytes, cap %d", len(msgs), len(b), maxBytes)
		}
		var seqs []uint64
		for _, m := range msgs {
			seqs = append(seqs, uint64(m.(map[string]any)["seq"].(float64)))
		}
		seen = append(seqs, seen...)
		before = seqs[0]
		if h["more"] != true {
			break
		}
	}
	if !slices.Equal(seen, seqRange(1, 60)) {
		t.Fatalf("paged %v", seen)
	}
}

// TestDrainAnswersEveryFrameRead: told to drain, a connection queues
// reconnect, stops reading, answers every frame it had read (a send with an
// ack once the bus took it, a join with "draining"), and only then closes
// with 1001.
func TestDrainAnswersEveryFrameRead(t *testing.T) {
	g := newGate(relay.NewMemory(relay.MemoryConfig{}))
	env := newEnvOn(t, Config{}, g)
	c := env.connect(t, "ann", false)
	c.join("r")
	release := g.hold("publish")
	const n = 300
	for i := 0; i < n; i++ {
		c.send(fmt.Sprintf(`{"type":"send","room":"r","text":"m","id":"s%d"}`, i))
	}
	g.awaitEntered(t, "publish")
	c.sess.Drain("upgrade", 0)
	// Frames read before reading stopped but queued behind the drain
	// (posted past the gate, as netpoll had handed them over already).
	env.sys.root.Send(c.sess.pid, &inbound{op: ws.OpText, payload: []byte(`{"type":"join","room":"q","id":"j"}`)})
	env.sys.root.Send(c.sess.pid, &inbound{op: ws.OpText, payload: []byte(`{"type":"send","room":"r","text":"late","id":"late"}`)})
	c.next("reconnect")
	if e := c.next("error"); e["code"] != "draining" || e["id"] != "j" {
		t.Fatalf("join during drain: %v", e)
	}
	c.ft.mu.Lock()
	closedEarly := c.ft.closed
	c.ft.mu.Unlock()
	if closedEarly {
		t.Fatal("closed while its sends were still with the bus")
	}
	release()
	c.awaitClosed()
	if code, kicked := c.closedWith(); code != 1001 || kicked {
		t.Fatalf("close %d kicked %v", code, kicked)
	}
	got, _ := c.transcript().answers()
	for i := 0; i < n; i++ {
		if a := got[fmt.Sprintf("s%d", i)]; !slices.Equal(a, []string{"ack"}) {
			t.Fatalf("send s%d answered %v", i, a)
		}
	}
	if a := got["late"]; !slices.Equal(a, []string{"ack"}) {
		t.Fatalf("late send answered %v", a)
	}
	// Reading has stopped: a frame handed over now is not taken.
	c.send(`{"type":"ping"}`)
	eventually(t, "connection gone", func() bool { return env.sys.Stats().Connections == 0 })
}

func timeout() <-chan time.Time { return time.After(waitFor) }
