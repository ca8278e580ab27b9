#!/usr/bin/env bash
# nginx as a reference target of ../shared/bench/compare.sh, with or without
# an access log shaped like Tollgate's, so a run can show what an access log
# costs a proxy that is not ours.
#
#   bench/nginx-target.sh PORT [off|accesslog]
#
# Proxies everything to $UPSTREAM_ADDR (exported by compare.sh) with the same
# keepalive settings as compare.sh's built-in nginx, plus what Tollgate does on
# every request whether it logs or not: a generated request id sent upstream
# as `X-Request-Id` (so both variants pay for it). `accesslog` writes one
# JSON line per request with the fields of Tollgate's access log (nginx's
# `escape=json`, a 256 KiB buffer flushed every 10 ms: the same batching as
# Tollgate's writer) to a file in a temp dir, or to $ACCESS_LOG_PATH. The
# route, service, trace id and consumer fields are constants: nginx has no
# such notions, and Tollgate's bench route has no consumer or trace either.
# On TERM it stops nginx (by PID) and removes the temp dir.
#
# Example (from the repo root): bench/targets-logcost.txt.
set -euo pipefail
PORT="${1:?usage: nginx-target.sh PORT [off|accesslog]}"
VARIANT="${2:-off}"
UPSTREAM_ADDR="${UPSTREAM_ADDR:-127.0.0.1:18080}"
# One process (no master, so compare.sh counts its CPU as this script's
# child): nginx then runs one worker whatever `worker_processes` says, so a
# multi-worker run (PIN=none) would compare unlike with unlike.
if [ "${PROXY_WORKERS:-1}" != 1 ]; then
  echo "nginx-target.sh runs one nginx worker; use PIN=split (PROXY_WORKERS=1)" >&2
  exit 2
fi
WORK="$(mktemp -d -t nginx-bench.XXXXXX)"
NGINX_PID=""
stop() {
  [ -n "$NGINX_PID" ] && kill -TERM "$NGINX_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
  exit 0
}
trap stop TERM INT

case "$VARIANT" in
  off) ACCESS_LOG="access_log off;" ;;
  accesslog)
    ACCESS_LOG="access_log ${ACCESS_LOG_PATH:-$WORK/access.log} tollgate buffer=256k flush=10ms;" ;;
  *) echo "unknown variant $VARIANT" >&2; exit 2 ;;
esac

cat >"$WORK/nginx.conf" <<CONF
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 8192; }
http {
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  log_format tollgate escape=json '{"time":"\$time_iso8601","request_id":"\$request_id",'
    '"trace_id":null,"client_ip":"\$remote_addr","method":"\$request_method",'
    '"host":"\$http_host","path":"\$uri","route":"all","service":"bench",'
    '"consumer":null,"status":\$status,"upstream_addr":"\$upstream_addr",'
    '"upstream_latency_ms":\$upstream_response_time,"total_latency_ms":\$request_time,'
    '"bytes_in":\$request_length,"bytes_out":\$body_bytes_sent}';
  $ACCESS_LOG
  upstream backend {
    server $UPSTREAM_ADDR;
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-Id \$request_id;
    }
  }
}
CONF

nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off; master_process off;' &
NGINX_PID=$!
wait "$NGINX_PID"
