package main

import (
	"strconv"
	"time"
)

// account reads the nodes, ends every connection and sums what the
// receivers saw into the result.
func (r *fanRun) account() {
	cfg, st, res := r.cfg, r.st, r.res
	if r.cpu != nil {
		res.NodeCPU, res.SelfCPU = r.cpu.stop(0)
	}
	if !cfg.probe.empty() {
		res.Nodes = cfg.probe.read()
	}
	r.closeAll()

	res.Expected = r.expected()
	for room := range cfg.rooms {
		res.Sent += st.sentRoom[room].Load()
	}
	var tot deliveryTotals
	for _, c := range r.live {
		tot.add(c.tracker)
		res.PresenceFrames += c.presence
	}
	for _, c := range r.connected {
		if c.closedBy != 0 {
			if res.Closes == nil {
				res.Closes = map[string]int{}
			}
			res.Closes[strconv.Itoa(int(c.closedBy))]++
		}
	}
	res.deliveryTotals = tot
	res.PerWrite = perWrite(int64(tot.Received), res.NodeCPU, len(cfg.targets))
	res.Loss, res.LossPct = lossOf(res.Expected, int64(tot.Received))
	if last := st.lastRecv.Load(); !r.start.IsZero() && last > r.start.UnixNano() {
		res.DeliveriesPS = float64(tot.Received) / time.Duration(last-r.start.UnixNano()).Seconds()
	}
	res.SendSkipped = st.skipped.Load()
	res.SendErrors = st.sendErrs.Load()
	res.ErrorFrames = st.errFrames.Load()
	res.Disconnects = st.disconnect.Load()
	res.FirstError = st.firstErr.get()
	r.accountLatency()
	r.accountTimeline()
}

// lossOf is the deliveries that did not arrive, and their share in percent.
func lossOf(expected, received int64) (int64, float64) {
	loss := max(expected-received, 0)
	if expected == 0 {
		return loss, 0
	}
	return loss, float64(loss) / float64(expected) * 100
}

func (r *fanRun) accountLatency() {
	all := mergeRecorders(r.st.recorders)
	r.res.Latency = summarize(all)
	r.res.Spectrum = spectrum(all)
	if len(r.st.recorders) > 1 {
		for _, rec := range r.st.recorders {
			h := rec.snapshot()
			r.res.PerURL = append(r.res.PerURL, summarize(h))
			r.res.PerURLSpectra = append(r.res.PerURLSpectra, spectrum(h))
		}
	}
}

func (r *fanRun) accountTimeline() {
	if r.start.IsZero() {
		return
	}
	st := r.st
	nb := min(int(time.Since(r.start)/timelineStep)+1, len(st.recvTL))
	perS := float64(time.Second) / float64(timelineStep)
	for i := range nb {
		r.res.Timeline = append(r.res.Timeline, timelinePoint{
			T:         float64(i) * timelineStep.Seconds(),
			SendPS:    float64(st.sendTL[i].Load()) * perS,
			DeliverPS: float64(st.recvTL[i].Load()) * perS,
		})
	}
}

// perWrite is deliveries per write syscall of the nodes: the first nTargets
// measured processes (--pid lists the nodes first, then e.g. Redis); 0 when
// they were not measured.
func perWrite(received int64, procs []cpuUse, nTargets int) float64 {
	var w int64
	for i := 0; i < nTargets && i < len(procs); i++ {
		w += procs[i].Writes
	}
	if w <= 0 {
		return 0
	}
	return float64(received) / float64(w)
}
