package actors

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"parley/relay"
	"parley/relay/redistest"
)

// presenceCounter counts the presence changes a node asks of its bus, per
// session.
type presenceCounter struct {
	relay.Broker
	mu            sync.Mutex
	adds, removes map[string]int
}

func countPresence(b relay.Broker) *presenceCounter {
	return &presenceCounter{Broker: b, adds: map[string]int{}, removes: map[string]int{}}
}

func (p *presenceCounter) AddPresence(ctx context.Context, room string, m relay.Member) error {
	p.mu.Lock()
	p.adds[m.Session]++
	p.mu.Unlock()
	return p.Broker.AddPresence(ctx, room, m)
}

func (p *presenceCounter) RemovePresence(ctx context.Context, room string, m relay.Member) error {
	p.mu.Lock()
	p.removes[m.Session]++
	p.mu.Unlock()
	return p.Broker.RemovePresence(ctx, room, m)
}

// TestPresenceChurnLeavesNothing is issue 7's presence scenario: 1,000
// join/leave/disconnect cycles across 20 rooms, with the leave or the
// disconnect landing while the join (or its presence change) is still in
// flight. Afterwards every room is gone from this node, no presence entry
// is left, every member was added and removed exactly once and, on Redis,
// a member of every room on a second node saw exactly one member_left per
// member; afterwards every Redis key has a TTL.
func TestPresenceChurnLeavesNothing(t *testing.T) {
	const rooms, cycles = 20, 1000
	for _, b := range buses {
		t.Run(b.name, func(t *testing.T) {
			var srv *redistest.Server
			var inner relay.Broker
			if b.name == "redis" {
				srv = redistest.Start(t)
				inner = redisOn(t, srv, "n1")
			} else {
				inner = b.new(t, "n1")
			}
			bus := countPresence(inner)
			env := newEnvOn(t, Config{}, bus)

			var watcher *client
			if srv != nil {
				env2 := newEnvOn(t, Config{NodeID: "n2"}, redisOn(t, srv, "n2"))
				watcher = env2.connect(t, "watcher", false)
				for r := 0; r < rooms; r++ {
					watcher.join(fmt.Sprint("room", r))
				}
			}

			var wg sync.WaitGroup
			for r := 0; r < rooms; r++ {
				wg.Add(1)
				go func(r int) {
					defer wg.Done()
					room := fmt.Sprint("room", r)
					for i := r; i < cycles; i += rooms {
						c := env.connect(t, fmt.Sprint("u", i), false)
						c.send(fmt.Sprintf(`{"type":"join","room":%q}`, room))
						switch i % 4 {
						case 0: // disconnect with the join in flight
						case 1: // leave with the join in flight, then disconnect
							c.send(fmt.Sprintf(`{"type":"leave","room":%q}`, room))
							c.next("left")
						case 2: // joined, send, leave, disconnect
							c.next("joined")
							c.send(fmt.Sprintf(`{"type":"send","room":%q,"text":"x","id":"x"}`, room))
							c.send(fmt.Sprintf(`{"type":"leave","room":%q}`, room))
							c.next("left")
						case 3: // joined, disconnect
							c.next("joined")
						}
						c.sess.HandleClose(nil)
					}
				}(r)
			}
			wg.Wait()
			eventually(t, "rooms stopped", func() bool { return env.sys.Stats().Rooms == 0 })

			ctx := context.Background()
			for r := 0; r < rooms; r++ {
				list, err := inner.Presence(ctx, fmt.Sprint("room", r))
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range list {
					if m.Node == "n1" {
						t.Fatalf("room%d: %s still present", r, m.Name)
					}
				}
			}
			bus.mu.Lock()
			if len(bus.adds) != cycles || len(bus.removes) != cycles {
				t.Fatalf("%d members added, %d removed, want %d each", len(bus.adds), len(bus.removes), cycles)
			}
			for s, n := range bus.adds {
				if n != 1 || bus.removes[s] != 1 {
					t.Fatalf("session %s added %d, removed %d times", s, n, bus.removes[s])
				}
			}
			bus.mu.Unlock()

			if watcher == nil {
				return
			}
			left := map[string]int{}
			for len(left) < cycles {
				f := watcher.next("member_left")
				left[f["name"].(string)]++
			}
			for _, f := range watcher.transcript() {
				if f["type"] == "member_left" && left[f["name"].(string)] != 1 {
					t.Fatalf("member_left %v seen %d times", f["name"], left[f["name"].(string)])
				}
			}
			if n := countType(watcher.transcript(), "member_left"); n != cycles {
				t.Fatalf("%d member_left frames, want %d", n, cycles)
			}
			rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
			defer rc.Close()
			keys, err := rc.Keys(ctx, "*").Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				if ttl := rc.PTTL(ctx, k).Val(); ttl < 0 {
					t.Errorf("key %s has no TTL (%v)", k, ttl)
				}
			}
		})
	}
}

func countType(tr transcript, typ string) int {
	n := 0
	for _, f := range tr {
		if f["type"] == typ {
			n++
		}
	}
	return n
}
