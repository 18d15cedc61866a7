package actors

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"parley/relay"
)

func TestProtocolErrors(t *testing.T) {
	env := newEnv(t, Config{MaxRoomsPerConn: 2}, relay.MemoryConfig{})
	c := env.connect(t, "ann", false)
	c.join("a")
	c.join("b")
	tests := []struct {
		name, in, code, id string
	}{
		{"malformed", `{"type":`, "bad_request", ""},
		{"wrong field type", `{"type":"send","id":"i1","room":5}`, "bad_request", "i1"},
		{"missing type", `{"id":"i2"}`, "bad_request", "i2"},
		{"unknown type", `{"type":"dance","id":"i3"}`, "unknown_type", "i3"},
		{"bad room", `{"type":"join","room":"a b","id":"i4"}`, "bad_room", "i4"},
		{"empty text", `{"type":"send","room":"a","id":"i5"}`, "bad_text", "i5"},
		{"send not joined", `{"type":"send","room":"zz","text":"x","id":"i6"}`, "not_joined", "i6"},
		{"history not joined", `{"type":"history","room":"zz","id":"i7"}`, "not_joined", "i7"},
		{"presence not joined", `{"type":"presence","room":"zz","id":"i8"}`, "not_joined", "i8"},
		{"leave not joined", `{"type":"leave","room":"zz","id":"i9"}`, "not_joined", "i9"},
		{"too many rooms", `{"type":"join","room":"c","id":"i10"}`, "too_many_rooms", "i10"},
		{"negative limit", `{"type":"history","room":"a","limit":-1,"id":"i11"}`, "bad_request", "i11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.t = t
			c.send(tt.in)
			e := c.next("error")
			if e["code"] != tt.code || (tt.id != "" && e["id"] != tt.id) || e["message"] == "" {
				t.Fatalf("got %v, want code %s id %s", e, tt.code, tt.id)
			}
		})
	}
	c.t = t
	c.send(`{"type":"ping"}`)
	c.next("pong")
	// The connection stayed open through every error.
	c.send(`{"type":"send","room":"a","text":"still here","id":"s1"}`)
	if a := c.next("ack"); a["id"] != "s1" || a["room"] != "a" || a["seq"].(float64) != 1 {
		t.Fatalf("ack %v", a)
	}
	c.sess.HandleMessage(ws.OpBinary, []byte{1, 2})
	c.awaitClosed()
	if code, kicked := c.closedWith(); code != 1003 || kicked {
		t.Fatalf("binary: close %d kicked %v", code, kicked)
	}
	eventually(t, "connection gone", func() bool { return env.sys.Stats().Connections == 0 })
}

func TestJoinSendHistoryPresenceLeave(t *testing.T) {
	env := newEnv(t, Config{HistoryLimit: 3}, relay.MemoryConfig{})
	a := env.connect(t, "ann", false)
	b := env.connect(t, "bob", false)
	if j := a.join("r"); j["seq"].(float64) != 0 || j["epoch"] == "" || j["recovered"] != true {
		t.Fatalf("joined %v", j)
	}
	b.join("r")
	if e := a.next("member_joined"); e["name"] != "bob" || e["node"] != "n1" {
		t.Fatalf("member_joined %v", e)
	}
	for i := 1; i <= 5; i++ {
		a.send(fmt.Sprintf(`{"type":"send","room":"r","text":"m%d","id":"x%d"}`, i, i))
	}
	for i := 1; i <= 5; i++ {
		if ack := a.next("ack"); ack["id"] != fmt.Sprintf("x%d", i) || ack["seq"].(float64) != float64(i) {
			t.Fatalf("ack %v", ack)
		}
	}
	for _, c := range []*client{a, b} {
		seqs, texts := c.messages(5)
		if !slices.Equal(seqs, seqRange(1, 5)) || texts[0] != "m1" {
			t.Fatalf("messages %v %v", seqs, texts)
		}
	}
	b.send(`{"type":"history","room":"r","id":"h"}`)
	h := b.next("history")
	msgs := h["messages"].([]any)
	if len(msgs) != 3 || msgs[0].(map[string]any)["seq"].(float64) != 3 || msgs[0].(map[string]any)["from"] != "ann" {
		t.Fatalf("history (capped at 3, newest) %v", h)
	}
	b.send(`{"type":"history","room":"r","before":3,"limit":1}`)
	if m := b.next("history")["messages"].([]any); len(m) != 1 || m[0].(map[string]any)["seq"].(float64) != 2 {
		t.Fatalf("history before %v", m)
	}
	b.send(`{"type":"presence","room":"r"}`)
	if p := b.next("presence")["members"].([]any); len(p) != 2 || p[0].(map[string]any)["name"] != "ann" {
		t.Fatalf("presence %v", p)
	}
	b.send(`{"type":"leave","room":"r","id":"l"}`)
	if l := b.next("left"); l["room"] != "r" {
		t.Fatalf("left %v", l)
	}
	if e := a.next("member_left"); e["name"] != "bob" {
		t.Fatalf("member_left %v", e)
	}
	b.send(`{"type":"send","room":"r","text":"x","id":"nj"}`)
	if e := b.next("error"); e["code"] != "not_joined" || e["id"] != "nj" {
		t.Fatalf("after leave %v", e)
	}
}

