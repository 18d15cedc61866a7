package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"parley/relay/redistest"
)

// rdsAdmin is a plain go-redis client on srv, closed in t.Cleanup.
func rdsAdmin(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// rdsKeysWithoutTTL lists the keys of c that never expire.
func rdsKeysWithoutTTL(t *testing.T, c *redis.Client) (all int, noTTL []string) {
	t.Helper()
	ctx := rdsCtx(t)
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		ttl, err := c.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl < 0 {
			noTTL = append(noTTL, k)
		}
	}
	return len(keys), noTTL
}

// TestRedisKeysExpire: presence churn on two nodes across 20 rooms, with
// keyed publishes and reads of rooms that never existed, leaves every key
// with a TTL, no presence entry behind, and reads create no key; a node's
// Close deletes its own keys.
func TestRedisKeysExpire(t *testing.T) {
	srv := redistest.Start(t)
	admin := rdsAdmin(t, srv.Addr())
	ctx := rdsCtx(t)
	h1, h2 := &rdsRecorder{}, &rdsRecorder{}
	b1 := rdsNewBroker(t, rdsTestConfig(srv.URL(), "n1"), h1)
	b2 := rdsNewBroker(t, rdsTestConfig(srv.URL(), "n2"), h2)

	// Reads of rooms that never existed create nothing.
	before, err := admin.DBSize(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		room := fmt.Sprint("never-", i)
		if hr, err := b1.History(ctx, room, HistoryRequest{Since: 3}); err != nil || hr.Position != (Position{}) {
			t.Fatalf("history of %s: %+v %v", room, hr, err)
		}
		if ms, err := b1.Presence(ctx, room); err != nil || len(ms) != 0 {
			t.Fatalf("presence of %s: %+v %v", room, ms, err)
		}
	}
	if after, _ := admin.DBSize(ctx).Result(); after != before {
		t.Fatalf("reads of unknown rooms created %d keys", after-before)
	}

	const cycles, rooms = 1000, 20
	base := rdsRoom("churn")
	for i := range cycles {
		b := []*Redis{b1, b2}[i%2]
		room := fmt.Sprint(base, "-", i%rooms)
		m := Member{Session: fmt.Sprint("s", i), Name: "x", Node: b.cfg.NodeID}
		if err := b.AddPresence(ctx, room, m); err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			if _, err := b.Publish(ctx, Message{Room: room, From: "x", ID: fmt.Sprint(i), Text: "hi"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.RemovePresence(ctx, room, m); err != nil {
			t.Fatal(err)
		}
	}
	for r := range rooms {
		room := fmt.Sprint(base, "-", r)
		if ms, err := b1.Presence(ctx, room); err != nil || len(ms) != 0 {
			t.Fatalf("presence of %s after churn: %+v %v", room, ms, err)
		}
	}
	all, noTTL := rdsKeysWithoutTTL(t, admin)
	t.Logf("after %d join/leave cycles across %d rooms: %d keys, %d without a TTL %v", cycles, rooms, all, len(noTTL), noTTL)
	if len(noTTL) != 0 {
		t.Fatalf("keys without a TTL: %v", noTTL)
	}

	// A member still present when the node closes: its Close removes it
	// and deletes the node's own keys.
	if err := b1.AddPresence(ctx, base+"-0", Member{Session: "stay", Name: "y"}); err != nil {
		t.Fatal(err)
	}
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}
	if n, _ := admin.Exists(ctx, rdsNodeRoomsKey("n1"), rdsPresKey(base+"-0")).Result(); n != 0 {
		t.Fatalf("%d of n1's keys left after Close", n)
	}
	if ms, _ := b2.Presence(ctx, base+"-0"); len(ms) != 0 {
		t.Fatalf("presence after n1 closed: %+v", ms)
	}
}

// TestRedisPresenceRemoveRetried: a removal that fails while Redis is
// away is kept and done when it is back, announcing member_left once; a
// departed member is never announced again, even after Redis lost its
// data (restart).
func TestRedisPresenceRemoveRetried(t *testing.T) {
	srv := redistest.Start(t)
	h := &rdsRecorder{}
	cfg := rdsTestConfig(srv.URL(), "n1")
	b := rdsNewBroker(t, cfg, h)
	room := rdsRoom("leave")
	if _, err := b.Subscribe(rdsCtx(t), room); err != nil {
		t.Fatal(err)
	}
	gone := Member{Session: "gone", Name: "ann", Node: "n1"}
	stay := Member{Session: "stay", Name: "bob", Node: "n1"}
	for _, m := range []Member{gone, stay} {
		if err := b.AddPresence(rdsCtx(t), room, m); err != nil {
			t.Fatal(err)
		}
	}
	// Redis away: the removal fails.
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.RemovePresence(cctx, room, gone); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("remove with a dead context: %v", err)
	}
	// The keeper retries it within a heartbeat or two.
	rdsEventually(t, 10*time.Second, func() error {
		ms, err := b.Presence(rdsCtx(t), room)
		if err != nil || len(ms) != 1 || ms[0] != stay {
			return fmt.Errorf("presence %+v %v", ms, err)
		}
		return nil
	})
	// Redis restarts empty: only the member still here is announced again.
	srv.Restart(t)
	rdsEventually(t, 15*time.Second, func() error {
		ms, err := b.Presence(rdsCtx(t), room)
		if err != nil || len(ms) != 1 || ms[0] != stay {
			return fmt.Errorf("presence after restart %+v %v", ms, err)
		}
		return nil
	})
	lefts := 0
	for _, e := range h.roomPres(room) {
		if !e.Joined && e.Member.Session == "gone" {
			lefts++
		}
		if e.Joined && e.Member.Session == "gone" && lefts > 0 {
			t.Fatalf("departed member announced again: %+v", h.roomPres(room))
		}
	}
	if lefts != 1 {
		t.Fatalf("member_left for the departed member: %d, want 1 (%+v)", lefts, h.roomPres(room))
	}
}

