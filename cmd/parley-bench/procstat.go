package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat (100 on Linux).
const clockTicks = 100

// readRSS returns VmRSS of pid in bytes.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	for line := range bytes.Lines(b) {
		if f := strings.Fields(string(line)); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS of pid %d: %w", pid, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS line", pid)
}

// readThreads returns the Threads count of pid (goroutines are not visible
// from outside a process; threads are).
func readThreads(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(b) {
		if f := strings.Fields(string(line)); len(f) >= 2 && f[0] == "Threads:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// readCPUTicks returns utime+stime of pid in clock ticks.
func readCPUTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	// The command name may contain spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: malformed stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ')': state(0) ppid(1) ... utime is field 14 overall → index 11 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pid %d: parse utime/stime", pid)
	}
	return ut + st, nil
}

// selfCPU returns this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// selfRSS returns this process's RSS in bytes (0 if unknown).
func selfRSS() int64 {
	n, _ := readRSS(os.Getpid())
	return n
}

// nodeStats is what the bench learns about one node process at one moment.
type nodeStats struct {
	Target    string `json:"target"` // "pid:N" or the admin address
	RSS       int64  `json:"rss_bytes"`
	HeapAlloc int64  `json:"heap_alloc,omitempty"`
	HeapInuse int64  `json:"heap_inuse,omitempty"`
	// HeapRetained, StackInuse and RuntimeSys are the rest of the node's
	// RSS beyond HeapInuse (see the node's /debug/stats).
	HeapRetained int64  `json:"heap_retained,omitempty"`
	StackInuse   int64  `json:"stack_inuse,omitempty"`
	RuntimeSys   int64  `json:"runtime_sys,omitempty"`
	Goroutines   int64  `json:"goroutines,omitempty"`
	Threads      int64  `json:"threads,omitempty"`
	Connections  int64  `json:"connections,omitempty"`
	Err          string `json:"error,omitempty"`
}

var adminClient = &http.Client{Timeout: 5 * time.Second}

// fetchAdmin reads GET http://ADDR/debug/stats.
func fetchAdmin(addr string) (nodeStats, error) {
	s := nodeStats{Target: addr}
	resp, err := adminClient.Get("http://" + addr + "/debug/stats")
	if err != nil {
		return s, fmt.Errorf("admin %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return s, fmt.Errorf("admin %s: read body: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("admin %s: status %s", addr, resp.Status)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return s, fmt.Errorf("admin %s: decode stats: %w", addr, err)
	}
	num := func(k string) int64 {
		if v, ok := m[k].(float64); ok {
			return int64(v)
		}
		return 0
	}
	s.RSS = num("rss_bytes")
	s.HeapAlloc = num("heap_alloc")
	s.HeapInuse = num("heap_inuse")
	s.HeapRetained = num("heap_retained")
	s.StackInuse = num("stack_inuse")
	s.RuntimeSys = num("runtime_sys")
	s.Goroutines = num("goroutines")
	s.Connections = num("connections")
	return s, nil
}

// nodeProbe reads the processes under test: admin listeners and/or PIDs.
// admins[i] and pids[i] describe the same node when both are given; RSS from
// /proc (when a pid is known) wins over the admin's own figure.
type nodeProbe struct {
	admins []string
	pids   []int
}

func (p nodeProbe) empty() bool { return len(p.admins) == 0 && len(p.pids) == 0 }

// read returns one nodeStats per node.
func (p nodeProbe) read() []nodeStats {
	n := max(len(p.admins), len(p.pids))
	out := make([]nodeStats, n)
	for i := range n {
		var s nodeStats
		if i < len(p.admins) {
			var err error
			s, err = fetchAdmin(p.admins[i])
			if err != nil {
				s.Err = err.Error()
			}
		}
		if i < len(p.pids) {
			pid := p.pids[i]
			if s.Target == "" {
				s.Target = fmt.Sprintf("pid:%d", pid)
			} else {
				s.Target += fmt.Sprintf(" (pid %d)", pid)
			}
			if rss, err := readRSS(pid); err == nil {
				s.RSS = rss
			} else if s.Err == "" {
				s.Err = err.Error()
			}
			s.Threads = readThreads(pid)
		}
		out[i] = s
	}
	return out
}

// totalRSS sums RSS over nodes.
func totalRSS(ns []nodeStats) int64 {
	var t int64
	for _, s := range ns {
		t += s.RSS
	}
	return t
}

// settle waits (bounded by maxWait) until the total node RSS changes by less
// than 0.5 % between two samples 500 ms apart, and returns the last reading.
func (p nodeProbe) settle(maxWait time.Duration) []nodeStats {
	cur := p.read()
	if maxWait <= 0 {
		return cur
	}
	deadline := time.Now().Add(maxWait)
	stable := 0
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond) // sampling interval, not synchronisation
		next := p.read()
		a, b := totalRSS(cur), totalRSS(next)
		cur = next
		diff := a - b
		if diff < 0 {
			diff = -diff
		}
		if b > 0 && float64(diff) < 0.005*float64(b) {
			stable++
			if stable >= 2 {
				break
			}
		} else {
			stable = 0
		}
	}
	return cur
}