func TestFanoutOrderConcurrentSenders(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{})
	const members, senders, per = 6, 4, 40
	var cs []*client
	for i := 0; i < members; i++ {
		c := env.connect(t, fmt.Sprintf("u%d", i), false)
		c.join("r")
		cs = append(cs, c)
	}
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func(c *client) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				c.send(fmt.Sprintf(`{"type":"send","room":"r","text":"t","id":"%d"}`, i))
			}
		}(cs[s])
	}
	wg.Wait()
	for _, c := range cs {
		seqs, _ := c.messages(senders * per)
		if !slices.Equal(seqs, seqRange(1, senders*per)) {
			t.Fatalf("member saw %v", seqs)
		}
	}
}

func TestMemberDeathAndEmptyRoom(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{})
	a := env.connect(t, "ann", false)
	b := env.connect(t, "bob", false)
	a.join("r")
	b.join("r")
	a.next("member_joined")
	b.sess.HandleClose(nil) // socket gone: actor stops
	if e := a.next("member_left"); e["name"] != "bob" {
		t.Fatalf("member_left %v", e)
	}
	list, err := env.broker.Presence(context.Background(), "r")
	if err != nil || len(list) != 1 || list[0].Name != "ann" {
		t.Fatalf("presence after death %v %v", list, err)
	}
	a.send(`{"type":"leave","room":"r"}`)
	a.next("left")
	eventually(t, "room stopped", func() bool { return env.sys.Stats().Rooms == 0 })
	eventually(t, "unsubscribed", func() bool { return env.broker.Stats().Subscribed == 0 })

	// Joins racing with the room stopping still work.
	for i := 0; i < 30; i++ {
		a.send(`{"type":"join","room":"q"}`)
		a.send(`{"type":"leave","room":"q"}`)
	}
	a.join("q")
	a.send(`{"type":"send","room":"q","text":"ok","id":"last"}`)
	if ack := a.next("ack"); ack["id"] != "last" {
		t.Fatalf("ack %v", ack)
	}
	if st := env.sys.Stats(); st.Rooms != 1 || st.Connections != 2-1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSlowConsumerKicked(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{})
	a := env.connect(t, "ann", false)
	b := env.connect(t, "bob", false)
	a.join("r")
	b.join("r")
	b.ft.mu.Lock()
	b.ft.full = true
	b.ft.mu.Unlock()
	a.send(`{"type":"send","room":"r","text":"x"}`)
	b.awaitClosed()
	if code, kicked := b.closedWith(); code != 4008 || !kicked {
		t.Fatalf("close %d kicked %v", code, kicked)
	}
	if e := a.next("member_left"); e["name"] != "bob" {
		t.Fatalf("member_left %v", e)
	}
}

func TestPlainMode(t *testing.T) {
	env := newEnv(t, Config{NodeID: "node-7"}, relay.MemoryConfig{})
	j := env.connect(t, "jay", false)
	j.join(LobbyRoom)
	p := env.connect(t, "pat", true)
	if got := p.nextRaw(); got != "connected to node node-7" {
		t.Fatalf("first plain frame %q", got)
	}
	p.sess.HandleMessage(ws.OpText, []byte("hello from plain"))
	if got := p.nextRaw(); got != "hello from plain" {
		t.Fatalf("echo %q", got)
	}
	if m := j.next("message"); m["from"] != "pat" || m["text"] != "hello from plain" {
		t.Fatalf("json saw %v", m)
	}
	j.send(`{"type":"send","room":"lobby","text":"hi pat"}`)
	if got := p.nextRaw(); got != "hi pat" {
		t.Fatalf("plain saw %q", got)
	}
	// Exactly one "connected" line, and no JSON frames for plain members.
	p.ft.mu.Lock()
	defer p.ft.mu.Unlock()
	if len(p.ft.frames) != 3 {
		t.Fatalf("plain frames %q", p.ft.frames)
	}
}

