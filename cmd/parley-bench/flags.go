package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// listFlag is a repeatable flag that also splits on commas.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			*l = append(*l, f)
		}
	}
	return nil
}

// options holds every flag.
type options struct {
	urls, admins, pids                        listFlag
	proto, roomPrefix, steps, htmlPath, label string
	clients, rooms, senders, size, conns      int
	sources, concurrency, perProcess          int
	rate                                      float64
	duration, drain, quiet, connectTimeout    time.Duration
	joinQuiet, joinQuietMax                   time.Duration
	settle, hold, idleFor                     time.Duration
	crossNode, jsonOut                        bool
	record, system, scenario, results, md     string
	notes, listen                             string
	runN, workers                             int
	join                                      bool
	readEvery                                 time.Duration
	cpuProfile                                string

	// Derived from the flags by parseOptions.
	targets []target
	pidNums []int
	probe   nodeProbe
}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("parley-bench", flag.ContinueOnError)
	fs.Var(&o.urls, "url", "node WebSocket URL, repeatable or comma-separated (loopback only; default ws://127.0.0.1:8080/ws)")
	fs.Var(&o.admins, "admin", "node admin address host:port for GET /debug/stats, repeatable (one per node); floor: where to serve /debug/pprof/")
	fs.Var(&o.pids, "pid", "node process id for RSS/CPU from /proc, repeatable (one per node, same order as --admin)")
	fs.StringVar(&o.proto, "proto", "json", "json (protocol v1 on /ws) or plain (raw text, lobby, on /)")
	fs.StringVar(&o.roomPrefix, "room-prefix", "bench", "fanout json: rooms are PREFIX0 … PREFIX(R-1)")
	fs.IntVar(&o.clients, "clients", 1000, "fanout: clients")
	fs.IntVar(&o.rooms, "rooms", 1, "fanout: rooms (client i joins room i mod R)")
	fs.IntVar(&o.senders, "senders", 100, "fanout: senders (the first S clients)")
	fs.Float64Var(&o.rate, "rate", 100, "fanout: total messages per second over all senders")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "fanout: sending time")
	fs.IntVar(&o.size, "size", 64, "fanout: payload bytes (the text of each message)")
	fs.DurationVar(&o.drain, "drain", 10*time.Second, "fanout: longest wait for outstanding deliveries after sending")
	fs.DurationVar(&o.quiet, "quiet", 2*time.Second, "fanout: end the drain after this long without a delivery")
	fs.DurationVar(&o.joinQuiet, "join-quiet", 500*time.Millisecond, "fanout: before sending, wait until no frame arrived for this long, so join announcements settle (0: send at once)")
	fs.DurationVar(&o.joinQuietMax, "join-quiet-max", 15*time.Second, "fanout: the longest wait for --join-quiet")
	fs.BoolVar(&o.crossNode, "cross-node", false, "fanout: senders on the first --url, receivers spread over all")
	fs.IntVar(&o.conns, "conns", 2000, "connect/idle: connections (when --steps is empty)")
	fs.StringVar(&o.steps, "steps", "", "connect/idle: cumulative connection counts to measure at, e.g. 2000,15000")
	fs.DurationVar(&o.settle, "settle", 15*time.Second, "idle: longest wait for the node's RSS to settle at each step")
	fs.DurationVar(&o.idleFor, "idle-for", 0, "idle: at each step, let the connections sit idle this long before measuring (then settle): what a node holding them for good shows, after its quiet-time policies (--mem-release-after) had their turn")
	fs.DurationVar(&o.hold, "hold", 5*time.Second, "idle: hold the connections this long after the last step")
	fs.IntVar(&o.perProcess, "per-process", 15000, "connect/idle: most connections one process holds (open files are capped at 20000)")
	fs.IntVar(&o.sources, "sources", 50, "number of loopback source addresses 127.0.0.2… to spread connections over")
	fs.IntVar(&o.concurrency, "concurrency", 64, "connections being opened at once")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", 10*time.Second, "bound on one dial+upgrade (and on a fanout connect phase ×3)")
	fs.BoolVar(&o.jsonOut, "json", false, "print one JSON result object instead of text")
	fs.StringVar(&o.htmlPath, "html", "", "write a self-contained HTML report to this file")
	fs.StringVar(&o.label, "label", "", "label shown in reports (e.g. parley or baseline)")
	fs.StringVar(&o.record, "record", "", "append the result as one JSON line {system, scenario, run, cmd, result} to this file")
	fs.StringVar(&o.system, "system", "", "--record: system name (e.g. parley, baseline)")
	fs.StringVar(&o.scenario, "scenario", "", "--record: scenario name (e.g. idle, fanout-100)")
	fs.IntVar(&o.runN, "run", 1, "--record: run number")
	fs.StringVar(&o.results, "results", "", "report: results file written with --record")
	fs.StringVar(&o.md, "md", "BENCHMARKS.md", "report: Markdown file whose bench section is rewritten")
	fs.StringVar(&o.notes, "notes", "", "report: a paragraph added under the machine line")
	fs.StringVar(&o.listen, "listen", "", "floor: loopback host:port to serve on (e.g. 127.0.0.1:8090)")
	fs.IntVar(&o.workers, "workers", 0, "connect/idle: hold connections in at least this many worker processes (0: as --per-process needs)")
	fs.BoolVar(&o.join, "join", false, "connect/idle: count a connection once it is in a room: on / when greeted (lobby), on /ws after join → joined (rooms PREFIX0… over --rooms)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the load generator's own CPU profile to this file (to check that the harness is not what saturates)")
	fs.DurationVar(&o.readEvery, "read-every", 0, "connect/idle: read and discard what the node sent on every connection this often (0: only when measuring)")
	return fs
}

