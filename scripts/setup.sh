#!/usr/bin/env bash
# Prepare this machine for dinp development, tests and the demo. Idempotent: each step
# checks first and only acts (and prints) when something is missing.
#
#   scripts/setup.sh [STEP...]     STEP: packages venv services images all (default: all)
#
#   packages  apt-get install the Debian packages dinp needs (apt-get update only if needed)
#   venv      .venv with `pip install -e '.[dev]'` (again when pyproject.toml changes)
#   services  dockerd, a registry on 127.0.0.1:5000, MariaDB on :3306, Redis on :6379
#   images    scripts/images.sh, then `dinp build base-images` (the base image of each app
#             type, from Debian's packages: ~2 min the first time, under 1 s after);
#             also makes sure dockerd and the registry run
#
# Environment: PYTHON (default python3) creates the venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# gcc and libc6-dev: examples/build.sh compiles the binary example (gcc -static).
# chromium: the Dashboard's browser tests (driven by Playwright, pointed at it).
PACKAGES=(docker.io docker-registry busybox-static mariadb-server redis-server curl
          debootstrap wrk make gcc libc6-dev chromium pebble)
VENV="$ROOT/.venv"
VENV_STAMP="$VENV/.dinp-installed"
PYTHON=${PYTHON:-python3}
REGISTRY_ADDR=127.0.0.1:5000
REGISTRY_CONFIG=/etc/dinp/registry.yml
REGISTRY_ROOT=/var/lib/dinp-registry
LOCK_FILE=/run/lock/dinp-setup.lock

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# Print the tail of a log file to stderr (for failure messages).
show_log() {
    [ -s "$1" ] || return 0
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n "${2:-20}" "$1" >&2
    printf -- '---\n' >&2
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local seconds=$1
    shift
    local tries=$((seconds * 5))
    while ! "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.2
    done
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 needs root (run as root or install it by hand)"
}

# --- packages ----------------------------------------------------------------------------

step_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' \
            || missing+=("$pkg")
    done
    # Debian's own python3 needs python3-venv for `python3 -m venv` (pyenv's does not).
    if command -v "$PYTHON" >/dev/null 2>&1; then
        "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    else
        missing+=(python3 python3-venv)
    fi
    [ "${#missing[@]}" -eq 0 ] && return 0
    need_root "installing ${missing[*]}"
    say "installing Debian packages: ${missing[*]}"
    local log=/var/log/dinp-setup-apt.log
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1 9>&-; then
        show_log "$log" 30
        die "apt-get install ${missing[*]} failed (full log: $log)"
    fi
    # Where policy-rc.d lets packages start their services, Debian's own registry would
    # now hold :5000 (with htpasswd auth); dinp runs its own (see ensure_registry).
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && [ -x /etc/init.d/docker-registry ]; then
        /etc/init.d/docker-registry stop >/dev/null 2>&1 9>&- || true
    fi
}

# --- venv ----------------------------------------------------------------------------------

step_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' >/dev/null 2>&1 \
        && [ -f "$VENV_STAMP" ] && [ ! pyproject.toml -nt "$VENV_STAMP" ]; then
        return 0
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=...)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "dinp needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)"
    if ! [ -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        say "creating $VENV"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv $VENV' failed"
    fi
    say "installing dinp and its dev dependencies into .venv (pip install -e '.[dev]')"
    local log="$VENV/pip-install.log"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]' \
        >"$log" 2>&1; then
        show_log "$log" 30
        die "pip install -e '.[dev]' failed (full log: $log)"
    fi
    touch "$VENV_STAMP"
}

# --- services ------------------------------------------------------------------------------

docker_ok() { docker info >/dev/null 2>&1; }

ensure_dockerd() {
    docker_ok && return 0
    command -v docker >/dev/null 2>&1 || die "no docker client: run 'scripts/setup.sh packages'"
    [ -x /usr/sbin/dockerd ] || die "no /usr/sbin/dockerd: run 'scripts/setup.sh packages'"
    if ! pgrep -x dockerd >/dev/null; then
        need_root "starting dockerd"
        say "starting dockerd (log: /var/log/dockerd.log)"
        # A pid file left by a dockerd that died makes the next one refuse to start.
        rm -f /var/run/docker.pid
        setsid /usr/sbin/dockerd >>/var/log/dockerd.log 2>&1 </dev/null 9>&- &
    fi
    if ! wait_for 60 docker_ok; then
        show_log /var/log/dockerd.log
        die "the Docker engine did not answer 'docker info' within 60 s"
    fi
}

registry_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$REGISTRY_ADDR/v2/" || true
}
registry_ok() { [ "$(registry_status)" = 200 ]; }

