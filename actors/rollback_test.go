package actors

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"parley/relay/redistest"
)

// TestRollbackDetected: a Redis that goes back in time (its room keys
// restored from a snapshot, as after a failover to a replica that missed
// the last writes) is caught by the room, by its next position check or by
// its next publish: the bus starts a new epoch, members get
// joined{recovered:false} and then the messages of the new epoch; no seq a
// member already holds is reused. A retried id is acked as a repeat.
func TestRollbackDetected(t *testing.T) {
	tests := []struct {
		name  string
		check time.Duration // periodic position check
		poke  bool          // publish after the rollback
		flush bool          // the bus loses the room altogether (no epoch)
	}{
		{"position check", 30 * time.Millisecond, false, false},
		{"publish", time.Hour, true, false},
		{"room lost, position check", 30 * time.Millisecond, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			bus := redisOn(t, srv, "n1")
			env := newEnvOn(t, Config{CheckInterval: tt.check}, bus)
			rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
			t.Cleanup(func() { _ = rc.Close() })
			ctx := context.Background()

			a := env.connect(t, "ann", false)
			old := a.join("r")["epoch"].(string)
			send := func(id string) {
				a.send(fmt.Sprintf(`{"type":"send","room":"r","text":"t","id":%q}`, id))
			}
			for i := 1; i <= 5; i++ {
				send(fmt.Sprint("a", i))
			}
			a.messages(5)
			keys := []string{"parley:{r}:meta", "parley:{r}:hist"}
			snap := map[string]string{}
			for _, k := range keys {
				v, err := rc.Dump(ctx, k).Result()
				if err != nil {
					t.Fatalf("dump %s: %v", k, err)
				}
				snap[k] = v
			}
			for i := 6; i <= 10; i++ {
				send(fmt.Sprint("a", i))
			}
			if seqs, _ := a.messages(5); seqs[4] != 10 {
				t.Fatalf("before the rollback: %v", seqs)
			}
			// A retry of a known id is a repeat with the original seq.
			send("a3")
			for {
				if ack := a.next("ack"); ack["id"] == "a3" && ack["repeat"] == true {
					if ack["seq"].(float64) != 3 {
						t.Fatalf("repeat ack %v", ack)
					}
					break
				}
			}
			for _, k := range keys {
				if tt.flush {
					rc.Del(ctx, k)
				} else if err := rc.RestoreReplace(ctx, k, 0, snap[k]).Err(); err != nil {
					t.Fatalf("restore %s: %v", k, err)
				}
			}
			if tt.poke {
				send("b1")
			}
			j := a.next("joined") // the join's own joined was read by join()
			if j["recovered"] != false || j["epoch"] == old || j["epoch"] == "" {
				t.Fatalf("reset notice %v (old epoch %s)", j, old)
			}
			if !tt.poke {
				send("b1")
			}
			seqs, texts := a.messages(1)
			if seqs[0] != uint64(j["seq"].(float64))+1 || texts[0] != "t" {
				t.Fatalf("first message of the new epoch: %v after %v", seqs, j)
			}
			if st := env.sys.Stats(); !tt.poke && st.Rollovers != 1 {
				t.Fatalf("rollovers %d", st.Rollovers)
			}
			// One reset notice only: the room never passes through epoch "".
			n := 0
			for _, f := range a.transcript() {
				if f["type"] == "joined" {
					n++
				}
			}
			if n != 2 {
				t.Fatalf("%d joined frames, want the join's and one reset", n)
			}
		})
	}
}
