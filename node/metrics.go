package node

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"parley/actors"
	"parley/netpoll"
)

// Prometheus metrics at /metrics on the admin listener. There is one source
// of truth: the collector below reads, at scrape time, the same counters
// /debug/stats shows (actors.Stats with the broker's relay.Stats, the
// poller's close counters, the node's upgrade counters); only the two
// latency histograms are fed as events happen, through hooks (actors'
// ObservePublish, netpoll's Written). The registry is the node's own: not
// the global default, and not protoactor's provider. No metric has a room,
// user or address label. docs/OPERATIONS.md lists every metric.

// Latency histogram buckets, in seconds.
var (
	fanoutBuckets  = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	publishBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5}
)

// metrics is a node's Prometheus registry and the histograms fed by hooks.
type metrics struct {
	reg     *prometheus.Registry
	fanout  prometheus.Histogram
	publish prometheus.Histogram
}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "parley_fanout_latency_seconds",
			Help: "End to end: from a message's timestamp (taken by the publishing node just before the bus sequences it, millisecond resolution) to its frame being written to the socket of the room's last member on this node. One sample per message and node.",
			// Buckets start at 0.5 ms: the timestamp has millisecond resolution.
			Buckets: fanoutBuckets,
		}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "parley_bus_publish_duration_seconds",
			Help:    "Duration of one publish call to the bus (a batch of one room's sends), failed calls included.",
			Buckets: publishBuckets,
		}),
	}
	m.reg.MustRegister(m.fanout, m.publish, &statsCollector{n: n},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeWritten is netpoll's Written hook: at is a message's TS (unix ms).
func (m *metrics) observeWritten(at int64) {
	d := time.Since(time.UnixMilli(at))
	m.fanout.Observe(max(d, 0).Seconds())
}

func (m *metrics) observePublish(d time.Duration) { m.publish.Observe(d.Seconds()) }

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            nil,
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 2,
		Timeout:             10 * time.Second,
	})
}

// desc builds a metric description.
func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The metrics the collector reads from the node's counters.
var (
	descInfo        = desc("parley_node_info", "Always 1; the label names the node.", "node")
	descConnections = desc("parley_connections", "Open WebSocket connections (connection actors alive), by protocol: json (/ws) or plain (seed mode at /).", "protocol")
	descSockets     = desc("parley_sockets", "Sockets registered with the epoll loop (connections, including those closing).")
	descAccepted    = desc("parley_upgrades_accepted_total", "WebSocket upgrades accepted.")
	descRefusedUp   = desc("parley_upgrades_refused_total", "WebSocket upgrades refused, by reason.", "reason")
	descRooms       = desc("parley_rooms", "Rooms with an actor on this node.")
	descRoomSize    = desc("parley_room_members", "Room sizes on this node (members connected here), a snapshot: each room is counted once in the histogram of its current size; _sum is parley_presence_entries.")
	descPresence    = desc("parley_presence_entries", "Room memberships of this node's connections (the presence entries this node holds on the bus).")
	descReceived    = desc("parley_messages_received_total", "Data frames received from clients.")
	descPublished   = desc("parley_messages_published_total", "Client sends the bus sequenced (acknowledged), repeats included.")
	descRepeats     = desc("parley_idempotent_repeats_total", "Sends acknowledged as repeats of an earlier message with the same id (not published again).")
	descDelivered   = desc("parley_messages_delivered_total", "Message frames queued on members' sockets (one per member per message).")
	descRefused     = desc("parley_frames_refused_total", "Client frames answered with an error frame, by protocol error code (unavailable, rate_limited, bad_request, …).", "code")
	descQueueBytes  = desc("parley_outbound_queue_bytes", "Bytes waiting in connections' outbound queues.")
	descCloses      = desc("parley_connections_closed_total", "Connections closed, by close code and who began the close (server, client, or network: no close frame, code 1006).", "code", "initiator")
	descSlowKicks   = desc("parley_slow_consumer_kicks_total", "Connections kicked with 4008 because their outbound queue was full.")
	descBusUp       = desc("parley_bus_up", "1 while the bus (Redis) is reachable, 0 while it is down.")
	descBusErrors   = desc("parley_bus_errors_total", "Failed bus calls.")
	descBusPubs     = desc("parley_bus_publishes_total", "Messages this node published to the bus.")
	descBusReconn   = desc("parley_bus_reconnects_total", "Bus subscription reconnects.")
	descResyncs     = desc("parley_bus_resyncs_total", "Bus subscriptions re-established after an interruption (every room then checks its position).")
	descGapFills    = desc("parley_gap_fills_total", "History reads to fill a gap in a room's live stream.")
	descChecks      = desc("parley_position_checks_total", "History reads for a resync or a periodic position check.")
	descResets      = desc("parley_room_resets_total", "Room resets: the room's epoch changed (history lost), members got joined{recovered:false}.")
	descRollovers   = desc("parley_rollovers_total", "New epochs this node started because the bus went back in time (a failover lost writes it had delivered).")
	descPubErrors   = desc("parley_publish_errors_total", "Client sends answered with unavailable (the bus did not take them).")
	descDraining    = desc("parley_draining", "1 once the node has begun draining (shutting down), else 0.")
	descUptime      = desc("parley_uptime_seconds", "Seconds since the node started.")
	descMemReleases = desc("parley_memory_releases_total", "Times the node, quiet (no GC cycle for --mem-release-after), returned its freed heap to the OS.")
	descMemReleased = desc("parley_memory_released_bytes_total", "Bytes of heap those releases returned to the OS.")
)

