#!/usr/bin/env bash
# nginx with Lua, calling Redis once per request: the rate-limit setup Kong
# and APISIX users run (OpenResty's lua-resty-redis over a keep-alive
# connection pool, one EVALSHA of a fixed-window counter in the access
# phase), as a target of ../shared/bench/compare.sh next to Tollgate's
# `policy: redis` variant (bench/targets-22.txt).
#
#   bench/nginx-lua-target.sh PORT
#
# Proxies everything to $UPSTREAM_ADDR (exported by compare.sh) with the same
# keep-alive settings as compare.sh's built-in nginx. Per request, in
# `access_by_lua_block`: one EVALSHA of a fixed-window script (INCR the
# client's counter for the current window, PEXPIRE it when new, answer 429
# over the limit, which is set high enough that the bench never reaches it,
# as in tollgate-target.sh's ratelimit-redis). The script is loaded once at
# start; a NOSCRIPT answer falls back to EVAL. Redis errors answer 500, so a
# broken setup cannot pass for a fast one.
#
# It starts its own redis-server on PORT+3000 (as tollgate-target.sh does
# for its redis variants) and nginx with $PROXY_WORKERS workers (default 1).
# nginx replaces this script (exec), so the PID compare.sh measures is nginx's
# master, and its workers and redis-server are that PID's direct children:
# compare.sh counts their CPU, as it counts tollgate-dp's and its
# redis-server's. A watcher (also a child) stops redis-server by PID and
# removes the temp dir when nginx exits.
#
# Needs Debian's libnginx-mod-http-lua and lua-nginx-redis (lua-resty-redis):
#   apt-get install -y libnginx-mod-http-lua lua-nginx-redis
#
# Example (from the repo root): bench/targets-22.txt.
set -euo pipefail
PORT="${1:?usage: nginx-lua-target.sh PORT}"
UPSTREAM_ADDR="${UPSTREAM_ADDR:-127.0.0.1:18080}"
WORKERS="${PROXY_WORKERS:-1}"
REDIS_PORT=$((PORT + 3000))
LIMIT=1000000000000
WINDOW_S=3600

MODULES=""
for d in /usr/lib/nginx/modules /usr/share/nginx/modules; do
  [ -e "$d/ngx_http_lua_module.so" ] && { MODULES="$d"; break; }
done
RESTY_REDIS=""
for f in /usr/share/lua/5.1/resty/redis.lua /usr/share/lua/5.1/nginx/redis.lua; do
  [ -e "$f" ] && { RESTY_REDIS="$f"; break; }
done
if [ -z "$MODULES" ] || [ -z "$RESTY_REDIS" ]; then
  echo "needs libnginx-mod-http-lua and lua-nginx-redis (apt-get install -y libnginx-mod-http-lua lua-nginx-redis)" >&2
  exit 2
fi
# Debian ships lua-resty-redis as `nginx.redis`, upstream as `resty.redis`.
case "$RESTY_REDIS" in
  */nginx/redis.lua) REDIS_MODULE=nginx.redis ;;
  *) REDIS_MODULE=resty.redis ;;
esac

WORK="$(mktemp -d -t nginx-lua-bench.XXXXXX)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done

# Fixed window: one counter per client and window, created with its expiry.
SCRIPT="local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end if n > tonumber(ARGV[1]) then return 0 end return n"
SHA="$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD "$SCRIPT")"
if [ -z "$SHA" ]; then
  echo "redis-server on $REDIS_PORT did not load the script" >&2
  kill -TERM "$REDIS_PID" 2>/dev/null; rm -rf "$WORK"; exit 1
fi

cat >"$WORK/nginx.conf" <<CONF
load_module $MODULES/ndk_http_module.so;
load_module $MODULES/ngx_http_lua_module.so;
worker_processes $WORKERS;
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
  lua_package_path "/usr/share/lua/5.1/?.lua;;";
  init_by_lua_block {
    redis = require "$REDIS_MODULE"
  }
  upstream backend {
    server $UPSTREAM_ADDR;
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    location / {
      access_by_lua_block {
        local red = redis:new()
        red:set_timeouts(1000, 1000, 1000)
        local ok, err = red:connect("127.0.0.1", $REDIS_PORT)
        if not ok then ngx.log(ngx.ERR, "redis connect: ", err) return ngx.exit(500) end
        local key = "rl:" .. ngx.var.remote_addr .. ":" .. math.floor(ngx.time() / $WINDOW_S)
        local n, err = red:evalsha("$SHA", 1, key, $LIMIT, ${WINDOW_S}000)
        if not n and err and err:find("NOSCRIPT", 1, true) then
          n, err = red:eval([[$SCRIPT]], 1, key, $LIMIT, ${WINDOW_S}000)
        end
        if not n then ngx.log(ngx.ERR, "redis: ", err) return ngx.exit(500) end
        red:set_keepalive(60000, 256)
        if n == 0 then return ngx.exit(429) end
      }
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF

# Stops redis-server (by PID) and cleans up once nginx, which is about to
# take this PID, has exited.
SELF=$$
(
  trap '' TERM INT
  while kill -0 "$SELF" 2>/dev/null; do sleep 0.5; done
  kill -TERM "$REDIS_PID" 2>/dev/null
  wait "$REDIS_PID" 2>/dev/null
  rm -rf "$WORK"
) </dev/null >/dev/null 2>&1 &

exec nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;'
