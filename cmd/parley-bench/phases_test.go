package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestStormCountsPresenceAndKicks(t *testing.T) {
	tests := []struct {
		name, prefix  string
		clients       int
		wantPresence  int64
		wantKicked    int
		wantConnected int
	}{
		{"every join announced to every member", "r", 30, 30 * 29 / 2, 0, 30},
		{"every member kicked with 4008", "kick", 12, -1, 12, 12}, // kicked members leave: fewer announcements
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := startChatServer(t)
			tg, err := newTarget("ws://" + srv.addr() + "/ws")
			if err != nil {
				t.Fatal(err)
			}
			res, err := runStorm(fanoutConfig{
				targets: []target{tg}, proto: "json", roomPrefix: tc.prefix, clients: tc.clients, rooms: 1,
				duration: time.Second, size: 64, drain: 10 * time.Second, quiet: 300 * time.Millisecond,
				connectTimeout: 5 * time.Second, concurrency: 8, sources: 4,
			})
			if err != nil {
				t.Fatalf("runStorm: %v", err)
			}
			if tc.wantPresence < 0 {
				tc.wantPresence = res.PresenceFrames
			}
			if res.Mode != "storm" || res.Connected != tc.wantConnected || res.PresenceFrames != tc.wantPresence ||
				res.Closes["4008"] != tc.wantKicked {
				t.Fatalf("connected %d presence %d closes %v; want %d, %d, %d 4008s (%s)",
					res.Connected, res.PresenceFrames, res.Closes, tc.wantConnected, tc.wantPresence, tc.wantKicked, res.FirstError)
			}
			if res.JoinWait.Count != int64(tc.clients) || res.JoinS <= 0 || res.StormS < res.JoinS {
				t.Fatalf("join times %+v over %.3f s", res.JoinWait, res.JoinS)
			}
			var out bytes.Buffer
			printStorm(&out, res)
			if !strings.Contains(out.String(), "every join to every member") {
				t.Fatalf("text report: %s", out.String())
			}
			b, _ := json.Marshal(res)
			md, err := renderMarkdown([]record{{System: "parley", Scenario: "storm", Run: 1, Result: b}}, "m", "")
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("| **%d** | %d | **%d** |", res.PresenceFrames, stormAnnouncements(tc.clients), tc.wantKicked)
			if !strings.Contains(md, want) {
				t.Fatalf("storm table lacks %q:\n%s", want, md)
			}
		})
	}
	if _, err := runStorm(fanoutConfig{targets: []target{{raw: "ws://127.0.0.1:1/"}}, proto: "plain", clients: 2, rooms: 1, duration: time.Second, size: 64}); err == nil {
		t.Fatal("storm on the plain protocol: no error")
	}
}

// maxMembers is the most members each room of the test server had at once.
func (s *chatServer) maxMembers() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.peak {
		out[k] = v
	}
	return out
}

