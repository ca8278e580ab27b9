#!/usr/bin/env bash
# Prints an RS256 JWT for the `keyauth` and `jwt` variants of
# bench/tollgate-target.sh: iss "bench", exp one day ahead, signed with the
# RSA test key of the data plane's unit tests (a benchmark key, not a secret).
#
# The same string serves as the API key of the `keyauth` variant, so one
# BENCH_HEADER exercises both variants in a single compare.sh run:
#
#   TOKEN="$(bench/auth-token.sh)"
#   BENCH_HEADER="apikey: $TOKEN" TARGETS_FILE=bench/targets-auth.txt ../shared/bench/compare.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEY="$ROOT/data-plane/plugins/src/testdata/rsa_private.pem"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
HEADER="$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)"
EXP=$(( $(date +%s) + 86400 ))
PAYLOAD="$(printf '{"iss":"bench","sub":"bench-user","exp":%d}' "$EXP" | b64url)"
SIG="$(printf '%s.%s' "$HEADER" "$PAYLOAD" | openssl dgst -sha256 -sign "$KEY" -binary | b64url)"
printf '%s.%s.%s\n' "$HEADER" "$PAYLOAD" "$SIG"
