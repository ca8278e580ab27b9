#!/usr/bin/env bash
# Tollgate as a target of ../shared/bench/compare.sh.
#
#   bench/tollgate-target.sh PORT [VARIANT]
#
# Starts tollgate-cp on a temp dir, applies a one-route config that proxies
# everything to $UPSTREAM_ADDR (exported by compare.sh), starts tollgate-dp on
# 127.0.0.1:PORT, and on TERM stops both (by PID). VARIANT picks the plugins on
# the route: plain (default), transformer, keyauth, jwt, ratelimit-local,
# ratelimit-redis, ratelimit-batched, cache (proxy-cache in memory: compare.sh's one URL is a
# HIT after the first request; callgrind.sh's distinct URLs are all MISSes),
# accesslog, tracing, tls, bare (a limit high enough never to reject, so the run measures
# its cost; the redis variants start their own redis-server on PORT+3000 and
# stop it by PID; ratelimit-batched is `sync: batched` at the default 100 ms). keyauth and jwt take
# their credential from BENCH_HEADER="apikey: <token>" (bench/auth-token.sh):
# keyauth registers the token string as an API key, jwt verifies it as an
# RS256 token read from that same header. Every variant but accesslog runs with
# `--access-log off`; accesslog writes it to a file in the temp dir (or to
# $ACCESS_LOG_PATH). bare also turns the per-request metrics off
# (`--request-metrics false`), the baseline that shows what metrics cost. tracing
# exports every request's spans (ratio 1.0) to the otlp_sink example receiver,
# started on PORT+4000. Release binaries must be built first
# (`cargo build --release --bins` and, for tracing,
# `cargo build --release -p tollgate-integration-tests --example otlp_sink`).
# tls serves HTTPS on PORT (`--tls-listen`; plaintext moves to PORT+5000) with
# the certificate of bench/tls-cert.sh as the default certificate, the one
# bench/nginx-tls-target.sh serves too (bench/targets-tls.txt).
# rr3, least-request and consistent-hash balance over three targets: the
# upstream's port on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (bench/callgrind.sh's
# nginx listens on all three); consistent-hash hashes the path. no-retries is
# plain with `retries: 0` on the route (what keeping a copy for a retry costs).
#
# Example (from the repo root):
#   TARGET_NAME=tollgate TARGET_URL=http://127.0.0.1:18090/ \
#   TARGET_CMD="$PWD/bench/tollgate-target.sh 18090" ../shared/bench/compare.sh
set -euo pipefail
PORT="${1:?usage: tollgate-target.sh PORT [VARIANT]}"
VARIANT="${2:-plain}"
UPSTREAM_ADDR="${UPSTREAM_ADDR:-127.0.0.1:18080}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${TOLLGATE_BIN_DIR:-$ROOT/target/release}"
WORKERS="${PROXY_WORKERS:-1}"
WORK="$(mktemp -d -t tollgate-bench.XXXXXX)"
ADMIN_PORT=$((PORT + 1000))
STATUS_PORT=$((PORT + 2000))
REDIS_PORT=$((PORT + 3000))
CP_PID=""; DP_PID=""; REDIS_PID=""
stop() {
  [ -n "$DP_PID" ] && kill -TERM "$DP_PID" 2>/dev/null
  [ -n "$CP_PID" ] && kill -TERM "$CP_PID" 2>/dev/null
  [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null
  [ -n "${SINK_PID:-}" ] && kill -TERM "$SINK_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
  exit 0
}
trap stop TERM INT

case "$VARIANT" in
  plain|bare|accesslog|tracing|tls|rr3|least-request|consistent-hash|no-retries) PLUGINS="[]" ;;
  transformer) PLUGINS='[{ name: request-transformer, config: { add: { headers: { x-bench: "1" } } } }]' ;;
  keyauth) PLUGINS='[{ name: key-auth }]' ;;
  jwt) PLUGINS='[{ name: jwt, config: { header: apikey, algorithms: [RS256] } }]' ;;
  ratelimit-local) PLUGINS='[{ name: rate-limit, config: { limit: 1000000000000, window: 1h, scope: ip } }]' ;;
  ratelimit-redis) PLUGINS='[{ name: rate-limit, config: { limit: 1000000000000, window: 1h, scope: ip, policy: redis } }]' ;;
  ratelimit-batched) PLUGINS='[{ name: rate-limit, config: { limit: 1000000000000, window: 1h, scope: ip, policy: redis, sync: batched } }]' ;;
  cache) PLUGINS='[{ name: proxy-cache, config: { ttl: 3600, max_ttl: 3600 } }]' ;;
  *) echo "unknown variant $VARIANT" >&2; exit 2 ;;