ensure_registry() {
    registry_ok && return 0
    local status
    status=$(registry_status)
    [ "$status" = 000 ] \
        || die "$REGISTRY_ADDR answers HTTP $status on /v2/, not an open registry; stop what listens there"
    command -v docker-registry >/dev/null 2>&1 \
        || die "no docker-registry: run 'scripts/setup.sh packages'"
    need_root "starting the registry"
    mkdir -p "$(dirname "$REGISTRY_CONFIG")" "$REGISTRY_ROOT"
    local config
    config=$(cat <<EOF
# Written by dinp's scripts/setup.sh: the local registry for development and tests.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_ROOT
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
  secret: dinp-local-registry
EOF
)
    [ "$(cat "$REGISTRY_CONFIG" 2>/dev/null)" = "$config" ] \
        || printf '%s\n' "$config" >"$REGISTRY_CONFIG"
    say "starting the registry on $REGISTRY_ADDR (log: /var/log/dinp-registry.log)"
    setsid docker-registry serve "$REGISTRY_CONFIG" >>/var/log/dinp-registry.log 2>&1 </dev/null 9>&- &
    if ! wait_for 20 registry_ok; then
        show_log /var/log/dinp-registry.log
        die "the registry did not answer http://$REGISTRY_ADDR/v2/ within 20 s"
    fi
}

mariadb_up() { mysqladmin --connect-timeout=2 -h127.0.0.1 -P3306 -uroot ping >/dev/null 2>&1; }
mariadb_root_ok() { mysql --connect-timeout=2 -h127.0.0.1 -P3306 -uroot -e 'SELECT 1' >/dev/null 2>&1; }

ensure_mariadb() {
    if ! mariadb_up; then
        [ -x /usr/sbin/mariadbd ] || die "no /usr/sbin/mariadbd: run 'scripts/setup.sh packages'"
        need_root "starting MariaDB"
        say "starting MariaDB (log: /var/log/mysql/error.log)"
        mkdir -p /run/mysqld /var/log/mysql
        chown mysql:mysql /run/mysqld /var/log/mysql
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
            -- --user=mysql --log-error=/var/log/mysql/error.log 9>&-
        if ! wait_for 60 mariadb_up; then
            show_log /var/log/mysql/error.log
            die "MariaDB did not answer on 127.0.0.1:3306 within 60 s"
        fi
    fi
    mariadb_root_ok && return 0
    # A fresh Debian install lets root in only through the unix socket; the tests and the
    # docs use root with no password over TCP (a development machine only).
    say "allowing MariaDB root@127.0.0.1 without a password (development machine)"
    # (Which of root@localhost and root@127.0.0.1 a TCP login matches depends on
    # skip-name-resolve, so both accept the empty password.)
    mysql -uroot -e "ALTER USER 'root'@'localhost'
                         IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
                     CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
                     GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" \
        || die "MariaDB runs but root cannot log in over TCP, and fixing it through the socket failed"
    mariadb_root_ok || die "MariaDB root@127.0.0.1 still cannot log in without a password"
}

redis_ok() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
    redis_ok && return 0
    command -v redis-server >/dev/null 2>&1 || die "no redis-server: run 'scripts/setup.sh packages'"
    need_root "starting Redis"
    say "starting Redis on 127.0.0.1:6379 (log: /var/log/redis/ci.log)"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log 9>&- \
        || die "redis-server did not start"
    if ! wait_for 20 redis_ok; then
        show_log /var/log/redis/ci.log
        die "Redis did not answer PING on 127.0.0.1:6379 within 20 s"
    fi
}

step_services() {
    ensure_dockerd
    ensure_registry
    ensure_mariadb
    ensure_redis
}

# --- images --------------------------------------------------------------------------------

build_images() {
    bash "$ROOT/scripts/images.sh"
    [ -x "$VENV/bin/dinp" ] || die "no $VENV/bin/dinp: run 'scripts/setup.sh venv' first"
    # `dinp build base-images` checks each image's recipe label and the registry itself
    # and builds only what is missing; this test only decides whether to say so.
    local log=/var/log/dinp-base-images.log
    [ -w /var/log ] || log=/tmp/dinp-base-images.log
    if ! docker image inspect "$REGISTRY_ADDR/dinp/war:bookworm" >/dev/null 2>&1; then
        say "building the base images of dinp build from Debian packages (about 2 min; log: $log)"
    fi
    if ! "$VENV/bin/dinp" build base-images --registry "$REGISTRY_ADDR" >"$log" 2>&1; then
        show_log "$log" 30
        die "dinp build base-images failed (full log: $log)"
    fi
}

step_images() {
    ensure_dockerd
    ensure_registry
    build_images
}

# --- main ----------------------------------------------------------------------------------

main() {
    local steps=("$@")
    [ "${#steps[@]}" -gt 0 ] || steps=(all)
    local s
    for s in "${steps[@]}"; do
        case "$s" in
            packages|venv|services|images|all) ;;
            -h|--help|help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0 ;;
            *) die "unknown step '$s' (steps: packages venv services images all)" ;;
        esac
    done
    # One setup at a time on this machine (two checkouts, CI and a developer share it).
    if [ -w "$(dirname "$LOCK_FILE")" ]; then
        # Daemons started below get `9>&-` so that they do not hold the lock forever.
        exec 9>"$LOCK_FILE"
        flock -w 900 9 || die "another scripts/setup.sh has held $LOCK_FILE for 15 minutes"
    fi
    for s in "${steps[@]}"; do
        case "$s" in
            packages) step_packages ;;
            venv) step_venv ;;
            services) step_services ;;
            images) step_images ;;
            all) step_packages; step_venv; step_services; build_images ;;
        esac
    done
}

main "$@"
