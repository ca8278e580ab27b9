#!/usr/bin/env bash
# Installs tollgate-cp, tollgatectl, tollgate-dp and tollgate-echo with cargo
# (release profile) into cargo's bin directory (~/.cargo/bin, on PATH after a
# rustup install), or into PREFIX/bin when PREFIX is set:
#   ./scripts/install.sh                 # ~/.cargo/bin
#   PREFIX=/usr/local ./scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=()
if [ -n "${PREFIX:-}" ]; then root=(--root "$PREFIX"); fi
for crate in control-plane data-plane examples/echo-upstream; do
  cargo install --locked --path "$crate" "${root[@]}"
done
echo "installed: tollgate-cp tollgatectl tollgate-dp tollgate-echo (in ${PREFIX:-${CARGO_HOME:-$HOME/.cargo}}/bin)" >&2
