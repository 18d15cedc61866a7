#!/usr/bin/env bash
# A local Parley cluster as plain processes on 127.0.0.1: one redis-server,
# N nodes and HAProxy in front (the same HAProxy config and node settings as
# deployments/docker/). `make cluster` and `make cluster-down` call it.
#
#   cluster.sh up              start Redis, the nodes and HAProxy; return once
#                              HAProxy reports every node up
#   cluster.sh down            stop exactly what `up` started
#   cluster.sh status          each node as HAProxy sees it
#   cluster.sh drain NODE      SIGTERM one node and wait until it has exited
#                              (its clients resume on the others)
#   cluster.sh start NODE      start a stopped node again on its address
#   cluster.sh restart NODE    drain, then start, then wait until HAProxy has it up
#   cluster.sh kill NODE       SIGKILL one node (a crash, for trying resume)
#
# Settings (environment):
#   CLUSTER_NODES=4            number of nodes, named n1..nN
#   CLUSTER_PORT=8080          public port (HAProxy) on 127.0.0.1
#   CLUSTER_DIR=run/cluster    the run folder: PIDs, addresses, logs, the
#                              rendered haproxy.cfg; it outlives the processes
#   CLUSTER_REDIS_PORT         Redis port (default: a free one)
#   CLUSTER_STATS_PORT         HAProxy stats page port (default: a free one)
#   PARLEY_BIN                 the node binary (default: bin/parley, built if missing)
#   PARLEY_*                   a node setting (README's configuration table)
#                              for every node; it wins over deployments/node.env
#
# Node and admin ports are picked by the kernel at first start and kept
# across restarts (HAProxy's config names them). Every process runs in its own
# session, so stopping or restarting one leaves the others serving.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
nodes=${CLUSTER_NODES:-4}
port=${CLUSTER_PORT:-8080}
dir=${CLUSTER_DIR:-$root/run/cluster}
case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac
bin=${PARLEY_BIN:-$root/bin/parley}

die() {
	echo "cluster: $*" >&2
	exit 1
}

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a port nothing listens on now, below the kernel's ephemeral
# range (32768 and up on Linux), so no outgoing connection holds it; the
# caller binds it at once.
free_port() {
	local p i
	for i in $(seq 1 50); do
		p=$((20000 + RANDOM % 12000))
		if ! port_busy "$p"; then
			echo "$p"
			return
		fi
	done
	die "no free port found"
}

# starttime PID: the process's start time in clock ticks (field 22 of
# /proc/PID/stat), which tells a reused PID from ours.
starttime() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# ours NAME: NAME's recorded process is still the one we started.
ours() {
	local f="$dir/$1.pid" pid st
	[ -f "$f" ] || return 1
	read -r pid st <"$f" || return 1
	[ -n "$pid" ] && [ "$(starttime "$pid")" = "$st" ]
}

pid_of() { awk '{print $1}' "$dir/$1.pid"; }

# launch NAME CMD...: run CMD in its own session with output appended to
# NAME.log, and record "pid starttime" in NAME.pid.
launch() {
	local name=$1
	shift
	setsid "$@" </dev/null >>"$dir/$name.log" 2>&1 &
	local pid=$!
	local st=""
	for _ in $(seq 1 100); do
		st=$(starttime "$pid")
		[ -n "$st" ] && break
		sleep 0.01
	done
	echo "$pid $st" >"$dir/$name.pid"
}

# wait_for SECONDS WHAT CMD...: retry CMD until it succeeds.
wait_for() {
	local secs=$1 what=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

http_get() { # http_get PORT PATH: the body of a local HTTP/1.0 GET
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
	sed '1,/^\r\{0,1\}$/d' <&3
	exec 3<&-
}

# server_status NODE: HAProxy's status of NODE in backend parley (UP, DOWN,
# DRAIN, MAINT, "UP 1/2" …), from the stats page's CSV.
server_status() {
	http_get "$(cat "$dir/stats.port")" "/;csv" 2>/dev/null |
		awk -F, -v n="$1" '$1 == "parley" && $2 == n {print $18}'
}

node_up() { [ "$(server_status "$1")" = "UP" ]; }

# node_env exports the settings of deployments/node.env, except those the
# environment sets already: PARLEY_MAX_CONNS=100 make cluster changes one.
node_env() {
	local key value
	while IFS='=' read -r key value; do
		case "$key" in PARLEY_*) ;; *) continue ;; esac
		[ -n "${!key+x}" ] || export "$key=$value"
	done <"$root/deployments/node.env"
}