// TestRedisStoredSize: a message of 65,000 "<" is stored as about 65 KB
// (no HTML escaping), and a room's history is capped in bytes.
func TestRedisStoredSize(t *testing.T) {
	srv := redistest.Start(t)
	admin := rdsAdmin(t, srv.Addr())
	cfg := rdsTestConfig(srv.URL(), "n1")
	cfg.HistorySize = 1000
	cfg.HistoryMaxBytes = 300_000
	b := rdsNewBroker(t, cfg, nil)
	ctx := rdsCtx(t)
	room := rdsRoom("size")
	text := strings.Repeat("<", 65_000)
	if _, err := b.Publish(ctx, Message{Room: room, From: "ann&bob", Text: text, ID: "x>"}); err != nil {
		t.Fatal(err)
	}
	es, err := admin.XRange(ctx, rdsHistKey(room), "-", "+").Result()
	if err != nil || len(es) != 1 {
		t.Fatalf("stream %v %v", len(es), err)
	}
	body, _ := es[0].Values["d"].(string)
	t.Logf("stored body of a %d-byte text: %d bytes", len(text), len(body))
	if len(body) > len(text)+100 || strings.Contains(body, `\u003c`) {
		t.Fatalf("stored %d bytes for a %d-byte text", len(body), len(text))
	}
	hr, err := b.History(ctx, room, HistoryRequest{})
	if err != nil || len(hr.Messages) != 1 || hr.Messages[0].Text != text || hr.Messages[0].From != "ann&bob" || hr.Messages[0].ID != "x>" {
		t.Fatalf("read back: %v", err)
	}
	// 300 KB hold four such messages; the fifth pushes the oldest out.
	for range 9 {
		if _, err := b.Publish(ctx, Message{Room: room, From: "ann", Text: text}); err != nil {
			t.Fatal(err)
		}
	}
	hr, err = b.History(ctx, room, HistoryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if hr.Position.Seq != 10 || len(hr.Messages) != 4 || hr.Earliest != 7 || hr.Messages[0].Seq != 7 {
		t.Fatalf("capped history: seq %d, %d messages, earliest %d", hr.Position.Seq, len(hr.Messages), hr.Earliest)
	}
	if n, _ := admin.XLen(ctx, rdsHistKey(room)).Result(); n != 4 {
		t.Fatalf("stream holds %d entries, want 4", n)
	}
	// One message over the cap is kept alone.
	big := strings.Repeat("y", 400_000)
	if _, err := b.Publish(ctx, Message{Room: room, From: "ann", Text: big}); err != nil {
		t.Fatal(err)
	}
	if hr, _ = b.History(ctx, room, HistoryRequest{}); len(hr.Messages) != 1 || hr.Messages[0].Seq != 11 {
		t.Fatalf("after a message over the cap: %d messages", len(hr.Messages))
	}
}

// rdsReplica starts a replica of master and waits until it is in sync.
func rdsReplica(t *testing.T, master *redistest.Server) *redistest.Server {
	t.Helper()
	rep := redistest.Start(t, "--replicaof", "127.0.0.1", fmt.Sprint(master.Port()), "--repl-diskless-sync-delay", "0")
	rdsEventually(t, 15*time.Second, func() error {
		if info := rep.Do(t, "INFO", "replication"); !strings.Contains(info, "master_link_status:up") {
			return errors.New("replica link not up")
		}
		if info := master.Do(t, "INFO", "replication"); !strings.Contains(info, "connected_slaves:1") {
			return errors.New("master sees no replica")
		}
		return nil
	})
	return rep
}

// TestRedisWaitReplicas: with WaitReplicas 1 an acknowledged publish is on
// the replica when Publish returns; without a replica the publish happens
// but is answered with ErrUnavailable, and a retry with the same id is
// recognised as the same message.
func TestRedisWaitReplicas(t *testing.T) {
	master := redistest.Start(t, "--repl-diskless-sync-delay", "0") // a replica syncs at once
	rep := rdsReplica(t, master)
	cfg := rdsTestConfig(master.URL(), "n1")
	cfg.WaitReplicas, cfg.WaitTimeout, cfg.IOTimeout = 1, 2*time.Second, 3*time.Second // room for a loaded machine
	b := rdsNewBroker(t, cfg, nil)
	ctx := rdsCtx(t)
	room := rdsRoom("wait")
	for i := 1; i <= 3; i++ {
		p, err := b.Publish(ctx, Message{Room: room, From: "ann", ID: fmt.Sprint(i), Text: "x"})
		if err != nil || p.Seq != uint64(i) {
			t.Fatalf("publish %d: %+v %v", i, p, err)
		}
		// Acknowledged: the replica holds it already.
		if got := rep.Do(t, "HGET", rdsMetaKey(room), "seq"); got != fmt.Sprint(i) {
			t.Fatalf("replica at seq %q after ack %d", got, i)
		}
	}
	rep.Do(t, "REPLICAOF", "NO", "ONE")
	rdsEventually(t, 10*time.Second, func() error {
		if info := master.Do(t, "INFO", "replication"); !strings.Contains(info, "connected_slaves:0") {
			return errors.New("replica still attached")
		}
		return nil
	})
	_, err := b.Publish(ctx, Message{Room: room, From: "ann", ID: "4", Text: "x"})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "0 of 1 replicas acknowledged") {
		t.Fatalf("publish without a replica: %v", err)
	}
	hr, err := b.History(ctx, room, HistoryRequest{})
	if err != nil || hr.Position.Seq != 4 {
		t.Fatalf("master after the unconfirmed publish: %+v %v", hr.Position, err)
	}
	// The retry is answered as the same message (still unconfirmed).
	cfg0 := rdsTestConfig(master.URL(), "n2")
	b0 := rdsNewBroker(t, cfg0, nil)
	if p, err := b0.Publish(ctx, Message{Room: room, From: "ann", ID: "4", Text: "x"}); err != nil || !p.Repeat || p.Seq != 4 {
		t.Fatalf("retry: %+v %v", p, err)
	}
	if _, err := NewRedis(RedisConfig{URL: master.URL(), NodeID: "x", WaitReplicas: 1, WaitTimeout: 5 * time.Second}); err == nil {
		t.Fatal("WaitTimeout above IOTimeout accepted")
	}
}

