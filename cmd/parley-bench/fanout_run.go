package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// A fanout run goes through five phases, one method each: connect (dial and
// join, bounded by concurrency and time), ready (wait for every join to be in
// effect), settle (let join announcements pass), send (a paced, open-loop
// rate over the senders), drain (wait for what is still in flight) and
// account (sum the receivers into the result). A storm run is the same
// without send.

// fanRun is one fanout or storm run in progress.
type fanRun struct {
	cfg     *fanoutConfig
	st      *fanState
	clients []*fanClient // every client, in id order
	res     *fanoutResult

	connected []*fanClient // dialled (the reader runs), in no order
	live      []*fanClient // ready: the members of their rooms
	members   []int64      // live clients per room
	cpu       *cpuMeter
	start     time.Time // sending began
	sendEnd   time.Time
}

// runFanout connects the clients, sends at the configured rate, drains and
// accounts.
func runFanout(cfg fanoutConfig) (*fanoutResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.senders < 1 || cfg.rate <= 0 {
		return nil, fmt.Errorf("fanout: needs --senders ≥ 1 and --rate > 0 (got %d, %g)", cfg.senders, cfg.rate)
	}
	r := newFanRun(&cfg, "fanout")
	defer r.closeAll()
	r.connect()
	if err := r.ready(); err != nil {
		return r.res, err
	}
	r.settle()
	r.send()
	r.drain()
	r.account()
	return r.res, nil
}

func newFanRun(cfg *fanoutConfig, mode string) *fanRun {
	st := &fanState{cfg: cfg, sentRoom: make([]atomic.Int64, cfg.rooms)}
	for range cfg.targets {
		st.recorders = append(st.recorders, newLatencyRecorder(8))
	}
	for r := range cfg.rooms {
		name := fmt.Sprintf("%s%d", cfg.roomPrefix, r)
		st.roomNames = append(st.roomNames, name)
		st.roomFrames = append(st.roomFrames, []byte(`{"type":"send","room":"`+name+`","text":"`))
	}
	nodes := assignNodes(cfg.clients, cfg.senders, len(cfg.targets), cfg.crossNode)
	r := &fanRun{cfg: cfg, st: st, members: make([]int64, cfg.rooms)}
	r.clients = make([]*fanClient, cfg.clients)
	for i := range r.clients {
		s := -1
		if i < cfg.senders {
			s = i
		}
		r.clients[i] = &fanClient{id: i, node: nodes[i], room: i % cfg.rooms, sender: s,
			ready: make(chan struct{}), done: make(chan struct{}),
			tracker: newDeliveryTracker(cfg.sendersPerRoom())}
	}
	r.res = &fanoutResult{Mode: mode, Proto: cfg.proto, CrossNode: cfg.crossNode, Clients: cfg.clients,
		Rooms: cfg.rooms, Senders: cfg.senders, Rate: cfg.rate, DurationS: cfg.duration.Seconds(), Size: cfg.size}
	for _, t := range cfg.targets {
		r.res.URLs = append(r.res.URLs, t.raw)
	}
	return r
}

