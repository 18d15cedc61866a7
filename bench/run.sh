#!/usr/bin/env bash
# Runs Parley's benchmark matrix against the floor (parley-bench floor: the
# least a fan-out server must do), Parley and the Node.js baseline, and
# rewrites the bench section of BENCHMARKS.md (between <!-- bench:begin -->
# and <!-- bench:end -->). HTML reports and raw results go to bench/reports/.
#
# Usage (from anywhere; paths are relative to the repo root):
#   bench/run.sh            full matrix (≈ 15 min; the log says how long each scenario took)
#   bench/run.sh --quick    smaller numbers, 1 run; writes bench/reports/BENCHMARKS-quick.md
#   bench/run.sh --md FILE  write the tables into FILE instead
# Environment:
#   PARLEY_BENCH_RUNS       runs of each repeated scenario (default 3: medians of 3)
#   PARLEY_BENCH_SCENARIOS  which scenarios (default: all of the matrix below, in order); the
#                           section is rewritten with only what ran, so pair a subset with --md FILE
#   PARLEY_BENCH_SYSTEMS    restrict every scenario to these systems (default: as in the matrix)
#   PARLEY_BENCH_NODE_FLAGS extra flags for every Parley node (e.g. "--gc-percent 100")
# Systems: floor (parley-bench floor), parley (one node, embedded bus),
#   parley-redis (one node on Redis), parley-plain (Parley on /), baseline
#   (bench/baseline-node on Redis). A cross-node scenario runs Parley and the
#   baseline on two nodes, and the floor, which has one process, alone with
#   the same clients and rate.
# Every process it starts (redis-server on a free port, nodes, load generators)
# is killed by PID when it exits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

quick=0
md=""
while [[ $# -gt 0 ]]; do
	case "$1" in
	--quick) quick=1 ;;
	--md)
		md="$2"
		shift
		;;
	*)
		echo "usage: bench/run.sh [--quick] [--md FILE]" >&2
		exit 2
		;;
	esac
	shift
done

# The matrix: scenario, runs (R = $runs, else a fixed count), systems; a
# system written SYSTEM:N runs at most N times. Memory slopes and the join
# storm are steady from run to run: one run each; latency, throughput and
# connect rate are medians of $runs, the baseline's (far from Parley's) of one.
matrix="
idle          1 parley baseline
idle-lobby    1 parley
idle-room     1 parley
idle-rooms100 1 parley
connect       R floor parley baseline:1
fanout-100    R floor parley baseline:1
fanout-1000   R floor parley-plain parley parley-redis baseline:1
cross-100     R floor parley baseline:1
cross-1000    1 floor parley
rooms         1 parley-redis
rooms-10k     1 parley-redis
storm         1 parley
"
if [[ $quick -eq 1 ]]; then
	runs="${PARLEY_BENCH_RUNS:-1}"
	steps="500,2000" idle_for=5s
	clients=200 senders=20 duration=3s
	connects=2000
	cross_clients=400
	rooms_clients=1000 rooms=100 rooms_rate=1000
	storm_clients=500
	md="${md:-bench/reports/BENCHMARKS-quick.md}"
else
	runs="${PARLEY_BENCH_RUNS:-3}"
	steps="2000,15000" idle_for=25s
	clients=1000 senders=100 duration=10s
	connects=10000
	cross_clients=2000
	rooms_clients=10000 rooms=1000 rooms_rate=10000
	storm_clients=5000
	md="${md:-BENCHMARKS.md}"
fi
scenarios="${PARLEY_BENCH_SCENARIOS:-$(echo "$matrix" | awk 'NF {print $1}' | tr '\n' ' ')}"
# Every load comes from loopback, which the node would count as one client
# address: lift the per-address connection cap (--max-conns-per-addr).
read -r -a node_flags <<<"--max-conns-per-addr -1 ${PARLEY_BENCH_NODE_FLAGS:-}"

reports=bench/reports
logs="$reports/logs"
mkdir -p "$logs"
results="$reports/results.jsonl"
rm -f "$results"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "building bin/parley-bench and bin/parley"
go build -o bin/parley-bench ./cmd/parley-bench
pb=bin/parley-bench
have_parley=1
if ! go build -o bin/parley ./cmd/parley 2>"$logs/build-parley.log"; then
	log "cmd/parley does not build (see $logs/build-parley.log): Parley is left out"
	have_parley=0
