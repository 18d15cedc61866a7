package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"

	"parley/auth"
	"parley/node"
	"parley/relay"
	"parley/relay/redistest"
)

// TestSendAndReceive: two clients in a room; one sends pipelined messages:
// each is acked with its own seq, and both clients receive all of them in
// seq order, once.
func TestSendAndReceive(t *testing.T) {
	n := startNode(t, node.Config{})
	a := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "ann"})
	b := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "bob"})
	ca, cb := collect(t, a), collect(t, b)
	join(t, a, "lobby")
	join(t, b, "lobby")
	const total = 200
	want := texts("m", total)
	acks := make([]Ack, total)
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for i := range want {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ack, err := a.Send(ctxT(t, 10*time.Second), "lobby", want[i])
			if err != nil {
				errs <- err
			}
			acks[i] = ack
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seqs := map[uint64]bool{}
	for _, ack := range acks {
		if ack.Seq == 0 || seqs[ack.Seq] || ack.Room != "lobby" || ack.Repeat {
			t.Fatalf("ack %+v: zero, repeated or marked repeat", ack)
		}
		seqs[ack.Seq] = true
	}
	for name, col := range map[string]*collector{"ann": ca, "bob": cb} {
		col.await(t, 10*time.Second, name+"'s messages", func() bool { return len(col.messages("lobby")) >= total })
		got := checkOrder(t, col.messages("lobby"))
		slices.Sort(got)
		w := slices.Clone(want)
		slices.Sort(w)
		if !slices.Equal(got, w) {
			t.Fatalf("%s received %d messages, not the %d sent", name, len(got), total)
		}
	}
	if st := a.Stats(); st.Sends != total || st.Acks != total || st.Unanswered != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestResumeAfterLostConnection: the network under a client is cut while
// another client sends; it reconnects by itself, rejoins with since, and
// receives every message once, in order.
func TestResumeAfterLostConnection(t *testing.T) {
	n := startNode(t, node.Config{})
	var cut cutter
	a := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "ann", NetDial: cut.dial})
	b := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "bob"})
	ca := collect(t, a)
	join(t, a, "r")
	join(t, b, "r")
	const total = 60
	cuts := 0
	for i, text := range texts("m", total) {
		switch i % 15 {
		case 5:
			cut.cut()
			cuts++
		case 10:
			ca.await(t, 10*time.Second, "the reconnect", func() bool { return ca.count(EventReconnected) == cuts })
		}
		if _, err := b.Send(ctxT(t, 10*time.Second), "r", text); err != nil {
			t.Fatal(err)
		}
	}
	ca.await(t, 15*time.Second, "every message after the cuts", func() bool { return len(ca.messages("r")) >= total })
	got := checkOrder(t, ca.messages("r"))
	if !slices.Equal(got, texts("m", total)) {
		t.Fatalf("received %v", got)
	}
	if ca.count(EventReconnected) != 4 || ca.count(EventReset) != 0 || cut.dialCount() != 5 {
		t.Fatalf("%d reconnected, %d reset events, %d dials; want 4, 0, 5", ca.count(EventReconnected), ca.count(EventReset), cut.dialCount())
	}
}

// TestUnansweredSendsResentAfterCut: sends written just before the network
// goes are sent again with their ids on the next connection and all get an
// answer; every acked seq reaches a reader once.
func TestUnansweredSendsResentAfterCut(t *testing.T) {
	n := startNode(t, node.Config{})
	var cut cutter
	a := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "ann", NetDial: cut.dial})
	b := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "bob"})
	cb := collect(t, b)
	join(t, a, "r")
	join(t, b, "r")
	const total = 100
	acks := make(chan Ack, total)
	var wg sync.WaitGroup
	for _, text := range texts("m", total) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ack, err := a.Send(ctxT(t, 20*time.Second), "r", text)
			if err != nil {
				t.Errorf("send %s: %v", text, err)
				return
			}
			acks <- ack
		}()
	}
	cut.cut()
	wg.Wait()
	close(acks)
	acked := map[uint64]bool{}
	for ack := range acks {
		acked[ack.Seq] = true
	}
	if len(acked) != total {
		t.Fatalf("%d distinct acked seqs for %d sends", len(acked), total)
	}
	cb.await(t, 10*time.Second, "every acked message at the reader", func() bool {
		got := 0
		for _, m := range cb.messages("r") {
			if acked[m.Seq] {
				got++
			}
		}
		return got == total
	})
	got := checkOrder(t, cb.messages("r"))
	slices.Sort(got)
	if want := texts("m", total); !slices.Equal(got, sortedCopy(want)) {
		t.Fatalf("the reader got %d messages, not each of the %d once (a resend published twice?)", len(got), total)
	}
	if st := a.Stats(); st.Unanswered != 0 || st.Acks != total {
		t.Fatalf("stats %+v", st)
	}
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// gate is a NetDial whose connections stop reading while it is closed, as
// a client too slow to read would.
type gate struct {
	mu   sync.Mutex
	open chan struct{} // closed while reads may proceed
}