// connect dials every client (bounded by concurrency and connectTimeout),
// starts its reader and, on json, sends its join.
func (r *fanRun) connect() {
	cfg, st := r.cfg, r.st
	var (
		mu       sync.Mutex // guards r.connected
		errs     atomic.Int64
		wg       sync.WaitGroup
		sem      = make(chan struct{}, cfg.concurrency)
		deadline = time.Now().Add(cfg.connectTimeout)
	)
	stop := startProgress(cfg.progress, func() string {
		mu.Lock()
		n := len(r.connected)
		mu.Unlock()
		return fmt.Sprintf("connecting: %d/%d connected, %d errors", n, cfg.clients, errs.Load())
	})
	defer stop()
	for _, c := range r.clients {
		if time.Now().After(deadline) {
			errs.Add(1)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.dialAt = time.Now()
			nc, pre, err := dialWS(cfg.targets[c.node], fmt.Sprintf("b%d", c.id), sourceIP(c.id, cfg.sources), cfg.connectTimeout)
			if err != nil {
				errs.Add(1)
				st.firstErr.set(err)
				return
			}
			c.nc = nc
			go c.readLoop(st, pre)
			if cfg.proto == "json" {
				if err := c.write(ws.OpText, joinFrame(st.roomNames[c.room])); err != nil {
					st.firstErr.set(err)
				}
			}
			mu.Lock()
			r.connected = append(r.connected, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	r.res.ConnectErrors = int(errs.Load())
}

// joinFrame is the protocol v1 join of room.
func joinFrame(room string) []byte {
	return []byte(`{"type":"join","room":"` + room + `"}`)
}

// ready waits (bounded) until every connected client is ready, keeps the
// ready ones as members and closes the others. It fails when no sender is
// left (a fanout run without a sender measures nothing).
func (r *fanRun) ready() error {
	timeout := time.NewTimer(r.cfg.connectTimeout + 5*time.Second)
	defer timeout.Stop()
	waiting := true
	var first, last time.Time
	var waits []int64
	for _, c := range r.connected {
		if waiting {
			select {
			case <-c.ready:
			case <-timeout.C:
				waiting = false
			}
		}
		select {
		case <-c.ready:
			r.live = append(r.live, c)
			r.members[c.room]++
			if first.IsZero() || c.dialAt.Before(first) {
				first = c.dialAt
			}
			if c.readyAt.After(last) {
				last = c.readyAt
			}
			waits = append(waits, c.readyAt.Sub(c.dialAt).Microseconds())
		default:
			r.res.NotReady++
			_ = c.nc.Close() // never joined: not a member
		}
	}
	r.res.Connected = len(r.live)
	if len(waits) > 0 {
		h := newLatencyRecorder(1)
		h.recordBatch(0, waits)
		r.res.JoinWait = summarize(h.snapshot())
		r.res.JoinS = last.Sub(first).Seconds()
	}
	if r.res.Mode == "storm" {
		return nil
	}
	for _, c := range r.live {
		if c.sender >= 0 {
			return nil
		}
	}
	return fmt.Errorf("fanout: no sender is connected (connect errors %d, not ready %d): %s",
		r.res.ConnectErrors, r.res.NotReady, r.st.firstErr.get())
}

// settle waits until no frame arrived for cfg.settle (bounded by
// cfg.settleMax): a node may announce every join to every member (Parley's
// member_joined), a burst of N² frames that would otherwise be measured as
// the first messages' latency.
func (r *fanRun) settle() {
	if r.cfg.settle <= 0 {
		return
	}
	end := time.Now().Add(r.cfg.settleMax)
	for time.Now().Before(end) && time.Since(time.Unix(0, r.st.lastFrame.Load())) < r.cfg.settle {
		time.Sleep(r.cfg.settle / 10) // polling a timestamp, not synchronisation
	}
}

// send paces cfg.rate messages per second for cfg.duration over the live
// senders, open loop: a token a busy sender cannot take is counted as
// skipped, never delayed.
func (r *fanRun) send() {
	cfg, st := r.cfg, r.st
	r.cpu = startCPU(cfg.pids)
	var tokens []chan struct{}
	var wg sync.WaitGroup
	for _, c := range r.live {
		if c.sender < 0 {
			continue
		}
		ch := make(chan struct{}, 1024)
		tokens = append(tokens, ch)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.sendLoop(st, ch)
		}()
	}
	r.start = time.Now()
	st.start.Store(r.start.UnixNano())
	stop := startProgress(cfg.progress, func() string {
		el := time.Since(r.start).Seconds()
		h := mergeRecorders(st.recorders)
		return fmt.Sprintf("t=%4.1fs conns %d  sent %d  deliveries %d (%.0f/s)  p99 %.1f ms",
			el, len(r.live), sumRooms(st.sentRoom), st.delivered.Load(), float64(st.delivered.Load())/el,
			float64(h.ValueAtQuantile(99))/1000)
	})
	defer stop()
	pace(r.start, cfg.rate, cfg.duration, func(i int64) {
		select {
		case tokens[i%int64(len(tokens))] <- struct{}{}:
		default:
			st.skipped.Add(1)
		}
	})
	for _, ch := range tokens {
		close(ch)
	}
	wg.Wait()
	r.sendEnd = time.Now()
}

// pace calls issue(0), issue(1), … so that rate×elapsed calls are due at
// any moment, rate×duration in all, checking every millisecond; if it falls
// more than a second behind, it issues the rest at once.
func pace(start time.Time, rate float64, duration time.Duration, issue func(i int64)) {
	total := int64(rate * duration.Seconds())
	ticker := time.NewTicker(time.Millisecond)
	defer ticker.Stop()
	var issued int64
	for issued < total {
		<-ticker.C
		el := time.Since(start)
		due := min(int64(rate*el.Seconds()), total)
		if el > duration+time.Second {
			due = total
		}
		for ; issued < due; issued++ {
			issue(issued)
		}
	}
}

// drain waits until every expected delivery arrived, nothing arrived for
// cfg.quiet, or cfg.drain passed since sending ended.
func (r *fanRun) drain() {
	expected := r.expected()
	end := r.sendEnd.Add(r.cfg.drain)
	last, lastChange := r.st.delivered.Load(), time.Now()
	for time.Now().Before(end) {
		n := r.st.delivered.Load()
		if n >= expected {
			break
		}
		if n != last {
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) > r.cfg.quiet {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling a counter
	}
	r.res.DrainS = time.Since(r.sendEnd).Seconds()
}

// expected is the deliveries due: every message reaches every member of
// its room.
func (r *fanRun) expected() int64 {
	var n int64
	for room := range r.cfg.rooms {
		n += r.st.sentRoom[room].Load() * r.members[room]
	}
	return n
}

// closeAll closes every connection and waits for every reader; after it,
// the readers' state may be read. It may be called more than once.
func (r *fanRun) closeAll() {
	if r.st.closing.Swap(true) {
		return
	}
	for _, c := range r.connected {
		_ = c.nc.Close()
	}
	for _, c := range r.connected {
		<-c.done
	}
}