esac

UPSTREAM_PORT="${UPSTREAM_ADDR##*:}"
THREE="[{ address: \"127.0.0.1:$UPSTREAM_PORT\" }, { address: \"127.0.0.2:$UPSTREAM_PORT\" }, { address: \"127.0.0.3:$UPSTREAM_PORT\" }]"
case "$VARIANT" in
  rr3) UPSTREAM="{ targets: $THREE }" ;;
  least-request) UPSTREAM="{ targets: $THREE, load_balancing: least_request }" ;;
  consistent-hash) UPSTREAM="{ targets: $THREE, load_balancing: consistent_hash, hash_on: path }" ;;
  *) UPSTREAM="{ targets: [{ address: \"$UPSTREAM_ADDR\" }] }" ;;
esac

cat >"$WORK/gateway.yaml" <<YAML
services:
  - name: bench
    upstream: $UPSTREAM
routes:
  - name: all
    service: bench
    paths: ["/"]
    plugins: $PLUGINS
YAML
if [ "$VARIANT" = no-retries ]; then
  echo "    retries: 0" >>"$WORK/gateway.yaml"
fi

if [ "$VARIANT" = tls ]; then
  TLS_DIR="$("$ROOT/bench/tls-cert.sh")"
  {
    echo "certificates:"
    echo "  - name: bench"
    echo "    default: true"
    echo "    snis: [localhost]"
    echo "    cert_pem: |"
    sed 's/^/      /' "$TLS_DIR/cert.pem"
    echo "    key_pem: |"
    sed 's/^/      /' "$TLS_DIR/key.pem"
  } >>"$WORK/gateway.yaml"
fi

# The consumer the keyauth / jwt variants authenticate.
case "$VARIANT" in
  keyauth|jwt)
    TOKEN=""
    case "${BENCH_HEADER:-}" in "apikey: "*) TOKEN="${BENCH_HEADER#apikey: }" ;; esac
    if [ -z "$TOKEN" ]; then
      echo "variant $VARIANT needs BENCH_HEADER=\"apikey: \$(bench/auth-token.sh)\"" >&2
      exit 2
    fi
    {
      echo "consumers:"
      echo "  - name: bench-user"
      echo "    credentials:"
      if [ "$VARIANT" = keyauth ]; then
        echo "      - api_key: \"$TOKEN\""
      else
        echo "      - jwt:"
        echo "          key: bench"
        echo "          algorithm: RS256"
        echo "          public_key: |"
        sed 's/^/            /' "$ROOT/data-plane/plugins/src/testdata/rsa_public.pem"
      fi
    } >>"$WORK/gateway.yaml"
    ;;
esac

"$BIN/tollgate-cp" --admin-listen "127.0.0.1:$ADMIN_PORT" --data-dir "$WORK/cp" >"$WORK/cp.log" 2>&1 &
CP_PID=$!
for _ in $(seq 1 100); do
  "$BIN/tollgatectl" --server "http://127.0.0.1:$ADMIN_PORT" apply -f "$WORK/gateway.yaml" >/dev/null 2>&1 && break
  sleep 0.1
done
DP_ARGS=(--access-log off)
SINK_PID=""
case "$VARIANT" in
  bare) DP_ARGS=(--access-log off --request-metrics false) ;;
  accesslog) DP_ARGS=(--access-log "${ACCESS_LOG_PATH:-$WORK/access.log}") ;;
  tracing)
    SINK_PORT=$((PORT + 4000))
    "$BIN/examples/otlp_sink" "127.0.0.1:$SINK_PORT" >"$WORK/otlp.log" 2>&1 &
    SINK_PID=$!
    DP_ARGS=(--access-log off --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --trace-sample-ratio 1.0)
    ;;
esac
if [ "$VARIANT" = ratelimit-redis ] || [ "$VARIANT" = ratelimit-batched ]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  DP_ARGS+=(--redis-url "redis://127.0.0.1:$REDIS_PORT/0")
fi
LISTEN_PORT="$PORT"
if [ "$VARIANT" = tls ]; then
  LISTEN_PORT=$((PORT + 5000))
  DP_ARGS+=(--tls-listen "127.0.0.1:$PORT")
fi
RUST_LOG=warn "$BIN/tollgate-dp" --control-plane "http://127.0.0.1:$ADMIN_PORT" --listen "127.0.0.1:$LISTEN_PORT" \
  --status-listen "127.0.0.1:$STATUS_PORT" --worker-threads "$WORKERS" "${DP_ARGS[@]}" >"$WORK/dp.log" 2>&1 &
DP_PID=$!
wait "$DP_PID"