func TestIdleJoined(t *testing.T) {
	tests := []struct {
		name, path string
		join       *joinSpec
		wantRooms  map[string]int // test server membership after the run ("/" has no json rooms)
		wantJoin   string
	}{
		{"json one room", "/ws", &joinSpec{proto: "json", rooms: 1, prefix: "x"}, map[string]int{"x0": 24}, "1 room"},
		{"json three rooms", "/ws", &joinSpec{proto: "json", rooms: 3, prefix: "x"}, map[string]int{"x0": 8, "x1": 8, "x2": 8}, "3 rooms"},
		{"plain lobby", "/", &joinSpec{proto: "plain"}, map[string]int{}, "lobby"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := startChatServer(t)
			tg, err := newTarget("ws://" + srv.addr() + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			res, err := runIdle(idleConfig{
				targets: []target{tg}, steps: []int{6, 24}, concurrency: 4, sources: 3, perProcess: 1000,
				connectTimeout: 5 * time.Second, hold0: true, join: tc.join, readEvery: 5 * time.Millisecond,
			}, "idle")
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != 0 || res.FinalAlive != 24 || res.Join != tc.wantJoin {
				t.Fatalf("errors %d alive %d join %q (%s)", res.Errors, res.FinalAlive, res.Join, res.FirstError)
			}
			// Every connection was in its room while held (the run closes them at the end).
			if got := srv.maxMembers(); !mapsEqual(got, tc.wantRooms) {
				t.Fatalf("members at most %v, want %v", got, tc.wantRooms)
			}
		})
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestIdleJoinOutcomes: a refused join is a connect error that says why; a
// connection kicked right after its joined frame did join (the count of
// survivors shows the kick).
func TestIdleJoinOutcomes(t *testing.T) {
	tests := []struct {
		prefix     string
		wantErrors int
		wantFirst  string
	}{
		{"deny", 4, "join refused"},
		{"kick", 0, ""},
		{"ok", 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.prefix, func(t *testing.T) {
			srv := startChatServer(t)
			tg, err := newTarget("ws://" + srv.addr() + "/ws")
			if err != nil {
				t.Fatal(err)
			}
			res, err := runIdle(idleConfig{
				targets: []target{tg}, steps: []int{4}, concurrency: 2, sources: 2, perProcess: 1000,
				connectTimeout: 5 * time.Second, join: &joinSpec{proto: "json", rooms: 1, prefix: tc.prefix},
			}, "connect")
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != tc.wantErrors || !strings.Contains(res.FirstError, tc.wantFirst) {
				t.Fatalf("errors %d (%q), want %d (%q)", res.Errors, res.FirstError, tc.wantErrors, tc.wantFirst)
			}
		})
	}
	if got := closeText([]byte{0x0f, 0xa8, 's'}); got != "4008 s" {
		t.Fatalf("closeText = %q", got)
	}
}

// TestConnectOverWorkers: --workers spreads the connections over worker
// processes (the test binary re-executed), and the counts add up.
func TestConnectOverWorkers(t *testing.T) {
	srv := startChatServer(t)
	var out bytes.Buffer
	err := run([]string{"connect", "--url", "ws://" + srv.addr() + "/ws", "--steps", "10,40", "--workers", "2",
		"--concurrency", "8", "--sources", "4", "--join", "--rooms", "2", "--json"}, nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	var res idleResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("decode %q: %v", out.String(), err)
	}
	if res.Processes != 2 || res.Errors != 0 || len(res.Steps) != 2 || res.Steps[1].Opened != 40 || res.ConnectRate <= 0 || res.Join != "2 rooms" {
		t.Fatalf("result %+v", res)
	}
	// The workers join as told: into refused rooms, every connection fails.
	out.Reset()
	err = run([]string{"connect", "--url", "ws://" + srv.addr() + "/ws", "--steps", "10", "--workers", "2",
		"--join", "--room-prefix", "deny", "--json"}, nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.Errors != 10 || !strings.Contains(res.FirstError, "join refused") {
		t.Fatalf("deny: errors %d (%q), want 10 refusals", res.Errors, res.FirstError)
	}
}

func TestPace(t *testing.T) {
	var got []int64
	start := time.Now()
	pace(start, 1000, 50*time.Millisecond, func(i int64) { got = append(got, i) })
	if len(got) != 50 {
		t.Fatalf("issued %d, want 50", len(got))
	}
	for i, v := range got {
		if v != int64(i) {
			t.Fatalf("issue %d was %d: out of order", i, v)
		}
	}
	// Far behind (a stalled machine): everything is issued once, at once.
	got = got[:0]
	pace(start.Add(-time.Hour), 100, time.Second, func(i int64) { got = append(got, i) })
	if len(got) != 100 {
		t.Fatalf("behind: issued %d, want 100", len(got))
	}
}

func TestShareOf(t *testing.T) {
	for _, tc := range []struct{ total, n int }{{10, 3}, {15000, 2}, {1, 4}, {20001, 7}} {
		sum := 0
		for i := range tc.n {
			s := shareOf(tc.total, i, tc.n)
			if s < tc.total/tc.n || s > tc.total/tc.n+1 {
				t.Fatalf("shareOf(%d, %d, %d) = %d: not an even share", tc.total, i, tc.n, s)
			}
			sum += s
		}
		if sum != tc.total {
			t.Fatalf("shares of %d over %d sum to %d", tc.total, tc.n, sum)
		}
	}
}

func TestSlopes(t *testing.T) {
	step := func(target, alive int, rssKiB, heapKiB int64) idleStep {
		return idleStep{Target: target, Alive: alive, NodeRSS: rssKiB << 10, NodeHeapInuse: heapKiB << 10}
	}
	tests := []struct {
		name  string
		steps []idleStep
		want  []slope
	}{
		{"two steps", []idleStep{step(2000, 2000, 10000, 5000), step(15000, 15000, 29500, 18000)},
			[]slope{{From: 2000, To: 15000, KiBPerConn: 1.5, HeapKiB: 1}}},
		{"three steps add first → last", []idleStep{step(1, 1000, 1000, 0), step(2, 2000, 3000, 0), step(3, 3000, 4000, 0)},
			[]slope{{1, 2, 2, 0}, {2, 3, 1, 0}, {1, 3, 1.5, 0}}},
		{"no probe", []idleStep{{Target: 1, Alive: 10}, {Target: 2, Alive: 20}}, nil},
		{"connections lost", []idleStep{step(1, 1000, 1000, 0), step(2, 900, 3000, 0)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := slopes(tc.steps)
			if len(got) != len(tc.want) {
				t.Fatalf("slopes %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("slope %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestLossOf(t *testing.T) {
	for _, tc := range []struct {
		exp, recv, loss int64
		pct             float64
	}{{1000, 1000, 0, 0}, {1000, 900, 100, 10}, {0, 0, 0, 0}, {10, 12, 0, 0}} {
		loss, pct := lossOf(tc.exp, tc.recv)
		if loss != tc.loss || pct != tc.pct {
			t.Errorf("lossOf(%d, %d) = %d, %g; want %d, %g", tc.exp, tc.recv, loss, pct, tc.loss, tc.pct)
		}
	}
}

// TestLocalSender: with senders 0…S-1 and client i in room i mod R, a
// receiver tracks exactly its room's senders, at dense indices.
func TestLocalSender(t *testing.T) {
	for _, tc := range []struct{ clients, rooms, senders int }{{10000, 1000, 1000}, {1000, 1, 100}, {20, 3, 7}} {
		cfg := &fanoutConfig{clients: tc.clients, rooms: tc.rooms, senders: tc.senders}
		st := &fanState{cfg: cfg}
		for room := range tc.rooms {
			seen := map[int]bool{}
			for s := range tc.senders {
				l := st.localSender(room, s)
				if (s%tc.rooms == room) != (l >= 0) {
					t.Fatalf("%+v: sender %d in room %d → %d", tc, s, room, l)
				}
				if l >= 0 {
					if l >= cfg.sendersPerRoom() || seen[l] {
						t.Fatalf("%+v: sender %d → local %d: out of range or taken", tc, s, l)
					}
					seen[l] = true
				}
			}
		}
	}
}

// fanRecord is a recorded fanout run for the report tests.
func fanRecord(t *testing.T, system, scenario string, run int, p50, p99, dps float64) record {
	t.Helper()
	b, err := json.Marshal(&fanoutResult{Mode: "fanout", Proto: "plain", Clients: 1000, Rooms: 1, Senders: 100, Rate: 1000,
		DurationS: 10, DeliveriesPS: dps, Latency: latencySummary{P50: p50, P90: p99, P99: p99, P999: p99, Max: p99}})
	if err != nil {
		t.Fatal(err)
	}
	return record{System: system, Scenario: scenario, Run: run, Cmd: "parley-bench fanout", Result: b}
}

func connectRecord(t *testing.T, system string, run int, rate float64) record {
	t.Helper()
	b, err := json.Marshal(&idleResult{Mode: "connect", Processes: 1, ConnectRate: rate,
		Steps: []idleStep{{Target: 10000, Opened: 10000, Rate: rate}}})
	if err != nil {
		t.Fatal(err)
	}
	return record{System: system, Scenario: "connect", Run: run, Cmd: "parley-bench connect", Result: b}
}

func TestReportRatiosToTheFloor(t *testing.T) {
	recs := []record{
		// Medians: floor p50 8, p99 20, 1 M/s; parley p50 40, p99 160, 0.5 M/s.
		fanRecord(t, "floor", "fanout-1000", 1, 7, 24, 1e6), fanRecord(t, "floor", "fanout-1000", 2, 8, 20, 0.9e6),
		fanRecord(t, "floor", "fanout-1000", 3, 9, 18, 1.1e6),
		fanRecord(t, "parley", "fanout-1000", 1, 40, 160, 0.5e6), fanRecord(t, "parley", "fanout-1000", 2, 52, 200, 0.4e6),
		fanRecord(t, "parley", "fanout-1000", 3, 38, 100, 0.6e6),
		fanRecord(t, "baseline", "fanout-100", 1, 3000, 9000, 6e4), // no floor run in this scenario
		connectRecord(t, "floor", 1, 20000), connectRecord(t, "parley", 1, 9000),
	}
	md, err := renderMarkdown(recs, "test machine", "")
	if err != nil {
		t.Fatal(err)
	}
	row := func(system, scenario string) string {
		for line := range strings.Lines(md) {
			if strings.HasPrefix(line, "| "+system+" |") && (scenario == "" || strings.Contains(line, scenario)) {
				return line
			}
		}
		t.Fatalf("no %s row in:\n%s", system, md)
		return ""
	}
	parley := row("parley", "plain")
	for _, want := range []string{"40 ms (5.0×)", "**160 ms (8.0×)**", "500.0 k (0.5×)"} {
		if !strings.Contains(parley, want) {
			t.Errorf("parley row lacks %q:\n%s", want, parley)
		}
	}
	if floor := row("floor", "plain"); strings.Contains(floor, "×") {
		t.Errorf("the floor's own row has a ratio:\n%s", floor)
	}
	if base := row("baseline", "plain"); strings.Contains(base, "×") {
		t.Errorf("a scenario the floor did not run has a ratio:\n%s", base)
	}
	if c := row("parley", "connect"); !strings.Contains(c, "**9000** (0.5×)") {
		t.Errorf("connect row lacks its ratio:\n%s", c)
	}

	// In a cross-node scenario the floor runs alone: its row goes to the
	// cross-node table all the same, and the nodes' figures get its ratio.
	cross := fanRecord(t, "parley", "cross-1000", 1, 30, 90, 1e6)
	var f fanoutResult
	if err := json.Unmarshal(cross.Result, &f); err != nil {
		t.Fatal(err)
	}
	f.CrossNode = true
	cross.Result, _ = json.Marshal(&f)
	md, err = renderMarkdown([]record{fanRecord(t, "floor", "cross-1000", 1, 10, 30, 1e6), cross}, "test machine", "")
	if err != nil {
		t.Fatal(err)
	}
	_, sec3, _ := strings.Cut(md, "### 3.")
	sec3, _, _ = strings.Cut(sec3, "### 4.")
	if !strings.Contains(sec3, "| floor |") || !strings.Contains(sec3, "**90 ms (3.0×)**") {
		t.Errorf("cross-node table:\n%s", sec3)
	}
}

func TestRatio(t *testing.T) {
	for _, tc := range []struct {
		v, floor float64
		want     string
	}{{10, 8, " (1.2×)"}, {80, 8, " (10×)"}, {4, 8, " (0.5×)"}, {5, 0, ""}, {0, 5, ""}} {
		if got := ratio(tc.v, tc.floor); got != tc.want {
			t.Errorf("ratio(%g, %g) = %q, want %q", tc.v, tc.floor, got, tc.want)
		}
	}
}

func TestPerWrite(t *testing.T) {
	procs := []cpuUse{{Writes: 100}, {Writes: 300}, {Writes: 5000}} // two nodes, then Redis
	for _, tc := range []struct {
		received int64
		procs    []cpuUse
		targets  int
		want     float64
	}{
		{1000, procs, 1, 10}, {1000, procs, 2, 2.5}, {1000, nil, 1, 0}, {1000, []cpuUse{{Writes: 0}}, 1, 0},
	} {
		if got := perWrite(tc.received, tc.procs, tc.targets); got != tc.want {
			t.Errorf("perWrite(%d, %d targets) = %g, want %g", tc.received, tc.targets, got, tc.want)
		}
	}
	if _, err := os.Stat("/proc/self/io"); err != nil {
		return // no /proc here: the counters read as zero
	}
	if c := readIO(os.Getpid()); c.writes <= 0 && c.reads <= 0 {
		t.Errorf("readIO of this process: %+v, want counters", c)
	}
}
