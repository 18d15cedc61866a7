package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"parley/relay/redistest"
)

// rdsTestConfig is a RedisConfig with short timeouts for tests.
func rdsTestConfig(url, node string) RedisConfig {
	return RedisConfig{
		URL:             url,
		NodeID:          node,
		HistorySize:     rdsContractHistory,
		PresenceTimeout: 900 * time.Millisecond,
		DialTimeout:     300 * time.Millisecond,
		IOTimeout:       time.Second,
		PingInterval:    500 * time.Millisecond,
		ProbeInterval:   100 * time.Millisecond,
		BackoffMax:      100 * time.Millisecond,
		ShutdownTimeout: 500 * time.Millisecond,
	}
}

var rdsQuietOnce sync.Once

// rdsNewBroker starts a Redis broker with h as handler, closed in t.Cleanup.
func rdsNewBroker(t testing.TB, cfg RedisConfig, h Handler) *Redis {
	t.Helper()
	rdsQuietOnce.Do(func() { RouteRedisLogs(nil) })
	b, err := NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if h != nil {
		b.SetHandler(h)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestRedisBrokerContract(t *testing.T) {
	srv := redistest.Start(t)
	brokerContract(t, func(t *testing.T, nodeID string, h Handler) Broker {
		return rdsNewBroker(t, rdsTestConfig(srv.URL(), nodeID), h)
	}, func(t *testing.T, room string) {
		srv.Do(t, "FLUSHALL")
	})
}

func TestParseRedisFlags(t *testing.T) {
	cases := []struct {
		url, cluster, sentinel string
		want                   RedisConfig
		err                    bool
	}{
		{url: "redis://127.0.0.1:7000/2", want: RedisConfig{URL: "redis://127.0.0.1:7000/2"}},
		{cluster: "127.0.0.1:7000, 127.0.0.1:7001", want: RedisConfig{ClusterAddrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}}},
		{sentinel: "mymaster@127.0.0.1:26379,127.0.0.1:26380", want: RedisConfig{SentinelMaster: "mymaster", SentinelAddrs: []string{"127.0.0.1:26379", "127.0.0.1:26380"}}},
		{err: true},
		{url: "redis://127.0.0.1:7000", cluster: "127.0.0.1:7001", err: true},
		{url: "http://x", err: true},
		{cluster: "nohostport", err: true},
		{sentinel: "127.0.0.1:26379", err: true},
		{sentinel: "@127.0.0.1:26379", err: true},
		{sentinel: "m@", err: true},
	}
	for _, c := range cases {
		got, err := ParseRedisFlags(c.url, c.cluster, c.sentinel)
		if (err != nil) != c.err {
			t.Errorf("ParseRedisFlags(%q, %q, %q) err = %v, want error %v", c.url, c.cluster, c.sentinel, err, c.err)
			continue
		}
		if err == nil && (got.URL != c.want.URL || !slices.Equal(got.ClusterAddrs, c.want.ClusterAddrs) ||
			got.SentinelMaster != c.want.SentinelMaster || !slices.Equal(got.SentinelAddrs, c.want.SentinelAddrs)) {
			t.Errorf("ParseRedisFlags(%q, %q, %q) = %+v", c.url, c.cluster, c.sentinel, got)
		}
	}
}

func TestNewRedisConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  RedisConfig
		ok   bool
	}{
		{"no node id", RedisConfig{URL: "redis://127.0.0.1:1"}, false},
		{"no address", RedisConfig{NodeID: "n"}, false},
		{"two modes", RedisConfig{NodeID: "n", URL: "redis://127.0.0.1:1", ClusterAddrs: []string{"127.0.0.1:2"}}, false},
		{"sentinel without master", RedisConfig{NodeID: "n", SentinelAddrs: []string{"127.0.0.1:2"}}, false},
		{"negative", RedisConfig{NodeID: "n", URL: "redis://127.0.0.1:1", HistorySize: -1}, false},
		{"braces in node", RedisConfig{NodeID: "n{", URL: "redis://127.0.0.1:1"}, false},
		// Redis down at start: the broker is created, down.
		{"redis down", RedisConfig{NodeID: "n", URL: "redis://127.0.0.1:1", DialTimeout: 100 * time.Millisecond}, true},
		{"sentinel down", RedisConfig{NodeID: "n", SentinelMaster: "m", SentinelAddrs: []string{"127.0.0.1:1"}, DialTimeout: 100 * time.Millisecond}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rdsQuietOnce.Do(func() { RouteRedisLogs(nil) })
			b, err := NewRedis(c.cfg)
			if (err == nil) != c.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil {
				return
			}
			defer b.Close()
			if st := b.Stats(); st.Up || st.Kind != "redis" {
				t.Fatalf("stats %+v", st)
			}
			_, err = b.Publish(rdsCtx(t), Message{Room: "r", Text: "x"})
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("publish while down: %v", err)
			}
			_, err = b.Subscribe(rdsCtx(t), "r")
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("subscribe while down: %v", err)
			}
		})
	}
}

