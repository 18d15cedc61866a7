package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// fanoutConfig describes one fanout run.
type fanoutConfig struct {
	targets        []target
	proto          string // "json" or "plain"
	roomPrefix     string // json rooms are roomPrefix0 … roomPrefix(R-1)
	clients        int
	rooms          int
	senders        int
	rate           float64 // total messages per second over all senders
	duration       time.Duration
	size           int // payload bytes
	drain          time.Duration
	quiet          time.Duration // end the drain early after this long without a delivery
	settle         time.Duration // before sending: wait until no frame arrived for this long (0: don't)
	settleMax      time.Duration // ... but at most this long
	connectTimeout time.Duration
	concurrency    int
	sources        int
	crossNode      bool
	probe          nodeProbe
	pids           []int
	progress       io.Writer // live progress line, or nil
}

// timelineStep is the bucket width of the throughput timeline.
const timelineStep = 250 * time.Millisecond

// fanState is shared by all clients of one fanout run.
type fanState struct {
	cfg        *fanoutConfig
	recorders  []*latencyRecorder // one per target
	delivered  atomic.Int64       // unique deliveries, all receivers
	lastRecv   atomic.Int64       // unix nanos of the last delivery
	lastFrame  atomic.Int64       // unix nanos of the last read of any frame (settling)
	sentRoom   []atomic.Int64     // successful sends per room
	sendErrs   atomic.Int64
	skipped    atomic.Int64 // sends the pacer could not hand to a busy sender
	errFrames  atomic.Int64
	disconnect atomic.Int64
	closing    atomic.Bool
	firstErr   errOnce
	start      atomic.Int64       // unix nanos when sending began (0 before)
	recvTL     [1024]atomic.Int64 // deliveries per timelineStep since start
	sendTL     [1024]atomic.Int64 // sends per timelineStep since start
	roomNames  []string
	roomFrames [][]byte // json: `{"type":"send","room":"R","text":"` per room
}

// errOnce keeps the first error reported.
type errOnce struct {
	mu  sync.Mutex // guards err
	err string
}

func (e *errOnce) set(err error) {
	if err == nil {
		return
	}
	e.mu.Lock()
	if e.err == "" {
		e.err = err.Error()
	}
	e.mu.Unlock()
}

func (e *errOnce) get() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

func (st *fanState) bucket(now int64) int {
	s := st.start.Load()
	if s == 0 || now < s {
		return -1
	}
	i := int(time.Duration(now-s) / timelineStep)
	if i >= len(st.recvTL) {
		return -1
	}
	return i
}

// fanClient is one simulated chat client. Its reader goroutine alone owns
// parser and tracker; writes go through wmu.
type fanClient struct {
	id     int
	node   int // index into targets
	room   int
	sender int // sender index, or -1
	nc     net.Conn
	ready  chan struct{}
	rdy    bool // reader-owned: ready already signalled
	done   chan struct{}

	wmu  sync.Mutex // guards wbuf and writes to nc
	wbuf []byte

	tracker *deliveryTracker // owned by the reader goroutine
	acks    int64            // owned by the reader goroutine
}

func (c *fanClient) write(op ws.OpCode, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = appendClientFrame(c.wbuf[:0], op, payload)
	_ = c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(c.wbuf); err != nil {
		return fmt.Errorf("client %d: write: %w", c.id, err)
	}
	return nil
}

func (c *fanClient) markReady() {
	if !c.rdy {
		c.rdy = true
		close(c.ready)
	}
}

var errPeerClosed = errors.New("server sent close")

