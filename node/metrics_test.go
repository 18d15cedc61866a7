package node

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// scrape fetches and parses a node's /metrics.
func scrape(t testing.TB, n *Node) metricSet {
	t.Helper()
	body := adminGet(t, n, "/metrics")
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, trunc(body))
	}
	return metricSet(fams)
}

// adminGet GETs path on n's admin listener and returns the body (status 200 required).
func adminGet(t testing.TB, n *Node, path string) string {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Get("http://" + n.AdminAddr() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v %s", path, resp.StatusCode, err, trunc(string(b)))
	}
	return string(b)
}

type metricSet map[string]*dto.MetricFamily

// value returns the value of the series of family name whose labels include
// labels ("k=v" pairs); 0 if there is none. For a histogram it is the count.
func (ms metricSet) value(name string, labels ...string) float64 {
	f := ms[name]
	if f == nil {
		return 0
	}
	var total float64
next:
	for _, m := range f.Metric {
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			found := false
			for _, lp := range m.Label {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			total += m.Untyped.GetValue()
		}
	}
	return total
}

// TestMetricsCountAScriptedSession scrapes /metrics before and after a
// session and checks that each counter moved by exactly what the session
// did: connections, messages, deliveries, refusals and closes.
func TestMetricsCountAScriptedSession(t *testing.T) {
	n := startNode(t, Config{})
	before := scrape(t, n)

	// Three JSON clients in room "r", one plain client in the lobby.
	var js []*client
	for i := range 3 {
		c := dial(t, n, fmt.Sprintf("/ws?name=u%d", i))
		c.await("welcome")
		c.joinRoom("r")
		js = append(js, c)
	}
	plain := dial(t, n, "/?name=p")
	if e := plain.next(); !strings.HasPrefix(e.text, "connected to node") {
		t.Fatalf("plain greeting %q", e.text)
	}
	// A refused upgrade: a bad name.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws?name=%3Cb%3E"); err == nil {
		t.Fatal("bad name was accepted")
	}
	// Five messages to three members, one plain line to one member.
	const sends = 5
	for i := range sends {
		js[0].send(map[string]any{"type": "send", "room": "r", "text": fmt.Sprint("m", i), "id": fmt.Sprint(i)})
	}
	for _, c := range js {
		for range sends {
			c.await("message")
		}
	}
	plain.sendText("hello")
	if e := plain.next(); e.text != "hello" {
		t.Fatalf("plain echo %q", e.text)
	}
	// Two refused frames: a bad room name, a send to a room not joined.
	js[1].send(map[string]any{"type": "send", "room": "bad room", "text": "x", "id": "b1"})
	if e := js[1].await("error"); e["code"] != "bad_room" {
		t.Fatalf("got %v, want bad_room", e)
	}
	js[1].send(map[string]any{"type": "send", "room": "other", "text": "x", "id": "b2"})
	if e := js[1].await("error"); e["code"] != "not_joined" {
		t.Fatalf("got %v, want not_joined", e)
	}
	// Closes: the server closes a binary sender with 1003; a client
	// closes with 1000 and gets the echo.
	js[2].writeRaw(frame(0x82, []byte("bin")))
	if code := js[2].awaitClose(); code != ws.StatusUnsupportedData {
		t.Fatalf("binary frame: close %d, want 1003", code)
	}
	js[1].writeRaw(frame(0x88, []byte{0x03, 0xe8}))
	if code := js[1].awaitClose(); code != ws.StatusNormalClosure {
		t.Fatalf("client close: echo %d, want 1000", code)
	}
	eventually(t, 5*time.Second, func() error {
		if s := n.Stats(); s.Sessions != 2 {
			return fmt.Errorf("%d sessions, want 2", s.Sessions)
		}
		return nil
	})

	after := scrape(t, n)
	received := 3 + sends + 1 + 2 + 1 // joins, sends, plain line, refused frames, binary frame
	cases := []struct {
		name   string
		labels []string
		delta  float64
	}{
		{"parley_upgrades_accepted_total", nil, 4},
		{"parley_upgrades_refused_total", []string{"reason=name"}, 1},
		{"parley_upgrades_refused_total", []string{"reason=draining"}, 0},
		{"parley_connections", []string{"protocol=json"}, 1},
		{"parley_connections", []string{"protocol=plain"}, 1},
		{"parley_messages_received_total", nil, float64(received)},
		{"parley_messages_published_total", nil, sends + 1},
		{"parley_messages_delivered_total", nil, 3*sends + 1},
		{"parley_frames_refused_total", []string{"code=bad_room"}, 1},
		{"parley_frames_refused_total", []string{"code=not_joined"}, 1},
		{"parley_frames_refused_total", nil, 2},
		{"parley_connections_closed_total", []string{"code=1003", "initiator=server"}, 1},
		{"parley_connections_closed_total", []string{"code=1000", "initiator=client"}, 1},
		{"parley_connections_closed_total", nil, 2},
		{"parley_rooms", nil, 2},
		{"parley_presence_entries", nil, 2}, // u0 in r, p in lobby
		{"parley_room_members", nil, 2},     // two rooms of one member each
		{"parley_draining", nil, 0},
	}
	for _, tc := range cases {
		got := after.value(tc.name, tc.labels...) - before.value(tc.name, tc.labels...)
		if got != tc.delta {
			t.Errorf("%s%v moved by %v, want %v", tc.name, tc.labels, got, tc.delta)
		}
	}
	// Fan-out latency: at most one sample per message (the room's last
	// member), and the session's messages did produce samples.
	if got := after.value("parley_fanout_latency_seconds"); got < 1 || got > sends+1 {
		t.Errorf("fan-out latency samples %v, want 1..%d", got, sends+1)
	}
	// Bus publish calls: one per batch (a room batches sends that queue
	// up while one batch is in flight).
	if got := after.value("parley_bus_publish_duration_seconds") - before.value("parley_bus_publish_duration_seconds"); got < 2 || got > sends+1 {
		t.Errorf("bus publish samples %v, want 2..%d", got, sends+1)
	}
	// The same counters as /debug/stats.
	st := n.Stats()
	if float64(st.Received) != after.value("parley_messages_received_total") ||
		float64(st.Deliveries) != after.value("parley_messages_delivered_total") {
		t.Errorf("/debug/stats and /metrics disagree: %+v", st)
	}
	for _, fam := range []string{"go_goroutines", "process_resident_memory_bytes", "parley_node_info"} {
		if after[fam] == nil {
			t.Errorf("no %s in /metrics", fam)
		}
	}
	checkNoHighCardinality(t, after)
}

