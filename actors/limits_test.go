package actors

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"parley/relay"
	"parley/relay/relaytest"
)

// stallRoom holds every publish of one room until released: a slow bus,
// for one room only. entered gets a value per held call.
type stallRoom struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newStallRoom(b *relaytest.Broker, room string) *stallRoom {
	s := &stallRoom{entered: make(chan struct{}, 1024), release: make(chan struct{})}
	b.Before(func(ctx context.Context, op relaytest.Op, r string) error {
		if op != relaytest.OpPublish || r != room {
			return nil
		}
		s.entered <- struct{}{}
		select {
		case <-s.release:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("stall: %w", relay.ErrUnavailable)
		}
	})
	return s
}

func (s *stallRoom) unstall() { s.once.Do(func() { close(s.release) }) }

// newEnvBroker is newEnv with a broker of the test's choice.
func newEnvBroker(t *testing.T, cfg Config, b relay.Broker) *testEnv {
	t.Helper()
	cfg.NodeID, cfg.CheckInterval, cfg.Broker = "n1", time.Hour, b
	sys, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sys.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return &testEnv{sys: sys}
}

// TestRateLimit: past its burst a connection's frames are refused with
// rate_limited and retry_after_ms (echoing the frame's id), frames within
// the rate are served again afterwards, and a connection that keeps on is
// closed with 1008. Plain mode gets text lines, then 1008.
func TestRateLimit(t *testing.T) {
	env := newEnv(t, Config{Limits: Limits{MessageRate: 1, MessageBurst: 5, RateLimitStrikes: 3}}, relay.MemoryConfig{})
	c := env.connect(t, "ann", false)
	for i := 0; i < 5; i++ {
		c.send(`{"type":"ping"}`)
	}
	for i := 0; i < 5; i++ {
		c.next("pong")
	}
	c.send(`{"type":"ping","id":"p6"}`)
	e := c.next("error")
	if e["code"] != "rate_limited" || e["id"] != "p6" || e["message"] == "" {
		t.Fatalf("refusal %v", e)
	}
	if ms, _ := e["retry_after_ms"].(float64); ms <= 0 || ms > 1000 {
		t.Fatalf("retry_after_ms %v, want in (0, 1000]", e["retry_after_ms"])
	}
	// Waiting as told: the next frame is served.
	time.Sleep(time.Duration(e["retry_after_ms"].(float64)) * time.Millisecond)
	c.send(`{"type":"ping","id":"p7"}`)
	c.next("pong")
	// Keeping on: a fresh flooder gets its burst, RateLimitStrikes
	// refusals, then close 1008.
	f := env.connect(t, "fay", false)
	for i := 0; i < 20; i++ {
		f.send(`{"type":"ping"}`)
	}
	f.awaitClosed()
	if code, _ := f.closedWith(); code != 1008 {
		t.Fatalf("flooder closed with %d, want 1008", code)
	}
	f.ft.mu.Lock()
	all := strings.Join(f.ft.frames, "\n")
	f.ft.mu.Unlock()
	if pongs, refused := strings.Count(all, `"pong"`), strings.Count(all, `"rate_limited"`); pongs != 5 || refused != 3 {
		t.Fatalf("flooder got %d pongs and %d rate_limited, want 5 (burst) and 3 (strikes) before the close", pongs, refused)
	}

	// A slow refill, so the check does not depend on how fast the burst
	// comes back on a loaded machine.
	penv := newEnv(t, Config{Limits: Limits{MessageRate: 0.1, MessageBurst: 5, RateLimitStrikes: 3}}, relay.MemoryConfig{})
	p := penv.connect(t, "pat", true)
	if got := p.nextRaw(); got != "connected to node n1" {
		t.Fatalf("plain greeting %q", got)
	}
	// The burst is served: each message comes back as raw text.
	for i := 0; i < 5; i++ {
		p.send(fmt.Sprintf("m%d", i))
	}
	for i := 0; i < 5; i++ {
		if got := p.nextRaw(); got != fmt.Sprintf("m%d", i) {
			t.Fatalf("plain message %d: %q", i, got)
		}
	}
	// Past it: one text line per refused frame, then close 1008.
	for i := 5; i < 25; i++ {
		p.send(fmt.Sprintf("m%d", i))
	}
	p.awaitClosed()
	if code, _ := p.closedWith(); code != 1008 {
		t.Fatalf("plain flooder closed with %d, want 1008", code)
	}
	p.ft.mu.Lock()
	rest := p.ft.frames[6:]
	p.ft.mu.Unlock()
	for _, f := range rest {
		if !strings.HasPrefix(f, "error: message not sent: rate limited, retry after ") {
			t.Fatalf("plain flooder got %q", f)
		}
	}
	if len(rest) != 3 {
		t.Fatalf("plain flooder got %d error lines, want 3 (strikes)", len(rest))
	}
}

