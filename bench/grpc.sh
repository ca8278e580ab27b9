#!/usr/bin/env bash
# gRPC unary calls per second through tollgate-dp (`protocol: h2c`) against
# the same server called directly, interleaved in one run.
#
#   bench/grpc.sh [SECONDS] [THREADS] [ROUNDS]      (defaults 5, 8, 3)
#
# Starts the real gRPC server of the end-to-end tests
# (integration-tests/python/grpc_server.py, Debian's python3-grpcio) on
# 127.0.0.1:29051, tollgate-cp and tollgate-dp (release binaries from
# $TOLLGATE_BIN_DIR, default target/release; PROXY_WORKERS workers, default 1)
# with one h2c service and a catch-all route, then runs bench/grpc_client.py
# (THREADS threads of blocking unary calls on one HTTP/2 channel) against the
# server and the gateway by turns, ROUNDS times. Prints each run's calls/s and
# latency, the gateway/direct ratio, and the data plane's CPU time per call
# (from /proc, user + system). The client and server are Python: on a small
# machine they, not the gateway, set the pace, so read the ratio together
# with the CPU per call. Stops everything it started by PID.
set -euo pipefail
SECONDS_PER_RUN="${1:-5}"; THREADS="${2:-8}"; ROUNDS="${3:-3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${TOLLGATE_BIN_DIR:-$ROOT/target/release}"
WORKERS="${PROXY_WORKERS:-1}"
PY=python3
python3 -c "import grpc" 2>/dev/null || PY=/usr/bin/python3
"$PY" -c "import grpc" || { echo "needs python3-grpcio (apt-get install python3-grpcio)" >&2; exit 2; }
GRPC_PORT=29051; DP_PORT=29090; ADMIN_PORT=29070; STATUS_PORT=29091
WORK="$(mktemp -d -t tollgate-grpc-bench.XXXXXX)"
PIDS=()
stop() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop EXIT

"$PY" "$ROOT/integration-tests/python/grpc_server.py" "$GRPC_PORT" quiet >"$WORK/server.log" 2>&1 &
PIDS+=($!)
"$BIN/tollgate-cp" --admin-listen "127.0.0.1:$ADMIN_PORT" --data-dir "$WORK/cp" >"$WORK/cp.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/gateway.yaml" <<YAML
services:
  - name: grpc
    protocol: h2c
    upstream: { targets: [{ address: "127.0.0.1:$GRPC_PORT" }] }
routes:
  - name: all
    service: grpc
    paths: ["/"]
YAML
for _ in $(seq 1 100); do
  "$BIN/tollgatectl" --server "http://127.0.0.1:$ADMIN_PORT" apply -f "$WORK/gateway.yaml" >/dev/null 2>&1 && break
  sleep 0.1
done
RUST_LOG=warn "$BIN/tollgate-dp" --control-plane "http://127.0.0.1:$ADMIN_PORT" --listen "127.0.0.1:$DP_PORT" \
  --status-listen "127.0.0.1:$STATUS_PORT" --access-log off \
  --worker-threads "$WORKERS" >"$WORK/dp.log" 2>&1 &
DP_PID=$!
PIDS+=("$DP_PID")
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$STATUS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
grep -q '"ready"' "$WORK/server.log" || sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$DP_PID/stat"; }
HZ="$(getconf CLK_TCK)"
for round in $(seq 1 "$ROUNDS"); do
  direct="$("$PY" "$ROOT/bench/grpc_client.py" "127.0.0.1:$GRPC_PORT" "$SECONDS_PER_RUN" "$THREADS")"
  before="$(cpu_ticks)"
  gateway="$("$PY" "$ROOT/bench/grpc_client.py" "127.0.0.1:$DP_PORT" "$SECONDS_PER_RUN" "$THREADS")"
  after="$(cpu_ticks)"
  "$PY" - "$round" "$direct" "$gateway" "$before" "$after" "$HZ" <<'PY'
import json, sys
round_, direct, gateway, before, after, hz = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cpu_us = (after - before) * 1e6 / hz / max(gateway["calls"], 1)
print("round %s  direct %8.1f calls/s (p50 %s ms, p99 %s ms)  gateway %8.1f calls/s (p50 %s ms, p99 %s ms, errors %d)  ratio %.2f  dp cpu %.1f us/call" % (
    round_, direct["calls_per_s"], direct["p50_ms"], direct["p99_ms"], gateway["calls_per_s"],
    gateway["p50_ms"], gateway["p99_ms"], gateway["errors"] + direct["errors"],
    gateway["calls_per_s"] / max(direct["calls_per_s"], 1e-9), cpu_us))
PY
done
