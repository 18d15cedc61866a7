package main

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// runStorm is a join storm: cfg.clients clients connect and join cfg.rooms
// rooms (one by default) as fast as cfg.concurrency allows, nobody sends,
// and the run waits until no frame arrived for cfg.quiet (bounded by
// cfg.drain). It counts the presence frames (member_joined, member_left)
// the clients received, the close codes the node sent (4008: kicked as a
// slow consumer) and how long the joins took.
func runStorm(cfg fanoutConfig) (*fanoutResult, error) {
	cfg.senders, cfg.rate = 0, 0
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.settle, cfg.settleMax = cfg.quiet, cfg.drain
	if cfg.proto != "json" {
		return nil, errors.New("storm: joins and presence need --proto json (a /ws URL)")
	}
	r := newFanRun(&cfg, "storm")
	defer r.closeAll()
	r.cpu = startCPU(cfg.pids)
	begin := time.Now()
	r.connect()
	if err := r.ready(); err != nil {
		return r.res, err
	}
	r.settle()
	if last := r.st.lastFrame.Load(); last > begin.UnixNano() {
		r.res.StormS = time.Duration(last - begin.UnixNano()).Seconds()
	}
	r.account()
	return r.res, nil
}

// stormAnnouncements is how many member_joined frames n clients joining one
// room receive if every join is announced to every member already in it.
func stormAnnouncements(n int) int64 {
	return int64(n) * int64(n-1) / 2
}

func printStorm(w io.Writer, r *fanoutResult) {
	fmt.Fprintf(w, "storm: %d clients into %d room(s) of %v\n", r.Clients, r.Rooms, r.URLs)
	fmt.Fprintf(w, "joined %d (connect errors %d, not ready %d) in %.2f s; dial → joined ms: p50 %.1f  p99 %.1f  max %.1f\n",
		r.Connected, r.ConnectErrors, r.NotReady, r.JoinS, r.JoinWait.P50, r.JoinWait.P99, r.JoinWait.Max)
	per := r.Clients / max(r.Rooms, 1)
	fmt.Fprintf(w, "presence frames received %d (every join to every member: %d); the last frame %.2f s after the first dial\n",
		r.PresenceFrames, int64(r.Rooms)*stormAnnouncements(per), r.StormS)
	fmt.Fprintf(w, "closes by the node %v (4008 = slow consumer), disconnects %d, error frames %d\n",
		r.Closes, r.Disconnects, r.ErrorFrames)
	for _, c := range r.NodeCPU {
		fmt.Fprintf(w, "cpu %s: %.0f %%\n", c.Target, c.Pct)
	}
	for _, n := range r.Nodes {
		fmt.Fprintf(w, "node %s: RSS %.1f MiB, goroutines %d\n", n.Target, mib(n.RSS), n.Goroutines)
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
}