func newGate() *gate {
	g := &gate{open: make(chan struct{})}
	close(g.open)
	return g
}

func (g *gate) block() {
	g.mu.Lock()
	g.open = make(chan struct{})
	g.mu.Unlock()
}

func (g *gate) unblock() {
	g.mu.Lock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
	g.mu.Unlock()
}

func (g *gate) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return gatedConn{Conn: nc, g: g}, nil
}

type gatedConn struct {
	net.Conn
	g *gate
}

func (c gatedConn) Read(p []byte) (int, error) {
	c.g.mu.Lock()
	open := c.g.open
	c.g.mu.Unlock()
	<-open
	return c.Conn.Read(p)
}

// TestResumeAfterSlowConsumerKick: a client that stops reading is kicked by
// the node (4008, or the socket closed under a full queue); once it reads
// again it reconnects, resumes with since and gets every message once.
func TestResumeAfterSlowConsumerKick(t *testing.T) {
	// History must hold everything sent while the client is stalled (more
	// than the sockets' buffers), or the resume is rightly not recovered.
	bus := relay.NewMemory(relay.MemoryConfig{HistoryMaxBytes: 64 << 20})
	n := startNode(t, node.Config{Broker: bus, MaxQueueBytes: 256 << 10, MaxQueueFrames: 1024, CloseTimeout: 200 * time.Millisecond})
	g := newGate()
	a := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "slow", NetDial: g.dial})
	b := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "fast"})
	ca := collect(t, a)
	join(t, a, "r")
	join(t, b, "r")
	g.block()
	// Send until the node kicks the stalled client: what its replay then
	// holds (the queue it dropped) fits in the queue cap.
	body := strings.Repeat("x", 16<<10)
	sent := 0
	for ; n.Stats().SlowKicks == 0; sent++ {
		if sent == 5000 {
			t.Fatal("5000 messages of 16 KiB and the stalled client was not kicked")
		}
		if _, err := b.Send(ctxT(t, 10*time.Second), "r", fmt.Sprintf("%04d %s", sent, body)); err != nil {
			t.Fatal(err)
		}
	}
	g.unblock()
	ca.await(t, 20*time.Second, "every message after the kick", func() bool {
		return len(ca.messages("r")) >= sent || ca.count(EventReset) > 0
	})
	got := checkOrder(t, ca.messages("r"))
	for i, text := range got {
		if !strings.HasPrefix(text, fmt.Sprintf("%04d ", i)) {
			t.Fatalf("message %d is %.5q", i, text)
		}
	}
	if len(got) != sent || ca.count(EventDisconnected) == 0 || ca.count(EventReconnected) == 0 || ca.count(EventReset) > 0 {
		t.Fatalf("%d messages of %d, %d disconnects, %d reconnects, %d resets: the slow client was not cut and resumed",
			len(got), sent, ca.count(EventDisconnected), ca.count(EventReconnected), ca.count(EventReset))
	}
	t.Logf("%d messages of 16 KiB before the kick; %d reconnects", sent, ca.count(EventReconnected))
}

