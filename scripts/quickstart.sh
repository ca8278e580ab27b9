#!/usr/bin/env bash
# Runs a working Tollgate on this machine: two example upstreams, a control plane,
# the example config (examples/gateway.yaml) and one data plane. No Docker, no Redis.
# Ctrl-C stops everything it started (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."

PROXY_PORT="${PROXY_PORT:-8000}"
STATUS_PORT="${STATUS_PORT:-8100}"
ADMIN_PORT="${ADMIN_PORT:-7070}"

echo "building (release)..." >&2
cargo build --release --quiet --bin tollgate-cp --bin tollgatectl --bin tollgate-dp --bin tollgate-echo
BIN=target/release
WORK="$(mktemp -d -t tollgate-quickstart.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; logs and data were in $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/tollgate-echo" --listen 127.0.0.1:9001 --name echo-1 >"$WORK/echo-1.log" 2>&1 & PIDS+=($!)
"$BIN/tollgate-echo" --listen 127.0.0.1:9002 --name echo-2 >"$WORK/echo-2.log" 2>&1 & PIDS+=($!)
"$BIN/tollgate-cp" --admin-listen "127.0.0.1:$ADMIN_PORT" --data-dir "$WORK/cp-data" >"$WORK/cp.log" 2>&1 & PIDS+=($!)

export TOLLGATE_SERVER="http://127.0.0.1:$ADMIN_PORT"
for _ in $(seq 1 100); do
  "$BIN/tollgatectl" get services >/dev/null 2>&1 && break
  sleep 0.1
done
"$BIN/tollgatectl" apply -f examples/gateway.yaml

"$BIN/tollgate-dp" --control-plane "$TOLLGATE_SERVER" --listen "127.0.0.1:$PROXY_PORT" \
  --status-listen "127.0.0.1:$STATUS_PORT" --config-cache "$WORK/dp-config.cache" \
  >"$WORK/dp.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$STATUS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG

Tollgate is running (logs in $WORK):
  proxy         http://127.0.0.1:$PROXY_PORT
  status        http://127.0.0.1:$STATUS_PORT/status
  admin (gRPC)  $TOLLGATE_SERVER   (TOLLGATE_SERVER is set for tollgatectl below)

Try:
  curl -s http://127.0.0.1:$PROXY_PORT/api/hello
  curl -s -H 'Host: users.example.com' http://127.0.0.1:$PROXY_PORT/users/42
  curl -s http://127.0.0.1:$PROXY_PORT/nowhere            # 404, JSON
  TOLLGATE_SERVER=$TOLLGATE_SERVER $BIN/tollgatectl get routes
  TOLLGATE_SERVER=$TOLLGATE_SERVER $BIN/tollgatectl dataplanes

Ctrl-C to stop.
MSG
wait
