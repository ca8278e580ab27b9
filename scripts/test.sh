#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the end-to-end tests, which start
# the real binaries, real upstreams and a real redis-server on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the end-to-end tests run besides our binaries: redis-server (rate
# limits), the TLS clients of the TLS tests (python3's ssl, curl,
# openssl s_client), the WebSocket and gRPC clients and servers of the
# websocket/grpc tests (Debian's python3-websockets, python3-grpcio; the tests
# use the first of python3, /usr/bin/python3 that imports them), and the
# dashboard's browser check (Debian's chromium, driven over the DevTools
# protocol with python3-websockets).
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
has_module() {
  python3 -c "import $1" >/dev/null 2>&1 || /usr/bin/python3 -c "import $1" >/dev/null 2>&1
}
has_module websockets || missing="$missing python3-websockets"
has_module grpc || missing="$missing python3-grpcio"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -n "$missing" ]; then
  echo "installing$missing (needed by the end-to-end tests)..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # shellcheck disable=SC2086
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

cargo build --bins
cargo test --workspace "$@"
