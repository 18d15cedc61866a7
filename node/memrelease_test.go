package node

import (
	"fmt"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWorthReleasing(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		name string
		s    memSample
		want bool
	}{
		{"much freed", memSample{free: 20 * mib, heap: 80 * mib, live: 80 * mib}, true},
		{"garbage not yet collected counts", memSample{heap: 100 * mib, live: 80 * mib}, true},
		{"under the floor", memSample{free: mib / 2, heap: 2 * mib, live: 2 * mib}, false},
		{"under an eighth of the live heap", memSample{free: 100 * mib, heap: 1000 * mib, live: 1000 * mib}, false},
		{"an eighth of the live heap", memSample{free: 125 * mib, heap: 1000 * mib, live: 1000 * mib}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := worthReleasing(tc.s); got != tc.want {
				t.Errorf("worthReleasing(%+v) = %v, want %v", tc.s, got, tc.want)
			}
		})
	}
}

// The quiet time restarts at every cycle and grows while none completes.
func TestQuietClock(t *testing.T) {
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at     time.Duration
		cycles uint64
		quiet  time.Duration
	}{
		{0, 5, 0},
		{2 * time.Second, 5, 2 * time.Second},
		{5 * time.Second, 5, 5 * time.Second},
		{6 * time.Second, 6, 0}, // a cycle: the node is busy again
		{9 * time.Second, 6, 3 * time.Second},
		{16 * time.Second, 6, 10 * time.Second},
		{17 * time.Second, 9, 0},
	}
	var q quietClock
	for _, st := range steps {
		if got := q.observe(st.cycles, t0.Add(st.at)); got != st.quiet {
			t.Errorf("at %v with %d cycles: quiet %v, want %v", st.at, st.cycles, got, st.quiet)
		}
	}
}

// heapFree is the freed heap still resident.
func heapFree() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// churn leaves freeMiB of freed heap pages behind a live heap of liveMiB,
// so that the runtime's own scavenger keeps them and only a release
// returns them.
// The live part is kept until the test ends.
func churn(t *testing.T, liveMiB, freeMiB int) {
	t.Helper()
	// A high GC target, so that the runtime's own scavenger leaves the
	// freed pages alone, as it does in a node whose freed heap stays under
	// its target (--gc-percent 50 and a garbage-heavy burst).
	old := debug.SetGCPercent(400)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	live := make([][]byte, 0, liveMiB<<4)
	for range liveMiB << 4 {
		live = append(live, make([]byte, 64<<10))
	}
	for range freeMiB << 10 {
		junkSink = make([]byte, 1<<10)
	}
	junkSink = nil
	runtime.GC()
	t.Cleanup(func() { runtime.KeepAlive(live) })
}

// junkSink makes churn's garbage escape to the heap.
var junkSink []byte

// A quiet node that holds freed heap gives it back to the OS, and says so.
func TestMemReleaseReturnsFreedHeapWhenQuiet(t *testing.T) {
	n := startNode(t, Config{MemReleaseAfter: 100 * time.Millisecond})
	churn(t, 96, 48)
	if f := heapFree(); f < 16<<20 {
		t.Skipf("the runtime kept only %d bytes of freed heap: nothing to release here", f)
	}
	eventually(t, 10*time.Second, func() error {
		s := n.Stats()
		if s.MemReleases == 0 || s.MemReleased < 16<<20 {
			buf := make([]rtmetrics.Sample, len(memSampleNames))
			for i, name := range memSampleNames {
				buf[i].Name = name
			}
			return fmt.Errorf("releases %d, %d bytes released: want one of ≥ 16 MiB (now %+v)", s.MemReleases, s.MemReleased, readMemSample(buf))
		}
		return nil
	})
	_, body := httpGet(t, n.AdminAddr(), "/metrics")
	for _, want := range []string{"parley_memory_releases_total", "parley_memory_released_bytes_total"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
}

// A node that collects (it allocates: traffic) never releases, whatever it
// holds freed: the pages are about to be reused.
func TestMemReleaseNotWhileCollecting(t *testing.T) {
	n := startNode(t, Config{MemReleaseAfter: 50 * time.Millisecond})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a collection every 5 ms: busier than any window
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				runtime.GC()
			}
		}
	}()
	churn(t, 32, 32)
	// Twenty windows: a bounded observation, since what is checked is
	// that nothing happens.
	time.Sleep(20 * 50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if r := n.Stats().MemReleases; r != 0 {
		t.Fatalf("released %d times while collecting every 5ms", r)
	}
}

// Off (negative) starts no goroutine and reports nothing.
func TestMemReleaseOff(t *testing.T) {
	n := startNode(t, Config{MemReleaseAfter: -1})
	if n.memRelease != nil {
		t.Fatal("MemReleaseAfter < 0 started a releaser")
	}
	if s := n.Stats(); s.MemReleases != 0 || s.MemReleased != 0 {
		t.Fatalf("off, yet stats say %d releases, %d bytes", s.MemReleases, s.MemReleased)
	}
}