// TestDrainMovesToTheNextNode: two nodes on one Redis; the first drains.
// Its client gets reconnect and 1001, moves to the second node, rejoins
// with since, and neither loses nor repeats a message; sends keep working.
func TestDrainMovesToTheNextNode(t *testing.T) {
	r := redistest.Start(t)
	n1 := startNode(t, node.Config{NodeID: "d1", Broker: redisBroker(t, r.URL(), "d1"), ReconnectAfter: 50 * time.Millisecond})
	n2 := startNode(t, node.Config{NodeID: "d2", Broker: redisBroker(t, r.URL(), "d2")})
	a := newClient(t, Config{Addrs: []string{n1.Addr(), n2.Addr()}, Name: "ann"})
	b := newClient(t, Config{Addrs: []string{n2.Addr()}, Name: "bob"})
	ca := collect(t, a)
	join(t, a, "r")
	join(t, b, "r")
	if a.Node() != "d1" {
		t.Fatalf("client on %q, want d1", a.Node())
	}
	for _, text := range texts("before", 10) {
		if _, err := b.Send(ctxT(t, 10*time.Second), "r", text); err != nil {
			t.Fatal(err)
		}
	}
	ca.await(t, 10*time.Second, "messages before the drain", func() bool { return len(ca.messages("r")) == 10 })
	done := make(chan struct{})
	go func() {
		defer close(done)
		shutdown(t, n1)
	}()
	for _, text := range texts("during", 10) {
		if _, err := b.Send(ctxT(t, 10*time.Second), "r", text); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	if _, err := a.Send(ctxT(t, 10*time.Second), "r", "from-ann"); err != nil {
		t.Fatalf("send after the drain: %v", err)
	}
	ca.await(t, 10*time.Second, "every message after the drain", func() bool { return len(ca.messages("r")) == 21 })
	got := checkOrder(t, ca.messages("r"))
	want := append(append(texts("before", 10), texts("during", 10)...), "from-ann")
	if !slices.Equal(got, want) {
		t.Fatalf("received %v", got)
	}
	if a.Node() != "d2" || a.Stats().Notices != 1 {
		t.Fatalf("client on %q with %d notices, want d2 and 1", a.Node(), a.Stats().Notices)
	}
}

// TestUnavailableRetriedWithSameID: Redis is down when the client sends;
// the node answers unavailable, the client retries the same id until Redis
// is back, and the message is acked and in history once.
func TestUnavailableRetriedWithSameID(t *testing.T) {
	r := redistest.Start(t)
	n := startNode(t, node.Config{Broker: redisBroker(t, r.URL(), "u1")})
	a := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "ann"})
	join(t, a, "r")
	if _, err := a.Send(ctxT(t, 10*time.Second), "r", "first"); err != nil {
		t.Fatal(err)
	}
	r.Kill()
	res := make(chan error, 1)
	go func() {
		_, err := a.SendID(ctxT(t, 60*time.Second), "r", "retry-me", "second")
		res <- err
	}()
	// Wait until the node has refused it at least once.
	deadline := time.Now().Add(20 * time.Second)
	for a.Stats().Retries == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the send was never refused while Redis was down")
		}
		time.Sleep(10 * time.Millisecond) // polling the client's counter
	}
	r.Start(t)
	if err := <-res; err != nil {
		t.Fatalf("send after Redis came back: %v", err)
	}
	hist, err := a.History(ctxT(t, 10*time.Second), "r", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	n2 := 0
	for _, m := range hist {
		if m.ID == "retry-me" {
			n2++
		}
	}
	if n2 != 1 {
		t.Fatalf("history holds the retried message %d times: %+v", n2, hist)
	}
}

