#!/usr/bin/env bash
# Profiles one Parley node: holds N idle connections (parley-bench idle),
# saves the heap profile, then runs a fan-out (1,000 clients, 100 senders,
# 1,000 msgs/s) and saves a 10-s CPU profile and a second heap profile, all
# from the node's admin listener, into bench/profiles/.
#
# Usage (from anywhere; paths are relative to the repo root):
#   bench/profile.sh [N]        N idle connections, default 10000 (PARLEY_BENCH_PROFILE_CONNS)
# Every process it starts is killed by PID when it exits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
n="${1:-${PARLEY_BENCH_PROFILE_CONNS:-10000}}"
out=bench/profiles
mkdir -p "$out"

log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

go build -o bin/parley-bench ./cmd/parley-bench
go build -o bin/parley ./cmd/parley
pb=bin/parley-bench

# shellcheck source=bench/lib.sh
. bench/lib.sh
pids=()
trap stop_pids EXIT
trap 'exit 130' INT TERM

wait_port() {
	for _ in $(seq 1 150); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	log "nothing listens on 127.0.0.1:$1 after 15 s"
	return 1
}

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

lp="$($pb freeport)"
ap="$($pb freeport)"
admin="127.0.0.1:$ap"
bin/parley --listen "127.0.0.1:$lp" --admin "$admin" --node-id p1 --log-level warn >"$out/parley.log" 2>&1 &
node_pid=$!
pids+=("$node_pid")
wait_port "$lp"
wait_port "$ap"

log "opening $n idle connections"
"$pb" idle --url "ws://127.0.0.1:$lp/ws" --steps "$n" --admin "$admin" --pid "$node_pid" --settle 10s --hold 50s \
	--json >/dev/null &
pids+=($!)
wait_conns "$n"
sleep 3 # let the node finish its per-connection work before the snapshot
curl -sf -o "$out/heap-idle.pb.gz" "http://$admin/debug/pprof/heap?gc=1"
log "heap profile with $n idle connections: $out/heap-idle.pb.gz"

log "fan-out: 1000 clients, 100 senders, 1000 msgs/s for 14 s"
"$pb" fanout --url "ws://127.0.0.1:$lp/ws" --clients 1000 --senders 100 --rate 1000 --duration 14s --drain 5s \
	--pid "$node_pid" --json --html "$out/fanout.html" >"$out/fanout.json" &
fan_pid=$!
pids+=("$fan_pid")
wait_conns "$((n + 1000))"
curl -sf -o "$out/cpu-fanout.pb.gz" "http://$admin/debug/pprof/profile?seconds=10"
curl -sf -o "$out/heap-fanout.pb.gz" "http://$admin/debug/pprof/heap"
log "CPU profile (10 s during the fan-out): $out/cpu-fanout.pb.gz"
for _ in $(seq 1 300); do # the fan-out ends by itself within ~30 s
	kill -0 "$fan_pid" 2>/dev/null || break
	sleep 0.1
done

cat <<EOM

Profiles in $out/ (binary: bin/parley):
  go tool pprof -top bin/parley $out/cpu-fanout.pb.gz                  # where the CPU went during the fan-out
  go tool pprof -top -cum bin/parley $out/cpu-fanout.pb.gz             # … by cumulative time
  go tool pprof -list 'FUNC_REGEX' bin/parley $out/cpu-fanout.pb.gz    # line by line for one function
  go tool pprof -sample_index=inuse_space -top bin/parley $out/heap-idle.pb.gz   # heap held by $n idle connections
  go tool pprof -sample_index=alloc_space -top bin/parley $out/heap-fanout.pb.gz # allocation during the fan-out
  go tool pprof -http=127.0.0.1:0 bin/parley $out/cpu-fanout.pb.gz     # flame graph in a browser
Fan-out result: $out/fanout.json, $out/fanout.html
EOM
