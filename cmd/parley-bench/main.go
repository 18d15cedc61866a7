// Command parley-bench is Parley's load generator. It opens WebSocket
// connections to one or more nodes on this machine and measures them.
//
// Modes:
//
//	parley-bench connect --url ws://127.0.0.1:8080/ws --steps 2000,15000
//	parley-bench idle    --url ws://127.0.0.1:8080/ws --steps 2000,15000 --admin 127.0.0.1:6060
//	parley-bench fanout  --url ws://127.0.0.1:8080/ws --clients 1000 --senders 100 --rate 100 --duration 10s
//
// connect and idle open connections step by step (over source addresses
// 127.0.0.2 … and, past --per-process connections, over worker processes:
// the tool re-executes itself as "parley-bench worker") and report the
// connect rate; idle also lets the node's RSS settle at each step and reports
// RSS, heap and goroutines of the node (from --admin /debug/stats and/or
// --pid /proc) and the slope in KiB per connection. Idle connections have no
// goroutine and no reader in the bench.
//
// fanout connects clients to rooms, sends at a fixed total rate from the
// first --senders clients, and accounts every delivery: loss, duplicates,
// out-of-order, latency percentiles (send timestamp in the payload → receipt),
// deliveries/s and CPU. --cross-node puts every sender on the first --url.
//
// Only loopback targets are accepted. Every flag has an environment twin:
// --rate ↔ PARLEY_BENCH_RATE, --cross-node ↔ PARLEY_BENCH_CROSS_NODE.
//
// Goroutines: the main goroutine drives a run; fanout has one reader
// goroutine per client (it alone owns that client's parser and tracker) and
// one writer goroutine per sender; writes to a connection are serialised by
// its write mutex. Connect workers are a bounded pool.
package main

import (
	"encoding/json"
	"errors"
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
	settle, hold                              time.Duration
	crossNode, jsonOut                        bool
	record, system, scenario, results, md     string
	notes                                     string
	runN                                      int
}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("parley-bench", flag.ContinueOnError)
	fs.Var(&o.urls, "url", "node WebSocket URL, repeatable or comma-separated (loopback only; default ws://127.0.0.1:8080/ws)")
	fs.Var(&o.admins, "admin", "node admin address host:port for GET /debug/stats, repeatable (one per node)")
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

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "parley-bench:", err)
		os.Exit(1)
	}
}

const usage = `usage: parley-bench connect|idle|fanout|report|freeport [flags]   (parley-bench fanout -h for flags)`

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New(usage)
	}
	mode := args[0]
	if mode == "freeport" {
		return freePort(stdout)
	}
	var o options
	fs := newFlagSet(&o)
	fs.SetOutput(os.Stderr)
	if err := applyEnv(fs); err != nil {
		return err
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if len(o.urls) == 0 {
		o.urls = listFlag{"ws://127.0.0.1:8080/ws"}
	}
	var targets []target
	for _, u := range o.urls {
		t, err := newTarget(u)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	for _, a := range o.admins {
		if err := checkLoopbackAddr(a); err != nil {
			return fmt.Errorf("--admin: %w", err)
		}
	}
	var pids []int
	for _, p := range o.pids {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return fmt.Errorf("--pid %q: not a process id", p)
		}
		pids = append(pids, n)
	}
	if o.concurrency < 1 || o.concurrency > 1024 {
		return fmt.Errorf("--concurrency must be 1…1024, not %d", o.concurrency)
	}
	if o.perProcess < 1 || o.perProcess > 18000 {
		return fmt.Errorf("--per-process must be 1…18000 (open files are capped at 20000), not %d", o.perProcess)
	}
	probe := nodeProbe{admins: o.admins, pids: pids}
	var progress io.Writer
	if f, ok := stdout.(*os.File); ok && !o.jsonOut && isTerminal(f) {
		progress = f
	}
	icfg := idleConfig{
		targets: targets, concurrency: o.concurrency, sources: o.sources, perProcess: o.perProcess,
		connectTimeout: o.connectTimeout, settle: o.settle, hold: o.hold, probe: probe, progress: progress,
	}
	switch mode {
	case "report":
		return runReport(o.results, o.md, o.notes)
	case "worker":
		return runWorker(icfg, stdin, stdout)
	case "connect", "idle":
		steps, err := parseSteps(o.steps)
		if err != nil {
			return err
		}
		if len(steps) == 0 {
			steps = []int{o.conns}
		}
		icfg.steps = steps
		icfg.hold0 = mode == "idle"
		if mode == "connect" {
			icfg.probe = nodeProbe{}
			if !probe.empty() {
				icfg.probe = probe
				icfg.settle = 0
				icfg.hold0 = true
				icfg.hold = 0
			}
		}
		// Workers get the dialing flags; the concurrency is split between them.
		procs := (steps[len(steps)-1] + o.perProcess - 1) / o.perProcess
		for _, u := range o.urls {
			icfg.worker = append(icfg.worker, "--url", u)
		}
		icfg.worker = append(icfg.worker, "--sources", strconv.Itoa(o.sources),
			"--concurrency", strconv.Itoa(max(1, o.concurrency/max(1, procs))),
			"--connect-timeout", o.connectTimeout.String())
		res, err := runIdle(icfg, mode)
		if err != nil {
			return err
		}
		if err := maybeRecord(o, args, res); err != nil {
			return err
		}
		return output(o, stdout, res, func(w io.Writer) { printIdle(w, res) }, func() ([]byte, error) { return idleHTML(o.label, res) })
	case "fanout":
		fcfg := fanoutConfig{
			targets: targets, proto: o.proto, roomPrefix: o.roomPrefix, clients: o.clients, rooms: o.rooms,
			senders: o.senders, rate: o.rate, duration: o.duration, size: o.size, drain: o.drain, quiet: o.quiet,
			settle: o.joinQuiet, settleMax: o.joinQuietMax,
			connectTimeout: o.connectTimeout * 3, concurrency: o.concurrency, sources: o.sources,
			crossNode: o.crossNode, probe: probe, pids: pids, progress: progress,
		}
		res, err := runFanout(fcfg)
		if err != nil {
			return err
		}
		if err := maybeRecord(o, args, res); err != nil {
			return err
		}
		return output(o, stdout, res, func(w io.Writer) { printFanout(w, res) }, func() ([]byte, error) { return fanoutHTML(o.label, res) })
	default:
		return fmt.Errorf("unknown mode %q: %s", mode, usage)
	}
}

func maybeRecord(o options, args []string, res any) error {
	if o.record == "" {
		return nil
	}
	return appendRecord(o.record, o.system, o.scenario, o.runN, args, res)
}

// output prints the result as JSON or text and writes the HTML report.
func output(o options, w io.Writer, res any, text func(io.Writer), html func() ([]byte, error)) error {
	if o.htmlPath != "" {
		b, err := html()
		if err != nil {
			return fmt.Errorf("html report: %w", err)
		}
		if err := os.WriteFile(o.htmlPath, b, 0o644); err != nil {
			return fmt.Errorf("html report: %w", err)
		}
	}
	if o.jsonOut {
		enc := json.NewEncoder(w)
		if err := enc.Encode(res); err != nil {
			return fmt.Errorf("encode result: %w", err)
		}
		return nil
	}
	text(w)
	return nil
}
