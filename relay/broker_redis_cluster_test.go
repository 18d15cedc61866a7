package relay

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"parley/relay/redistest"
)

// TestRedisCluster runs two brokers on a real 3-master Redis Cluster with
// rooms on different slots and masters: sharded pub/sub delivery (one
// subscriber per slot), order, history, presence, and a killed subscriber.
func TestRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	cfg := func(node string) RedisConfig {
		c := rdsTestConfig("", node)
		c.ClusterAddrs = cl.Addrs()
		return c
	}
	ha, hb := &rdsRecorder{}, &rdsRecorder{}
	a := rdsNewBroker(t, cfg("ca"), ha)
	b := rdsNewBroker(t, cfg("cb"), hb)

	// Rooms on distinct slots, owned by at least two masters.
	owner := func(key string) string {
		for _, s := range cl.Servers {
			if _, err := redistest.Do(s.Addr(), "EXISTS", key); err == nil {
				return s.Addr()
			} else if !strings.HasPrefix(err.Error(), "MOVED") {
				t.Fatalf("EXISTS %s on %s: %v", key, s.Addr(), err)
			}
		}
		t.Fatalf("no owner for %s", key)
		return ""
	}
	var rooms []string
	slots, owners := map[int]bool{}, map[string]bool{}
	for i := 0; len(rooms) < 4 && i < 100; i++ {
		room := rdsRoom(fmt.Sprintf("cl%d", i))
		ch := rdsChannel(room)
		slot := rdsSlot(ch)
		if want := cl.KeySlot(t, ch); slot != want {
			t.Fatalf("rdsSlot(%q) = %d, CLUSTER KEYSLOT says %d", ch, slot, want)
		}
		if want := cl.KeySlot(t, rdsMetaKey(room)); slot != want {
			t.Fatalf("meta key of %q in slot %d, channel in %d", room, want, slot)
		}
		o := owner(rdsMetaKey(room))
		if slots[slot] || len(rooms) < 3 && owners[o] {
			continue
		}
		slots[slot], owners[o] = true, true
		rooms = append(rooms, room)
	}
	if len(slots) < 2 || len(owners) < 2 {
		t.Fatalf("rooms span %d slots on %d masters, want >= 2 each", len(slots), len(owners))
	}

	for _, br := range []*Redis{a, b} {
		for _, room := range rooms {
			if _, err := br.Subscribe(rdsCtx(t), room); err != nil {
				t.Fatalf("subscribe %s: %v", room, err)
			}
		}
	}
	a.mu.Lock()
	nShards := len(a.shards)
	a.mu.Unlock()
	if nShards != len(rooms) {
		t.Fatalf("%d subscriber shards for %d rooms on distinct slots", nShards, len(rooms))
	}

	publishAll := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			for j, room := range rooms {
				br := a
				if (i+j)%2 == 1 {
					br = b
				}
				if _, err := br.Publish(rdsCtx(t), Message{Room: room, Text: fmt.Sprint(i)}); err != nil {
					t.Fatalf("publish %s: %v", room, err)
				}
			}
		}
	}
	waitAll := func(n int) {
		t.Helper()
		rdsEventually(t, 5*time.Second, func() error {
			for _, h := range []*rdsRecorder{ha, hb} {
				for _, room := range rooms {
					if got := len(h.roomMsgs(room)); got < n {
						return fmt.Errorf("room %s: %d of %d", room, got, n)
					}
				}
			}
			return nil
		})
	}
	publishAll(8)
	waitAll(8)
	// One Positions read spans every master (go-redis splits the
	// pipeline by node), in the order asked.
	ask := append([]string{rdsRoom("cl-none")}, rooms...)
	pos, err := b.Positions(rdsCtx(t), ask)
	if err != nil {
		t.Fatalf("positions across masters: %v", err)
	}
	for i, room := range ask {
		want := Position{}
		if i > 0 {
			want = Position{Seq: 8, Epoch: ha.roomMsgs(room)[0].Epoch}
		}
		if pos[i] != want {
			t.Fatalf("position of %s = %+v, want %+v", room, pos[i], want)
		}
	}
	for _, room := range rooms {
		ma, mb := ha.roomMsgs(room), hb.roomMsgs(room)
		if !slices.Equal(ma, mb) {
			t.Fatalf("room %s: brokers saw different streams", room)
		}
		for i, m := range ma {
			if m.Seq != uint64(i+1) || m.Text != fmt.Sprint(i) {
				t.Fatalf("room %s message %d: %+v", room, i, m)
			}
		}
		hr, err := b.History(rdsCtx(t), room, HistoryRequest{Since: 2, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		if len(hr.Messages) != 3 || hr.Messages[0].Seq != 3 || hr.Position.Seq != 8 || hr.Earliest != 1 || hr.Position.Epoch != ma[0].Epoch {
			t.Fatalf("room %s history %+v", room, hr)
		}
	}

	// Presence across slots.
	for i, room := range rooms {
		if err := a.AddPresence(rdsCtx(t), room, Member{Session: fmt.Sprint("s", i), Name: "ann", Node: "ca"}); err != nil {
			t.Fatal(err)
		}
	}
	rdsEventually(t, 5*time.Second, func() error {
		for _, room := range rooms {
			if len(hb.roomPres(room)) != 1 {
				return fmt.Errorf("room %s: presence events %v", room, hb.roomPres(room))
			}
		}
		return nil
	})
	for _, room := range rooms {
		ms, err := b.Presence(rdsCtx(t), room)
		if err != nil || len(ms) != 1 || ms[0].Node != "ca" {
			t.Fatalf("room %s presence %v %v", room, ms, err)
		}
	}

	// Kill every subscriber connection: each shard resubscribes on its own.
	ra0, _ := ha.snapshot()
	rb0, _ := hb.snapshot()
	for _, s := range cl.Servers {
		s.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
	}
	rdsEventually(t, 5*time.Second, func() error {
		ra, _ := ha.snapshot()
		rb, _ := hb.snapshot()
		if ra-ra0 < len(rooms) || rb-rb0 < len(rooms) {
			return fmt.Errorf("resyncs %d and %d after the kill", ra-ra0, rb-rb0)
		}
		if !a.Stats().Up || !b.Stats().Up {
			return errors.New("not up")
		}
		return nil
	})
	publishAll(2)
	waitAll(10)

	// Idempotency keys live in the room's slot: a keyed batch and its
	// retry from the other node, on every slot, publish once.
	for _, room := range rooms {
		m := Message{From: "ann", Text: "once", ID: "dup"}
		ps, err := a.PublishBatch(rdsCtx(t), room, Position{}, []Message{m, m})
		if err != nil || ps[0].Seq != 11 || ps[0].Repeat || ps[1] != (Position{Seq: 11, Epoch: ps[0].Epoch, Repeat: true}) {
			t.Fatalf("room %s keyed batch: %+v %v", room, ps, err)
		}
		m.Room = room
		if p, err := b.Publish(rdsCtx(t), m); err != nil || p != ps[1] {
			t.Fatalf("room %s retry from the other node: %+v %v", room, p, err)
		}
	}
	waitAll(11)
}
