#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the end-to-end tests, which start
# the real binaries, real upstreams and a real redis-server on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (needed by the rate-limit tests)..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

cargo build --bins
cargo test --workspace "$@"