fi
if [[ ! -d bench/baseline-node/node_modules/ws || ! -d bench/baseline-node/node_modules/redis ]]; then
	log "installing the baseline's modules (npm ci)"
	(cd bench/baseline-node && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh
track_pids


# start_node SYSTEM ID [REDIS_URL]: sets node_base (ws://127.0.0.1:PORT),
# node_url (its endpoint for the system's protocol), node_proto, node_pid and
# node_probe (the --admin/--pid flags that read it).
start_node() {
	local system="$1" id="$2" redis="${3:-}" lp ap
	lp="$($pb freeport)"
	node_base="ws://127.0.0.1:$lp"
	case "$system" in
	parley | parley-redis | parley-plain)
		ap="$($pb freeport)"
		local extra=()
		if [[ -n "$redis" ]]; then
			extra=(--redis "$redis")
		fi
		bin/parley --listen "127.0.0.1:$lp" --admin "127.0.0.1:$ap" --node-id "$id" --log-level warn \
			"${extra[@]}" "${node_flags[@]}" >"$logs/$system-$id-$lp.log" 2>&1 &
		node_pid=$!
		pids+=("$node_pid")
		wait_port "$lp"
		wait_port "$ap"
		node_probe=(--admin "127.0.0.1:$ap" --pid "$node_pid")
		if [[ "$system" == parley-plain ]]; then
			node_proto=plain node_url="$node_base/"
		else
			node_proto=json node_url="$node_base/ws"
		fi
		;;
	floor)
		"$pb" floor --listen "127.0.0.1:$lp" >"$logs/floor-$id-$lp.log" 2>&1 &
		node_pid=$!
		pids+=("$node_pid")
		wait_port "$lp"
		node_probe=(--pid "$node_pid")
		node_proto=plain node_url="$node_base/"
		;;
	baseline)
		local line
		line="$(BASELINE_LOG_DIR="$logs" bench/baseline-node/start.sh "$redis" "$lp")"
		node_pid="${line%% *}"
		pids+=("$node_pid")
		node_probe=(--admin "127.0.0.1:$lp" --pid "$node_pid")
		node_proto=plain node_url="$node_base/"
		;;
	esac
}

needs_redis() { # system scenario
	[[ "$1" == baseline || "$1" == parley-redis || ("$2" == cross-* && "$1" != floor) ]]
}

# run_bench TIMEOUT ARGS…: one parley-bench run, recorded; a failure is logged, not fatal.
run_bench() {
	local limit="$1"
	shift
	timeout "$limit" "$pb" "$@" "${common[@]}" >"$out" 2>"$out.err" || log "$system $scenario run $run failed (see $out.err)"
}

