package node

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"parley/relay"
)

// Stats is what /debug/stats reports. /metrics reads the same counters
// (metrics.go).
type Stats struct {
	Node        string `json:"node"`
	Draining    bool   `json:"draining"`
	UptimeSec   int64  `json:"uptime_sec"`
	Connections int    `json:"connections"` // sockets registered with the epoll loop
	Sessions    int    `json:"sessions"`    // connection actors alive
	Plain       int    `json:"plain"`       // of Sessions, in seed mode (the rest speak JSON)
	Rooms       int    `json:"rooms"`       // room actors alive on this node
	Members     int64  `json:"members"`     // room memberships of this node's connections
	Goroutines  int    `json:"goroutines"`
	HeapAlloc   uint64 `json:"heap_alloc"`
	HeapInuse   uint64 `json:"heap_inuse"`
	// HeapRetained is heap memory the GC freed but the runtime has not yet
	// returned to the OS (idle spans still resident): part of RSS, not of
	// HeapInuse.
	HeapRetained uint64 `json:"heap_retained"`
	StackInuse   uint64 `json:"stack_inuse"` // goroutine stacks
	// RuntimeSys is the runtime's own metadata (GC bitmaps, span and cache
	// structures, profiling buckets, other).
	RuntimeSys uint64 `json:"runtime_sys"`
	Sys        uint64 `json:"sys"`
	RSSBytes   uint64 `json:"rss_bytes"`
	NumGC      uint32 `json:"num_gc"`
	// MemReleases counts the times the quiet node returned freed heap to
	// the OS, MemReleased the bytes (Config.MemReleaseAfter).
	MemReleases uint64 `json:"mem_releases"`
	MemReleased uint64 `json:"mem_released_bytes"`

	// Room counters since start (see actors.Stats).
	Deliveries uint64 `json:"deliveries"`
	GapFills   uint64 `json:"gap_fills"`
	Checks     uint64 `json:"checks"`
	Resets     uint64 `json:"resets"`
	SlowKicks  uint64 `json:"slow_kicks"`
	PubErrors  uint64 `json:"pub_errors"`
	Rollovers  uint64 `json:"rollovers"`

	// Messages and refusals since start.
	Received  uint64            `json:"received"`  // data frames from clients
	Published uint64            `json:"published"` // sends the bus sequenced
	Repeats   uint64            `json:"repeats"`   // sends acked as repeats
	Refused   map[string]uint64 `json:"refused"`   // error frames by protocol code
	// RoomSizes counts rooms by size: entry i for sizes up to
	// actors.RoomSizeBuckets[i], the last one for larger rooms.
	RoomSizes []int64 `json:"room_sizes"`

	Upgrades UpgradeStats      `json:"upgrades"`
	Closes   map[string]uint64 `json:"closes"` // "code/initiator" -> count
	// QueuedBytes is the bytes waiting in outbound queues.
	QueuedBytes int64 `json:"queued_bytes"`

	Broker relay.Stats `json:"broker"`
}

// Stats gathers the node's counters (it stops the world briefly to read
// memory statistics: an admin call, not a hot path).
func (n *Node) Stats() Stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	c := n.counters()
	as := c.actors
	return Stats{
		Node:         n.cfg.NodeID,
		Draining:     c.draining,
		UptimeSec:    int64(time.Since(n.started) / time.Second),
		Connections:  c.sockets,
		Sessions:     as.Connections,
		Plain:        as.PlainConnections,
		Rooms:        as.Rooms,
		Members:      as.Members,
		Goroutines:   runtime.NumGoroutine(),
		HeapAlloc:    ms.HeapAlloc,
		HeapInuse:    ms.HeapInuse,
		HeapRetained: ms.HeapIdle - ms.HeapReleased,
		StackInuse:   ms.StackInuse,
		RuntimeSys:   ms.GCSys + ms.MSpanSys + ms.MCacheSys + ms.BuckHashSys + ms.OtherSys,
		Sys:          ms.Sys,
		RSSBytes:     rss(),
		NumGC:        ms.NumGC,
		MemReleases:  c.memReleases,
		MemReleased:  c.memReleased,
		Deliveries:   as.Deliveries,
		GapFills:     as.GapFills,
		Checks:       as.Checks,
		Resets:       as.Resets,
		SlowKicks:    as.SlowKicks,
		PubErrors:    as.PubErrors,
		Rollovers:    as.Rollovers,
		Received:     as.Received,
		Published:    as.Published,
		Repeats:      as.Repeats,
		Refused:      as.Refused,
		RoomSizes:    as.RoomSizes,
		Upgrades:     c.upgrades,
		Closes:       closesByCode(c.closes),
		QueuedBytes:  n.poller.QueuedBytes(),
		Broker:       as.Broker,
	}
}

// rss reads the resident set size from /proc/self/statm (0 where there is none).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}
