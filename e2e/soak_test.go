package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// soakDuration is SOAK_DURATION (a Go duration), 30s by default.
func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("SOAK_DURATION")
	if v == "" {
		return 30 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("SOAK_DURATION=%q: want a positive duration like 3m", v)
	}
	return d
}

// Fault kinds the soak injects.
const (
	faultCut          = "client-connection-cut"
	faultNodeRestart  = "node-sigterm-restart"
	faultRedisPause   = "redis-sigstop"
	faultRedisRestart = "redis-kill-restart-aof"
)

// TestSoak is the chaos soak: two nodes and a Redis with an append-only
// file, 16 clients in 4 rooms sending with ids and resuming on reconnect,
// and every 1-3 seconds a fault at random: a client's connection cut, a
// node SIGTERMed and restarted, Redis stopped (SIGSTOP) for 1-7 seconds
// while the other faults go on, Redis killed and restarted from its
// append-only file. At the end every
// send must be answered, every acked message in history once, and every
// client's view of each room equal to history after its join.
func TestSoak(t *testing.T) {
	d := soakDuration(t)
	r := startRedis(t)
	nodes := []*nodeProc{startNode(t, "k1", r.URL()), startNode(t, "k2", r.URL())}
	rooms := roomNames(4)
	var users []*user
	for i := 0; i < 16; i++ {
		addrs := []string{nodes[i%2].addr, nodes[(i+1)%2].addr}
		users = append(users, newUser(t, fmt.Sprintf("u%02d", i), addrs, []string{rooms[i%4], rooms[(i+1)%4]}))
	}
	tr := startTraffic(users, 250*time.Millisecond)
	faults := map[string]int{}
	kinds := []string{faultCut, faultNodeRestart, faultRedisPause, faultRedisRestart}
	// A Redis pause runs in the background, so node restarts and cuts
	// happen while Redis is stopped; redisBusy keeps the two Redis faults
	// apart (a restart waits for the pause to end).
	redisBusy := make(chan struct{}, 1)
	start := time.Now()
	for time.Since(start) < d {
		time.Sleep(time.Second + time.Duration(rand.Int64N(int64(2*time.Second)))) // time between faults
		kind := kinds[rand.IntN(len(kinds))]
		switch kind {
		case faultCut:
			users[rand.IntN(len(users))].cut.cut()
		case faultNodeRestart:
			nodes[rand.IntN(len(nodes))].restart()
		case faultRedisPause:
			select {
			case redisBusy <- struct{}{}:
			default:
				continue // already stopped
			}
			pid := redisPID(t, r)
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatalf("SIGSTOP redis: %v", err)
			}
			go func() {
				time.Sleep(time.Second + time.Duration(rand.Int64N(int64(6*time.Second)))) // the pause's length
				if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
					t.Errorf("SIGCONT redis: %v", err)
				}
				<-redisBusy
			}()
		case faultRedisRestart:
			redisBusy <- struct{}{}
			r.Restart(t)
			<-redisBusy
		}
		faults[kind]++
	}
	redisBusy <- struct{}{} // the last pause is over
	tr.finish()
	f := check(t, r.URL(), users, rooms)
	f.Faults = faults
	t.Logf("soak of %v (2 nodes, Redis with AOF, 16 clients, 4 rooms):\n%s", d.Round(time.Second), f)
	if f.Acks == 0 {
		t.Error("nothing was acked")
	}
	if l := f.losses(); len(l) > 0 {
		t.Errorf("losses: %s", strings.Join(l, "; "))
	}
}
