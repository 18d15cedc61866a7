package node

import (
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync/atomic"
	"time"
)

// DefaultMemReleaseAfter is how long the node must have been quiet (no GC
// cycle) before it returns the heap it freed to the OS (Config.MemReleaseAfter).
const DefaultMemReleaseAfter = 10 * time.Second

// memReleaseMinBytes and memReleaseFraction bound when a release is worth
// its cost (one forced GC, which marks the whole live heap): only when at
// least this much and this fraction of the live heap would go back.
const (
	memReleaseMinBytes = 1 << 20
	memReleaseFraction = 8 // 1/8 of the live heap
)

// memReleaser returns freed heap memory to the OS once the node is quiet.
//
// Go's runtime keeps the pages a collection freed, up to about the next GC
// target (with --gc-percent 50, half the live heap again), and reuses them
// for new allocations. Under traffic that is right. But after a burst (a
// connection storm, a join storm, a drain) a node that then sits idle with
// its connections keeps the burst's garbage pages resident for good: its
// RSS says more about the last burst than about the connections it holds.
// So, as jemalloc's decay does for Redis, a node that ran no GC cycle for a
// whole MemReleaseAfter (its allocation rate is low: it is idle) and holds
// at least memReleaseMinBytes, and an eighth of its live heap, in freed or
// collectable memory, runs two collections (objects put back in a
// sync.Pool survive the first) and debug.FreeOSMemory: every free page back
// to the OS. A node under load never does (it collects more often than
// that), so the hot path does not pay page faults for it.
//
// The releaser's goroutine alone owns its quietClock; releases and released
// are read by stats.
type memReleaser struct {
	every    time.Duration
	started  atomic.Bool
	stop     chan struct{}
	done     chan struct{}
	releases atomic.Uint64
	released atomic.Uint64 // bytes returned to the OS by those releases
}

// memSample is what the releaser reads from runtime/metrics (no stop of the
// world).
type memSample struct {
	cycles uint64 // GC cycles completed
	free   uint64 // free heap pages still resident
	heap   uint64 // heap objects' bytes: live plus not yet collected
	live   uint64 // live heap as of the last GC cycle
	gone   uint64 // heap pages returned to the OS (and not reused since)
}

var memSampleNames = [...]string{
	"/gc/cycles/total:gc-cycles",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/objects:bytes",
	"/gc/heap/live:bytes",
	"/memory/classes/heap/released:bytes",
}

func readMemSample(buf []rtmetrics.Sample) memSample {
	rtmetrics.Read(buf)
	v := func(i int) uint64 {
		if buf[i].Value.Kind() != rtmetrics.KindUint64 {
			return 0
		}
		return buf[i].Value.Uint64()
	}
	return memSample{cycles: v(0), free: v(1), heap: v(2), live: v(3), gone: v(4)}
}

// reclaimable is what a collection and a release would give back: the free
// pages, and the objects allocated since the last cycle that are not live.
func (s memSample) reclaimable() uint64 {
	r := s.free
	if s.heap > s.live {
		r += s.heap - s.live
	}
	return r
}

// worthReleasing reports whether what a release would give back pays for
// its collection.
func worthReleasing(s memSample) bool {
	r := s.reclaimable()
	return r >= memReleaseMinBytes && r >= s.live/memReleaseFraction
}

// quietClock tracks how long no GC cycle has completed, from samples of the
// cycle count.
type quietClock struct {
	cycles uint64
	since  time.Time // when cycles last changed (or the clock started)
}

// observe takes a sample of the cycle count at now and returns how long the
// count has not moved.
func (q *quietClock) observe(cycles uint64, now time.Time) time.Duration {
	if cycles != q.cycles || q.since.IsZero() {
		q.cycles, q.since = cycles, now
	}
	return now.Sub(q.since)
}

func newMemReleaser(every time.Duration) *memReleaser {
	return &memReleaser{every: every, stop: make(chan struct{}), done: make(chan struct{})}
}

func (m *memReleaser) start() {
	m.started.Store(true)
	go m.run()
}

// close stops the goroutine, if it was started, and waits for it.
func (m *memReleaser) close() {
	if !m.started.Load() {
		return
	}
	close(m.stop)
	<-m.done
}

func (m *memReleaser) run() {
	defer close(m.done)
	buf := make([]rtmetrics.Sample, len(memSampleNames))
	for i, name := range memSampleNames {
		buf[i].Name = name
	}
	// Sampled four times per period, so a release comes within a quarter
	// period of the node having been quiet for a whole one.
	t := time.NewTicker(m.every / 4)
	defer t.Stop()
	var q quietClock
	q.observe(readMemSample(buf).cycles, time.Now())
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		cur := readMemSample(buf)
		if q.observe(cur.cycles, time.Now()) < m.every || !worthReleasing(cur) {
			continue
		}
		before := cur.gone
		// Two cycles: objects put back in a sync.Pool survive the first
		// (they move to its victim cache) and go in the second; after a
		// burst, the pools hold the burst's buffers.
		runtime.GC()
		debug.FreeOSMemory()
		cur = readMemSample(buf)
		q.observe(cur.cycles, time.Now()) // its own cycles: a new quiet period starts
		m.releases.Add(1)
		if cur.gone > before {
			m.released.Add(cur.gone - before)
		}
	}
}
