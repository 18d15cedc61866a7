package actors

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"parley/relay"
	"parley/relay/redistest"
)

// TestFailoverResetsMembers: two nodes share a Redis master with a
// replica. Replication stops, the master acknowledges three more sends,
// then the replica is promoted and both nodes are pointed at it (a proxy in
// front of Redis moves, as a virtual IP would). The next send must not
// reuse seqs the members already hold: it starts a new epoch, every member
// on both nodes gets joined{recovered:false} and then the new message.
// Before the rollback check, the send was acked with seq 4 of the old epoch
// and every member dropped it as a duplicate, silently.
func TestFailoverResetsMembers(t *testing.T) {
	master := redistest.Start(t, "--repl-diskless-sync-delay", "0") // a replica syncs at once
	rep := redistest.Start(t, "--replicaof", "127.0.0.1", fmt.Sprint(master.Port()), "--repl-diskless-sync-delay", "0")
	eventually(t, "replica in sync", func() bool {
		return strings.Contains(rep.Do(t, "INFO", "replication"), "master_link_status:up")
	})
	proxy := redistest.StartProxy(t, master.Addr())
	newNode := func(id string) *testEnv {
		b, err := relay.NewRedis(relay.RedisConfig{URL: proxy.URL(), NodeID: id,
			DialTimeout: 300 * time.Millisecond, IOTimeout: time.Second, ProbeInterval: 100 * time.Millisecond,
			BackoffMax: 100 * time.Millisecond, PingInterval: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return newEnvOn(t, Config{NodeID: id}, b)
	}
	n1, n2 := newNode("n1"), newNode("n2")
	a, b := n1.connect(t, "ann", false), n2.connect(t, "bob", false)
	epoch := a.join("r")["epoch"]
	if got := b.join("r")["epoch"]; got != epoch {
		t.Fatalf("epochs %v %v", epoch, got)
	}
	sendAcked := func(id string) frame {
		t.Helper()
		a.send(fmt.Sprintf(`{"type":"send","room":"r","text":%q,"id":%q}`, id, id))
		return a.next("ack")
	}
	for i := 1; i <= 3; i++ {
		sendAcked(fmt.Sprint(i))
	}
	eventually(t, "replica at seq 3", func() bool { return rep.Do(t, "HGET", "parley:{r}:meta", "seq") == "3" })
	rep.Do(t, "REPLICAOF", "NO", "ONE")
	for i := 4; i <= 6; i++ {
		sendAcked(fmt.Sprint(i))
	}
	for _, c := range []*client{a, b} {
		if seqs, _ := c.messages(6); !slices.Equal(seqs, seqRange(1, 6)) {
			t.Fatalf("before failover: %v", seqs)
		}
	}

	proxy.Retarget(rep.Addr())
	master.Kill()
	// Send "7" until it is acked, retrying an unavailable bus with the same
	// id (the reconnect takes a moment).
	deadline := time.Now().Add(20 * time.Second)
	for acked := false; !acked; {
		if time.Now().After(deadline) {
			t.Fatal("send after failover never acked")
		}
		a.send(`{"type":"send","room":"r","text":"7","id":"7"}`)
		for {
			var f frame
			if err := json.Unmarshal([]byte(a.nextRaw()), &f); err != nil || f["id"] != "7" {
				continue
			}
			if f["type"] == "ack" {
				acked = true
			} else {
				time.Sleep(50 * time.Millisecond) // back-off before the retry
			}
			break
		}
	}
	for _, c := range []*client{a, b} {
		j := c.next("joined")
		if j["recovered"] != false || j["epoch"] == epoch {
			t.Fatalf("%s: reset notice %v (old epoch %v)", c.sess.ID(), j, epoch)
		}
		seqs, texts := c.messages(1)
		if seqs[0] != 1 || texts[0] != "7" {
			t.Fatalf("%s: after the reset got seq %d %q, want seq 1 of the new epoch", c.sess.ID(), seqs[0], texts[0])
		}
	}
}
