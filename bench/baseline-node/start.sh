#!/usr/bin/env bash
# Starts 1 or 2 baseline nodes (Node.js ws + one Redis channel) in the
# background against a given Redis and prints one line per node:
#   PID PORT NODE_ID
# Usage: bench/baseline-node/start.sh REDIS_URL PORT [PORT2]
# Logs go to $BASELINE_LOG_DIR (default: a new temporary directory).
# The caller owns the printed PIDs and must kill them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 2 || $# -gt 3 ]]; then
	echo "usage: $0 REDIS_URL PORT [PORT2]" >&2
	exit 2
fi
redis_url="$1"
shift
case "$redis_url" in
redis://127.* | redis://localhost*) ;;
*)
	echo "start.sh: refusing non-loopback Redis URL $redis_url" >&2
	exit 2
	;;
esac

if [[ ! -d "$here/node_modules/ws" || ! -d "$here/node_modules/redis" ]]; then
	(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

logdir="${BASELINE_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$logdir"
i=0
for port in "$@"; do
	i=$((i + 1))
	id="b$i"
	node "$here/server.js" --port "$port" --redis "$redis_url" --id "$id" >"$logdir/baseline-$id.log" 2>&1 &
	pid=$!
	# Wait (bounded, 15 s) until the node accepts connections.
	ok=0
	for _ in $(seq 1 150); do
		if ! kill -0 "$pid" 2>/dev/null; then
			break
		fi
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			ok=1
			break
		fi
		sleep 0.1
	done
	if [[ $ok -ne 1 ]]; then
		echo "start.sh: baseline node $id on port $port did not start; log:" >&2
		cat "$logdir/baseline-$id.log" >&2 || true
		kill "$pid" 2>/dev/null || true
		exit 1
	fi
	echo "$pid $port $id"
done
