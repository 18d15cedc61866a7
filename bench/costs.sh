#!/usr/bin/env bash
# Measures the unit costs behind the capacity model in BENCHMARKS.md ("Beyond
# one machine"): node CPU per delivery and per publish, Redis CPU per publish
# and per pub/sub delivery (per subscribed node), and memory per idle joined
# connection (node RSS, kernel slab and TCP buffer pages, file descriptors).
# Every point runs at a load that does not saturate the machine, on fresh
# processes (redis-server on a free port, one or two nodes on 127.0.0.1).
#
# Usage (from anywhere; paths are relative to the repo root):
#   bench/costs.sh                 every point, PARLEY_COSTS_RUNS times (default 3), then the summary
#   bench/costs.sh fan100 xrooms   only these points (names below)
# Environment:
#   PARLEY_COSTS_RUNS   runs of each load point (default 3; the summary takes medians)
#   PARLEY_COSTS_OUT    results file (default bench/reports/costs.jsonl, rewritten)
# Points (64-byte messages, 10 s of sending, one node on Redis unless said):
#   fan100   1,000 clients in one room, 100 senders, 100 msgs/s   (100 k deliveries/s)
#   fan300   the same at 300 msgs/s                                (300 k deliveries/s)
#   rooms    10,000 clients in 1,000 rooms of 10, one sender per room, 1,000 msgs/s
#   xrooms   the same on two nodes (senders on node 1, the others spread): every room on both nodes
#   cross100 two nodes, 1,000 clients in one room, 100 senders on node 1, 100 msgs/s
#   quiet1, quiet2  one or two nodes on Redis and no clients for 10 s: Redis's background per node
#   idle     15,000 connections joined to one room (idle --join --rooms 1), memory and fds
# Check points (not in the default set; the model predicts them from the unit costs):
#   rooms10k   10,000 clients in 1,000 rooms of 10, every client sends at 1 msg/s (the matrix's rooms-10k)
#   cross1000  two nodes, 2,000 clients in one room, 100 senders on node 1, 1,000 msgs/s (cross-1000)
# Not part of `make test`; wrap it in the bench lock like every load run.
# Every process it starts is killed by PID when it exits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

runs="${PARLEY_COSTS_RUNS:-3}"
reports=bench/reports
logs="$reports/logs"
out="${PARLEY_COSTS_OUT:-$reports/costs.jsonl}"
mkdir -p "$logs"
points="${*:-fan100 fan300 rooms xrooms cross100 idle}"