// ioCounts are a process's I/O syscall counters from /proc/PID/io.
type ioCounts struct {
	reads, writes int64 // syscr, syscw: read-type and write-type syscalls (writev counts once)
	wbytes        int64 // wchar: bytes passed to write-type syscalls
}

// readIO reads /proc/PID/io (zero counters when it cannot be read).
func readIO(pid int) ioCounts {
	var c ioCounts
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return c
	}
	for line := range bytes.Lines(b) {
		k, v, ok := strings.Cut(strings.TrimSpace(string(line)), ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "syscr":
			c.reads = n
		case "syscw":
			c.writes = n
		case "wchar":
			c.wbytes = n
		}
	}
	return c
}

// cpuMeter measures CPU (and I/O syscalls) used by pids and by this process
// over an interval.
type cpuMeter struct {
	pids   []int
	start  time.Time
	ticks  []int64
	io     []ioCounts
	selfT0 time.Duration
}

func startCPU(pids []int) *cpuMeter {
	m := &cpuMeter{pids: pids, start: time.Now(), ticks: make([]int64, len(pids)), io: make([]ioCounts, len(pids)), selfT0: selfCPU()}
	for i, pid := range pids {
		m.ticks[i], _ = readCPUTicks(pid)
		m.io[i] = readIO(pid)
	}
	return m
}

// cpuUse is CPU use as a percentage of one core, and the write-type and
// read-type syscalls per second, of one process.
type cpuUse struct {
	Target   string  `json:"target"`
	Pct      float64 `json:"cpu_pct"`
	WritesPS float64 `json:"writes_per_s,omitempty"`
	ReadsPS  float64 `json:"reads_per_s,omitempty"`
	Writes   int64   `json:"writes,omitempty"` // write-type syscalls in the interval
}

// stop returns the CPU percentages (100 = one full core) since start.
func (m *cpuMeter) stop(extraSelf time.Duration) (nodes []cpuUse, self float64) {
	el := time.Since(m.start).Seconds()
	if el <= 0 {
		return nil, 0
	}
	for i, pid := range m.pids {
		t, err := readCPUTicks(pid)
		if err != nil {
			continue
		}
		io := readIO(pid)
		w := io.writes - m.io[i].writes
		nodes = append(nodes, cpuUse{Target: fmt.Sprintf("pid:%d", pid), Pct: float64(t-m.ticks[i]) / clockTicks / el * 100,
			Writes: w, WritesPS: float64(w) / el, ReadsPS: float64(io.reads-m.io[i].reads) / el})
	}
	self = (selfCPU() - m.selfT0 + extraSelf).Seconds() / el * 100
	return nodes, self
}
