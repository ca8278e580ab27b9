#!/usr/bin/env bash
# Brings up the docker compose cluster (docker-compose.yml), checks it end to
# end, and tears everything down (containers, networks, volumes):
#   1. every service healthy, the config applied by the one-shot job;
#   2. a proxied answer through the load balancer;
#   3. key-auth (401 without a key) and the fleet-wide rate limit: 10 requests
#      per minute, spread by the load balancer over the three data planes, the
#      11th gets 429, and each data plane served some of them;
#   4. the cluster PKI: every data plane joined over mutual TLS with its own
#      one-time token (the token list shows each used by that node, the
#      control plane lists each node connected), the token is on no process
#      list, the key in the state dir is 0600; the admin API is TLS-only
#      (plaintext refused), and an operator certificate (role viewer) reads
#      but cannot write;
#   5. with the control plane stopped, a data plane restarts and serves from
#      its config cache; with the control plane back, it reconnects with the
#      certificate it kept (no new token).
# Where the official images (rust, debian, redis, haproxy) cannot be pulled
# (no registry here), local stand-ins are built under the same names from
# Debian packages first: a debootstrap base, and the host's Rust toolchain for
# the build stage. Needs root (debootstrap) and Docker with Compose v2 or v1.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
PROJECT="tollgate-smoke-$$"
LB_PORT=8080
ADMIN_PORT=7070

say() { printf '[compose-smoke %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

# --- Docker and Compose -------------------------------------------------------
DOCKERD_PID=""
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || fail "no Docker engine (apt-get install -y docker.io)"
  say "starting dockerd"
  dockerd >/tmp/tollgate-smoke-dockerd.log 2>&1 & DOCKERD_PID=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start (see /tmp/tollgate-smoke-dockerd.log)"
fi
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  fail "no docker compose (apt-get install -y docker-compose)"
fi
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml "$@"; }

for port in $LB_PORT $ADMIN_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port is taken on 127.0.0.1 (the compose file publishes it)"
  fi
done

teardown() {
  say "tearing down"
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  left="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
  left+="$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  left+="$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  if [ -n "$left" ]; then say "left behind: $left"; else say "nothing left behind"; fi
  if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID" 2>/dev/null || true; fi
}
trap teardown EXIT

# --- Stand-in images ------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
try_pull() { timeout 20 docker pull -q "$1" >/dev/null 2>&1; }
standin_dir="$(mktemp -d -t tollgate-standins.XXXXXX)"
cleanup_standins() { rm -rf "$standin_dir"; }

build_debian() {
  command -v debootstrap >/dev/null || fail "debootstrap missing (apt-get install -y debootstrap)"
  say "building stand-in debian:bookworm-slim with debootstrap"
  debootstrap --variant=minbase bookworm "$standin_dir/rootfs" http://deb.debian.org/debian \
    >"$standin_dir/debootstrap.log" 2>&1 || fail "debootstrap failed: $(tail -3 "$standin_dir/debootstrap.log")"
  tar -C "$standin_dir/rootfs" -c . | docker import \
    -c 'CMD ["bash"]' -c 'LABEL org.tollgate.standin=true' - debian:bookworm-slim >/dev/null
  rm -rf "$standin_dir/rootfs"
}

build_from_debian() { # name, dockerfile text, [context dir]
  local name=$1 text=$2 context=${3:-$standin_dir/empty}
  mkdir -p "$context"
  say "building stand-in $name"
  printf '%s\n' "$text" >"$context/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$name" "$context" >/dev/null 2>"$standin_dir/build.log" \
    || fail "building $name: $(tail -5 "$standin_dir/build.log")"
}

ensure() { # name, builder...
  local name=$1; shift
  have_image "$name" && return 0
  try_pull "$name" && return 0
  "$@"
}