log() { printf '[costs %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh
track_pids

log "building bin/parley-bench and bin/parley"
build_tools
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench' ':!*.md' || echo -dirty)"
rm -f "$out"

start_node() { # id: sets node_url, node_pid, node_probe
	local lp ap
	lp="$($pb freeport)"
	ap="$($pb freeport)"
	bin/parley --listen "127.0.0.1:$lp" --admin "127.0.0.1:$ap" --node-id "$1" --log-level warn \
		--redis "$redis_url" --max-conns-per-addr -1 --room-create-rate 100000 >"$logs/costs-node-$1-$lp.log" 2>&1 &
	node_pid=$!
	pids+=("$node_pid")
	wait_port "$lp"
	wait_port "$ap"
	node_url="ws://127.0.0.1:$lp/ws"
	node_probe=(--admin "127.0.0.1:$ap" --pid "$node_pid")
}

redis_cpu_us() { # Redis used_cpu_sys + used_cpu_user, µs
	redis-cli -p "$redis_port" info cpu | tr -d '\r' |
		awk -F: '$1 == "used_cpu_sys" || $1 == "used_cpu_user" {s += $2} END {printf "%d\n", s * 1e6}'
}

mem_sample() { # pid: one JSON object: slab kB, TCP buffer pages, node fds
	local slab tcpmem fds
	slab="$(awk '$1 == "Slab:" {print $2}' /proc/meminfo)"
	tcpmem="$(awk '$1 == "TCP:" {for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)"
	fds="$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
	printf '{"slab_kb":%s,"tcp_mem_pages":%s,"node_fds":%s}' "$slab" "$tcpmem" "$fds"
}

fan=(fanout --proto json --duration 10s --size 64 --drain 10s --json)

run_point() { # point run
	local point="$1" run="$2" res r0 r1 extra=()
	start_redis "$logs/costs-redis-PORT.log"
	start_node n1
	local url1="$node_url" probe1=("${node_probe[@]}") nodes=1
	case "$point" in
	xrooms | cross100 | cross1000 | quiet2)
		start_node n2
		# node 1's probe first: CPU figures come out node 1 (the senders'), node 2, Redis
		extra=(--url "$node_url" --cross-node)
		probe1+=("${node_probe[@]}")
		nodes=2
		;;
	esac
	log "run $run: $point"
	r0="$(redis_cpu_us)"
	case "$point" in
	fan100 | fan300)
		res="$(timeout 120 "$pb" "${fan[@]}" --url "$url1" --clients 1000 --senders 100 --rate "${point#fan}" "${probe1[@]}" --pid "$redis_pid")"
		;;
	rooms | xrooms)
		res="$(timeout 180 "$pb" "${fan[@]}" --url "$url1" "${extra[@]}" --clients 10000 --rooms 1000 --senders 1000 --rate 1000 \
			--connect-timeout 20s "${probe1[@]}" --pid "$redis_pid")"
		;;
	rooms10k)
		res="$(timeout 180 "$pb" "${fan[@]}" --url "$url1" --clients 10000 --rooms 1000 --senders 10000 --rate 10000 \
			--connect-timeout 20s "${probe1[@]}" --pid "$redis_pid")"
		;;
	cross100)
		res="$(timeout 120 "$pb" "${fan[@]}" --url "$url1" "${extra[@]}" --clients 1000 --senders 100 --rate 100 "${probe1[@]}" --pid "$redis_pid")"
		;;
	cross1000)
		res="$(timeout 120 "$pb" "${fan[@]}" --url "$url1" "${extra[@]}" --clients 2000 --senders 100 --rate 1000 "${probe1[@]}" --pid "$redis_pid")"
		;;
	quiet1 | quiet2) # a fixed window with nothing to do: the Redis CPU below is the nodes' background
		sleep 10
		res='{"window_s":10}'
		;;
	idle)
		local before during="" sampler
		before="$(mem_sample "$node_pid")"
		(
			most=0 # keep the sample with the most node fds: all connections up
			while sleep 1; do
				m="$(mem_sample "$node_pid")"
				f="$(jq .node_fds <<<"$m")"
				if [[ "$f" -gt "$most" ]]; then
					most="$f"
					echo "$m" >"$logs/costs-idle-sample.json"
				fi
			done
		) &
		sampler=$!
		pids+=("$sampler")
		res="$(timeout 300 "$pb" idle --url "$url1" --proto json --join --rooms 1 --read-every 1s --steps 2000,15000 \
			"${probe1[@]}" --settle 15s --hold 3s --json)"
		during="$(cat "$logs/costs-idle-sample.json")"
		kill "$sampler" 2>/dev/null || true
		res="$(jq -c --argjson b "$before" --argjson d "$during" '. + {mem_before: $b, mem_at_hold: $d}' <<<"$res")"
		;;
	esac
	r1="$(redis_cpu_us)"
	# Commands run by scripts count here too (publish, xadd, …): the whole run, joins included.
	local cmdstats
	cmdstats="$(redis-cli -p "$redis_port" info commandstats | tr -d '\r' | grep '^cmdstat_' |
		jq -R -s -c 'split("\n") | map(select(length > 0) | capture("^cmdstat_(?<c>[^:]+):calls=(?<calls>[0-9]+),usec=(?<usec>[0-9]+)")
			| {(.c): {calls: (.calls | tonumber), usec: (.usec | tonumber)}}) | add // {}')"
	res="$(jq -c --argjson cs "$cmdstats" '. + {redis_commandstats: $cs}' <<<"$res")"
	jq -c --arg p "$point" --argjson run "$run" --arg c "$commit" --argjson n "$nodes" --argjson rc "$((r1 - r0))" \
		--arg d "$(date -u +%Y-%m-%dT%H:%MZ)" \
		'{point: $p, run: $run, commit: $c, date: $d, nodes: $n, redis_info_cpu_us: $rc, result: .}' <<<"$res" >>"$out"
	stop_started
}

for point in $points; do
	n="$runs"
	[[ "$point" == idle || "$point" == quiet* ]] && n=1
	for run in $(seq 1 "$n"); do
		run_point "$point" "$run"
	done
done

# The summary: per run, the CPU of the send + drain window as µs per
# operation; medians over runs.
jq -rs '
def med: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
def r1: . * 10 | round / 10;
[.[] | select(.point != "idle" and (.point | startswith("quiet") | not)) | .result as $x | ($x.duration_s + $x.drain_s) as $w |
  ($x.expected - $x.loss) as $d | ($x.node_cpu | map(.cpu_pct)) as $cpu |
  {point, nodes, sent: $x.sent, deliveries: $d,
   node_us: (($cpu[0:.nodes] | add) / 100 * $w * 1e6), redis_us: ($cpu[.nodes] / 100 * $w * 1e6),
   writes: ($x.node_cpu[0:.nodes] | map(.writes) | add), p99_ms: $x.latency.p99_ms}
  | . + {node_us_per_delivery: (.node_us / .deliveries), redis_us_per_publish: (.redis_us / .sent),
         deliveries_per_write: (.deliveries / .writes)}]
| group_by(.point) | .[] |
  "\(.[0].point): runs \(length), sent \(map(.sent) | med), deliveries \(map(.deliveries) | med), node CPU µs/delivery \(map(.node_us_per_delivery) | med | r1) (runs: \(map(.node_us_per_delivery | r1))), node CPU s \(map(.node_us / 1e6) | med | r1), Redis CPU µs/publish \(map(.redis_us_per_publish) | med | r1) (runs: \(map(.redis_us_per_publish | r1))), deliveries/write \(map(.deliveries_per_write) | med | r1), p99 ms \(map(.p99_ms) | med)"
' "$out" || true
jq -r 'select(.point | startswith("quiet")) | "\(.point): Redis CPU \(.redis_info_cpu_us) µs in \(.result.window_s) s"' "$out" || true
jq -r 'select(.point == "idle") | "idle: RSS slope KiB/conn \(.result.slopes[-1].kib_per_conn), heap \(.result.slopes[-1].heap_kib_per_conn), before \(.result.mem_before | tostring), at hold \(.result.mem_at_hold | tostring)"' "$out" 2>/dev/null || true
log "results in $out"