// TestRefusals: what the node (or what stands in its place) refuses ends
// the client with a *RefusedError instead of a reconnect loop.
func TestRefusals(t *testing.T) {
	n := startNode(t, node.Config{})
	forbidden := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "token expired", http.StatusForbidden)
	})
	policy := wsServer(t, func(nc net.Conn) {
		writeServerFrame(nc, ws.OpText, []byte(`{"type":"welcome","node":"x","session":"x-1","name":"ann"}`))
		writeServerFrame(nc, ws.OpClose, ws.NewCloseFrameBody(ws.StatusPolicyViolation, "auth revoked"))
	})
	cases := []struct {
		name   string
		cfg    Config
		status int
		close  int
		atDial bool
		reason string
	}{
		{name: "unknown path", cfg: Config{Addrs: []string{"ws://" + n.Addr() + "/nope"}}, status: 404, atDial: true},
		{name: "bad name", cfg: Config{Addrs: []string{n.Addr()}, Name: "<script>"}, atDial: true, reason: "bad name"},
		{name: "HTTP 403", cfg: Config{Addrs: []string{forbidden}}, status: 403, atDial: true, reason: "token expired"},
		{name: "close 1008 after welcome", cfg: Config{Addrs: []string{policy}}, close: 1008, reason: "auth revoked"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.MinBackoff, tc.cfg.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
			c, err := Dial(ctxT(t, 5*time.Second), tc.cfg)
			if !tc.atDial {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.Close()
				select {
				case <-c.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("the client did not end after the refusal")
				}
				err = c.Err()
				if _, serr := c.Send(ctxT(t, time.Second), "r", "x"); !errors.Is(serr, err) {
					t.Fatalf("send after the refusal: %v, want %v", serr, err)
				}
			}
			var re *RefusedError
			if !errors.As(err, &re) {
				t.Fatalf("got %v, want a *RefusedError", err)
			}
			if re.Status != tc.status || re.CloseCode != tc.close || !strings.Contains(re.Reason, tc.reason) {
				t.Fatalf("refusal %+v, want status %d close %d reason %q", re, tc.status, tc.close, tc.reason)
			}
		})
	}
}

// TestJoinAndSendErrors: errors the client does not retry reach the caller.
func TestJoinAndSendErrors(t *testing.T) {
	n := startNode(t, node.Config{MaxRoomsPerConn: 1})
	a := newClient(t, Config{Addrs: []string{n.Addr()}, MaxMessageSize: 1000})
	join(t, a, "one")
	var se *ServerError
	if err := a.Join(ctxT(t, 5*time.Second), "two"); !errors.As(err, &se) || se.Code != "too_many_rooms" {
		t.Fatalf("second join: %v, want too_many_rooms", err)
	}
	if err := a.Join(ctxT(t, 5*time.Second), "bad room"); err == nil {
		t.Fatal("a bad room name was accepted")
	}
	if _, err := a.Send(ctxT(t, 5*time.Second), "one", strings.Repeat("x", 1000)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("large send: %v, want ErrTooLarge", err)
	}
	if _, err := a.Send(ctxT(t, 5*time.Second), "elsewhere", "x"); !errors.As(err, &se) || se.Code != "not_joined" {
		t.Fatalf("send to a room not joined: %v, want not_joined", err)
	}
	// Without a configured limit, the node's (from welcome) applies.
	n2 := startNode(t, node.Config{NodeID: "c2", MaxMessageSize: 2000})
	b := newClient(t, Config{Addrs: []string{n2.Addr()}})
	join(t, b, "one")
	if _, err := b.Send(ctxT(t, 5*time.Second), "one", strings.Repeat("x", 2000)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("send over the node's limit: %v, want ErrTooLarge", err)
	}
	if _, err := b.Send(ctxT(t, 5*time.Second), "one", strings.Repeat("x", 1800)); err != nil {
		t.Fatalf("send under the node's limit: %v", err)
	}
	if err := a.Leave(ctxT(t, 5*time.Second), "one"); err != nil {
		t.Fatal(err)
	}
	if err := a.Join(ctxT(t, 5*time.Second), "two"); err != nil {
		t.Fatalf("join after leave: %v", err)
	}
}

// TestCloseFailsWaitingCalls: a send waiting for a node that never comes
// back ends with ErrClosed when the client is closed.
func TestCloseFailsWaitingCalls(t *testing.T) {
	n, err := node.New(node.Config{Listen: "127.0.0.1:0", Admin: "-", ShutdownGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	a := newClient(t, Config{Addrs: []string{n.Addr()}})
	join(t, a, "r")
	shutdown(t, n)
	res := make(chan error, 1)
	go func() {
		_, err := a.Send(context.Background(), "r", "never")
		res <- err
	}()
	a.Close()
	if err := <-res; !errors.Is(err, ErrClosed) {
		t.Fatalf("send: %v, want ErrClosed", err)
	}
	timeout := time.After(5 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-a.Events(): // what was buffered, then closed
		case <-timeout:
			t.Fatal("Events not closed")
		}
	}
}

// httpServer serves h on a free 127.0.0.1 port and returns its address.
func httpServer(t testing.TB, h http.HandlerFunc) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{Handler: h}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ln.Addr().String()
}

