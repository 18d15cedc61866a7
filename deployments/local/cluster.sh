#!/usr/bin/env bash
# A local Parley cluster as plain processes: one redis-server, N nodes and
# HAProxy in front, all on 127.0.0.1. Ctrl-C stops everything it started.
#
#   deployments/local/cluster.sh [NODES] [PORT]
#
# Open http://127.0.0.1:PORT (default 8000). Nodes listen on 8081.., their
# admin listeners on 6061.., Redis on 6390.
set -euo pipefail
nodes=${1:-3}
port=${2:-8000}
redis_port=${PARLEY_REDIS_PORT:-6390}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

for tool in redis-server haproxy go; do
	command -v "$tool" >/dev/null || { echo "cluster.sh: $tool is not installed (apt-get install redis-server haproxy)" >&2; exit 1; }
done
(cd "$root" && go build -o "$work/parley" ./cmd/parley)

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)

cfg="$work/haproxy.cfg"
cp "$root/deployments/haproxy/haproxy.cfg" "$cfg"
for i in $(seq 1 "$nodes"); do
	"$work/parley" --listen "127.0.0.1:$((8080 + i))" --admin "127.0.0.1:$((6060 + i))" \
		--node-id "n$i" --redis "redis://127.0.0.1:$redis_port/0" &
	pids+=($!)
	echo "    server n$i 127.0.0.1:$((8080 + i)) check" >>"$cfg"
done
PARLEY_HAPROXY_BIND="127.0.0.1:$port" haproxy -f "$cfg" &
pids+=($!)

echo "Parley: $nodes nodes behind HAProxy at http://127.0.0.1:$port (Ctrl-C stops)"
wait -n