ensure debian:bookworm-slim build_debian
if ! have_image rust:1-bookworm && ! try_pull rust:1-bookworm; then
  mkdir -p "$standin_dir/rust-context"
  sysroot="$(rustc --print sysroot)"
  say "copying the host toolchain ($(rustc --version)) into the rust stand-in"
  cp -a "$sysroot/bin" "$sysroot/lib" "$standin_dir/rust-context/" 2>/dev/null
  mkdir -p "$standin_dir/rust-context/rust" && mv "$standin_dir/rust-context/bin" "$standin_dir/rust-context/lib" "$standin_dir/rust-context/rust/"
  # The host's trust store too: where the registry is reached through a
  # TLS-inspecting proxy, its CA is in there and cargo needs it.
  cp /etc/ssl/certs/ca-certificates.crt "$standin_dir/rust-context/host-ca-certificates.crt"
  build_from_debian rust:1-bookworm 'FROM debian:bookworm-slim
LABEL org.tollgate.standin=true
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
COPY host-ca-certificates.crt /etc/ssl/certs/host-ca-certificates.crt
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH CARGO_HOME=/usr/local/cargo \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/host-ca-certificates.crt
RUN rustc --version && cargo --version' "$standin_dir/rust-context"
fi
ensure redis:7-bookworm build_from_debian redis:7-bookworm 'FROM debian:bookworm-slim
LABEL org.tollgate.standin=true
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]'
ensure haproxy:2.6 build_from_debian haproxy:2.6 'FROM debian:bookworm-slim
LABEL org.tollgate.standin=true
RUN apt-get update && apt-get install -y --no-install-recommends haproxy && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/etc/haproxy
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
cleanup_standins

# --- Up ---------------------------------------------------------------------------
say "building the Tollgate image and starting the cluster (${COMPOSE[*]})"
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
compose build >"/tmp/$PROJECT-build.log" 2>&1 || fail "image build failed: $(tail -20 "/tmp/$PROJECT-build.log")"
compose up -d >"/tmp/$PROJECT-up.log" 2>&1 || { compose ps; compose logs --tail 20; fail "compose up failed: $(tail -20 "/tmp/$PROJECT-up.log")"; }