// wsServer accepts WebSocket upgrades on a free port and runs serve on each
// connection (a stand-in for node behaviour no node shows yet).
func wsServer(t testing.TB, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := ws.Upgrade(nc); err != nil {
					return
				}
				serve(nc)
				// Wait for the client's close reply.
				for {
					h, err := ws.ReadHeader(nc)
					if err != nil {
						return
					}
					if _, err := io.CopyN(io.Discard, nc, h.Length); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func writeServerFrame(nc net.Conn, op ws.OpCode, p []byte) {
	if err := ws.WriteFrame(nc, ws.NewFrame(op, true, p)); err != nil {
		panic(fmt.Sprintf("write: %v", err))
	}
}

// TestTokenAuth: with token auth on the node, the client authenticates with
// its first frame; a bad token is a refusal; with TokenFunc an expired
// token (close 1008 "token expired") is replaced on a new connection and
// the rooms resume.
func TestTokenAuth(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	v, err := auth.New(auth.Config{HS256Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	sign := func(sub string, ttl time.Duration) string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix()}).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	n := startNode(t, node.Config{Auth: v})

	if _, err := Dial(ctxT(t, 5*time.Second), Config{Addrs: []string{n.Addr()}, Token: sign("eve", -time.Minute)}); err == nil {
		t.Fatal("an expired token was accepted")
	} else if re := (*RefusedError)(nil); !errors.As(err, &re) || re.CloseCode != 1008 {
		t.Fatalf("expired token: %v, want a refusal with 1008", err)
	}

	var mu sync.Mutex
	issued := 0
	a := newClient(t, Config{Addrs: []string{n.Addr()}, TokenFunc: func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		issued++
		return sign("ann", 2*time.Second), nil // exp has a one-second grain: lives 1-2s
	}})
	ca := collect(t, a)
	b := newClient(t, Config{Addrs: []string{n.Addr()}, Token: sign("bob", time.Hour)})
	join(t, a, "r")
	join(t, b, "r")
	if a.Name() != "ann" {
		t.Fatalf("name %q, want the token's ann", a.Name())
	}
	ca.await(t, 15*time.Second, "a reconnect after the token expired", func() bool { return ca.count(EventReconnected) >= 1 })
	for _, text := range texts("m", 5) {
		if _, err := b.Send(ctxT(t, 10*time.Second), "r", text); err != nil {
			t.Fatal(err)
		}
	}
	ca.await(t, 10*time.Second, "the messages after the new token", func() bool { return len(ca.messages("r")) == 5 })
	if a.Err() != nil {
		t.Fatalf("client ended: %v", a.Err())
	}
	mu.Lock()
	defer mu.Unlock()
	if issued < 2 {
		t.Fatalf("%d tokens issued, want a fresh one per connection", issued)
	}
}

// TestPresenceListsMembers: Presence answers with every member of the room,
// and one who leaves is no longer listed once the bus has recorded it.
func TestPresenceListsMembers(t *testing.T) {
	n := startNode(t, node.Config{})
	a := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "ann"})
	b := newClient(t, Config{Addrs: []string{n.Addr()}, Name: "bob"})
	join(t, a, "lobby")
	join(t, b, "lobby")
	names := func() []string {
		list, err := a.Presence(ctxT(t, 10*time.Second), "lobby")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range list {
			out = append(out, m.Name)
		}
		slices.Sort(out)
		return out
	}
	if got := names(); !slices.Equal(got, []string{"ann", "bob"}) {
		t.Fatalf("presence %v, want [ann bob]", got)
	}
	if err := b.Leave(ctxT(t, 10*time.Second), "lobby"); err != nil {
		t.Fatal(err)
	}
	// The bus records the departure after left is sent: poll for it.
	deadline := time.Now().Add(10 * time.Second)
	for got := names(); !slices.Equal(got, []string{"ann"}); got = names() {
		if time.Now().After(deadline) {
			t.Fatalf("presence after bob left %v, want [ann]", got)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}