# start_node NAME: start node NAME (on its recorded address, if any) and wait
# until it listens.
start_node() {
	local name=$1 listen="127.0.0.1:0"
	[ -f "$dir/$name.addr" ] && listen=$(cat "$dir/$name.addr")
	if ours "$name"; then
		die "$name is already running (pid $(pid_of "$name"))"
	fi
	touch "$dir/$name.log"
	local from=$(($(wc -l <"$dir/$name.log") + 1))
	(
		node_env
		# HAProxy connects from 127.0.0.1 and sends a PROXY protocol header.
		launch "$name" "$bin" --listen "$listen" --admin 127.0.0.1:0 --node-id "$name" \
			--redis "redis://127.0.0.1:$(cat "$dir/redis.port")/0" --trusted-proxies 127.0.0.1/32
	)
	local line=""
	listening() {
		line=$(tail -n +"$from" "$dir/$name.log" | grep -m1 'msg="node listening"' || true)
		[ -n "$line" ] || { ours "$name" || return 0; return 1; }
	}
	wait_for 20 "$name" listening || die "$name did not start in 20s; see $dir/$name.log"
	if [ -z "$line" ]; then
		tail -n 5 "$dir/$name.log" >&2
		die "$name exited at start; see $dir/$name.log"
	fi
	echo "$line" | sed 's/.* addr=\([^ ]*\).*/\1/' >"$dir/$name.addr"
	echo "$line" | sed 's/.* admin=\([^ ]*\).*/\1/' >"$dir/$name.admin"
}

