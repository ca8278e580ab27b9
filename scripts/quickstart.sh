#!/usr/bin/env bash
# Runs a working Tollgate on this machine: two example upstreams, a control plane,
# the example config (examples/gateway.yaml) and one data plane. No Docker, no Redis.
# Ctrl-C stops everything it started (by PID).
#
# Ports (override with the variables): PROXY_PORT 8000, STATUS_PORT 8100,
# ADMIN_PORT 7070, ECHO1_PORT 9001, ECHO2_PORT 9002. Builds with the
# `quickstart` profile (optimized, without the release profile's whole-program
# LTO, so the first build takes minutes, not ten) into cargo's target directory
# (CARGO_TARGET_DIR is honoured).
set -euo pipefail
cd "$(dirname "$0")/.."

PROXY_PORT="${PROXY_PORT:-8000}"
STATUS_PORT="${STATUS_PORT:-8100}"
ADMIN_PORT="${ADMIN_PORT:-7070}"
ECHO1_PORT="${ECHO1_PORT:-9001}"
ECHO2_PORT="${ECHO2_PORT:-9002}"

say() { printf 'quickstart: %s\n' "$*" >&2; }

# 1. Every port free, before anything is built or started.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for var in PROXY_PORT STATUS_PORT ADMIN_PORT ECHO1_PORT ECHO2_PORT; do
  if port_taken "${!var}"; then
    say "port ${!var} on 127.0.0.1 is already in use (${var}); free it or set ${var}=..."
    exit 1
  fi
done

# 2. Build, with cargo's own progress on the terminal.
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
say "building (profile quickstart) into $TARGET_DIR ..."
cargo build --profile quickstart --bin tollgate-cp --bin tollgatectl --bin tollgate-dp --bin tollgate-echo
BIN="$TARGET_DIR/quickstart"

WORK="$(mktemp -d -t tollgate-quickstart.XXXXXX)"
PIDS=()
NAMES=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  say "stopped; logs and data were in $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name, command...
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!); NAMES+=("$name")
}

# Fails fast, with its last log lines, if a started process has exited.
check_alive() {
  local i
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      say "${NAMES[$i]} exited; its last log lines ($WORK/${NAMES[$i]}.log):"
      tail -n 15 "$WORK/${NAMES[$i]}.log" >&2
      exit 1
    fi
  done
}

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 100); do
    check_alive
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  check_alive
  say "timed out waiting for $what"
  exit 1
}

start echo-1 "$BIN/tollgate-echo" --listen "127.0.0.1:$ECHO1_PORT" --name echo-1
start echo-2 "$BIN/tollgate-echo" --listen "127.0.0.1:$ECHO2_PORT" --name echo-2
start cp "$BIN/tollgate-cp" --admin-listen "127.0.0.1:$ADMIN_PORT" --data-dir "$WORK/cp-data"

export TOLLGATE_SERVER="http://127.0.0.1:$ADMIN_PORT"
wait_for "the control plane" "$BIN/tollgatectl" get services
sed -e "s/127.0.0.1:9001/127.0.0.1:$ECHO1_PORT/" -e "s/127.0.0.1:9002/127.0.0.1:$ECHO2_PORT/" \
  examples/gateway.yaml >"$WORK/gateway.yaml"
"$BIN/tollgatectl" apply -f "$WORK/gateway.yaml"

start dp "$BIN/tollgate-dp" --control-plane "$TOLLGATE_SERVER" --listen "127.0.0.1:$PROXY_PORT" \
  --status-listen "127.0.0.1:$STATUS_PORT" --config-cache "$WORK/dp-config.cache"
wait_for "the data plane to be ready" curl -fsS "http://127.0.0.1:$STATUS_PORT/readyz"
wait_for "a proxied request" curl -fsS "http://127.0.0.1:$PROXY_PORT/api/hello"

cat <<MSG

Tollgate is running (logs in $WORK):
  proxy         http://127.0.0.1:$PROXY_PORT
  status        http://127.0.0.1:$STATUS_PORT/status
  admin (gRPC)  $TOLLGATE_SERVER

Try:
  curl -s http://127.0.0.1:$PROXY_PORT/api/hello
  curl -s -H 'Host: users.example.com' http://127.0.0.1:$PROXY_PORT/users/42
  curl -s http://127.0.0.1:$PROXY_PORT/nowhere                                   # 404, JSON
  curl -s http://127.0.0.1:$PROXY_PORT/orders                                    # 401: needs an API key
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' \\
    -H 'apikey: alice-demo-key-0001' http://127.0.0.1:$PROXY_PORT/orders; done; echo   # 200 x5, then 429
  TOLLGATE_SERVER=$TOLLGATE_SERVER $BIN/tollgatectl get routes
  TOLLGATE_SERVER=$TOLLGATE_SERVER $BIN/tollgatectl dataplanes

Ctrl-C to stop.
MSG
say "running"
while true; do
  check_alive
  sleep 1
done
