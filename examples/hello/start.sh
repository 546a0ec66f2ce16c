#!/bin/sh
# Write the page from dinp's env vars, then serve /www on $PORT (default 8080).
# GET / -> "hello from <app> instance <id> release <n>"; GET /health -> "ok".
set -eu
port="${PORT:-8080}"
mkdir -p /www
printf 'hello from %s instance %s release %s\n' \
    "${DINP_APP:-unknown}" "${DINP_INSTANCE:-unknown}" "${DINP_RELEASE:-unknown}" \
    >/www/index.html
printf 'ok\n' >/www/health
# Not `exec httpd`: as PID 1 httpd ignores SIGTERM and `docker stop` would wait 10 s.
# This shell stays PID 1, passes SIGTERM/SIGINT on and exits as soon as httpd has.
httpd -f -v -p "$port" -h /www &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT
set +e
wait "$pid"
exit $?
