package actors

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"parley/relay"
)

// countTransport counts frames; it keeps nothing.
type countTransport struct {
	n   *atomic.Int64
	got atomic.Int64
}

func (c *countTransport) Send([]byte) error           { c.got.Add(1); c.n.Add(1); return nil }
func (c *countTransport) Close(ws.StatusCode, string) {}
func (c *countTransport) Kick(ws.StatusCode, string)  {}

func benchEnv(b *testing.B) (*System, *relay.Memory) {
	mem := relay.NewMemory(relay.MemoryConfig{})
	sys, err := New(Config{NodeID: "bench", Broker: mem, CheckInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = sys.Shutdown(ctx)
	})
	return sys, mem
}

func waitCount(b *testing.B, n *atomic.Int64, want int64) {
	deadline := time.Now().Add(time.Minute)
	for n.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("timeout: %d of %d frames", n.Load(), want)
		}
		runtime.Gosched()
	}
}

// BenchmarkFanout: one message to 10,000 members of one room per op.
func BenchmarkFanout(b *testing.B) {
	const members = 10000
	sys, mem := benchEnv(b)
	var frames atomic.Int64
	for i := 0; i < members; i++ {
		s, err := sys.Connect(&countTransport{n: &frames}, ConnInfo{Name: fmt.Sprintf("u%d", i)})
		if err != nil {
			b.Fatal(err)
		}
		s.HandleMessage(ws.OpText, []byte(`{"type":"join","room":"big"}`))
	}
	waitCount(b, &frames, 2*members) // welcome + joined each
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.Mallocs
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		want := frames.Load() + members
		if _, err := mem.Publish(context.Background(), relay.Message{Room: "big", From: "x", Text: "hello fan-out", TS: time.Now().UnixMilli()}); err != nil {
			b.Fatal(err)
		}
		waitCount(b, &frames, want)
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.Mallocs-before)/float64(b.N*members), "allocs/delivery")
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkIdleSessions reports the heap held per idle connection (actor,
// session, registry entry), spawning 100,000 sessions with a no-op
// transport. Run: go test -run x -bench IdleSessions -benchtime 1x ./actors/
func BenchmarkIdleSessions(b *testing.B) {
	const n = 100000
	sys, _ := benchEnv(b)
	var frames atomic.Int64
	before := liveHeap()
	sessions := make([]*Session, 0, n)
	for i := 0; i < n; i++ {
		s, err := sys.Connect(&countTransport{n: &frames}, ConnInfo{Name: "user"})
		if err != nil {
			b.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	waitCount(b, &frames, n) // every welcome is out: mailboxes are idle
	b.ReportMetric(float64(liveHeap()-before)/n, "heap-bytes/session")
	runtime.KeepAlive(sessions)
}

// BenchmarkDirectoryJoinLeave: 10,000 connections in 1,000 rooms of 10;
// one op is every connection leaving its room and joining it again (two
// room ops each, every one through the directory). room-ops/s is what the
// whole path sustains; run with -cpuprofile to see the directory's share.
// Run: go test -run x -bench DirectoryJoinLeave ./actors/
func BenchmarkDirectoryJoinLeave(b *testing.B) {
	const conns, rooms = 10000, 1000
	sys, _ := benchEnv(b)
	var frames atomic.Int64 // joined and left frames
	sessions := make([]*Session, conns)
	for i := range sessions {
		s, err := sys.Connect(&answerTransport{n: &frames}, ConnInfo{Name: fmt.Sprintf("u%d", i)})
		if err != nil {
			b.Fatal(err)
		}
		sessions[i] = s
	}
	for i, s := range sessions {
		s.HandleMessage(ws.OpText, []byte(fmt.Sprintf(`{"type":"join","room":"d%d"}`, i%rooms)))
	}
	waitCount(b, &frames, conns)
	leave := make([][]byte, rooms)
	join := make([][]byte, rooms)
	for r := range rooms {
		leave[r] = []byte(fmt.Sprintf(`{"type":"leave","room":"d%d"}`, r))
		join[r] = []byte(fmt.Sprintf(`{"type":"join","room":"d%d"}`, r))
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		want := frames.Load() + 2*conns // left + joined each
		for i, s := range sessions {
			s.HandleMessage(ws.OpText, leave[i%rooms])
			s.HandleMessage(ws.OpText, join[i%rooms])
		}
		waitCount(b, &frames, want)
	}
	b.ReportMetric(float64(b.N*2*conns)/time.Since(start).Seconds(), "room-ops/s")
}

// answerTransport counts the joined and left frames it is sent.
type answerTransport struct{ n *atomic.Int64 }

func (a *answerTransport) Send(f []byte) error {
	if bytes.Contains(f, []byte(`"type":"joined"`)) || bytes.Contains(f, []byte(`"type":"left"`)) {
		a.n.Add(1)
	}
	return nil
}
func (a *answerTransport) Close(ws.StatusCode, string) {}
func (a *answerTransport) Kick(ws.StatusCode, string)  {}

// BenchmarkJoinedSessions reports the heap held per idle connection that
// joined one room (connection actor, session, member entry, presence record
// in the embedded bus, registry entry), spawning 15,000 sessions spread over
// 1 or 100 rooms with a no-op transport, as parley-bench idle --join does.
// Run: go test -run x -bench JoinedSessions -benchtime 1x ./actors/
func BenchmarkJoinedSessions(b *testing.B) {
	for _, rooms := range []int{1, 100} {
		b.Run(fmt.Sprintf("rooms=%d", rooms), func(b *testing.B) {
			const n = 15000
			sys, mem := benchEnv(b)
			var frames atomic.Int64
			before := liveHeap()
			sessions := make([]*Session, 0, n)
			for i := 0; i < n; i++ {
				s, err := sys.Connect(&countTransport{n: &frames}, ConnInfo{Name: fmt.Sprintf("u%d", i)})
				if err != nil {
					b.Fatal(err)
				}
				s.HandleMessage(ws.OpText, fmt.Appendf(nil, `{"type":"join","room":"bench%d"}`, i%rooms))
				sessions = append(sessions, s)
			}
			waitCount(b, &frames, 2*n) // welcome + joined each (presence events come on top)
			deadline := time.Now().Add(time.Minute)
			for present := 0; present < n; {
				if time.Now().After(deadline) {
					b.Fatalf("timeout: %d of %d members in presence", present, n)
				}
				time.Sleep(10 * time.Millisecond)
				present = 0
				for r := range rooms {
					l, err := mem.Presence(context.Background(), fmt.Sprintf("bench%d", r))
					if err != nil {
						b.Fatal(err)
					}
					present += len(l)
				}
			}
			b.ReportMetric(float64(liveHeap()-before)/n, "heap-bytes/session")
			runtime.KeepAlive(sessions)
		})
	}
}