// readLoop reads and accounts every frame until the connection ends.
func (c *fanClient) readLoop(st *fanState, pre []byte) {
	defer close(c.done)
	rec := st.recorders[c.node]
	var (
		p       frameParser
		lat     = make([]int64, 0, 64)
		buf     = make([]byte, 8<<10)
		now     time.Time
		nowNano int64
		batch   int64
	)
	handle := func(op ws.OpCode, payload []byte) error {
		switch op {
		case ws.OpPing:
			return c.write(ws.OpPong, payload)
		case ws.OpClose:
			_ = c.write(ws.OpClose, nil)
			return errPeerClosed
		case ws.OpText, ws.OpBinary:
		default:
			return nil
		}
		var text []byte
		if st.cfg.proto == "plain" {
			c.markReady()
			text = payload
		} else {
			switch frameType(payload) {
			case "message":
				text = jsonText(payload)
			case "joined":
				c.markReady()
				return nil
			case "ack":
				c.acks++
				return nil
			case "error":
				st.errFrames.Add(1)
				st.firstErr.set(fmt.Errorf("client %d: error frame: %s", c.id, truncate(payload, 200)))
				return nil
			default:
				return nil
			}
		}
		if !bytes.HasPrefix(text, []byte(payloadPrefix)) {
			return nil // e.g. the plain greeting "connected to node …"
		}
		sender, seq, ts, ok := parsePayload(text)
		if !ok {
			c.tracker.foreign++
			return nil
		}
		if c.tracker.observe(sender, seq) {
			batch++
			lat = append(lat, (nowNano-ts)/1000)
		}
		return nil
	}
	flush := func() {
		if batch == 0 {
			return
		}
		rec.recordBatch(c.id, lat)
		st.delivered.Add(batch)
		st.lastRecv.Store(nowNano)
		if i := st.bucket(nowNano); i >= 0 {
			st.recvTL[i].Add(batch)
		}
		lat = lat[:0]
		batch = 0
	}
	var err error
	if len(pre) > 0 {
		now = time.Now()
		nowNano = now.UnixNano()
		err = p.feed(pre, handle)
		flush()
	}
	for err == nil {
		var n int
		n, err = c.nc.Read(buf)
		if n > 0 {
			now = time.Now()
			nowNano = now.UnixNano()
			st.lastFrame.Store(nowNano)
			if ferr := p.feed(buf[:n], handle); ferr != nil {
				err = ferr
			}
			flush()
		}
	}
	if !st.closing.Load() {
		st.disconnect.Add(1)
		st.firstErr.set(fmt.Errorf("client %d disconnected: %w", c.id, err))
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

var typePrefix = []byte(`{"type":"`)

// frameType returns the "type" of a JSON node frame, fast when type is the
// first field.
func frameType(p []byte) string {
	if bytes.HasPrefix(p, typePrefix) {
		rest := p[len(typePrefix):]
		if i := bytes.IndexByte(rest, '"'); i >= 0 {
			return string(rest[:i])
		}
	}
	var probe struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(p, &probe)
	return probe.Type
}

var textKey = []byte(`"text":"`)

// jsonText returns the text field of a message frame. Bench payloads need no
// escaping, so the fast path is a byte search; anything else is decoded.
func jsonText(p []byte) []byte {
	if i := bytes.Index(p, textKey); i >= 0 {
		rest := p[i+len(textKey):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 && bytes.IndexByte(rest[:j], '\\') < 0 {
			return rest[:j]
		}
	}
	var m struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(p, &m); err != nil {
		return nil
	}
	return []byte(m.Text)
}

// sendLoop writes one message per token until tokens is closed.
func (c *fanClient) sendLoop(st *fanState, tokens <-chan struct{}) {
	var (
		seq  uint64
		pbuf []byte
		mbuf []byte
	)
	size := st.cfg.size
	for range tokens {
		now := time.Now().UnixNano()
		pbuf = appendPayload(pbuf[:0], c.sender, seq, now, size)
		msg := pbuf
		if st.cfg.proto == "json" {
			mbuf = append(mbuf[:0], st.roomFrames[c.room]...)
			mbuf = append(mbuf, pbuf...)
			mbuf = append(mbuf, `","id":"s`...)
			mbuf = strconv.AppendInt(mbuf, int64(c.sender), 10)
			mbuf = append(mbuf, '-')
			mbuf = strconv.AppendUint(mbuf, seq, 10)
			mbuf = append(mbuf, `"}`...)
			msg = mbuf
		}
		seq++
		if err := c.write(ws.OpText, msg); err != nil {
			st.sendErrs.Add(1)
			st.firstErr.set(err)
			continue
		}
		st.sentRoom[c.room].Add(1)
		if i := st.bucket(now); i >= 0 {
			st.sendTL[i].Add(1)
		}
	}
}

// assignNodes returns the target index of each client. Without cross-node,
// clients go round-robin over the targets. With cross-node, every sender is
// on target 0 and the other clients fill the targets so that each holds about
// clients/len(targets), target 0 last.
func assignNodes(clients, senders, nTargets int, crossNode bool) []int {
	out := make([]int, clients)
	if nTargets <= 1 {
		return out
	}
	if !crossNode {
		for i := range out {
			out[i] = i % nTargets
		}
		return out
	}
	want := make([]int, nTargets)
	for i := range want {
		want[i] = clients / nTargets
		if i < clients%nTargets {
			want[i]++
		}
	}
	have := make([]int, nTargets)
	have[0] = min(senders, clients)
	for i := have[0]; i < clients; i++ {
		best := -1
		for u := nTargets - 1; u >= 0; u-- {
			if best < 0 || want[u]-have[u] > want[best]-have[best] {
				best = u
			}
		}
		out[i] = best
		have[best]++
	}
	return out
}

// fanoutResult is the outcome of a fanout run.
type fanoutResult struct {
	Mode           string              `json:"mode"`
	Proto          string              `json:"proto"`
	URLs           []string            `json:"urls"`
	CrossNode      bool                `json:"cross_node"`
	Clients        int                 `json:"clients"`
	Connected      int                 `json:"connected"`
	ConnectErrors  int                 `json:"connect_errors"`
	NotReady       int                 `json:"not_ready"`
	Rooms          int                 `json:"rooms"`
	Senders        int                 `json:"senders"`
	Rate           float64             `json:"rate"`
	DurationS      float64             `json:"duration_s"`
	Size           int                 `json:"size"`
	Sent           int64               `json:"sent"`
	SendSkipped    int64               `json:"send_skipped"`
	SendErrors     int64               `json:"send_errors"`
	Expected       int64               `json:"expected"`
	deliveryTotals                     // received, duplicates, out_of_order, foreign
	Loss           int64               `json:"loss"`
	LossPct        float64             `json:"loss_pct"`
	DeliveriesPS   float64             `json:"deliveries_per_s"`
	DrainS         float64             `json:"drain_s"`
	ErrorFrames    int64               `json:"error_frames"`
	Disconnects    int64               `json:"disconnects"`
	Latency        latencySummary      `json:"latency"`
	PerURL         []latencySummary    `json:"latency_per_url,omitempty"`
	Spectrum       []percentilePoint   `json:"spectrum"`
	NodeCPU        []cpuUse            `json:"node_cpu,omitempty"`
	SelfCPU        float64             `json:"self_cpu_pct"`
	Nodes          []nodeStats         `json:"nodes,omitempty"`
	Timeline       []timelinePoint     `json:"timeline"`
	FirstError     string              `json:"first_error,omitempty"`
	PerURLSpectra  [][]percentilePoint `json:"-"`
}

// timelinePoint is one bucket of the throughput timeline.
type timelinePoint struct {
	T         float64 `json:"t_s"`
	SendPS    float64 `json:"sends_per_s"`
	DeliverPS float64 `json:"deliveries_per_s"`
}

// runFanout connects the clients, sends at the configured rate, drains and
// accounts.
func runFanout(cfg fanoutConfig) (*fanoutResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	st := &fanState{cfg: &cfg, sentRoom: make([]atomic.Int64, cfg.rooms)}
	for range cfg.targets {
		st.recorders = append(st.recorders, newLatencyRecorder(8))
	}
	for r := range cfg.rooms {
		name := fmt.Sprintf("%s%d", cfg.roomPrefix, r)
		st.roomNames = append(st.roomNames, name)
		st.roomFrames = append(st.roomFrames, []byte(`{"type":"send","room":"`+name+`","text":"`))
	}
	nodes := assignNodes(cfg.clients, cfg.senders, len(cfg.targets), cfg.crossNode)
	clients := make([]*fanClient, cfg.clients)
	for i := range clients {
		s := -1
		if i < cfg.senders {
			s = i
		}
		clients[i] = &fanClient{id: i, node: nodes[i], room: i % cfg.rooms, sender: s,
			ready: make(chan struct{}), done: make(chan struct{}), tracker: newDeliveryTracker(cfg.senders)}
	}
	res := &fanoutResult{Mode: "fanout", Proto: cfg.proto, CrossNode: cfg.crossNode, Clients: cfg.clients,
		Rooms: cfg.rooms, Senders: cfg.senders, Rate: cfg.rate, DurationS: cfg.duration.Seconds(), Size: cfg.size}
	for _, t := range cfg.targets {
		res.URLs = append(res.URLs, t.raw)
	}

	// Connect and join, bounded by concurrency and time.
	var connected []*fanClient
	var cmu sync.Mutex
	var connErrs atomic.Int64
	sem := make(chan struct{}, cfg.concurrency)
	var wg sync.WaitGroup
	connectDeadline := time.Now().Add(cfg.connectTimeout)
	stopProgress := startProgress(cfg.progress, func() string {
		cmu.Lock()
		n := len(connected)
		cmu.Unlock()
		return fmt.Sprintf("connecting: %d/%d connected, %d errors", n, cfg.clients, connErrs.Load())
	})
	for _, c := range clients {
		if time.Now().After(connectDeadline) {
			connErrs.Add(1)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(c *fanClient) {
			defer wg.Done()
			defer func() { <-sem }()
			nc, pre, err := dialWS(cfg.targets[c.node], fmt.Sprintf("b%d", c.id), sourceIP(c.id, cfg.sources), cfg.connectTimeout)
			if err != nil {
				connErrs.Add(1)
				st.firstErr.set(err)
				return
			}
			c.nc = nc
			go c.readLoop(st, pre)
			if cfg.proto == "json" {
				join := []byte(`{"type":"join","room":"` + st.roomNames[c.room] + `"}`)
				if err := c.write(ws.OpText, join); err != nil {
					st.firstErr.set(err)
				}
			}
			cmu.Lock()
			connected = append(connected, c)
			cmu.Unlock()
		}(c)
	}
	wg.Wait()
	stopProgress()
	res.ConnectErrors = int(connErrs.Load())

	// Wait until every connected client is ready (joined, or got its first frame).
	members := make([]int64, cfg.rooms)
	timeout := time.NewTimer(time.Until(connectDeadline) + 5*time.Second)
	defer timeout.Stop()
	var live []*fanClient
	waiting := true
	for _, c := range connected {
		if waiting {
			select {
			case <-c.ready:
			case <-timeout.C:
				waiting = false
			}
		}
		select {
		case <-c.ready:
			live = append(live, c)
			members[c.room]++
		default:
			res.NotReady++
		}
	}
	res.Connected = len(live)
	stillSender := 0
	for _, c := range live {
		if c.sender >= 0 {
			stillSender++
		}
	}
	closeAll := func() {
		st.closing.Store(true)
		for _, c := range connected {
			_ = c.nc.Close()
		}
		for _, c := range connected {
			<-c.done
		}
	}
	if stillSender == 0 {
		closeAll()
		return res, fmt.Errorf("fanout: no sender is connected (connect errors %d, not ready %d): %s",
			res.ConnectErrors, res.NotReady, st.firstErr.get())
	}
	// Clients that never became ready are not members: drop them.
	for _, c := range connected {
		select {
		case <-c.ready:
		default:
			_ = c.nc.Close()
		}
	}

	// Let the joins settle: a node may announce every join to every member
	// (Parley's member_joined), which is a burst of N² frames that would
	// otherwise be measured as the first messages' latency. Wait until no
	// frame arrived for cfg.settle, bounded by cfg.settleMax.
	if cfg.settle > 0 {
		settleEnd := time.Now().Add(cfg.settleMax)
		for time.Now().Before(settleEnd) && time.Since(time.Unix(0, st.lastFrame.Load())) < cfg.settle {
			time.Sleep(cfg.settle / 10)
		}
	}

	// Send at the fixed total rate.
	cpu := startCPU(cfg.pids)
	tokens := make([]chan struct{}, 0, cfg.senders)
	var swg sync.WaitGroup
	var sendersLive []*fanClient
	for _, c := range live {
		if c.sender >= 0 {
			sendersLive = append(sendersLive, c)
		}
	}
	for _, c := range sendersLive {
		ch := make(chan struct{}, 1024)
		tokens = append(tokens, ch)
		swg.Add(1)
		go func() {
			defer swg.Done()
			c.sendLoop(st, ch)
		}()
	}
	start := time.Now()
	st.start.Store(start.UnixNano())
	stopProgress = startProgress(cfg.progress, func() string {
		el := time.Since(start).Seconds()
		h := mergeRecorders(st.recorders)
		return fmt.Sprintf("t=%4.1fs conns %d  sent %d  deliveries %d (%.0f/s)  p99 %.1f ms",
			el, len(live), sumRooms(st.sentRoom), st.delivered.Load(), float64(st.delivered.Load())/el,
			float64(h.ValueAtQuantile(99))/1000)
	})
	total := int64(cfg.rate * cfg.duration.Seconds())
	ticker := time.NewTicker(time.Millisecond)
	var issued int64
	for issued < total {
		<-ticker.C
		el := time.Since(start)
		due := min(int64(cfg.rate*el.Seconds()), total)
		if el > cfg.duration+time.Second {
			due = total
		}
		for ; issued < due; issued++ {
			select {
			case tokens[issued%int64(len(tokens))] <- struct{}{}:
			default:
				st.skipped.Add(1)
			}
		}
	}
	ticker.Stop()
	for _, ch := range tokens {
		close(ch)
	}
	swg.Wait()
	sendEnd := time.Now()

	// Expected deliveries: every message reaches every member of its room.
	var expected int64
	for r := range cfg.rooms {
		n := st.sentRoom[r].Load()
		res.Sent += n
		expected += n * members[r]
	}
	res.Expected = expected

	// Drain: until everything arrived, nothing arrived for cfg.quiet, or cfg.drain passed.
	drainDeadline := sendEnd.Add(cfg.drain)
	lastCount, lastChange := st.delivered.Load(), time.Now()
	for time.Now().Before(drainDeadline) {
		n := st.delivered.Load()
		if n >= expected {
			break
		}
		if n != lastCount {
			lastCount, lastChange = n, time.Now()
		} else if time.Since(lastChange) > cfg.quiet {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval for a counter
	}
	res.DrainS = time.Since(sendEnd).Seconds()
	stopProgress()
	res.NodeCPU, res.SelfCPU = cpu.stop(0)
	if !cfg.probe.empty() {
		res.Nodes = cfg.probe.read()
	}
	closeAll()

	var tot deliveryTotals
	for _, c := range live {
		tot.add(c.tracker)
	}
	res.deliveryTotals = tot
	res.Loss = max(expected-int64(tot.Received), 0)
	if expected > 0 {
		res.LossPct = float64(res.Loss) / float64(expected) * 100
	}
	if last := st.lastRecv.Load(); last > start.UnixNano() {
		res.DeliveriesPS = float64(tot.Received) / time.Duration(last-start.UnixNano()).Seconds()
	}
	res.SendSkipped = st.skipped.Load()
	res.SendErrors = st.sendErrs.Load()
	res.ErrorFrames = st.errFrames.Load()
	res.Disconnects = st.disconnect.Load()
	res.FirstError = st.firstErr.get()
	all := mergeRecorders(st.recorders)
	res.Latency = summarize(all)
	res.Spectrum = spectrum(all)
	if len(st.recorders) > 1 {
		for _, r := range st.recorders {
			h := r.snapshot()
			res.PerURL = append(res.PerURL, summarize(h))
			res.PerURLSpectra = append(res.PerURLSpectra, spectrum(h))
		}
	}
	nb := int(time.Since(start)/timelineStep) + 1
	nb = min(nb, len(st.recvTL))
	perS := float64(time.Second) / float64(timelineStep)
	for i := range nb {
		res.Timeline = append(res.Timeline, timelinePoint{
			T:         float64(i) * timelineStep.Seconds(),
			SendPS:    float64(st.sendTL[i].Load()) * perS,
			DeliverPS: float64(st.recvTL[i].Load()) * perS,
		})
	}
	return res, nil
}

func sumRooms(a []atomic.Int64) int64 {
	var t int64
	for i := range a {
		t += a[i].Load()
	}
	return t
}

func mergeRecorders(rs []*latencyRecorder) *hdrHistogram {
	out := newHist()
	for _, r := range rs {
		out.Merge(r.snapshot())
	}
	return out
}

func (cfg *fanoutConfig) validate() error {
	switch {
	case len(cfg.targets) == 0:
		return errors.New("fanout: no --url")
	case cfg.proto != "json" && cfg.proto != "plain":
		return fmt.Errorf("fanout: --proto must be json or plain, not %q", cfg.proto)
	case cfg.clients < 1 || cfg.clients > 15000:
		return fmt.Errorf("fanout: --clients must be 1…15000, not %d", cfg.clients)
	case cfg.rooms < 1 || cfg.rooms > cfg.clients:
		return fmt.Errorf("fanout: --rooms must be 1…clients, not %d", cfg.rooms)
	case cfg.proto == "plain" && cfg.rooms != 1:
		return errors.New("fanout: --proto plain has one room (lobby): use --rooms 1")
	case cfg.senders < 1 || cfg.senders > cfg.clients:
		return fmt.Errorf("fanout: --senders must be 1…clients, not %d", cfg.senders)
	case cfg.rate <= 0 || cfg.rate > 1e6:
		return fmt.Errorf("fanout: --rate must be in (0, 1e6], not %g", cfg.rate)
	case cfg.duration <= 0 || cfg.duration > time.Hour:
		return fmt.Errorf("fanout: --duration must be in (0, 1h], not %s", cfg.duration)
	case cfg.size < 48 || cfg.size > 1<<20:
		return fmt.Errorf("fanout: --size must be 48…1MiB (the payload header needs ~45 bytes), not %d", cfg.size)
	case cfg.crossNode && len(cfg.targets) < 2:
		return errors.New("fanout: --cross-node needs at least two --url")
	}
	if cfg.concurrency < 1 {
		cfg.concurrency = 1
	}
	if cfg.quiet <= 0 {
		cfg.quiet = 2 * time.Second
	}
	if cfg.connectTimeout <= 0 {
		cfg.connectTimeout = 30 * time.Second
	}
	return nil
}
