// Command parley-bench is Parley's load generator. It opens WebSocket
// connections to one or more nodes on this machine and measures them.
//
// Modes:
//
//	parley-bench connect --url ws://127.0.0.1:8080/ws --steps 10000
//	parley-bench idle    --url ws://127.0.0.1:8080/ws --steps 2000,15000 --admin 127.0.0.1:6060 [--join --rooms 100]
//	parley-bench fanout  --url ws://127.0.0.1:8080/ws --clients 1000 --senders 100 --rate 100 --duration 10s
//	parley-bench storm   --url ws://127.0.0.1:8080/ws --clients 5000
//	parley-bench floor   --listen 127.0.0.1:8090
//	parley-bench report  --results bench/reports/results.jsonl --md BENCHMARKS.md
//
// connect and idle open connections step by step (over source addresses
// 127.0.0.2 … and, past --per-process connections or with --workers, over
// worker processes: the tool re-executes itself as "parley-bench worker")
// and report the connect rate; idle also lets the node's RSS settle at each
// step and reports RSS, heap and goroutines of the node (from --admin
// /debug/stats and/or --pid /proc) and the slope in KiB per connection.
// With --join a connection counts only once it is in a room (idle.go,
// holder.go). Idle connections have no goroutine and no reader in the bench.
//
// fanout connects clients to rooms, sends at a fixed total rate from the
// first --senders clients, and accounts every delivery: loss, duplicates,
// out-of-order, latency percentiles (send timestamp in the payload →
// receipt), deliveries/s and CPU (fanout_run.go: one method per phase).
// --cross-node puts every sender on the first --url. storm is a join storm
// into one room: presence frames received, 4008 kicks, join times.
//
// floor serves the minimal broadcaster every fan-out figure is compared
// with (floor.go); report turns recorded runs into BENCHMARKS.md tables,
// each latency and throughput figure with its ratio to the floor's
// (benchmd.go).
//
// Only loopback targets are accepted, and the floor listens only on a
// loopback address. Every flag has an environment twin: --rate ↔
// PARLEY_BENCH_RATE, --cross-node ↔ PARLEY_BENCH_CROSS_NODE (flags.go).
//
// Goroutines: the main goroutine drives a run; fanout has one reader
// goroutine per client (it alone owns that client's parser and tracker) and
// one writer goroutine per sender; writes to a connection are serialised by
// its write mutex. Connect workers are a bounded pool; an idle holder has at
// most one sweeper goroutine reading all of its connections.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "parley-bench:", err)
		os.Exit(1)
	}
}

const usage = `usage: parley-bench connect|idle|fanout|storm|floor|report|freeport [flags]   (parley-bench fanout -h for flags)`

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New(usage)
	}
	mode := args[0]
	if mode == "freeport" {
		return freePort(stdout)
	}
	o, err := parseOptions(args[1:])
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		stopProfile, err := startCPUProfile(o.cpuProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	var progress io.Writer
	if f, ok := stdout.(*os.File); ok && !o.jsonOut && isTerminal(f) {
		progress = f
	}
	switch mode {
	case "report":
		return runReport(o.results, o.md, o.notes)
	case "floor":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if len(o.admins) > 1 {
			return errors.New("floor: at most one --admin (where it serves /debug/pprof/)")
		}
		return runFloor(ctx, o.listen, strings.Join(o.admins, ""), stdout)
	case "worker":
		cfg, err := o.idleConfig(mode, nil)
		if err != nil {
			return err
		}
		return runWorker(cfg, stdin, stdout)
	case "connect", "idle":
		cfg, err := o.idleConfig(mode, progress)
		if err != nil {
			return err
		}
		res, err := runIdle(cfg, mode)
		if err != nil {
			return err
		}
		return finish(o, args, stdout, res, func(w io.Writer) { printIdle(w, res) }, func() ([]byte, error) { return idleHTML(o.label, res) })
	case "fanout", "storm":
		runner, text := runFanout, printFanout
		if mode == "storm" {
			runner, text = runStorm, printStorm
		}
		res, err := runner(o.fanoutConfig(progress))
		if err != nil {
			return err
		}
		return finish(o, args, stdout, res, func(w io.Writer) { text(w, res) }, func() ([]byte, error) { return fanoutHTML(o.label, res) })
	default:
		return fmt.Errorf("unknown mode %q: %s", mode, usage)
	}
}

// startCPUProfile profiles this process into path until the returned stop
// is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// finish records the result (--record) and prints it.
func finish(o options, args []string, w io.Writer, res any, text func(io.Writer), html func() ([]byte, error)) error {
	if o.record != "" {
		if err := appendRecord(o.record, o.system, o.scenario, o.runN, args, res); err != nil {
			return err
		}
	}
	return output(o, w, res, text, html)
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