// checkNoHighCardinality fails if a series carries a room, user or
// address label.
func checkNoHighCardinality(t *testing.T, ms metricSet) {
	t.Helper()
	banned := map[string]bool{"room": true, "user": true, "name": true, "session": true,
		"remote": true, "addr": true, "address": true, "ip": true}
	for name, f := range ms {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if banned[l.GetName()] {
					t.Errorf("%s has a %q label (%s)", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}

// TestMetricsDraining: parley_draining turns 1 and refused upgrades are
// counted under "draining" once the node drains.
func TestMetricsDraining(t *testing.T) {
	n := startNode(t, Config{ShutdownGrace: 10 * time.Second, CloseTimeout: 5 * time.Second})
	// A client that reads nothing and never answers the close: the node
	// waits CloseTimeout for it, long enough to scrape it draining.
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	mute, br, _, err := ws.Dial(dctx, "ws://"+n.Addr()+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	// Its welcome says it is registered (the 101 goes out before that).
	var r io.Reader = mute
	if br != nil {
		r = io.MultiReader(br, mute)
	}
	mute.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := wsutil.ReadServerText(struct {
		io.Reader
		io.Writer
	}{r, mute}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Shutdown(context.Background()) }()
	eventually(t, 5*time.Second, func() error {
		if !n.Draining() {
			return errNotYet
		}
		return nil
	})
	ms := scrape(t, n)
	if v := ms.value("parley_draining"); v != 1 {
		t.Errorf("parley_draining %v while draining", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws"); err == nil {
		t.Fatal("upgrade accepted while draining")
	}
	if v := scrape(t, n).value("parley_upgrades_refused_total", "reason=draining"); v != 1 {
		t.Errorf("refused for draining: %v, want 1", v)
	}
	mute.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
