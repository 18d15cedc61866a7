package main

import (
	"sync"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, from 1 µs to 120 s, with 3
// significant digits.
const (
	histMinUS  = 1
	histMaxUS  = 120_000_000
	histDigits = 3
)

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMinUS, histMaxUS, histDigits)
}

// latencyShard is one lock-protected histogram; receivers are spread over
// shards so that they rarely contend.
type latencyShard struct {
	mu sync.Mutex // guards h
	h  *hdrhistogram.Histogram
}

// latencyRecorder collects latencies from many goroutines. Each receiver
// records a whole read batch under one lock.
type latencyRecorder struct {
	shards []latencyShard
}

func newLatencyRecorder(nShards int) *latencyRecorder {
	if nShards < 1 {
		nShards = 1
	}
	r := &latencyRecorder{shards: make([]latencyShard, nShards)}
	for i := range r.shards {
		r.shards[i].h = newHist()
	}
	return r
}

// recordBatch records latencies (µs) into shard i (mod the shard count).
// Values outside the trackable range are clamped.
func (r *latencyRecorder) recordBatch(i int, us []int64) {
	if len(us) == 0 {
		return
	}
	s := &r.shards[i%len(r.shards)]
	s.mu.Lock()
	for _, v := range us {
		if v < histMinUS {
			v = histMinUS
		} else if v > histMaxUS {
			v = histMaxUS
		}
		_ = s.h.RecordValue(v)
	}
	s.mu.Unlock()
}

// snapshot merges all shards into a new histogram.
func (r *latencyRecorder) snapshot() *hdrhistogram.Histogram {
	out := newHist()
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		out.Merge(s.h)
		s.mu.Unlock()
	}
	return out
}

// latencySummary is the latency part of a result, in milliseconds.
type latencySummary struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

func summarize(h *hdrhistogram.Histogram) latencySummary {
	if h.TotalCount() == 0 {
		return latencySummary{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return latencySummary{
		Count: h.TotalCount(),
		Mean:  h.Mean() / 1000,
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
	}
}

// percentilePoint is one point of a latency percentile spectrum.
type percentilePoint struct {
	Percentile float64 `json:"percentile"`
	MS         float64 `json:"ms"`
}

// spectrum returns latency at a fixed ladder of percentiles, for the report.
func spectrum(h *hdrhistogram.Histogram) []percentilePoint {
	if h.TotalCount() == 0 {
		return nil
	}
	qs := []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100}
	out := make([]percentilePoint, 0, len(qs))
	for _, q := range qs {
		v := h.ValueAtQuantile(q)
		if q == 0 {
			v = h.Min()
		}
		out = append(out, percentilePoint{Percentile: q, MS: float64(v) / 1000})
	}
	return out
}

// hdrHistogram is the histogram type used throughout the tool.
type hdrHistogram = hdrhistogram.Histogram