// TestPublishQueueCap: while the bus holds a room's batch, sends past the
// room's queue cap are answered unavailable at once, the queued ones are
// published in order when the bus recovers, and other rooms carry on.
func TestPublishQueueCap(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits Limits
		text   string
	}{
		{"count", Limits{MaxPublishQueue: 4}, "x"},
		{"bytes", Limits{MaxPublishQueueBytes: 4 * 100}, strings.Repeat("y", 100)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := relaytest.Wrap(relay.NewMemory(relay.MemoryConfig{}))
			sb := newStallRoom(b, "slow")
			tc.limits.MessageRate = 1e6
			env := newEnvBroker(t, Config{Limits: tc.limits}, b)
			t.Cleanup(sb.unstall)
			c := env.connect(t, "ann", false)
			c.join("slow")
			c.join("fast")
			c.send(fmt.Sprintf(`{"type":"send","room":"slow","text":%q,"id":"held"}`, tc.text))
			<-sb.entered // the first batch is with the bus
			for i := 0; i < 10; i++ {
				c.send(fmt.Sprintf(`{"type":"send","room":"slow","text":%q,"id":"q%d"}`, tc.text, i))
			}
			// Four fit in the queue; six are refused at once, in order.
			for i := 4; i < 10; i++ {
				if e := c.next("error"); e["code"] != "unavailable" || e["id"] != fmt.Sprintf("q%d", i) {
					t.Fatalf("refusal %d: %v", i, e)
				}
			}
			c.send(`{"type":"send","room":"fast","text":"other room","id":"f"}`)
			if a := c.next("ack"); a["id"] != "f" {
				t.Fatalf("other room's ack %v", a)
			}
			sb.unstall()
			for i, id := range []string{"held", "q0", "q1", "q2", "q3"} {
				if a := c.next("ack"); a["id"] != id || a["room"] != "slow" || a["seq"].(float64) != float64(i+1) {
					t.Fatalf("ack %d: %v, want %s seq %d", i, a, id, i+1)
				}
			}
		})
	}
}

// TestRoomLimits: a node opens at most MaxRooms rooms, no faster than
// RoomCreateRate; a join beyond gets room_limit (with retry_after_ms for
// the rate) and the connection stays usable.
func TestRoomLimits(t *testing.T) {
	env := newEnv(t, Config{Limits: Limits{MaxRooms: 3, RoomCreateRate: 1000, MessageRate: 1e6}}, relay.MemoryConfig{})
	c := env.connect(t, "ann", false)
	for _, r := range []string{"a", "b", "c"} {
		c.join(r)
	}
	c.send(`{"type":"join","room":"d","id":"j4"}`)
	if e := c.next("error"); e["code"] != "room_limit" || e["id"] != "j4" {
		t.Fatalf("join past MaxRooms: %v", e)
	}
	// The refused room is not counted as joined: after a leave it can be.
	c.send(`{"type":"send","room":"d","text":"x","id":"s"}`)
	if e := c.next("error"); e["code"] != "not_joined" {
		t.Fatalf("send to refused room: %v", e)
	}
	c.send(`{"type":"leave","room":"a"}`)
	c.next("left")
	eventually(t, "room a closed", func() bool { return env.sys.Stats().Rooms == 2 })
	c.join("d")

	env2 := newEnv(t, Config{Limits: Limits{RoomCreateRate: 2, MessageRate: 1e6}}, relay.MemoryConfig{})
	c2 := env2.connect(t, "bob", false)
	c2.join("r1")
	c2.join("r2")
	c2.send(`{"type":"join","room":"r3","id":"j3"}`)
	e := c2.next("error")
	if ms, _ := e["retry_after_ms"].(float64); e["code"] != "room_limit" || e["id"] != "j3" || ms <= 0 || ms > 500 {
		t.Fatalf("join past the creation rate: %v", e)
	}
	// An existing room is joined at any rate.
	d := env2.connect(t, "dan", false)
	d.join("r1")
}

