#!/usr/bin/env bash
# Instructions per proxied request of tollgate-dp, counted by callgrind (whole
# process, all threads): a repeatable figure for comparing two builds or two
# variants where wall-clock benchmarks are too noisy. Runs usually agree
# within ~100; now and then one reads ~1,000 higher (background work landing
# in the window), so take the lower of two. It does not see cache misses or
# kernel time: confirm with ../shared/bench/compare.sh.
#
#   bench/callgrind.sh VARIANT [REQUESTS]        (VARIANT as for tollgate-target.sh)
#
# Needs valgrind, nginx and curl, and release binaries in $TOLLGATE_BIN_DIR
# (default target/release). Starts an nginx upstream on 127.0.0.1:28080 and the
# target on 28090, checks a request is proxied (200 from the upstream, not a
# gateway error), warms up, then counts REQUESTS (default 3000) keep-alive
# requests. SAME_URL=1 sends every warm-up and counted request to one URL
# (/same) instead of distinct ones: with the cache variant, all HITs. KEEP=FILE
# keeps the callgrind output (build with
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=none
# for per-function costs).
set -euo pipefail
VARIANT="${1:-plain}"; N="${2:-3000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${TOLLGATE_BIN_DIR:-$ROOT/target/release}"
# Fixed ports: a second run at the same time (another user's) would send its
# requests or its config to this run's processes and skew both counts.
for port in 28080 28090 29090 30090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port is in use (another callgrind.sh run?): try again later" >&2; exit 1
  fi
done
T="$(mktemp -d -t tollgate-callgrind.XXXXXX)"
mkdir -p "$T/bin" "$T/ng"
ln -s "$BIN/tollgate-cp" "$T/bin/tollgate-cp"
ln -s "$BIN/tollgatectl" "$T/bin/tollgatectl"
[ -d "$BIN/examples" ] && ln -s "$BIN/examples" "$T/bin/examples"
cat > "$T/bin/tollgate-dp" <<W
#!/usr/bin/env bash
exec valgrind --tool=callgrind --callgrind-out-file=$T/cg.out.%p "$BIN/tollgate-dp" "\$@"
W
chmod +x "$T/bin/tollgate-dp"
cat > "$T/ng/up.conf" <<C
worker_processes 1; pid $T/ng/up.pid; error_log $T/ng/err.log warn; events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $T/ng/b; proxy_temp_path $T/ng/p; fastcgi_temp_path $T/ng/f; uwsgi_temp_path $T/ng/u; scgi_temp_path $T/ng/s;
server { listen 127.0.0.1:28080; listen 127.0.0.2:28080; listen 127.0.0.3:28080; location / { default_type text/plain; return 200 "hello\n"; } } }
C
nginx -p "$T/ng" -c "$T/ng/up.conf" -g 'daemon off;' >/dev/null 2>&1 & NG=$!
UPSTREAM_ADDR=127.0.0.1:28080 TOLLGATE_BIN_DIR="$T/bin" "$ROOT/bench/tollgate-target.sh" 28090 "$VARIANT" >"$T/target.log" 2>&1 & TG=$!
trap 'kill $TG $NG 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
ready=""
for _ in $(seq 1 300); do
  if [ "$(curl -s -m 2 ${BENCH_HEADER:+-H "$BENCH_HEADER"} http://127.0.0.1:28090/ 2>/dev/null)" = hello ]; then ready=1; break; fi
  sleep 1
done
[ -n "$ready" ] || { echo "the target never proxied a request to the upstream" >&2; exit 1; }
# requests PREFIX COUNT: COUNT keep-alive requests on one connection, to
# distinct URLs (PREFIX1..PREFIXCOUNT) or, with SAME_URL=1, all to /same.
requests() {
  if [ -n "${SAME_URL:-}" ]; then
    local args=()
    for _ in $(seq 1 "$2"); do args+=(-o /dev/null "http://127.0.0.1:28090/same"); done
    curl -s ${BENCH_HEADER:+-H "$BENCH_HEADER"} "${args[@]}"
  else
    curl -s -o /dev/null ${BENCH_HEADER:+-H "$BENCH_HEADER"} "http://127.0.0.1:28090/$1[1-$2]"
  fi
}
requests w 300
DP=$(pgrep -f "valgrind.*$T" | head -1)
callgrind_control -z "$DP" >/dev/null
requests x "$N"
sleep 0.3
callgrind_control -d "$DP" >/dev/null
sleep 1
F=$(ls -t "$T"/cg.out."$DP"* | head -1)
TOT=$(grep -E '^(summary|totals):' "$F" | head -1 | awk '{print $2}')
echo "$VARIANT${SAME_URL:+ (one URL)} instructions/request: $((TOT / N))"
if [ -n "${KEEP:-}" ]; then cp "$F" "$KEEP"; fi
