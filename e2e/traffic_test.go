package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"parley/client"
	"parley/relay"
)

// sendTimeout bounds one Send, retries included: a send without an answer
// after this long counts as unanswered.
const sendTimeout = 90 * time.Second

// user is one simulated person: a resuming client, the rooms it is in, what
// it received and what it sent.
type user struct {
	name  string
	c     *client.Client
	cut   *cutter
	rooms []string

	events chan struct{} // closed when the event goroutine ended

	mu      sync.Mutex // guards the following
	joinPos map[string]uint64
	joinEp  map[string]string
	views   map[string][]client.Message // per room, in arrival order
	resets  map[string]int
	sent    []*sendRecord
	n       int
}

// sendRecord is one Send and its outcome.
type sendRecord struct {
	room, id string
	done     bool
	ack      client.Ack
	err      error
}

// cutter is the clients' NetDial: it keeps their connections so the test
// can cut them as a lost network would.
type cutter struct {
	mu    sync.Mutex
	conns []net.Conn
	hold  bool // refuse new connections, as a network that stays down
}

var errHeld = errors.New("e2e: network held down")

// setHold makes new connections fail (true) or work again (false).
func (c *cutter) setHold(hold bool) {
	c.mu.Lock()
	c.hold = hold
	c.mu.Unlock()
}

func (c *cutter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.mu.Lock()
	hold := c.hold
	c.mu.Unlock()
	if hold {
		return nil, errHeld
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.conns = append(c.conns, nc)
	c.mu.Unlock()
	return nc, nil
}

func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, nc := range c.conns {
		nc.Close()
	}
	c.conns = nil
}

// newUser dials a client to addrs and joins rooms.
func newUser(t *testing.T, name string, addrs, rooms []string) *user {
	t.Helper()
	u := &user{name: name, cut: &cutter{}, rooms: rooms, events: make(chan struct{}),
		joinPos: map[string]uint64{}, joinEp: map[string]string{}, views: map[string][]client.Message{}, resets: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Addrs: addrs, Name: name, NetDial: u.cut.dial,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	u.c = c
	go u.record()
	t.Cleanup(func() {
		c.Close()
		<-u.events
	})
	for _, room := range rooms {
		if err := c.Join(ctx, room); err != nil {
			t.Fatalf("%s: join %s: %v", name, room, err)
		}
		ep, seq, _ := c.Position(room)
		u.mu.Lock()
		u.joinPos[room], u.joinEp[room] = seq, ep
		u.mu.Unlock()
	}
	return u
}

func (u *user) record() {
	defer close(u.events)
	for e := range u.c.Events() {
		u.mu.Lock()
		switch e.Kind {
		case client.EventMessage:
			u.views[e.Room] = append(u.views[e.Room], e.Message)
		case client.EventReset:
			u.resets[e.Room]++
		}
		u.mu.Unlock()
	}
}

// send sends one message to room and records its outcome; it returns when
// the send is answered or gives up.
func (u *user) send(room string) {
	u.mu.Lock()
	u.n++
	rec := &sendRecord{room: room, id: fmt.Sprintf("%s-%d", u.name, u.n)}
	u.sent = append(u.sent, rec)
	u.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
	defer cancel()
	ack, err := u.c.SendID(ctx, room, rec.id, "text of "+rec.id)
	u.mu.Lock()
	rec.done, rec.ack, rec.err = true, ack, err
	u.mu.Unlock()
}

// traffic makes users send at a steady rate until stopped.
type traffic struct {
	users []*user
	stop  chan struct{}
	wg    sync.WaitGroup
}

// startTraffic starts one pacing goroutine per user: every interval (±25%)
// it sends to one of the user's rooms, each send on its own goroutine.
func startTraffic(users []*user, interval time.Duration) *traffic {
	tr := &traffic{users: users, stop: make(chan struct{})}
	for _, u := range users {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for {
				d := interval*3/4 + time.Duration(rand.Int64N(int64(interval/2)+1))
				select {
				case <-tr.stop:
					return
				case <-time.After(d):
				}
				room := u.rooms[rand.IntN(len(u.rooms))]
				tr.wg.Add(1)
				go func() {
					defer tr.wg.Done()
					u.send(room)
				}()
			}
		}()
	}
	return tr
}

// finish stops new sends and waits until every send is answered or gave up.
func (tr *traffic) finish() {
	close(tr.stop)
	tr.wg.Wait()
}

// figures are what a run measured.
type figures struct {
	Sends, Acks, Repeats, Retries, Resent, Orphaned, Unanswered, Failed uint64
	Reconnects, Notices, DupsDropped, Resets                            uint64
	HistoryMessages                                                     int
	HistoryDuplicates                                                   int // a (sender, id) stored more than once
	AckedLost                                                           int // acked but not in history at its seq
	AnsweredElsewhere                                                   int // published by one node, acked by another (after a resend)
	Missed                                                              int // a client's view lacks a message of history after its join
	OutOfOrder                                                          int // a client's view goes back in seq
	SeenTwice                                                           int // a client's view holds a seq twice
	Faults                                                              map[string]int
}

