#!/usr/bin/env bash
# The demo: the whole platform on this machine with `dinp up`, and the hello app on it.
#
#   scripts/demo.sh         start `dinp up --state-dir ./state` in the background (unless it
#                           runs), build examples/python with `dinp build` and push it to
#                           the local registry, create the app hello from that image
#                           (3 instances) and print its URL
#   scripts/demo.sh stop    stop that `dinp up` and remove the containers of its node `local`
#                           (of its own cluster only)
#
# Run `make demo` rather than this script: it runs scripts/setup.sh first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STATE=state
PID_FILE="$STATE/dinp-up.pid"
LOG_FILE="$STATE/dinp-up.log"
DINP=${DINP:-.venv/bin/dinp}  # overridable for testing this script
HEALTH_URL=http://127.0.0.1:7070/api/v1/health
NODE=local
APP=hello
REGISTRY=127.0.0.1:5000
SOURCE=examples/python  # the Python example app, with its library vendored
VERSION=py-1  # not 1: 127.0.0.1:5000/hello:2 is the busybox hello of scripts/images.sh

say() { printf 'demo: %s\n' "$*" >&2; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }

# The pid in the pid file if that process is alive and is a `dinp up`, else nothing.
running_pid() {
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    [ -r "/proc/$pid/cmdline" ] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'dinp.* up' || return 0
    echo "$pid"
}

stop() {
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        say "stopping dinp up (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "dinp up did not exit within 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        say "dinp up is not running"
    fi
    rm -f "$PID_FILE"
    # Only this demo's containers: node `local` of its own cluster (another `dinp up` on
    # this engine may call its node `local` too).
    local cluster ids
    cluster=$(.venv/bin/python - "$STATE/dinp.db" 2>/dev/null <<'PY' || true
import sqlite3, sys
print(sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
      .execute("SELECT id FROM cluster").fetchone()[0])
PY
)
    if [ -z "$cluster" ]; then
        say "no cluster id in $STATE/dinp.db: no container removed"
        return 0
    fi
    ids=$(docker ps -aq --filter label=io.dinp.managed=true --filter "label=io.dinp.node=$NODE" \
              --filter "label=io.dinp.cluster=$cluster")
    if [ -n "$ids" ]; then
        say "removing $(wc -w <<<"$ids") container(s) of node $NODE (cluster $cluster)"
        # shellcheck disable=SC2086  # one id per word
        docker rm -f $ids >/dev/null
    fi
}

start() {
    [ -x "$DINP" ] || die "$DINP is missing: run 'make setup' first"
    mkdir -p "$STATE"
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        say "dinp up is already running (pid $pid, log $LOG_FILE)"
    else
        if curl -fs --max-time 2 -o /dev/null "$HEALTH_URL"; then
            die "something already answers $HEALTH_URL (another dinp up or server?); stop it first"
        fi
        say "starting dinp up --state-dir ./$STATE (log: $LOG_FILE)"
        setsid "$DINP" up --state-dir "./$STATE" >"$LOG_FILE" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PID_FILE"
    fi
    local tries=300
    until curl -fs --max-time 2 -o /dev/null "$HEALTH_URL"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            tail -n 30 "$LOG_FILE" >&2 || true
            die "dinp up exited (full log: $LOG_FILE)"
        fi
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || die "dinp up did not answer $HEALTH_URL within 60 s (log: $LOG_FILE)"
        sleep 0.2
    done

    if "$DINP" app show "$APP" --json >/dev/null 2>&1; then
        say "app $APP exists already"
    else
        # Needs the base images (scripts/setup.sh images makes them); cached after the
        # first build, so a second run of the demo takes a second here.
        say "building $SOURCE: dinp build $SOURCE --app $APP --version $VERSION --registry $REGISTRY"
        local image
        image=$("$DINP" build "$SOURCE" --app "$APP" --version "$VERSION" \
                    --registry "$REGISTRY" --quiet) \
            || die "dinp build $SOURCE failed"
        say "creating app $APP: $image, 3 instances of 64m"
        "$DINP" app create "$APP" --image "$image" --instances 3 --memory 64m --wait \
            || die "dinp app create failed (server log: $LOG_FILE)"
    fi
    local url
    url=$("$DINP" app show "$APP" --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["url"])') \
        || die "could not read the app's url from 'dinp app show $APP --json'"
    cat <<EOF

  The hello app runs at: $url
    curl $url        (each answer names the instance that served it)
  Try:  $DINP app list;  $DINP app show $APP;  $DINP node list
  Log:  $LOG_FILE
  Stop: make stop
EOF
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 [start|stop]" ;;
esac