run_one() { # system scenario run
	local system="$1" scenario="$2" run="$3" redis_url="" redis_pid="" redis_port=""
	if [[ "$system" == parley* && $have_parley -eq 0 ]]; then
		return 0
	fi
	if needs_redis "$system" "$scenario"; then
		start_redis "$logs/redis-PORT.log"
	fi
	start_node "$system" n1 "$redis_url"
	local url1="$node_url" base1="$node_base" proto="$node_proto" probe1=("${node_probe[@]}")
	local common=(--record "$results" --system "$system" --scenario "$scenario" --run "$run"
		--html "$reports/$system-$scenario-r$run.html" --json --label "$system/$scenario/r$run")
	local out="$logs/$system-$scenario-r$run.json"
	# Idle connections are measured as a client holds them (reading, answering
	# pings) after sitting idle at each step: what a node holding them for good
	# shows, once its quiet-time release (--mem-release-after) had its turn.
	local idle_wait=(--idle-for "$idle_for" --settle 15s --hold 2s)
	local fan=(fanout --proto "$proto" --senders "$senders" --duration "$duration" --size 64 --drain 10s)
	log "run $run: $system $scenario"
	case "$scenario" in
	idle)
		run_bench 300 idle --url "$url1" --proto "$proto" --read-every 1s --steps "$steps" "${probe1[@]}" "${idle_wait[@]}"
		;;
	idle-lobby)
		run_bench 300 idle --url "$base1/" --proto plain --join --read-every 1s --steps "$steps" "${probe1[@]}" "${idle_wait[@]}"
		;;
	idle-room | idle-rooms100)
		local r=1
		[[ "$scenario" == idle-rooms100 ]] && r=100
		run_bench 300 idle --url "$base1/ws" --proto json --join --rooms "$r" --read-every 1s --steps "$steps" \
			"${probe1[@]}" "${idle_wait[@]}"
		;;
	connect)
		run_bench 120 connect --url "$url1" --proto "$proto" --steps "$connects"
		;;
	fanout-*)
		run_bench 120 "${fan[@]}" --url "$url1" --clients "$clients" --rate "${scenario#fanout-}" "${probe1[@]}"
		;;
	cross-*)
		local cc="$clients"
		[[ "$scenario" == cross-1000 ]] && cc="$cross_clients"
		if [[ "$system" == floor ]]; then # one process: the same clients and rate on one floor
			run_bench 120 "${fan[@]}" --url "$url1" --clients "$cc" --rate "${scenario#cross-}" "${probe1[@]}"
		else
			start_node "$system" n2 "$redis_url"
			run_bench 120 "${fan[@]}" --url "$url1" --url "$node_url" --cross-node --clients "$cc" \
				--rate "${scenario#cross-}" "${probe1[@]}" "${node_probe[@]}" --pid "$redis_pid"
		fi
		;;
	rooms) # rooms of 10, one sender per room at 1 msg/s
		run_bench 180 "${fan[@]}" --url "$url1" --clients "$rooms_clients" --rooms "$rooms" --senders "$rooms" \
			--rate "$rooms" --connect-timeout 20s "${probe1[@]}" --pid "$redis_pid"
		;;
	rooms-10k) # the same rooms of 10, every client sends at 1 msg/s (10 senders per room)
		run_bench 180 "${fan[@]}" --url "$url1" --clients "$rooms_clients" --rooms "$rooms" --senders "$rooms_clients" \
			--rate "$rooms_rate" --connect-timeout 20s "${probe1[@]}" --pid "$redis_pid"
		;;
	storm)
		run_bench 240 storm --url "$url1" --clients "$storm_clients" --room-prefix storm --quiet 2s --drain 120s \
			--connect-timeout 20s "${probe1[@]}"
		;;
	esac
	stop_started
}

started=$(date +%s)
for scenario in $scenarios; do
	line="$(echo "$matrix" | awk -v s="$scenario" '$1 == s')"
	if [[ -z "$line" ]]; then
		log "unknown scenario $scenario (the matrix has: $(echo "$matrix" | awk 'NF {print $1}' | tr '\n' ' '))"
		exit 2
	fi
	read -r _ n sys <<<"$line"
	[[ "$n" == R ]] && n="$runs"
	if [[ -n "${PARLEY_BENCH_SYSTEMS:-}" ]]; then
		sys="$(for s in $sys; do [[ " $PARLEY_BENCH_SYSTEMS " == *" ${s%%:*} "* ]] && echo "$s" || true; done | tr '\n' ' ')"
	fi
	t0=$(date +%s)
	for run in $(seq 1 "$n"); do
		for entry in $sys; do
			system="${entry%%:*}" cap="$n"
			[[ "$entry" == *:* ]] && cap="${entry#*:}"
			if [[ $run -le $cap ]]; then
				run_one "$system" "$scenario" "$run"
			fi
		done
	done
	log "$scenario: $(($(date +%s) - t0)) s"
done

notes="Systems: **floor** is \`parley-bench floor\` (one broadcaster goroutine, plain frames, frames that queue while it writes go out together in one write per socket: the least any fan-out server does); **parley** one node on its embedded bus, protocol v1 (JSON on /ws, rooms \`bench0\`…); **parley-redis** the same node on Redis; **parley-plain** the same node on its plain endpoint (raw text frames like the floor's, everyone in \`lobby\`): Parley's machinery without JSON; **baseline** the Node.js ws + Redis design of bench/baseline-node (plain text on /, one Redis channel). Cross-node: Parley and the baseline on two nodes and Redis, the floor alone with the same clients and rate. Idle: \`joined\` says whether each connection was in a room before it counted (lobby on /; join → joined on /ws); joined connections read what the node sends once a second. Latency: the send timestamp carried in the payload → receipt by the client. Loss: expected deliveries (messages × room members) not received within the drain (at most 10 s after sending stops). Node CPU: % of one core from /proc (cross-node and rooms: the nodes, then Redis); bench CPU: the load generator itself. Raw results: bench/reports/results.jsonl; HTML reports: bench/reports/*.html."
"$pb" report --results "$results" --md "$md" --notes "$notes"
log "done in $(($(date +%s) - started)) s: tables in $md, HTML reports in $reports/"
