#!/bin/sh
# Entrypoint of the Tollgate image: runs the given command (tollgate-cp,
# tollgate-dp, tollgatectl, tollgate-echo); flags alone start a data plane.
set -e
case "${1:-}" in
  ""|-*) set -- tollgate-dp "$@" ;;
esac
exec "$@"
