# Shared by the bench scripts (sourced, not run): building the tools, starting Redis, stopping what a
# script started, waiting for a port.

# stop_pids stops the processes whose PIDs are in the array pids (only those
# the script started): SIGTERM, a bounded wait (5 s each), then SIGKILL.
stop_pids() {
	local pid
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		for _ in $(seq 1 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
	done
}

# stop_started stops what the script started so far and forgets it.
stop_started() {
	stop_pids
	pids=()
}

# track_pids starts the script's (empty) pids array and stops what it holds
# when the script exits or is interrupted.
track_pids() {
	pids=()
	trap stop_started EXIT
	trap 'stop_started; exit 130' INT TERM
}

# wait_port PORT: a bounded wait (15 s) until something accepts on
# 127.0.0.1:PORT. The script defines log.
wait_port() {
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

# build_tools builds bin/parley-bench and bin/parley, and sets pb to the bench.
build_tools() {
	go build -o bin/parley-bench ./cmd/parley-bench
	go build -o bin/parley ./cmd/parley
	pb=bin/parley-bench
}

# start_redis LOG: a fresh redis-server on a free loopback port that keeps
# nothing on disk, its output in LOG (PORT in the name is replaced by the
# port), stopped with the script's other processes. Sets redis_port,
# redis_pid and redis_url. Needs pb (for freeport) and log.
start_redis() {
	redis_port="$($pb freeport)"
	redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"${1//PORT/$redis_port}" 2>&1 &
	redis_pid=$!
	pids+=("$redis_pid")
	wait_port "$redis_port"
	redis_url="redis://127.0.0.1:$redis_port/0"
}
