#!/usr/bin/env bash
# Runs one fan-out against the floor and a list of node variants (another
# binary, other flags, Redis or not, JSON or plain), interleaved round by
# round so that the machine's drift hits them alike, and writes a table of
# medians with each figure's ratio to the floor of the same rounds
# (parley-bench report). It is how BENCHMARKS.md's before/after and
# ablation figures for the heavy fan-out were taken.
#
# Usage (from anywhere; paths are relative to the repo root):
#   bench/ladder.sh [ROUNDS]         ROUNDS default 3; table in bench/reports/ladder.md
# Environment:
#   PARLEY_LADDER_VARIANTS  one variant per line: NAME|BINARY|BUS|PROTO|NODE FLAGS
#                           BUS is mem or redis; PROTO is json (/ws) or plain (/)
#                           default: parley and parley-plain of bin/parley, on mem
#   PARLEY_LADDER_CLIENTS   clients (default 1000; a tenth of them send)
#   PARLEY_LADDER_RATE      msgs/s (default 1000)
#   PARLEY_LADDER_MD        output file (default bench/reports/ladder.md)
# Example: the node of another commit against this one, and GC at 200:
#   git worktree add /tmp/before OLD && (cd /tmp/before && go build -o /tmp/parley-before ./cmd/parley)
#   PARLEY_LADDER_VARIANTS=$'before|/tmp/parley-before|mem|json|\nnow|bin/parley|mem|json|\ngc200|bin/parley|mem|json|--gc-percent 200' bench/ladder.sh
# Every process it starts is killed by PID when it exits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-3}"
clients="${PARLEY_LADDER_CLIENTS:-1000}"
rate="${PARLEY_LADDER_RATE:-1000}"
md="${PARLEY_LADDER_MD:-bench/reports/ladder.md}"
variants="${PARLEY_LADDER_VARIANTS:-$'parley|bin/parley|mem|json|\nparley-plain|bin/parley|mem|plain|'}"
scenario="fanout-$rate"
reports=bench/reports
logs="$reports/logs"
mkdir -p "$logs"
results="$reports/ladder.jsonl"
rm -f "$results"

log() { printf '[ladder %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh
track_pids
build_tools

# one NAME BINARY BUS PROTO FLAGS RUN: one fan-out against a fresh process.
one() {
	local name="$1" bin="$2" bus="$3" proto="$4" flags="$5" run="$6" lp ap url probe=() extra=()
	lp="$($pb freeport)"
	if [[ "$name" == floor ]]; then
		"$pb" floor --listen "127.0.0.1:$lp" >"$logs/ladder-floor.log" 2>&1 &
		pids+=($!)
		probe=(--pid "$!")
		url="ws://127.0.0.1:$lp/" proto=plain
	else
		if [[ "$bus" == redis ]]; then
			local redis_port redis_pid redis_url
			start_redis "$logs/ladder-redis.log"
			extra=(--redis "$redis_url")
		fi
		ap="$($pb freeport)"
		local nf=()
		read -r -a nf <<<"--max-conns-per-addr -1 $flags"
		"$bin" --listen "127.0.0.1:$lp" --admin "127.0.0.1:$ap" --node-id n1 --log-level warn "${extra[@]}" "${nf[@]}" \
			>"$logs/ladder-$name.log" 2>&1 &
		pids+=($!)
		probe=(--admin "127.0.0.1:$ap" --pid "$!")
		url="ws://127.0.0.1:$lp/ws"
		[[ "$proto" == plain ]] && url="ws://127.0.0.1:$lp/"
	fi
	wait_port "$lp"
	log "round $run: $name"
	timeout 120 "$pb" fanout --url "$url" --proto "$proto" --clients "$clients" --senders "$((clients / 10))" --rate "$rate" \
		--duration 10s --size 64 --drain 10s "${probe[@]}" --record "$results" --system "$name" --scenario "$scenario" \
		--run "$run" --json >"$logs/ladder-$name-r$run.json" 2>"$logs/ladder-$name-r$run.err" ||
		log "$name round $run failed (see $logs/ladder-$name-r$run.err)"
	stop_started
}

for run in $(seq 1 "$rounds"); do
	one floor "" "" plain "" "$run"
	while IFS='|' read -r name bin bus proto flags; do
		[[ -z "$name" ]] && continue
		one "$name" "$bin" "$bus" "$proto" "$flags" "$run"
	done <<<"$variants"
done
"$pb" report --results "$results" --md "$md" --notes "bench/ladder.sh, $rounds rounds interleaved; variants: $(echo "$variants" | tr '\n' ';')"
log "table in $md"
