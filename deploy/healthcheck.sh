#!/bin/sh
# The image's HEALTHCHECK: GET $TOLLGATE_HEALTH_URL (default: a data plane's
# /readyz on its status port). docker-compose.yml sets the URL per service.
exec curl -fsS -o /dev/null --max-time 2 "${TOLLGATE_HEALTH_URL:-http://127.0.0.1:8100/readyz}"