// TestRedisComesUpLate: a broker created while Redis is down comes up by
// itself and reports it once.
func TestRedisComesUpLate(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	h := &rdsRecorder{}
	b := rdsNewBroker(t, rdsTestConfig(srv.URL(), "late"), h)
	if b.Stats().Up {
		t.Fatal("up while redis is down")
	}
	srv.Start(t)
	rdsEventually(t, 5*time.Second, func() error {
		if !b.Stats().Up {
			return errors.New("not up")
		}
		return nil
	})
	room := rdsRoom("late")
	if _, err := b.Subscribe(rdsCtx(t), room); err != nil {
		t.Fatal(err)
	}
	if _, states := h.snapshot(); len(states) != 1 || states[0] != nil {
		t.Fatalf("states %v, want one up", states)
	}
}

// TestRedisTwoNodes: two brokers on one Redis deliver each other's messages
// in one identical order under concurrent publishers on both.
func TestRedisTwoNodes(t *testing.T) {
	srv := redistest.Start(t)
	ha, hb := &rdsRecorder{}, &rdsRecorder{}
	a := rdsNewBroker(t, rdsTestConfig(srv.URL(), "a"), ha)
	b := rdsNewBroker(t, rdsTestConfig(srv.URL(), "b"), hb)
	room := rdsRoom("two")
	for _, br := range []*Redis{a, b} {
		if _, err := br.Subscribe(rdsCtx(t), room); err != nil {
			t.Fatal(err)
		}
	}
	const perPublisher, publishers = 50, 4
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for i := 0; i < publishers; i++ {
		br := a
		if i%2 == 1 {
			br = b
		}
		wg.Add(1)
		go func(i int, br *Redis) {
			defer wg.Done()
			for j := 0; j < perPublisher; j++ {
				if _, err := br.Publish(rdsCtx(t), Message{Room: room, From: fmt.Sprint(i), Text: fmt.Sprint(j)}); err != nil {
					errs <- err
					return
				}
			}
		}(i, br)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	const total = perPublisher * publishers
	rdsEventually(t, 5*time.Second, func() error {
		if na, nb := len(ha.roomMsgs(room)), len(hb.roomMsgs(room)); na < total || nb < total {
			return fmt.Errorf("delivered %d and %d of %d (stats %+v, %+v)", na, nb, total, a.Stats(), b.Stats())
		}
		return nil
	})
	ma, mb := ha.roomMsgs(room), hb.roomMsgs(room)
	if len(ma) != total || len(mb) != total {
		t.Fatalf("delivered %d and %d, want %d", len(ma), len(mb), total)
	}
	for i := range ma {
		if ma[i] != mb[i] || ma[i].Seq != uint64(i+1) {
			t.Fatalf("message %d: a %+v b %+v", i, ma[i], mb[i])
		}
	}
	// Per publisher, the texts arrive in the order they were sent.
	next := map[string]int{}
	for _, m := range ma {
		if m.Text != fmt.Sprint(next[m.From]) {
			t.Fatalf("publisher %s: got %s want %d", m.From, m.Text, next[m.From])
		}
		next[m.From]++
	}
}

// rdsStatesAlternate checks that states go down, up, down, up, ... and
// returns how many transitions there were.
func rdsStatesAlternate(t *testing.T, states []error) {
	t.Helper()
	for i, s := range states {
		if (s != nil) != (i%2 == 0) {
			t.Fatalf("states %v: transition %d repeats the previous state", states, i)
		}
		if s != nil && !errors.Is(s, ErrUnavailable) {
			t.Fatalf("down state %v does not wrap ErrUnavailable", s)
		}
	}
}

// TestRedisRestart restarts redis-server (same port, data lost) while a
// publisher runs at a steady rate.
func TestRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	h := &rdsRecorder{}
	b := rdsNewBroker(t, rdsTestConfig(srv.URL(), "r1"), h)
	room := rdsRoom("restart")
	pos, err := b.Subscribe(rdsCtx(t), room)
	if err != nil {
		t.Fatal(err)
	}
	oldEpoch := pos.Epoch

	var okCount, errCount atomic.Int64
	var badErr atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := b.Publish(ctx, Message{Room: room, Text: fmt.Sprint(i)})
			cancel()
			if err != nil {
				errCount.Add(1)
				if !errors.Is(err, ErrUnavailable) {
					badErr.Store(err)
				}
			} else {
				okCount.Add(1)
			}
		}
	}()
	defer func() { close(stop); <-done }()

	rdsEventually(t, 5*time.Second, func() error {
		if okCount.Load() < 10 {
			return errors.New("publisher not running")
		}
		return nil
	})
	srv.Kill()
	rdsEventually(t, 5*time.Second, func() error {
		if errCount.Load() < 3 {
			return errors.New("no publish error during the outage yet")
		}
		if b.Stats().Up {
			return errors.New("still up")
		}
		return nil
	})
	srv.Start(t)
	okBefore := okCount.Load()
	rdsEventually(t, 10*time.Second, func() error {
		resyncs, states := h.snapshot()
		if resyncs < 1 {
			return errors.New("no resync")
		}
		if len(states) < 2 {
			return fmt.Errorf("states %v", states)
		}
		if okCount.Load() < okBefore+5 {
			return errors.New("publishes do not succeed again")
		}
		return nil
	})
	if v := badErr.Load(); v != nil {
		t.Fatalf("publish error does not wrap ErrUnavailable: %v", v)
	}
	// New epoch (no persistence), delivered through the new subscription.
	rdsEventually(t, 5*time.Second, func() error {
		ms := h.roomMsgs(room)
		if len(ms) == 0 || ms[len(ms)-1].Epoch == oldEpoch {
			return errors.New("no message of the new epoch delivered")
		}
		return nil
	})
	hr, err := b.History(rdsCtx(t), room, HistoryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if hr.Position.Epoch == oldEpoch {
		t.Fatal("epoch unchanged after data loss")
	}
	resyncs, states := h.snapshot()
	rdsStatesAlternate(t, states)
	if len(states) != 2 {
		t.Fatalf("states %v, want one down and one up", states)
	}
	st := b.Stats()
	if !st.Up || st.Reconnects < 1 || st.Resyncs != uint64(resyncs) || st.Errors < 3 || st.LastErrorAt == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRedisClientKillPubSub kills the subscriber connection: the broker
// resubscribes, calls HandleResync and delivery resumes.
func TestRedisClientKillPubSub(t *testing.T) {
	srv := redistest.Start(t)
	h := &rdsRecorder{}
	b := rdsNewBroker(t, rdsTestConfig(srv.URL(), "k1"), h)
	pub := rdsNewBroker(t, rdsTestConfig(srv.URL(), "k2"), nil)
	rooms := []string{rdsRoom("kill"), rdsRoom("kill")}
	for _, room := range rooms {
		if _, err := b.Subscribe(rdsCtx(t), room); err != nil {
			t.Fatal(err)
		}
	}
	for round := 1; round <= 2; round++ {
		srv.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
		rdsEventually(t, 5*time.Second, func() error {
			if r, _ := h.snapshot(); r < round {
				return fmt.Errorf("%d resyncs, want %d", r, round)
			}
			return nil
		})
		for _, room := range rooms {
			if _, err := pub.Publish(rdsCtx(t), Message{Room: room, Text: fmt.Sprint(round)}); err != nil {
				t.Fatal(err)
			}
		}
		rdsEventually(t, 5*time.Second, func() error {
			for _, room := range rooms {
				if n := len(h.roomMsgs(room)); n < round {
					return fmt.Errorf("room %s: %d delivered", room, n)
				}
			}
			return nil
		})
	}
	rdsEventually(t, 5*time.Second, func() error {
		if !b.Stats().Up {
			return errors.New("not up")
		}
		return nil
	})
	_, states := h.snapshot()
	rdsStatesAlternate(t, states)
	if len(states)%2 != 0 {
		t.Fatalf("states %v: ends down", states)
	}
	if st := b.Stats(); st.Reconnects != 2 || st.Resyncs != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRedisNodeDeath: node b stops heartbeating; a and c see exactly one
// member_left per member of b (published once cluster-wide) within
// PresenceTimeout, and Presence no longer lists them.
func TestRedisNodeDeath(t *testing.T) {
	srv := redistest.Start(t)
	ha, hb, hc := &rdsRecorder{}, &rdsRecorder{}, &rdsRecorder{}
	cfgA, cfgB, cfgC := rdsTestConfig(srv.URL(), "a"), rdsTestConfig(srv.URL(), "b"), rdsTestConfig(srv.URL(), "c")
	a, b, c := rdsNewBroker(t, cfgA, ha), rdsNewBroker(t, cfgB, hb), rdsNewBroker(t, cfgC, hc)
	r1, r2 := rdsRoom("death"), rdsRoom("death")
	for _, br := range []*Redis{a, b, c} {
		for _, room := range []string{r1, r2} {
			if _, err := br.Subscribe(rdsCtx(t), room); err != nil {
				t.Fatal(err)
			}
		}
	}
	bMembers := map[string][]Member{
		r1: {{Session: "b1", Name: "bob", Node: "b"}, {Session: "b2", Name: "bea", Node: "b"}},
		r2: {{Session: "b3", Name: "bo", Node: "b"}},
	}
	alive := Member{Session: "a1", Name: "ann", Node: "a"}
	ctx := rdsCtx(t)
	if err := a.AddPresence(ctx, r1, alive); err != nil {
		t.Fatal(err)
	}
	for room, ms := range bMembers {
		for _, m := range ms {
			if err := b.AddPresence(ctx, room, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ms, err := c.Presence(ctx, r1); err != nil || len(ms) != 3 {
		t.Fatalf("presence before death: %v %v", ms, err)
	}

	b.hbPaused.Store(true)
	died := time.Now()
	lefts := func(h *rdsRecorder, room string) map[string]int {
		out := map[string]int{}
		for _, e := range h.roomPres(room) {
			if !e.Joined {
				out[e.Member.Session]++
			}
		}
		return out
	}
	rdsEventually(t, 3*cfgB.PresenceTimeout, func() error {
		for _, h := range []*rdsRecorder{ha, hc} {
			for room, ms := range bMembers {
				if got := lefts(h, room); len(got) < len(ms) {
					return fmt.Errorf("room %s: left events %v", room, got)
				}
			}
		}
		return nil
	})
	if el := time.Since(died); el > cfgB.PresenceTimeout+300*time.Millisecond {
		t.Errorf("members left after %v, PresenceTimeout %v", el, cfgB.PresenceTimeout)
	}
	for room, ms := range bMembers {
		got, err := a.Presence(ctx, room)
		if err != nil {
			t.Fatal(err)
		}
		want := []Member{}
		if room == r1 {
			want = []Member{alive}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("room %s presence after death %+v (b had %v)", room, got, ms)
		}
	}
	// Barrier: a message published after the cleanup reaches a and c after
	// any left event published before it. Then wait one more heartbeat
	// round of the survivors (nothing can be claimed twice).
	for _, room := range []string{r1, r2} {
		if _, err := a.Publish(ctx, Message{Room: room, Text: "barrier"}); err != nil {
			t.Fatal(err)
		}
	}
	rdsEventually(t, 5*time.Second, func() error {
		for _, h := range []*rdsRecorder{ha, hc} {
			for _, room := range []string{r1, r2} {
				if len(h.roomMsgs(room)) == 0 {
					return errors.New("barrier not delivered")
				}
			}
		}
		return nil
	})
	for _, h := range []*rdsRecorder{ha, hc} {
		for room, ms := range bMembers {
			got := lefts(h, room)
			if len(got) != len(ms) {
				t.Fatalf("room %s: left %v", room, got)
			}
			for _, m := range ms {
				if got[m.Session] != 1 {
					t.Fatalf("room %s: member %s left %d times", room, m.Session, got[m.Session])
				}
			}
		}
	}
	if l := lefts(ha, r1)["a1"]; l != 0 {
		t.Fatalf("live member a1 left %d times", l)
	}

	// b comes back: its members are announced again.
	b.hbPaused.Store(false)
	rdsEventually(t, 3*cfgB.PresenceTimeout, func() error {
		ms, err := c.Presence(ctx, r1)
		if err != nil {
			return err
		}
		if len(ms) != 3 {
			return fmt.Errorf("presence after revival %+v", ms)
		}
		return nil
	})
}

// TestRedisSentinel runs a broker through a Sentinel (failover client).
func TestRedisSentinel(t *testing.T) {
	master := redistest.Start(t)
	sen := redistest.StartSentinel(t, master, "pm")
	h := &rdsRecorder{}
	cfg := rdsTestConfig("", "s1")
	cfg.SentinelMaster, cfg.SentinelAddrs = "pm", []string{sen.Addr()}
	b := rdsNewBroker(t, cfg, h)
	room := rdsRoom("sentinel")
	if _, err := b.Subscribe(rdsCtx(t), room); err != nil {
		t.Fatal(err)
	}
	p, err := b.Publish(rdsCtx(t), Message{Room: room, Text: "hi"})
	if err != nil || p.Seq != 1 {
		t.Fatalf("publish %+v %v", p, err)
	}
	rdsEventually(t, 5*time.Second, func() error {
		if len(h.roomMsgs(room)) != 1 {
			return errors.New("not delivered")
		}
		return nil
	})
	if got := master.Do(t, "HGET", rdsMetaKey(room), "seq"); got != "1" {
		t.Fatalf("seq on master = %q", got)
	}
}

func TestRedisPublishBatch(t *testing.T) {
	srv := redistest.Start(t)
	h := &rdsRecorder{}
	b := rdsNewBroker(t, rdsTestConfig(srv.URL(), "pb"), h)
	room := rdsRoom("batch")
	if _, err := b.Subscribe(rdsCtx(t), room); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		n    int
		want []uint64 // seqs returned
	}{
		{0, nil},
		{1, []uint64{1}},
		{3, []uint64{2, 3, 4}},
	}
	for _, c := range cases {
		msgs := make([]Message, c.n)
		for i := range msgs {
			msgs[i] = Message{Text: fmt.Sprint(i)}
		}
		ps, err := b.PublishBatch(rdsCtx(t), room, Position{}, msgs)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]uint64, len(ps))
		for i, p := range ps {
			got[i] = p.Seq
		}
		if len(got) != len(c.want) || len(got) > 0 && !slices.Equal(got, c.want) {
			t.Fatalf("batch of %d: seqs %v want %v", c.n, got, c.want)
		}
	}
	rdsEventually(t, 5*time.Second, func() error {
		if n := len(h.roomMsgs(room)); n != 4 {
			return fmt.Errorf("%d delivered", n)
		}
		return nil
	})
	if _, err := b.PublishBatch(rdsCtx(t), "bad{room}", Position{}, []Message{{Text: "x"}}); err == nil {
		t.Fatal("room with braces accepted")
	}
}

func BenchmarkRedisPublish(b *testing.B) {
	srv := redistest.Start(b)
	br := rdsNewBroker(b, rdsTestConfig(srv.URL(), "bench"), nil)
	ctx := context.Background()
	m := Message{Room: "bench", From: "ann", Node: "bench", Text: "0123456789012345678901234567890123456789012345678901234567890123"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := br.Publish(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
}
