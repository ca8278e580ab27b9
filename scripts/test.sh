#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the end-to-end tests, which start
# the real binaries, real upstreams and a real redis-server on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the end-to-end tests run besides our binaries: redis-server (rate
# limits), the TLS clients of the TLS tests (python3's ssl, curl,
# openssl s_client), and the dashboard's browser check (Debian's chromium,
# driven over the DevTools protocol with python3-websockets).
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
/usr/bin/python3 -c 'import websockets' >/dev/null 2>&1 || missing="$missing python3-websockets"
if [ -n "$missing" ]; then
  echo "installing$missing (needed by the end-to-end tests)..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # shellcheck disable=SC2086
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

cargo build --bins
cargo test --workspace "$@"
