#!/usr/bin/env bash
# Profiles one Parley node: holds N idle connections (parley-bench idle),
# saves the heap profile, then runs a fan-out (1,000 clients, 100 senders,
# 1,000 msgs/s by default) and saves a 10-s CPU profile, a 3-s execution trace and a
# second heap profile, all from the node's admin listener, into
# bench/profiles/. With PARLEY_BENCH_PROFILE_FLOOR=1 it then profiles the
# floor (parley-bench floor) under the same fan-out, for comparison.
#
# Usage (from anywhere; paths are relative to the repo root):
#   bench/profile.sh [N]        N idle connections, default 10000 (PARLEY_BENCH_PROFILE_CONNS)
# Environment:
#   PARLEY_BENCH_PROFILE_RATE   fan-out msgs/s (default 1000)
#   PARLEY_BENCH_PROFILE_CLIENTS fan-out clients (default 1000; a tenth of them send)
#   PARLEY_BENCH_PROFILE_ROOMS  idle connections join this many rooms on /ws first (default 0: none)
#   PARLEY_BENCH_PROFILE_REDIS  1: the node runs on a fresh redis-server (default: embedded bus)
#   PARLEY_BENCH_PROFILE_FLOOR  1: also profile the floor under the same fan-out
#   PARLEY_BENCH_NODE_FLAGS     extra flags for the node (e.g. "--gc-percent 100")
# Every process it starts is killed by PID when it exits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
n="${1:-${PARLEY_BENCH_PROFILE_CONNS:-10000}}"
rate="${PARLEY_BENCH_PROFILE_RATE:-1000}"
clients="${PARLEY_BENCH_PROFILE_CLIENTS:-1000}"
rooms="${PARLEY_BENCH_PROFILE_ROOMS:-0}"
# Every load comes from loopback, which the node would count as one client
# address: lift the per-address connection cap (--max-conns-per-addr).
read -r -a node_flags <<<"--max-conns-per-addr -1 ${PARLEY_BENCH_NODE_FLAGS:-}"
out=bench/profiles
mkdir -p "$out"

log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh
track_pids
build_tools

# connections: the node's current connection count from /debug/stats.
connections() {
	curl -sf "http://$admin/debug/stats" | tr -d ' \n' | grep -o '"connections":[0-9]*' | cut -d: -f2 || echo 0
}

# wait_conns MIN: bounded (90 s) wait until the node holds at least MIN connections.
wait_conns() {
	for _ in $(seq 1 900); do
		if [[ "$(connections)" -ge "$1" ]]; then
			return 0
		fi
		sleep 0.1
	done
	log "the node never reached $1 connections (has $(connections))"
	return 1
}

# wait_exit PID: bounded (60 s) wait for a process this script started.
wait_exit() {
	for _ in $(seq 1 600); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
}

redis=()
if [[ "${PARLEY_BENCH_PROFILE_REDIS:-0}" == 1 ]]; then
	start_redis "$out/redis.log"
	redis=(--redis "$redis_url")
fi
lp="$($pb freeport)"
ap="$($pb freeport)"
admin="127.0.0.1:$ap"
bin/parley --listen "127.0.0.1:$lp" --admin "$admin" --node-id p1 --log-level warn "${redis[@]}" "${node_flags[@]}" \
	>"$out/parley.log" 2>&1 &
node_pid=$!
pids+=("$node_pid")
wait_port "$lp"
wait_port "$ap"

join=()
if [[ "$rooms" -gt 0 ]]; then
	join=(--join --rooms "$rooms" --read-every 1s)
fi
log "opening $n idle connections ${join[*]}"
"$pb" idle --url "ws://127.0.0.1:$lp/ws" --steps "$n" "${join[@]}" --admin "$admin" --pid "$node_pid" --settle 10s --hold 50s \
	--json >"$out/idle.json" &
pids+=($!)
wait_conns "$n"
sleep 3 # let the node finish its per-connection work before the snapshot
curl -sf -o "$out/heap-idle.pb.gz" "http://$admin/debug/pprof/heap?gc=1"
log "heap profile with $n idle connections: $out/heap-idle.pb.gz"

# fanout_profile NAME ADMIN URL PROTO PID: a 14-s fan-out with a CPU profile
# and a trace of its middle.
fanout_profile() {
	local name="$1" adm="$2" url="$3" proto="$4" pid="$5"
	log "$name fan-out: $clients clients, $((clients / 10)) senders, $rate msgs/s for 14 s"
	"$pb" fanout --url "$url" --proto "$proto" --clients "$clients" --senders "$((clients / 10))" --rate "$rate" --duration 14s --drain 5s \
		--pid "$pid" --json --html "$out/$name-fanout.html" >"$out/$name-fanout.json" &
	local fan_pid=$!
	pids+=("$fan_pid")
	sleep 3 # connect and join
	curl -sf -o "$out/$name-cpu-fanout.pb.gz" "http://$adm/debug/pprof/profile?seconds=8"
	curl -sf -o "$out/$name-trace-fanout.out" "http://$adm/debug/pprof/trace?seconds=3"
	if [[ "$name" == parley ]]; then
		curl -sf -o "$out/heap-fanout.pb.gz" "http://$adm/debug/pprof/heap"
	fi
	wait_exit "$fan_pid"
	log "$name: CPU profile $out/$name-cpu-fanout.pb.gz, trace $out/$name-trace-fanout.out, result $out/$name-fanout.json"
}
fanout_profile parley "$admin" "ws://127.0.0.1:$lp/ws" json "$node_pid"

if [[ "${PARLEY_BENCH_PROFILE_FLOOR:-0}" == 1 ]]; then
	fp="$($pb freeport)"
	fa="$($pb freeport)"
	"$pb" floor --listen "127.0.0.1:$fp" --admin "127.0.0.1:$fa" >"$out/floor.log" 2>&1 &
	floor_pid=$!
	pids+=("$floor_pid")
	wait_port "$fp"
	wait_port "$fa"
	fanout_profile floor "127.0.0.1:$fa" "ws://127.0.0.1:$fp/" plain "$floor_pid"
fi

cat <<EOM

Profiles in $out/ (binaries: bin/parley, bin/parley-bench for the floor):
  go tool pprof -top bin/parley $out/parley-cpu-fanout.pb.gz                 # where the CPU went during the fan-out
  go tool pprof -top -cum bin/parley $out/parley-cpu-fanout.pb.gz            # … by cumulative time
  go tool pprof -list 'FUNC_REGEX' bin/parley $out/parley-cpu-fanout.pb.gz   # line by line for one function
  go tool trace $out/parley-trace-fanout.out                                 # goroutines, scheduler latency, GC
  go tool trace -pprof=sched $out/parley-trace-fanout.out >$out/sched.pb && go tool pprof -top bin/parley $out/sched.pb  # who waited to run
  go tool pprof -top bin/parley-bench $out/floor-cpu-fanout.pb.gz            # the floor under the same load
  go tool pprof -sample_index=inuse_space -top bin/parley $out/heap-idle.pb.gz   # heap held by $n idle connections
  go tool pprof -sample_index=alloc_space -top bin/parley $out/heap-fanout.pb.gz # allocation during the fan-out
  go tool pprof -http=127.0.0.1:0 bin/parley $out/parley-cpu-fanout.pb.gz    # flame graph in a browser
EOM
