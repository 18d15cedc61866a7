package node

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"parley/relay"
)

//go:embed web
var webFS embed.FS

// publicMux routes the public listener: WebSocket upgrades at / (plain seed
// mode) and /ws (protocol v1), the chat page at / for plain GETs, and the
// health endpoints.
func (n *Node) publicMux() http.Handler {
	static, _ := fs.Sub(webFS, "web")
	files := http.FileServer(http.FS(static))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		if !isUpgrade(r) {
			http.Error(w, "this endpoint speaks WebSocket (protocol v1); see docs/PROTOCOL.md", http.StatusUpgradeRequired)
			return
		}
		n.upgrade(w, r, false)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if isUpgrade(r) {
			n.upgrade(w, r, true)
			return
		}
		w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'")
		files.ServeHTTP(w, r)
	})
	mux.Handle("GET /static/", files)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ok, why := n.ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		if !n.broker.Stats().Up {
			// Still ready (see ready); the body says what is wrong.
			w.Write([]byte("ready; bus down: sends fail with \"unavailable\" until it returns\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// ready reports whether the node should get new connections: not while it
// drains. A node whose bus is down stays ready (see ARCHITECTURE.md): its
// clients keep their connections and presence, sends fail loudly with
// "unavailable", and the bus is a shared dependency that every node loses
// at once, so taking them all out of rotation would help no one.
func (n *Node) ready() (bool, string) {
	if n.unready.Load() {
		return false, "draining"
	}
	return true, ""
}

func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// adminMux routes the admin listener: pprof and /debug/stats.
func (n *Node) adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /debug/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(n.Stats())
	})
	return mux
}

// Stats is what /debug/stats reports.
type Stats struct {
	Node        string `json:"node"`
	Draining    bool   `json:"draining"`
	UptimeSec   int64  `json:"uptime_sec"`
	Connections int    `json:"connections"` // sockets registered with the epoll loop
	Sessions    int    `json:"sessions"`    // connection actors alive
	Rooms       int    `json:"rooms"`       // room actors alive on this node
	Goroutines  int    `json:"goroutines"`
	HeapAlloc   uint64 `json:"heap_alloc"`
	HeapInuse   uint64 `json:"heap_inuse"`
	Sys         uint64 `json:"sys"`
	RSSBytes    uint64 `json:"rss_bytes"`
	NumGC       uint32 `json:"num_gc"`

	// Room counters since start (see actors.Stats).
	Deliveries uint64 `json:"deliveries"`
	GapFills   uint64 `json:"gap_fills"`
	Checks     uint64 `json:"checks"`
	Resets     uint64 `json:"resets"`
	SlowKicks  uint64 `json:"slow_kicks"`
	PubErrors  uint64 `json:"pub_errors"`

	Broker relay.Stats `json:"broker"`
}

// Stats gathers the node's counters (it stops the world briefly to read
// memory statistics: an admin call, not a hot path).
func (n *Node) Stats() Stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	as := n.sys.Stats()
	return Stats{
		Node:        n.cfg.NodeID,
		Draining:    n.unready.Load(),
		UptimeSec:   int64(time.Since(n.started) / time.Second),
		Connections: n.poller.Len(),
		Sessions:    as.Connections,
		Rooms:       as.Rooms,
		Goroutines:  runtime.NumGoroutine(),
		HeapAlloc:   ms.HeapAlloc,
		HeapInuse:   ms.HeapInuse,
		Sys:         ms.Sys,
		RSSBytes:    rss(),
		NumGC:       ms.NumGC,
		Deliveries:  as.Deliveries,
		GapFills:    as.GapFills,
		Checks:      as.Checks,
		Resets:      as.Resets,
		SlowKicks:   as.SlowKicks,
		PubErrors:   as.PubErrors,
		Broker:      as.Broker,
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