// TestRedisFailoverNoSeqReuse: a replica that missed acknowledged
// publishes is promoted and the node is pointed at it (a proxy in front of
// Redis moves, as a virtual IP would). The next publish with the node's
// known position starts a new epoch instead of reusing seqs the node
// delivered; with WaitReplicas 1 nothing acknowledged is missing on the
// promoted replica and the epoch goes on.
func TestRedisFailoverNoSeqReuse(t *testing.T) {
	for _, wait := range []int{0, 1} {
		t.Run(fmt.Sprint("wait=", wait), func(t *testing.T) {
			master := redistest.Start(t, "--repl-diskless-sync-delay", "0") // a replica syncs at once
			rep := rdsReplica(t, master)
			proxy := redistest.StartProxy(t, master.Addr())
			cfg := rdsTestConfig(proxy.URL(), "n1")
			cfg.WaitReplicas, cfg.WaitTimeout, cfg.IOTimeout = wait, 2*time.Second, 3*time.Second
			h := &rdsRecorder{}
			b := rdsNewBroker(t, cfg, h)
			ctx := rdsCtx(t)
			room := rdsRoom("failover")
			if _, err := b.Subscribe(ctx, room); err != nil {
				t.Fatal(err)
			}
			var known Position
			acked := 0
			send := func(id string) error {
				ps, err := b.PublishBatch(ctx, room, known, []Message{{From: "ann", ID: id, Text: id}})
				if err == nil {
					acked++
					known = Position{Seq: ps[0].Seq, Epoch: ps[0].Epoch}
				}
				return err
			}
			for i := 1; i <= 3; i++ {
				if err := send(fmt.Sprint(i)); err != nil {
					t.Fatal(err)
				}
			}
			if wait == 0 {
				// Replication stops; three more are acknowledged by the
				// master alone.
				rdsEventually(t, 10*time.Second, func() error {
					if got := rep.Do(t, "HGET", rdsMetaKey(room), "seq"); got != "3" {
						return fmt.Errorf("replica at %q", got)
					}
					return nil
				})
				rep.Do(t, "REPLICAOF", "NO", "ONE")
				for i := 4; i <= 6; i++ {
					if err := send(fmt.Sprint(i)); err != nil {
						t.Fatal(err)
					}
				}
			} else {
				for i := 4; i <= 6; i++ {
					if err := send(fmt.Sprint(i)); err != nil {
						t.Fatal(err)
					}
				}
				rep.Do(t, "REPLICAOF", "NO", "ONE")
			}
			// The delivered position: every acked message reached us.
			rdsEventually(t, 5*time.Second, func() error {
				if n := len(h.roomMsgs(room)); n < 6 {
					return fmt.Errorf("%d of 6 delivered", n)
				}
				return nil
			})
			proxy.Retarget(rep.Addr())
			master.Kill()
			if wait > 0 {
				rdsReplica(t, rep) // the promoted master gets a replica of its own
			}
			var p Position
			rdsEventually(t, 15*time.Second, func() error {
				ps, err := b.PublishBatch(rdsCtx(t), room, known, []Message{{From: "ann", ID: "7", Text: "7"}})
				if err != nil {
					return err
				}
				p = ps[0]
				return nil
			})
			hr, err := b.History(ctx, room, HistoryRequest{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("after failover: publish got %+v, known was %+v, promoted replica's history %d messages", p, known, len(hr.Messages))
			if wait == 0 {
				if p.Epoch == known.Epoch || p.Seq != 1 {
					t.Fatalf("seq reused after failover: %+v (node delivered %+v)", p, known)
				}
				return
			}
			if p.Epoch != known.Epoch || p.Seq != 7 || len(hr.Messages) != 7 {
				t.Fatalf("with WAIT 1: publish %+v, history %d messages; want seq 7 of %s and all 7 kept", p, len(hr.Messages), known.Epoch)
			}
		})
	}
}

// TestRedisFailedAddLeavesNoGhost: an add that Redis ran but whose reply
// was lost (a proxy drops replies; the client times out) is answered with
// an error; the keeper then removes the member Redis did record, announcing
// member_left once, so no ghost stays in presence.
func TestRedisFailedAddLeavesNoGhost(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.StartProxy(t, srv.Addr())
	obs := &rdsRecorder{}
	// A presence timeout well above the lost reply's 1s (IOTimeout), so
	// the watcher does not declare n1 dead meanwhile.
	cfg := func(url, node string) RedisConfig {
		c := rdsTestConfig(url, node)
		c.PresenceTimeout = 5 * time.Second
		return c
	}
	watcher := rdsNewBroker(t, cfg(srv.URL(), "n2"), obs)
	b := rdsNewBroker(t, cfg(proxy.URL(), "n1"), nil)
	room := rdsRoom("ghost")
	if _, err := watcher.Subscribe(rdsCtx(t), room); err != nil {
		t.Fatal(err)
	}
	first := Member{Session: "first", Name: "bob", Node: "n1"}
	if err := b.AddPresence(rdsCtx(t), room, first); err != nil {
		t.Fatal(err)
	}
	proxy.DropReplies(true)
	m := Member{Session: "late", Name: "ann", Node: "n1"}
	err := b.AddPresence(rdsCtx(t), room, m)
	proxy.DropReplies(false)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("add with its reply lost: %v", err)
	}
	rdsEventually(t, 10*time.Second, func() error {
		evs := obs.roomPres(room)
		if len(evs) != 3 || evs[1] != (PresenceEvent{room, m, true}) || evs[2] != (PresenceEvent{room, m, false}) {
			return fmt.Errorf("events %+v, want bob's join, the join Redis ran and one leave", evs)
		}
		if ms, err := watcher.Presence(rdsCtx(t), room); err != nil || len(ms) != 1 || ms[0] != first {
			return fmt.Errorf("presence %+v %v", ms, err)
		}
		return nil
	})
}