cmd_up() {
	for tool in redis-server haproxy; do
		command -v "$tool" >/dev/null || die "$tool is not installed (Debian: apt-get install redis-server haproxy; or make test-deps)"
	done
	mkdir -p "$dir"
	for f in "$dir"/*.pid; do
		[ -e "$f" ] || continue
		if ours "$(basename "$f" .pid)"; then
			die "a cluster is already running from $dir (make cluster-down stops it)"
		fi
	done
	if port_busy "$port"; then
		die "port $port is busy: something already listens on 127.0.0.1:$port (ss -ltnp 'sport = :$port' tells what); set CLUSTER_PORT to another port"
	fi
	rm -f "$dir"/*.pid "$dir"/*.addr "$dir"/*.admin "$dir"/*.port "$dir"/*.log "$dir"/haproxy.cfg "$dir"/haproxy.sock
	if [ ! -x "$bin" ]; then
		command -v go >/dev/null || die "$bin is missing and go is not installed (README: installing Go)"
		(cd "$root" && go build -o "$bin" ./cmd/parley)
	fi
	echo "$bin" >"$dir/bin"

	# A free port can be taken between the look and the bind: with no
	# CLUSTER_REDIS_PORT given, try another one.
	local rport attempt
	redis_listens() { port_busy "$rport" || ! ours redis; }
	for attempt in 1 2 3 4 5; do
		rport=${CLUSTER_REDIS_PORT:-$(free_port)}
		port_busy "$rport" && die "Redis port $rport is busy; set CLUSTER_REDIS_PORT to another port"
		echo "$rport" >"$dir/redis.port"
		launch redis redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir"
		wait_for 10 redis redis_listens || die "redis-server did not start on port $rport; see $dir/redis.log"
		ours redis && break
		[ -z "${CLUSTER_REDIS_PORT:-}" ] && [ "$attempt" -lt 5 ] || die "redis-server could not listen on port $rport; see $dir/redis.log"
	done

	local servers=() i
	for i in $(seq 1 "$nodes"); do
		start_node "n$i"
		servers+=("n$i=$(cat "$dir/n$i.addr")")
	done

	# A Prometheus config scraping every node's admin /metrics (docs/OPERATIONS.md).
	sh "$root/deployments/grafana/render-prometheus.sh" "$dir"

	local sport
	sport=${CLUSTER_STATS_PORT:-$(free_port)}
	port_busy "$sport" && die "stats port $sport is busy; set CLUSTER_STATS_PORT to another port"
	echo "$sport" >"$dir/stats.port"
	echo "$port" >"$dir/public.port"
	sh "$root/deployments/haproxy/render.sh" "$dir/haproxy.cfg" "${servers[@]}"
	(
		export PARLEY_HAPROXY_BIND="127.0.0.1:$port" PARLEY_HAPROXY_STATS="127.0.0.1:$sport" PARLEY_HAPROXY_SOCKET="$dir/haproxy.sock"
		haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy rejects $dir/haproxy.cfg"
		launch haproxy haproxy -f "$dir/haproxy.cfg"
	)
	if ! wait_for 10 haproxy port_busy "$port" || ! ours haproxy; then
		tail -n 5 "$dir/haproxy.log" >&2
		grep -q "cannot bind\|Address already in use" "$dir/haproxy.log" && die "port $port is busy: HAProxy cannot bind 127.0.0.1:$port; set CLUSTER_PORT to another port"
		die "haproxy did not start; see $dir/haproxy.log"
	fi
	for i in $(seq 1 "$nodes"); do
		wait_for 30 "n$i" node_up "n$i" || die "HAProxy does not report n$i up after 30s (status: $(server_status "n$i")); see $dir/n$i.log"
	done
	cat <<MSG
Parley: $nodes nodes behind HAProxy, Redis on 127.0.0.1:$rport.
  chat page      http://127.0.0.1:$port/   (open it in two browser windows)
  WebSocket      ws://127.0.0.1:$port/ws?name=alice   (plain: ws://127.0.0.1:$port/)
  HAProxy stats  http://127.0.0.1:$sport/
  metrics        each node's admin /metrics ($dir/n*.admin); Prometheus: prometheus --config.file=$dir/prometheus.yml
                 --storage.tsdb.path=$dir/prometheus, Grafana dashboard: deployments/grafana/parley-dashboard.json
  runtime API    echo "show servers state parley" | socat stdio unix-connect:$dir/haproxy.sock
  logs and PIDs  $dir/
Drain or restart one node (its clients resume on the others, nothing lost):
  deployments/local/cluster.sh restart n2      (or: drain n2, start n2; kill n2 for a crash)
  echo "set server parley/n2 state drain" | socat stdio unix-connect:$dir/haproxy.sock
Stop it all: make cluster-down
MSG
}

# stop NAME SIGNAL SECONDS: signal NAME's process if it is still ours and
# wait until it is gone.
stop() {
	local name=$1 sig=$2 secs=$3
	ours "$name" || return 0
	local pid
	pid=$(pid_of "$name")
	kill "-$sig" "$pid" 2>/dev/null || return 0
	gone() { ! ours "$name"; }
	if ! wait_for "$secs" "$name" gone; then
		echo "cluster: $name (pid $pid) still running after ${secs}s; sending SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null || true
		wait_for 5 "$name" gone || true
	fi
}

node_name() {
	[ -n "${1:-}" ] || die "which node? (n1..n$nodes)"
	[ -f "$dir/$1.addr" ] || die "no node $1 in $dir"
}

cmd_down() {
	[ -d "$dir" ] || { echo "cluster: nothing to stop ($dir does not exist)"; return; }
	local f name stopped=0
	stop haproxy TERM 5
	for f in "$dir"/n*.pid; do
		[ -e "$f" ] || continue
		name=$(basename "$f" .pid)
		ours "$name" && stopped=$((stopped + 1))
		stop "$name" TERM 25 &
	done
	wait
	stop redis TERM 10
	echo "cluster: stopped ($stopped nodes, HAProxy, Redis); logs stay in $dir"
}

cmd_status() {
	local f name
	for f in "$dir"/n*.addr; do
		[ -e "$f" ] || continue
		name=$(basename "$f" .addr)
		local proc="stopped"
		ours "$name" && proc="pid $(pid_of "$name")"
		printf '%-4s %-22s %-12s haproxy: %s\n' "$name" "$(cat "$f")" "$proc" "$(server_status "$name" || true)"
	done
}

cmd_drain() {
	node_name "${1:-}"
	ours "$1" || die "$1 is not running"
	echo "cluster: draining $1 (SIGTERM; /readyz 503, then its clients get reconnect)"
	stop "$1" TERM 25
	echo "cluster: $1 has exited"
}

cmd_start() {
	node_name "${1:-}"
	bin=${PARLEY_BIN:-$(cat "$dir/bin")}
	start_node "$1"
	wait_for 40 "$1" node_up "$1" || die "HAProxy does not report $1 up after 40s; see $dir/$1.log"
	echo "cluster: $1 is up at $(cat "$dir/$1.addr")"
}

case "${1:-up}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
drain) cmd_drain "${2:-}" ;;
start) cmd_start "${2:-}" ;;
restart)
	cmd_drain "${2:-}"
	cmd_start "${2:-}"
	;;
kill)
	node_name "${2:-}"
	stop "$2" KILL 5
	echo "cluster: $2 killed"
	;;
*) die "unknown command $1 (up, down, status, drain, start, restart, kill)" ;;
esac
