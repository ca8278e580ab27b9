#!/usr/bin/env bash
# The one certificate both TLS targets serve (bench/nginx-tls-target.sh and
# `bench/tollgate-target.sh PORT tls`), so a TLS comparison measures the
# proxies, not their keys: ECDSA P-256, self-signed, SANs localhost and
# 127.0.0.1, valid 90 days. Idempotent: reuses DIR/cert.pem and DIR/key.pem.
#
#   bench/tls-cert.sh [DIR]     (default: $BENCH_TLS_DIR or /tmp/tollgate-bench-tls)
#
# compare.sh checks each target with curl, so run it with
# CURL_CA_BUNDLE=DIR/cert.pem (wrk does not verify certificates).
set -euo pipefail
DIR="${1:-${BENCH_TLS_DIR:-/tmp/tollgate-bench-tls}}"
mkdir -p "$DIR"
if [ ! -s "$DIR/cert.pem" ] || [ ! -s "$DIR/key.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 90 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$DIR/key.pem.tmp" -out "$DIR/cert.pem.tmp" 2>/dev/null
  chmod 600 "$DIR/key.pem.tmp"
  mv "$DIR/key.pem.tmp" "$DIR/key.pem"
  mv "$DIR/cert.pem.tmp" "$DIR/cert.pem"
fi
echo "$DIR"
