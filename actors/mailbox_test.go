package actors

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
)

// heldDispatcher holds what the mailbox schedules until the test runs it.
type heldDispatcher struct{ fns []func() }

func (d *heldDispatcher) Schedule(fn func()) { d.fns = append(d.fns, fn) }
func (d *heldDispatcher) Throughput() int    { return 2 }
func (d *heldDispatcher) runAll() {
	for len(d.fns) > 0 {
		fn := d.fns[0]
		d.fns = d.fns[1:]
		fn()
	}
}

// logInvoker records what the mailbox hands it; a user message "boom"
// panics.
type logInvoker struct {
	mu  sync.Mutex
	log []string
}

func (l *logInvoker) add(s string)              { l.mu.Lock(); l.log = append(l.log, s); l.mu.Unlock() }
func (l *logInvoker) InvokeSystemMessage(m any) { l.add(fmt.Sprint("sys:", m)) }
func (l *logInvoker) InvokeUserMessage(m any) {
	if m == "boom" {
		panic("boom!")
	}
	l.add(fmt.Sprint("user:", m))
}
func (l *logInvoker) EscalateFailure(reason, m any) { l.add(fmt.Sprint("failure:", reason, ":", m)) }

// TestConnMailbox: the connection actors' mailbox keeps protoactor's
// mailbox semantics: system messages first, user messages in order, held
// while suspended, a panic escalated with its message and processing going
// on, and one run scheduled at a time.
func TestConnMailbox(t *testing.T) {
	suspend, resume := &actor.SuspendMailbox{}, &actor.ResumeMailbox{}
	type post struct {
		sys bool
		msg any
	}
	cases := []struct {
		name      string
		posts     [][]post // each batch is posted, then what was scheduled runs
		want      []string
		schedules int
	}{
		{"system messages first", [][]post{{{false, 1}, {false, 2}, {true, "s"}, {false, 3}}},
			[]string{"sys:s", "user:1", "user:2", "user:3"}, 1},
		{"past the throughput, all of them", [][]post{{{false, 1}, {false, 2}, {false, 3}, {false, 4}, {false, 5}}},
			[]string{"user:1", "user:2", "user:3", "user:4", "user:5"}, 1},
		{"suspended: user messages wait for resume", [][]post{{{true, suspend}, {false, 1}}, {{false, 2}}, {{true, resume}}},
			[]string{"user:1", "user:2"}, 3},
		{"a panic is escalated and the rest still runs", [][]post{{{false, 1}, {false, "boom"}, {false, 2}}},
			[]string{"user:1", "failure:boom!:boom", "user:2"}, 1},
		{"an empty mailbox schedules again", [][]post{{{false, 1}}, {{false, 2}}},
			[]string{"user:1", "user:2"}, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, inv := &heldDispatcher{}, &logInvoker{}
			m := newConnMailbox()
			m.RegisterHandlers(inv, d)
			m.Start()
			schedules := 0
			for _, batch := range tc.posts {
				for _, p := range batch {
					if p.sys {
						m.PostSystemMessage(p.msg)
					} else {
						m.PostUserMessage(p.msg)
					}
				}
				schedules += len(d.fns)
				d.runAll()
			}
			if !slices.Equal(inv.log, tc.want) {
				t.Fatalf("processed %q, want %q", inv.log, tc.want)
			}
			if schedules != tc.schedules {
				t.Fatalf("%d runs scheduled, want %d", schedules, tc.schedules)
			}
			if n := m.UserMessageCount(); n != 0 {
				t.Fatalf("%d user messages left", n)
			}
		})
	}
}

// TestConnMailboxConcurrentPosts: producers posting at once on the real
// dispatcher lose nothing, and each producer's messages arrive in order.
func TestConnMailboxConcurrentPosts(t *testing.T) {
	const producers, each = 8, 2000
	inv := &logInvoker{}
	m := newConnMailbox()
	m.RegisterHandlers(inv, actor.NewDefaultDispatcher(300))
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m.PostUserMessage(fmt.Sprintf("%d-%d", p, i))
			}
		}()
	}
	wg.Wait()
	eventually(t, "every message processed", func() bool {
		inv.mu.Lock()
		defer inv.mu.Unlock()
		return len(inv.log) == producers*each
	})
	next := make([]int, producers)
	for _, s := range inv.log {
		var p, i int
		if _, err := fmt.Sscanf(s, "user:%d-%d", &p, &i); err != nil {
			t.Fatal(err)
		}
		if i != next[p] {
			t.Fatalf("producer %d: got message %d, want %d", p, i, next[p])
		}
		next[p]++
	}
}
