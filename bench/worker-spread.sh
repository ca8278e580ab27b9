#!/usr/bin/env bash
# How evenly a multi-worker tollgate-dp spreads client connections and work
# over its proxy workers: wrk with CONNS connections for DURATION against
# bench/tollgate-target.sh with PROXY_WORKERS workers (default 2), then each
# thread's CPU time over the run (from /proc, works for any build) and, when
# the build has it, `tollgate_connections_accepted_total` per worker.
#
#   bench/worker-spread.sh [CONNS] [DURATION]        (defaults 64, 5s)
#
# Needs nginx (the upstream, on 127.0.0.1:28180), wrk, curl and release
# binaries in $TOLLGATE_BIN_DIR (default target/release). Everything it
# starts is stopped by PID.
set -euo pipefail
CONNS="${1:-64}"; DURATION="${2:-5s}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PROXY_WORKERS="${PROXY_WORKERS:-2}"
T="$(mktemp -d -t tollgate-spread.XXXXXX)"
cat > "$T/up.conf" <<C
worker_processes 1; pid $T/up.pid; error_log $T/err.log warn; events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $T/b; proxy_temp_path $T/p; fastcgi_temp_path $T/f; uwsgi_temp_path $T/u; scgi_temp_path $T/s;
server { listen 127.0.0.1:28180; location / { default_type text/plain; return 200 "hello\n"; } } }
C
nginx -p "$T" -c "$T/up.conf" -g 'daemon off;' >/dev/null 2>&1 & NG=$!
UPSTREAM_ADDR=127.0.0.1:28180 "$ROOT/bench/tollgate-target.sh" 28190 plain >"$T/target.log" 2>&1 & TG=$!
trap 'kill $TG $NG 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
for _ in $(seq 1 100); do
  [ "$(curl -s -m 2 http://127.0.0.1:28190/ 2>/dev/null)" = hello ] && break
  sleep 0.2
done
DP=$(pgrep -P "$TG" -x tollgate-dp | head -1)
[ -n "$DP" ] || { echo "tollgate-dp did not start" >&2; cat "$T/target.log" >&2; exit 1; }
# ticks: utime+stime of each thread of tollgate-dp, as "comm/tid ticks" lines.
ticks() {
  for t in /proc/"$DP"/task/*; do
    echo "$(tr ' ' '_' < "$t/comm")/${t##*/} $(sed 's/^.*) //' "$t/stat" | awk '{ print $12 + $13 }')"
  done | sort
}
ticks > "$T/before"
wrk -t1 -c"$CONNS" -d"$DURATION" http://127.0.0.1:28190/ | grep -E "Requests/sec"
ticks > "$T/after"
echo "CPU ticks per thread during the run (workers: tollgate-dp = 0, tollgate-dp-N = N):"
join "$T/before" "$T/after" 2>/dev/null | awk '$3 > $2 { printf "  %-20s %d\n", $1, $3 - $2 }'
curl -s http://127.0.0.1:30190/metrics | grep '^tollgate_connections_accepted_total' || echo "  (no tollgate_connections_accepted_total in this build)"