// statsCollector reads the node's counters at scrape time.
type statsCollector struct{ n *Node }

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descConnections, descSockets, descAccepted,
		descRefusedUp, descRooms, descRoomSize, descPresence, descReceived, descPublished, descRepeats,
		descDelivered, descRefused, descQueueBytes, descCloses, descSlowKicks, descBusUp, descBusErrors,
		descBusPubs, descBusReconn, descResyncs, descGapFills, descChecks, descResets, descRollovers, descPubErrors,
		descDraining, descUptime, descMemReleases, descMemReleased} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	s := n.counters()
	as := s.actors
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descInfo, 1, n.cfg.NodeID)
	gauge(descConnections, float64(as.Connections-as.PlainConnections), "json")
	gauge(descConnections, float64(as.PlainConnections), "plain")
	gauge(descSockets, float64(s.sockets))
	counter(descAccepted, s.upgrades.Accepted)
	for reason, v := range s.upgrades.Refused {
		counter(descRefusedUp, v, reason)
	}
	gauge(descRooms, float64(as.Rooms))
	ch <- roomSizeHistogram(as)
	gauge(descPresence, float64(as.Members))
	counter(descReceived, as.Received)
	counter(descPublished, as.Published)
	counter(descRepeats, as.Repeats)
	counter(descDelivered, as.Deliveries)
	for code, v := range as.Refused {
		counter(descRefused, v, code)
	}
	gauge(descQueueBytes, float64(n.poller.QueuedBytes()))
	for _, cc := range s.closes {
		counter(descCloses, cc.N, cc.Code, cc.Side.String())
	}
	counter(descSlowKicks, as.SlowKicks)
	up := 0.0
	if as.Broker.Up {
		up = 1
	}
	gauge(descBusUp, up)
	counter(descBusErrors, as.Broker.Errors)
	counter(descBusPubs, as.Broker.Publishes)
	counter(descBusReconn, as.Broker.Reconnects)
	counter(descResyncs, as.Broker.Resyncs)
	counter(descGapFills, as.GapFills)
	counter(descChecks, as.Checks)
	counter(descResets, as.Resets)
	counter(descRollovers, as.Rollovers)
	counter(descPubErrors, as.PubErrors)
	draining := 0.0
	if s.draining {
		draining = 1
	}
	gauge(descDraining, draining)
	gauge(descUptime, time.Since(n.started).Seconds())
	counter(descMemReleases, s.memReleases)
	counter(descMemReleased, s.memReleased)
}

// roomSizeHistogram turns the live room size buckets into a histogram.
func roomSizeHistogram(as actors.Stats) prometheus.Metric {
	buckets := make(map[float64]uint64, len(actors.RoomSizeBuckets))
	var cum uint64
	for i, b := range actors.RoomSizeBuckets {
		if i < len(as.RoomSizes) {
			cum += uint64(max(as.RoomSizes[i], 0))
		}
		buckets[float64(b)] = cum
	}
	if k := len(actors.RoomSizeBuckets); k < len(as.RoomSizes) {
		cum += uint64(max(as.RoomSizes[k], 0))
	}
	return prometheus.MustNewConstHistogram(descRoomSize, cum, float64(as.Members), buckets)
}

// nodeCounters is what both /debug/stats and /metrics read.
type nodeCounters struct {
	actors   actors.Stats
	upgrades UpgradeStats
	closes   []netpoll.CloseCount
	sockets  int
	draining bool

	memReleases, memReleased uint64 // memrelease.go
}

// counters reads the node's counters (no stop-the-world: that is
// runtime.ReadMemStats, which Stats adds for /debug/stats).
func (n *Node) counters() nodeCounters {
	c := nodeCounters{
		actors:   n.sys.Stats(),
		upgrades: n.upgrades.stats(),
		closes:   n.poller.Closes(),
		sockets:  n.poller.Len(),
		draining: n.unready.Load(), // a drain begins with readiness off
	}
	if m := n.memRelease; m != nil {
		c.memReleases, c.memReleased = m.releases.Load(), m.released.Load()
	}
	return c
}

// closesByCode flattens close counters for /debug/stats: "4008/server" -> n.
func closesByCode(cc []netpoll.CloseCount) map[string]uint64 {
	out := make(map[string]uint64, len(cc))
	for _, c := range cc {
		out[c.Code+"/"+c.Side.String()] = c.N
	}
	return out
}