// applyEnv sets each flag from PARLEY_BENCH_<NAME> when that variable is set;
// the command line still wins because it is parsed afterwards.
func applyEnv(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := "PARLEY_BENCH_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}

// parseOptions parses the flags of one mode (environment first, then the
// command line) and checks every target, admin address and PID.
func parseOptions(args []string) (options, error) {
	var o options
	fs := newFlagSet(&o)
	fs.SetOutput(os.Stderr)
	if err := applyEnv(fs); err != nil {
		return o, err
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if len(o.urls) == 0 {
		o.urls = listFlag{"ws://127.0.0.1:8080/ws"}
	}
	for _, u := range o.urls {
		t, err := newTarget(u)
		if err != nil {
			return o, err
		}
		o.targets = append(o.targets, t)
	}
	for _, a := range o.admins {
		if err := checkLoopbackAddr(a); err != nil {
			return o, fmt.Errorf("--admin: %w", err)
		}
	}
	for _, p := range o.pids {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return o, fmt.Errorf("--pid %q: not a process id", p)
		}
		o.pidNums = append(o.pidNums, n)
	}
	if o.concurrency < 1 || o.concurrency > 1024 {
		return o, fmt.Errorf("--concurrency must be 1…1024, not %d", o.concurrency)
	}
	if o.perProcess < 1 || o.perProcess > 18000 {
		return o, fmt.Errorf("--per-process must be 1…18000 (open files are capped at 20000), not %d", o.perProcess)
	}
	if o.workers < 0 || o.workers > 64 {
		return o, fmt.Errorf("--workers must be 0…64, not %d", o.workers)
	}
	o.probe = nodeProbe{admins: o.admins, pids: o.pidNums}
	return o, nil
}

// idleConfig is the configuration of a connect or idle run (mode) or of a
// worker process.
func (o options) idleConfig(mode string, progress io.Writer) (idleConfig, error) {
	cfg := idleConfig{
		targets: o.targets, concurrency: o.concurrency, sources: o.sources, perProcess: o.perProcess,
		connectTimeout: o.connectTimeout, settle: o.settle, idleFor: o.idleFor, hold: o.hold, probe: o.probe, progress: progress,
		workers: o.workers, readEvery: o.readEvery,
	}
	if o.join {
		cfg.join = &joinSpec{proto: o.proto, rooms: o.rooms, prefix: o.roomPrefix}
	}
	if mode == "worker" {
		return cfg, nil
	}
	steps, err := parseSteps(o.steps)
	if err != nil {
		return cfg, err
	}
	if len(steps) == 0 {
		steps = []int{o.conns}
	}
	cfg.steps = steps
	cfg.hold0 = mode == "idle"
	if mode == "connect" {
		// connect measures the rate; with a probe it also reads the node once per step.
		cfg.probe = nodeProbe{}
		if !o.probe.empty() {
			cfg.probe, cfg.settle, cfg.hold0, cfg.hold = o.probe, 0, true, 0
		}
	}
	if err := cfg.validate(); err != nil {
		return cfg, err
	}
	// Workers get the dialing flags; the concurrency is split between them.
	for _, u := range o.urls {
		cfg.worker = append(cfg.worker, "--url", u)
	}
	cfg.worker = append(cfg.worker, "--sources", strconv.Itoa(o.sources),
		"--concurrency", strconv.Itoa(max(1, o.concurrency/cfg.processes())),
		"--connect-timeout", o.connectTimeout.String(), "--read-every", o.readEvery.String(),
		"--proto", o.proto, "--rooms", strconv.Itoa(o.rooms), "--room-prefix", o.roomPrefix,
		"--join="+strconv.FormatBool(o.join))
	return cfg, nil
}

// fanoutConfig is the configuration of a fanout or storm run.
func (o options) fanoutConfig(progress io.Writer) fanoutConfig {
	return fanoutConfig{
		targets: o.targets, proto: o.proto, roomPrefix: o.roomPrefix, clients: o.clients, rooms: o.rooms,
		senders: o.senders, rate: o.rate, duration: o.duration, size: o.size, drain: o.drain, quiet: o.quiet,
		settle: o.joinQuiet, settleMax: o.joinQuietMax,
		connectTimeout: o.connectTimeout * 3, concurrency: o.concurrency, sources: o.sources,
		crossNode: o.crossNode, probe: o.probe, pids: o.pidNums, progress: progress,
	}
}
