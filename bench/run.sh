#!/usr/bin/env bash
# Runs Parley's benchmark matrix against Parley and the Node.js baseline and
# rewrites the bench section of BENCHMARKS.md (between <!-- bench:begin -->
# and <!-- bench:end -->). HTML reports and raw results go to bench/reports/.
#
# Usage (from anywhere; paths are relative to the repo root):
#   bench/run.sh            full matrix, median of 3 runs (≈ 10–15 min)
#   bench/run.sh --quick    smaller numbers, 1 run; writes bench/reports/BENCHMARKS-quick.md
#   bench/run.sh --md FILE  write the tables into FILE instead
# Environment: PARLEY_BENCH_RUNS (runs per configuration),
#   PARLEY_BENCH_SYSTEMS (default "parley baseline"; "parley-plain" adds Parley on the plain protocol),
#   PARLEY_BENCH_SCENARIOS (default "idle fanout-100 fanout-1000 cross-100").
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

if [[ $quick -eq 1 ]]; then
	runs="${PARLEY_BENCH_RUNS:-1}"
	steps="500,2000"
	clients=200
	senders=20
	duration=3s
	md="${md:-bench/reports/BENCHMARKS-quick.md}"
else
	runs="${PARLEY_BENCH_RUNS:-3}"
	steps="2000,15000"
	clients=1000
	senders=100
	duration=10s
	md="${md:-BENCHMARKS.md}"
fi
systems="${PARLEY_BENCH_SYSTEMS:-parley baseline}"
scenarios="${PARLEY_BENCH_SCENARIOS:-idle fanout-100 fanout-1000 cross-100}"

reports=bench/reports
logs="$reports/logs"
mkdir -p "$logs"
results="$reports/results.jsonl"
rm -f "$results"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "building bin/parley-bench and bin/parley"
go build -o bin/parley-bench ./cmd/parley-bench
pb=bin/parley-bench
if ! go build -o bin/parley ./cmd/parley 2>"$logs/build-parley.log"; then
	log "cmd/parley does not build (see $logs/build-parley.log): Parley is left out"
	systems="$(echo "$systems" | tr ' ' '\n' | grep -v '^parley' | tr '\n' ' ')"
fi
parley_redis=0
if [[ -x bin/parley ]] && bin/parley -h 2>&1 | grep -q -- '-redis'; then
	parley_redis=1
fi
if [[ ! -d bench/baseline-node/node_modules/ws || ! -d bench/baseline-node/node_modules/redis ]]; then
	log "installing the baseline's modules (npm ci)"
	(cd bench/baseline-node && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh
pids=()
stop_started() {
	stop_pids
	pids=()
}
trap stop_started EXIT
trap 'stop_started; exit 130' INT TERM

wait_port() { # port: wait (bounded, 15 s) until something accepts on 127.0.0.1:port
	local port="$1"
	for _ in $(seq 1 150); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	log "nothing listens on 127.0.0.1:$port after 15 s"
	return 1
}

start_redis() { # sets redis_url
	local port
	port="$($pb freeport)"
	redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$logs/redis-$port.log" 2>&1 &
	pids+=($!)
	wait_port "$port"
	redis_url="redis://127.0.0.1:$port/0"
}

# start_node SYSTEM ID [REDIS_URL]: sets node_url, node_admin, node_pid, node_proto.
start_node() {
	local system="$1" id="$2" redis="${3:-}" lp ap
	lp="$($pb freeport)"
	case "$system" in
	parley | parley-plain)
		ap="$($pb freeport)"
		local extra=()
		if [[ -n "$redis" ]]; then
			extra=(--redis "$redis")
		fi
		bin/parley --listen "127.0.0.1:$lp" --admin "127.0.0.1:$ap" --node-id "$id" --log-level warn "${extra[@]}" \
			>"$logs/parley-$id-$lp.log" 2>&1 &
		node_pid=$!
		pids+=("$node_pid")
		wait_port "$lp"
		wait_port "$ap"
		node_admin="127.0.0.1:$ap"
		if [[ "$system" == parley ]]; then
			node_proto=json
			node_url="ws://127.0.0.1:$lp/ws"
		else
			node_proto=plain
			node_url="ws://127.0.0.1:$lp/"
		fi
		;;
	baseline)
		local line
		line="$(BASELINE_LOG_DIR="$logs" bench/baseline-node/start.sh "$redis" "$lp")"
		node_pid="${line%% *}"
		pids+=("$node_pid")
		node_admin="127.0.0.1:$lp"
		node_proto=plain
		node_url="ws://127.0.0.1:$lp/"
		;;
	esac
}

needs_redis() { # system scenario
	[[ "$1" == baseline || "$2" == cross-* ]]
}

run_one() { # system scenario run
	local system="$1" scenario="$2" run="$3" redis_url=""
	if [[ "$scenario" == cross-* && "$system" == parley* && $parley_redis -eq 0 ]]; then
		log "skip $system/$scenario: bin/parley has no --redis flag"
		return 0
	fi
	if needs_redis "$system" "$scenario"; then
		start_redis
	fi
	start_node "$system" n1 "$redis_url"
	local url1="$node_url" admin1="$node_admin" pid1="$node_pid" proto="$node_proto"
	local common=(--record "$results" --system "$system" --scenario "$scenario" --run "$run"
		--html "$reports/$system-$scenario-r$run.html" --json --label "$system/$scenario/r$run")
	local out="$logs/$system-$scenario-r$run.json"
	log "run $run: $system $scenario"
	case "$scenario" in
	idle)
		timeout 300 "$pb" idle --url "$url1" --proto "$proto" --steps "$steps" --admin "$admin1" --pid "$pid1" \
			--settle 15s --hold 2s "${common[@]}" >"$out" || log "$system $scenario run $run failed"
		;;
	fanout-*)
		local rate="${scenario#fanout-}"
		timeout 120 "$pb" fanout --url "$url1" --proto "$proto" --clients "$clients" --senders "$senders" \
			--rate "$rate" --duration "$duration" --size 64 --drain 10s --admin "$admin1" --pid "$pid1" \
			"${common[@]}" >"$out" || log "$system $scenario run $run failed"
		;;
	cross-*)
		local rate="${scenario#cross-}"
		start_node "$system" n2 "$redis_url"
		timeout 120 "$pb" fanout --url "$url1" --url "$node_url" --cross-node --proto "$proto" \
			--clients "$clients" --senders "$senders" --rate "$rate" --duration "$duration" --size 64 --drain 10s \
			--admin "$admin1" --admin "$node_admin" --pid "$pid1" --pid "$node_pid" \
			"${common[@]}" >"$out" || log "$system $scenario run $run failed"
		;;
	esac
	stop_started
}

started=$(date +%s)
for run in $(seq 1 "$runs"); do
	for scenario in $scenarios; do
		for system in $systems; do
			run_one "$system" "$scenario" "$run"
		done
	done
done

notes="Parley speaks protocol v1 (JSON on /ws, room \`bench0\`) and runs one node on its embedded broker; the baseline is the Node.js ws + Redis design of bench/baseline-node (plain text on /, one Redis channel). Cross-node: both systems with Redis. Latency: the send timestamp carried in the payload → receipt by the client. Loss: expected deliveries (messages × room members) not received within the drain (at most 10 s after sending stops). Node CPU: % of one core from /proc; bench CPU: the load generator itself. Raw results: bench/reports/results.jsonl; HTML reports: bench/reports/*.html."
"$pb" report --results "$results" --md "$md" --notes "$notes"
log "done in $(($(date +%s) - started)) s: tables in $md, HTML reports in $reports/"
