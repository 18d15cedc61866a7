package client

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"parley/node"
	"parley/relay"
)

func TestMain(m *testing.M) {
	relay.RouteRedisLogs(nil)
	// protoactor's dead-letter log throttle parks a goroutine for its
	// throttle interval (1s) after a dead letter; it ends on its own.
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"))
}

// startNode starts a real node in this process on a free 127.0.0.1 port
// and shuts it down when the test ends (unless the test did).
func startNode(t testing.TB, cfg node.Config) *node.Node {
	t.Helper()
	cfg.Listen, cfg.Admin = "127.0.0.1:0", "-"
	if cfg.NodeID == "" {
		cfg.NodeID = "c1"
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 5 * time.Second
	}
	n, err := node.New(cfg)
	if err != nil {
		t.Fatalf("node.New: %v", err)
	}
	if err := n.Start(); err != nil {
		t.Fatalf("node.Start: %v", err)
	}
	t.Cleanup(func() { shutdown(t, n) })
	return n
}

func shutdown(t testing.TB, n *node.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		t.Errorf("shutdown %s: %v", n.ID(), err)
	}
}

// redisBroker is a Redis broker for an in-process node.
func redisBroker(t testing.TB, url, nodeID string) relay.Broker {
	t.Helper()
	b, err := relay.NewRedis(relay.RedisConfig{URL: url, NodeID: nodeID, IOTimeout: time.Second})
	if err != nil {
		t.Fatalf("relay.NewRedis: %v", err)
	}
	return b
}

// cutter is a NetDial that remembers its connections so a test can cut
// them as a lost network would.
type cutter struct {
	mu    sync.Mutex
	conns []net.Conn
	dials int
}

func (c *cutter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.conns = append(c.conns, nc)
	c.dials++
	c.mu.Unlock()
	return nc, nil
}

// cut closes every connection dialled so far.
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, nc := range c.conns {
		nc.Close()
	}
	c.conns = nil
}

func (c *cutter) dialCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dials
}

// newClient dials a client and closes it when the test ends.
func newClient(t testing.TB, cfg Config) *Client {
	t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 20 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 500 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial %v: %v", cfg.Addrs, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func join(t testing.TB, c *Client, room string) {
	t.Helper()
	if err := c.Join(ctxT(t, 10*time.Second), room); err != nil {
		t.Fatalf("join %s: %v", room, err)
	}
}

// collector reads a client's events on its own goroutine.
type collector struct {
	mu     sync.Mutex
	events []Event
	wake   chan struct{}
	done   chan struct{}
}

func collect(t testing.TB, c *Client) *collector {
	col := &collector{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(col.done)
		for e := range c.Events() {
			col.mu.Lock()
			col.events = append(col.events, e)
			col.mu.Unlock()
			select {
			case col.wake <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-col.done
	})
	return col
}

// messages returns the messages of room received so far.
func (col *collector) messages(room string) []Message {
	col.mu.Lock()
	defer col.mu.Unlock()
	var out []Message
	for _, e := range col.events {
		if e.Kind == EventMessage && e.Room == room {
			out = append(out, e.Message)
		}
	}
	return out
}

func (col *collector) count(kind EventKind) int {
	col.mu.Lock()
	defer col.mu.Unlock()
	n := 0
	for _, e := range col.events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// await waits until cond holds on the events received so far.
func (col *collector) await(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-col.wake:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// checkOrder fails if msgs are not strictly increasing in seq within one
// epoch, and returns their texts.
func checkOrder(t testing.TB, msgs []Message) []string {
	t.Helper()
	var texts []string
	for i, m := range msgs {
		if i > 0 && m.Epoch == msgs[i-1].Epoch && m.Seq <= msgs[i-1].Seq {
			t.Fatalf("message %d: seq %d after %d", i, m.Seq, msgs[i-1].Seq)
		}
		texts = append(texts, m.Text)
	}
	return texts
}

func texts(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}