func (f figures) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sends %d, acks %d (repeats %d), retries %d, resent %d, orphaned by a closed connection %d\n",
		f.Sends, f.Acks, f.Repeats, f.Retries, f.Resent, f.Orphaned)
	fmt.Fprintf(&b, "unanswered %d, failed %d; reconnects %d (notices %d), duplicates dropped by clients %d, resets %d\n",
		f.Unanswered, f.Failed, f.Reconnects, f.Notices, f.DupsDropped, f.Resets)
	fmt.Fprintf(&b, "history: %d messages, %d stored twice; acked but lost %d; published by one node, acked by another %d\n",
		f.HistoryMessages, f.HistoryDuplicates, f.AckedLost, f.AnsweredElsewhere)
	fmt.Fprintf(&b, "clients: missed %d, out of order %d, seen twice %d", f.Missed, f.OutOfOrder, f.SeenTwice)
	if len(f.Faults) > 0 {
		kinds := make([]string, 0, len(f.Faults))
		for k := range f.Faults {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		b.WriteString("\nfaults:")
		for _, k := range kinds {
			fmt.Fprintf(&b, " %s %d", k, f.Faults[k])
		}
	}
	return b.String()
}

// losses is every figure that must be zero.
func (f figures) losses() []string {
	var out []string
	for _, c := range []struct {
		name string
		n    int
	}{
		{"unanswered sends", int(f.Unanswered)}, {"failed sends", int(f.Failed)},
		{"messages stored twice", f.HistoryDuplicates}, {"acked messages lost", f.AckedLost},
		{"messages missed by a client", f.Missed}, {"messages out of order", f.OutOfOrder},
		{"messages seen twice", f.SeenTwice},
	} {
		if c.n != 0 {
			out = append(out, fmt.Sprintf("%s: %d", c.name, c.n))
		}
	}
	return out
}

// awaitDelivered waits until every user's view of each of its rooms
// reaches the last seq of history (or the timeout).
func awaitDelivered(users []*user, hist map[string]relay.HistoryResult, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		behind := false
		for _, u := range users {
			u.mu.Lock()
			for _, room := range u.rooms {
				h := hist[room]
				v := u.views[room]
				if h.Position.Seq > u.joinPos[room] && (len(v) == 0 || v[len(v)-1].Seq < h.Position.Seq || v[len(v)-1].Epoch != h.Position.Epoch) {
					behind = true
				}
			}
			u.mu.Unlock()
		}
		if !behind {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// check compares what users sent and saw with history and returns the
// figures. Call it after traffic.finish.
func check(t *testing.T, redisURL string, users []*user, rooms []string) figures {
	t.Helper()
	hist := readHistory(t, redisURL, rooms)
	awaitDelivered(users, hist, 30*time.Second)
	hist = readHistory(t, redisURL, rooms) // unchanged unless a send was still in flight
	var f figures
	type key struct{ room, from, id string }
	stored := map[key][]uint64{}
	publishedBy := map[key]string{}
	for _, room := range rooms {
		h := hist[room]
		f.HistoryMessages += len(h.Messages)
		for _, m := range h.Messages {
			k := key{room, m.From, m.ID}
			stored[k] = append(stored[k], m.Seq)
			publishedBy[k] = m.Node
		}
	}
	for k, seqs := range stored {
		if k.id != "" && len(seqs) > 1 {
			f.HistoryDuplicates += len(seqs) - 1
			if f.HistoryDuplicates <= 5 {
				t.Logf("stored twice: %s in %s by %s at seqs %v", k.id, k.room, k.from, seqs)
			}
		}
	}
	for _, u := range users {
		st := u.c.Stats()
		f.Sends += st.Sends
		f.Acks += st.Acks
		f.Repeats += st.Repeats
		f.Retries += st.Retries
		f.Resent += st.Resent
		f.Orphaned += st.Orphaned
		f.Unanswered += st.Unanswered
		f.Failed += st.Failed
		f.Reconnects += st.Connects - 1
		f.Notices += st.Notices
		f.DupsDropped += st.Duplicates
		f.Resets += st.Resets
		u.mu.Lock()
		for _, rec := range u.sent {
			switch {
			case !rec.done:
				f.Unanswered++ // cannot happen after finish
			case rec.err != nil:
				if !errors.Is(rec.err, context.DeadlineExceeded) {
					t.Logf("%s: send %s: %v", u.name, rec.id, rec.err)
				}
			default:
				seqs := stored[key{rec.room, u.name, rec.id}]
				found := false
				for _, s := range seqs {
					found = found || s == rec.ack.Seq
				}
				if by := publishedBy[key{rec.room, u.name, rec.id}]; found && by != rec.ack.Node {
					f.AnsweredElsewhere++
				}
				if !found {
					f.AckedLost++
					if f.AckedLost <= 5 {
						t.Logf("acked but not in history at its seq: %s in %s acked as %d, stored at %v", rec.id, rec.room, rec.ack.Seq, seqs)
					}
				}
			}
		}
		for _, room := range u.rooms {
			view := u.views[room]
			type pos struct {
				epoch string
				seq   uint64
			}
			seen := map[pos]bool{}
			for i, m := range view {
				if seen[pos{m.Epoch, m.Seq}] {
					f.SeenTwice++
				}
				seen[pos{m.Epoch, m.Seq}] = true
				if i > 0 && m.Epoch == view[i-1].Epoch && m.Seq < view[i-1].Seq {
					f.OutOfOrder++
				}
			}
			h := hist[room]
			missed := 0
			for _, m := range h.Messages {
				if m.Epoch == u.joinEp[room] && m.Seq <= u.joinPos[room] {
					continue
				}
				if !seen[pos{m.Epoch, m.Seq}] {
					missed++
				}
			}
			if missed > 0 {
				t.Logf("%s missed %d of %d messages of %s (joined at %d, %d resets)", u.name, missed, len(h.Messages), room, u.joinPos[room], u.resets[room])
			}
			f.Missed += missed
		}
		u.mu.Unlock()
	}
	return f
}
