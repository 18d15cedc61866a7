# Shared by bench/run.sh and bench/profile.sh (sourced, not run).

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