func TestDrain(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{})
	j := env.connect(t, "jay", false)
	p := env.connect(t, "pat", true)
	p.nextRaw()
	env.sys.Drain("upgrade", 1500*1e6)
	if r := j.next("reconnect"); r["reason"] != "upgrade" || r["after_ms"].(float64) < 1500 || r["after_ms"].(float64) >= 3000 {
		t.Fatalf("reconnect %v", r)
	}
	j.awaitClosed()
	p.awaitClosed()
	for _, c := range []*client{j, p} {
		if code, kicked := c.closedWith(); code != 1001 || kicked {
			t.Fatalf("close %d kicked %v", code, kicked)
		}
	}
	eventually(t, "connections gone", func() bool { return env.sys.Stats().Connections == 0 })
}

func TestGapDuplicateAndResync(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{})
	a := env.connect(t, "ann", false)
	a.join("r")
	// Drop seq 2 and duplicate seq 3: the room fetches the gap from
	// history when 3 arrives, and drops the duplicate.
	env.broker.SetDeliveryFilter(func(m relay.Message) int {
		switch m.Seq {
		case 2:
			return 0
		case 3:
			return 2
		}
		return 1
	})
	for i := 0; i < 4; i++ {
		a.send(`{"type":"send","room":"r","text":"x"}`)
	}
	if seqs, _ := a.messages(4); !slices.Equal(seqs, seqRange(1, 4)) {
		t.Fatalf("gap/dup: %v", seqs)
	}
	// Drop seq 5 with nothing after it: only a resync finds it.
	env.broker.SetDeliveryFilter(func(m relay.Message) int {
		if m.Seq == 5 {
			return 0
		}
		return 1
	})
	a.send(`{"type":"send","room":"r","text":"lost","id":"five"}`)
	for a.next("ack")["id"] != "five" {
	}
	env.broker.Resync()
	if seqs, texts := a.messages(1); seqs[0] != 5 || texts[0] != "lost" {
		t.Fatalf("after resync %v", seqs)
	}
	env.broker.SetDeliveryFilter(nil)
	a.send(`{"type":"send","room":"r","text":"x"}`)
	if seqs, _ := a.messages(1); seqs[0] != 6 {
		t.Fatalf("after %v", seqs)
	}
}

func TestPeriodicCheckFindsLoss(t *testing.T) {
	env := newEnv(t, Config{CheckInterval: 20 * 1e6}, relay.MemoryConfig{})
	a := env.connect(t, "ann", false)
	a.join("r")
	env.broker.SetDeliveryFilter(func(relay.Message) int { return 0 })
	a.send(`{"type":"send","room":"r","text":"x"}`)
	if seqs, _ := a.messages(1); seqs[0] != 1 {
		t.Fatalf("check: %v", seqs)
	}
}

func TestPublishUnavailable(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{})
	a := env.connect(t, "ann", false)
	a.join("r")
	env.broker.SetUnavailable(true)
	a.send(`{"type":"send","room":"r","text":"x","id":"u1"}`)
	if e := a.next("error"); e["code"] != "unavailable" || e["id"] != "u1" {
		t.Fatalf("error %v", e)
	}
	// A join that cannot subscribe fails with unavailable too.
	a.send(`{"type":"join","room":"other","id":"j1"}`)
	if e := a.next("error"); e["code"] != "unavailable" || e["id"] != "j1" {
		t.Fatalf("join error %v", e)
	}
	env.broker.SetUnavailable(false)
	a.send(`{"type":"send","room":"r","text":"x","id":"u2"}`)
	if ack := a.next("ack"); ack["id"] != "u2" {
		t.Fatalf("ack %v", ack)
	}
}