container() { compose ps -q "$1"; }
health() { docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(container "$1")" 2>/dev/null; }
for _ in $(seq 1 120); do
  [ "$(health lb)" = healthy ] && break
  sleep 1
done
for service in redis echo-1 echo-2 cp dp-1 dp-2 dp-3 lb; do
  state="$(health "$service")"
  [ "$state" = healthy ] || { compose logs --tail 30 "$service"; fail "$service is $state"; }
done
apply_exit="$(docker inspect --format '{{.State.ExitCode}}' "$(container apply)")"
[ "$apply_exit" = 0 ] || { compose logs apply; fail "the apply job exited $apply_exit"; }
say "all services healthy; config applied"

# --- Cluster PKI --------------------------------------------------------------------
CA=/var/lib/tollgate/cp/pki/ca.pem
ctl() { compose exec -T cp tollgatectl --server https://127.0.0.1:7070 --ca-cert "$CA" "$@"; }
json_check() { # python expression over `doc`, message
  python3 -c "import json,sys; doc=json.load(sys.stdin); sys.exit(0 if ($1) else 1)" || fail "$2"
}
join_exit="$(docker inspect --format '{{.State.ExitCode}}' "$(container join-tokens)")"
[ "$join_exit" = 0 ] || { compose logs join-tokens; fail "the join-tokens job exited $join_exit"; }
for _ in $(seq 1 30); do
  connected="$(ctl dataplanes -o json | python3 -c 'import json,sys; print(" ".join(sorted(p["node_id"] for p in json.load(sys.stdin) if p["connected"])))')"
  [ "$connected" = "dp-1 dp-2 dp-3" ] && break
  sleep 1
done
[ "$connected" = "dp-1 dp-2 dp-3" ] || fail "connected data planes: '$connected', expected dp-1 dp-2 dp-3"
ctl dataplanes token list -o json | json_check \
  'sorted(t["used_by"] for t in doc["tokens"]) == ["dp-1", "dp-2", "dp-3"]' \
  "each data plane should have used one join token"
say "dp-1, dp-2, dp-3 joined over mTLS (one token each) and are connected"
compose logs cp 2>/dev/null | grep -q "config stream listening on 0.0.0.0:7071 (TLS" \
  || fail "the config stream is not TLS"
for dp in dp-1 dp-2 dp-3; do
  compose exec -T "$dp" sh -c 'cat /proc/1/cmdline /proc/1/environ' | grep -aq tgjoin \
    && fail "$dp has its join token on its command line or in its environment"
  mode="$(compose exec -T "$dp" stat -c %a /var/lib/tollgate/dp/state/key.pem)"
  [ "$mode" = 600 ] || fail "$dp key.pem mode $mode"
done
if compose exec -T cp tollgatectl --server http://127.0.0.1:7070 get routes >/dev/null 2>&1; then
  fail "the admin API answered plaintext"
fi
ctl operators cert create smoke-viewer --role viewer --ttl 1h --out /tmp/smoke-ops >/dev/null \
  || fail "could not issue an operator certificate"
viewer() {
  compose exec -T -e TOLLGATE_ADMIN_TOKEN= cp tollgatectl --server https://127.0.0.1:7070 \
    --ca-cert /tmp/smoke-ops/ca.pem --client-cert /tmp/smoke-ops/smoke-viewer.crt \
    --client-key /tmp/smoke-ops/smoke-viewer.key "$@"
}
viewer get routes >/dev/null || fail "the viewer certificate cannot read"
denied="$(viewer delete route orders 2>&1)" && fail "the viewer certificate could delete"
grep -q "permission denied" <<<"$denied" || fail "viewer write: $denied"
say "admin API: plaintext refused; viewer certificate reads, and its write is refused ($denied)"

# --- Checks -----------------------------------------------------------------------
body="$(curl -fsS "http://127.0.0.1:$LB_PORT/api/hello")" || fail "no proxied answer through the load balancer"
grep -q '"path":"/hello"' <<<"$body" || fail "unexpected proxied answer: $body"
say "proxied through the load balancer: $body"

code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LB_PORT/orders")"
[ "$code" = 401 ] || fail "/orders without a key answered $code, expected 401"
codes=""
for _ in $(seq 1 11); do
  codes+="$(curl -s -o /dev/null -w '%{http_code}' -H 'apikey: alice-demo-key-0001' "http://127.0.0.1:$LB_PORT/orders") "
done
say "/orders with alice's key, 11 requests: $codes"
[ "$codes" = "200 200 200 200 200 200 200 200 200 200 429 " ] || fail "expected 10 x 200 then 429"
for dp in dp-1 dp-2 dp-3; do
  served="$(compose exec -T "$dp" curl -fsS http://127.0.0.1:8100/metrics \
    | awk '/^tollgate_requests_total\{.*route="orders"/ { sum += $NF } END { print sum + 0 }')"
  say "$dp served $served /orders requests"
  [ "${served%.*}" -ge 1 ] || fail "$dp served no /orders request: the limit was not shared across data planes"
done

say "stopping the control plane; restarting dp-2 from its config cache"
compose stop cp >/dev/null 2>&1
compose restart dp-2 >/dev/null 2>&1
for _ in $(seq 1 60); do
  compose exec -T dp-2 curl -fsS -o /dev/null http://127.0.0.1:8100/readyz 2>/dev/null && break
  sleep 0.5
done
compose exec -T dp-2 curl -fsS -o /dev/null http://127.0.0.1:8100/readyz || fail "dp-2 is not ready without the control plane"
for _ in $(seq 1 6); do
  curl -fsS -o /dev/null "http://127.0.0.1:$LB_PORT/api/hello" || fail "a request failed while the control plane was down"
done
say "dp-2 serves from its cache with the control plane down"
compose start cp >/dev/null 2>&1
for _ in $(seq 1 60); do
  connected="$(ctl dataplanes -o json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(sorted(p["node_id"] for p in json.load(sys.stdin) if p["connected"])))' 2>/dev/null || true)"
  [ "$connected" = "dp-1 dp-2 dp-3" ] && break
  sleep 1
done
[ "$connected" = "dp-1 dp-2 dp-3" ] || fail "after the control plane came back: connected '$connected'"
ctl dataplanes token list -o json | json_check 'len(doc["tokens"]) == 3' \
  "a data plane needed a new join token after a restart"
say "the control plane is back; dp-2 reconnected with the certificate it kept"

say "PASS in $(( $(date +%s) - started ))s"
