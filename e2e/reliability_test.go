package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// awaitAcks waits until the users' acks together pass n.
func awaitAcks(t *testing.T, users []*user, n uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var acks uint64
		for _, u := range users {
			acks += u.c.Stats().Acks
		}
		if acks >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks after %v, want %d", acks, timeout, n)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

func totalAcks(users []*user) uint64 {
	var n uint64
	for _, u := range users {
		n += u.c.Stats().Acks
	}
	return n
}

func roomNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("room-%d", i)
	}
	return out
}

// TestSIGTERMWhileSending: 50 clients on one node send at a steady rate
// when the node gets SIGTERM; a second node serves the same Redis. Every
// send is answered (after the client's retries with the same id), every
// acked message is in history once, and every client, resumed on the second
// node, has seen every message of its room once and in order.
func TestSIGTERMWhileSending(t *testing.T) {
	r := startRedis(t)
	n1 := startNode(t, "e1", r.URL())
	n2 := startNode(t, "e2", r.URL())
	rooms := roomNames(5)
	var users []*user
	for i := 0; i < 50; i++ {
		users = append(users, newUser(t, fmt.Sprintf("u%02d", i), []string{n1.addr, n2.addr}, []string{rooms[i%len(rooms)]}))
	}
	tr := startTraffic(users, 50*time.Millisecond)
	awaitAcks(t, users, 300, 30*time.Second)
	n1.terminate()
	awaitAcks(t, users, totalAcks(users)+300, 60*time.Second)
	tr.finish()
	f := check(t, r.URL(), users, rooms)
	t.Logf("SIGTERM of a node under 50 senders:\n%s", f)
	for _, u := range users {
		if node := u.c.Node(); node != "e2" {
			t.Errorf("%s is on %q after the drain, want e2", u.name, node)
		}
	}
	if f.AnsweredElsewhere != 0 {
		t.Errorf("%d sends were published by the draining node without an answer from it", f.AnsweredElsewhere)
	}
	if f.Notices < uint64(len(users)) {
		t.Errorf("%d reconnect notices for %d clients of the drained node", f.Notices, len(users))
	}
	if l := f.losses(); len(l) > 0 {
		t.Errorf("losses: %s", strings.Join(l, "; "))
	}
}

// TestRedisStallWhileSending: Redis is stopped (SIGSTOP) for longer than the
// publish timeout while clients on two nodes send, then resumed. Sends
// refused meanwhile with unavailable are retried with the same id: history
// holds each message once, and every client sees each once, in order.
func TestRedisStallWhileSending(t *testing.T) {
	r := startRedis(t)
	n1 := startNode(t, "s1", r.URL())
	n2 := startNode(t, "s2", r.URL())
	rooms := roomNames(2)
	var users []*user
	for i := 0; i < 10; i++ {
		addrs := []string{n1.addr, n2.addr}
		if i%2 == 1 {
			addrs = []string{n2.addr, n1.addr}
		}
		users = append(users, newUser(t, fmt.Sprintf("u%02d", i), addrs, rooms))
	}
	tr := startTraffic(users, 100*time.Millisecond)
	awaitAcks(t, users, 100, 30*time.Second)
	pauseRedis(t, r, 7*time.Second) // the node's broker timeout is 5s
	awaitAcks(t, users, totalAcks(users)+200, 60*time.Second)
	tr.finish()
	f := check(t, r.URL(), users, rooms)
	t.Logf("Redis stopped for 7s under 10 senders:\n%s", f)
	if f.Retries == 0 {
		t.Error("no send was refused while Redis was stopped: the stall was not seen")
	}
	if l := f.losses(); len(l) > 0 {
		t.Errorf("losses: %s", strings.Join(l, "; "))
	}
}

// TestResumeWhileRedisStalled: a client misses messages while its network is
// down, then resumes (join with since) while Redis is stopped, so the node
// cannot read the history it needs. Once Redis is back the client must
// still get every message it missed: a resume the node cannot serve now is
// to be refused and retried, not answered "history lost".
func TestResumeWhileRedisStalled(t *testing.T) {
	r := startRedis(t)
	n := startNode(t, "w1", r.URL())
	rooms := roomNames(1)
	a := newUser(t, "away", []string{n.addr}, rooms)
	b := newUser(t, "here", []string{n.addr}, rooms)
	for i := 0; i < 10; i++ {
		b.send(rooms[0])
	}
	a.cut.setHold(true)
	a.cut.cut()
	for i := 0; i < 10; i++ {
		b.send(rooms[0]) // missed by a
	}
	pid := redisPID(t, r)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	a.cut.setHold(false)        // a resumes now, while Redis is stopped
	time.Sleep(7 * time.Second) // how long Redis stays stopped: past the node's 5s broker timeout
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		b.send(rooms[0])
	}
	f := check(t, r.URL(), []*user{a, b}, rooms)
	t.Logf("resume while Redis is stopped:\n%s", f)
	if l := f.losses(); len(l) > 0 {
		t.Errorf("losses: %s", strings.Join(l, "; "))
	}
}