func TestJoinSinceReplay(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{HistorySize: 20})
	pub := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := env.broker.Publish(context.Background(), relay.Message{Room: "r", Text: "p"}); err != nil {
				t.Error(err)
				return
			}
		}
	}
	pub(5)
	a := env.connect(t, "ann", false)
	epoch := a.join("r")["epoch"].(string)
	last := uint64(5)
	tests := []struct {
		name      string
		join      func(last uint64) string
		recovered bool
		replay    func(last uint64) []uint64
	}{
		{"since in window", func(l uint64) string {
			return fmt.Sprintf(`{"type":"join","room":"r","since":%d,"epoch":%q}`, l-3, epoch)
		}, true, func(l uint64) []uint64 { return seqRange(l-2, l) }},
		{"since without epoch", func(l uint64) string { return fmt.Sprintf(`{"type":"join","room":"r","since":%d}`, l-1) },
			true, func(l uint64) []uint64 { return seqRange(l, l) }},
		{"since at last", func(l uint64) string { return fmt.Sprintf(`{"type":"join","room":"r","since":%d}`, l) }, true, nil},
		{"other epoch", func(l uint64) string { return `{"type":"join","room":"r","since":2,"epoch":"nope"}` }, false, nil},
		{"since ahead", func(l uint64) string { return `{"type":"join","room":"r","since":500}` }, false, nil},
		{"since before window", func(l uint64) string { return `{"type":"join","room":"r","since":1}` }, false, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "since before window" {
				// Push the window past since=1 and wait until the room has
				// delivered it (a, joined from the start, has seen it all).
				pub(30)
				seqs, _ := a.messages(int(last-5) + 30)
				last += 30
				if seqs[len(seqs)-1] != last {
					t.Fatalf("a saw %v", seqs)
				}
			}
			c := env.connect(t, fmt.Sprintf("c%d", i), false)
			c.send(tt.join(last))
			j := c.next("joined")
			if j["recovered"] != tt.recovered || uint64(j["seq"].(float64)) != last {
				t.Fatalf("joined %v, want seq %d", j, last)
			}
			if tt.replay != nil {
				if seqs, _ := c.messages(len(tt.replay(last))); !slices.Equal(seqs, tt.replay(last)) {
					t.Fatalf("replay %v", seqs)
				}
			}
			c.send(`{"type":"send","room":"r","text":"live","id":"l"}`)
			last++
			if seq := uint64(c.next("ack")["seq"].(float64)); seq != last {
				t.Fatalf("ack seq %d want %d", seq, last)
			}
			if seqs, _ := c.messages(1); seqs[0] != last {
				t.Fatalf("first after replay %v, want %d", seqs, last)
			}
		})
	}
}

func TestJoinSinceSeamUnderLoad(t *testing.T) {
	env := newEnv(t, Config{}, relay.MemoryConfig{HistorySize: 1000})
	a := env.connect(t, "ann", false)
	a.join("r")
	const total = 300
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < total; i++ {
			if _, err := env.broker.Publish(context.Background(), relay.Message{Room: "r", Text: "p"}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	a.messages(20) // publishing is under way
	c := env.connect(t, "late", false)
	c.send(`{"type":"join","room":"r","since":10}`)
	j := c.next("joined")
	if j["recovered"] != true {
		t.Fatalf("joined %v", j)
	}
	<-done
	if seqs, _ := c.messages(total - 10); !slices.Equal(seqs, seqRange(11, total)) {
		t.Fatalf("seam: got %d msgs, first %v", len(seqs), seqs[:5])
	}
}

func TestEpochReset(t *testing.T) {
	// The bus forgets the room (its TTL passes on the broker's clock).
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	env := newEnv(t, Config{}, relay.MemoryConfig{HistoryTTL: time.Hour, Now: clock})
	a := env.connect(t, "ann", false)
	old := a.join("r")["epoch"]
	a.send(`{"type":"send","room":"r","text":"x"}`)
	a.messages(1)
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	a.send(`{"type":"send","room":"r","text":"y"}`)
	j := a.next("joined")
	if j["recovered"] != false || j["epoch"] == old || j["seq"].(float64) != 0 {
		t.Fatalf("resync notice %v", j)
	}
	if seqs, texts := a.messages(1); seqs[0] != 1 || texts[0] != "y" {
		t.Fatalf("after reset %v %v", seqs, texts)
	}
}

func TestConfigValidation(t *testing.T) {
	b := relay.NewMemory(relay.MemoryConfig{})
	for _, cfg := range []Config{{Broker: b}, {NodeID: "n"}, {NodeID: "n", Broker: b, HistoryLimit: -1}} {
		if _, err := New(cfg); err == nil {
			t.Fatalf("config %+v accepted", cfg)
		}
	}
}
