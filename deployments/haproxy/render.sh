#!/bin/sh
# render.sh OUT NAME=HOST:PORT... [-- COMMAND...]
#
# Writes OUT: haproxy.cfg (beside this script) with one `server NAME
# HOST:PORT` line per node appended to its last section, backend parley.
# Every server option lives on that backend's default-server line, so the
# nodes' names and addresses are all a runner decides. With `-- COMMAND`,
# runs COMMAND afterwards in this process (docker-compose starts HAProxy so).
# Used by deployments/local/cluster.sh and deployments/docker/docker-compose.yml.
set -eu
[ $# -ge 2 ] || { echo "usage: render.sh OUT NAME=HOST:PORT... [-- COMMAND...]" >&2; exit 2; }
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
tmp="$out.tmp.$$"
cp "$here/haproxy.cfg" "$tmp"
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
	name=${1%%=*}
	addr=${1#*=}
	case "$name" in "" | *[!A-Za-z0-9_-]*) echo "render.sh: bad server name in '$1'" >&2; rm -f "$tmp"; exit 2 ;; esac
	[ "$addr" != "$1" ] || { echo "render.sh: want NAME=HOST:PORT, got '$1'" >&2; rm -f "$tmp"; exit 2; }
	printf '    server %s %s\n' "$name" "$addr" >>"$tmp"
	shift
done
mv "$tmp" "$out"
if [ $# -gt 0 ]; then
	shift
	exec "$@"
fi
