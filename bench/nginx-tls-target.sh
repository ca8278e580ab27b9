#!/usr/bin/env bash
# nginx terminating TLS, as a reference target of ../shared/bench/compare.sh
# beside `bench/tollgate-target.sh PORT tls`.
#
#   bench/nginx-tls-target.sh PORT
#
# One process, one worker (like bench/nginx-target.sh), TLS 1.2 and 1.3 on
# 127.0.0.1:PORT with the certificate of bench/tls-cert.sh (the same ECDSA
# P-256 key Tollgate serves), HTTP/1.1 (wrk speaks nothing else), proxying
# to $UPSTREAM_ADDR over keep-alive connections like compare.sh's nginx.
# Session tickets and the session cache are on, as Tollgate's are; wrk never
# resumes a session, so with `Connection: close` every request is a full
# handshake. On TERM it stops nginx (by PID) and removes its temp dir.
#
# Example (from the repo root): bench/targets-tls.txt.
set -euo pipefail
PORT="${1:?usage: nginx-tls-target.sh PORT}"
UPSTREAM_ADDR="${UPSTREAM_ADDR:-127.0.0.1:18080}"
if [ "${PROXY_WORKERS:-1}" != 1 ]; then
  echo "nginx-tls-target.sh runs one nginx worker; use PIN=split (PROXY_WORKERS=1)" >&2
  exit 2
fi
TLS_DIR="$("$(dirname "$0")/tls-cert.sh")"
WORK="$(mktemp -d -t nginx-tls-bench.XXXXXX)"
NGINX_PID=""
stop() {
  [ -n "$NGINX_PID" ] && kill -TERM "$NGINX_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
  exit 0
}
trap stop TERM INT

cat >"$WORK/nginx.conf" <<CONF
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  upstream backend {
    server $UPSTREAM_ADDR;
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$PORT ssl backlog=4096;
    ssl_certificate $TLS_DIR/cert.pem;
    ssl_certificate_key $TLS_DIR/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF

nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off; master_process off;' &
NGINX_PID=$!
wait "$NGINX_PID"
