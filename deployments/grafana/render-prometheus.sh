#!/bin/sh
# Renders a Prometheus config for a running local cluster (make cluster):
#
#   render-prometheus.sh RUN_DIR
#
# writes RUN_DIR/prometheus.yml, which scrapes /metrics on every node's
# admin listener (RUN_DIR/n*.admin, written by deployments/local/cluster.sh)
# every 5 s, each target labelled with its node name, through a file of
# targets (RUN_DIR/prometheus-targets.json) that Prometheus re-reads when it
# changes. cluster.sh runs it after starting the nodes; run Prometheus with
#
#   prometheus --config.file=RUN_DIR/prometheus.yml --storage.tsdb.path=RUN_DIR/prometheus
#
# and import deployments/grafana/parley-dashboard.json into Grafana with
# that Prometheus as its data source (docs/OPERATIONS.md).
set -eu
dir=${1:?usage: render-prometheus.sh RUN_DIR}
targets="$dir/prometheus-targets.json"
tmp="$targets.tmp"
{
	echo "["
	first=1
	for f in "$dir"/n*.admin; do
		[ -e "$f" ] || continue
		name=$(basename "$f" .admin)
		addr=$(cat "$f")
		[ "$first" = 1 ] || echo ","
		first=0
		printf '  {"targets": ["%s"], "labels": {"node": "%s"}}' "$addr" "$name"
	done
	echo
	echo "]"
} >"$tmp"
mv "$tmp" "$targets"
cat >"$dir/prometheus.yml" <<YAML
# Rendered by deployments/grafana/render-prometheus.sh: scrapes every node's
# admin listener of the local cluster in $dir.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: parley
    metrics_path: /metrics
    file_sd_configs:
      - files: ["$targets"]
        refresh_interval: 10s
YAML