// TestNamesUniquePerRoom: a second "alice" in a room is refused with
// name_taken while the first is there; other rooms, other names, and the
// room after the first alice left are fine. On / the connection (which
// lives in lobby) gets a text line and close 1008.
func TestNamesUniquePerRoom(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{})
	a1 := env.connect(t, "alice", false)
	a1.join("r")
	a2 := env.connect(t, "alice", false)
	a2.send(`{"type":"join","room":"r","id":"j"}`)
	if e := a2.next("error"); e["code"] != "name_taken" || e["id"] != "j" || !strings.Contains(e["message"].(string), "alice") {
		t.Fatalf("second alice: %v", e)
	}
	a2.send(`{"type":"send","room":"r","text":"hi","id":"s"}`)
	if e := a2.next("error"); e["code"] != "not_joined" {
		t.Fatalf("refused alice sends: %v", e)
	}
	a2.join("other") // the name is taken in r only
	a1.join("r")     // joining again is not a second member
	b := env.connect(t, "Alice", false)
	b.join("r") // names are compared exactly

	// Plain: a second plain alice is refused from the lobby.
	p1 := env.connect(t, "alice", true)
	if got := p1.nextRaw(); got != "connected to node n1" {
		t.Fatalf("plain greeting %q", got)
	}
	p2 := env.connect(t, "alice", true)
	p2.awaitClosed()
	if code, _ := p2.closedWith(); code != 1008 {
		t.Fatalf("second plain alice closed with %d, want 1008", code)
	}
	if got := p2.nextRaw(); !strings.HasPrefix(got, "error: ") || !strings.Contains(got, "taken") {
		t.Fatalf("second plain alice got %q", got)
	}

	// Once the first alice has left, the name is free again.
	a1.send(`{"type":"leave","room":"r"}`)
	a1.next("left")
	a2.join("r")
	// Guests get names unique on the node.
	var guests []string
	for i := 0; i < 2; i++ {
		ft := newFake()
		sess, err := env.sys.Connect(ft, ConnInfo{})
		if err != nil {
			t.Fatal(err)
		}
		g := &client{t: t, sess: sess, ft: ft, typed: make(map[string]int)}
		guests = append(guests, g.next("welcome")["name"].(string))
		g.join("g")
	}
	if guests[0] == guests[1] || !strings.HasPrefix(guests[0], "guest-") {
		t.Fatalf("guest names %q", guests)
	}
}

// TestBucketMatchesRateLimiter: the connection's two-word token bucket
// allows exactly what x/time/rate's Limiter (what it replaced) allows, and
// reports the same tokens, over bursts, refills, refusals and a clock that
// does not move.
func TestBucketMatchesRateLimiter(t *testing.T) {
	ms := int64(time.Millisecond)
	cases := []struct {
		name  string
		rate  float64
		burst int
		at    []int64 // event times, ms after the start
	}{
		{"burst then refused", 100, 5, []int64{0, 0, 0, 0, 0, 0, 0}},
		{"refills at the rate", 100, 2, []int64{0, 0, 0, 5, 10, 10, 20, 20, 20, 1000, 1000, 1000}},
		{"strikes: one a second", 1, 3, []int64{0, 1, 2, 3, 999, 1001, 1500, 2002, 2003, 5000, 5000, 5000, 5000}},
		{"fractional rate", 0.5, 1, []int64{0, 1000, 1999, 2000, 2001, 4001}},
		{"no burst: nothing", 10, 0, []int64{0, 100, 10000}},
		{"steady under the rate", 100, 200, []int64{0, 10, 20, 30, 40, 50}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			lim := rate.NewLimiter(rate.Limit(tc.rate), tc.burst)
			b := fullBucket(tc.burst, 0)
			for i, at := range tc.at {
				now := start.Add(time.Duration(at * ms))
				want := lim.AllowN(now, 1)
				if got := b.allow(at*ms, tc.rate, tc.burst); got != want {
					t.Fatalf("event %d at %d ms: bucket allowed %v, rate.Limiter %v", i, at, got, want)
				}
				if got, want := b.tokensAt(at*ms, tc.rate, tc.burst), lim.TokensAt(now); math.Abs(got-want) > 1e-9 {
					t.Fatalf("event %d at %d ms: bucket holds %v tokens, rate.Limiter %v", i, at, got, want)
				}
			}
		})
	}
	inf := fullBucket(0, 0)
	for i := range 3 {
		if !inf.allow(int64(i), math.Inf(1), 0) {
			t.Fatal("an infinite rate refused an event")
		}
	}
}
