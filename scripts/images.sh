#!/usr/bin/env bash
# Build dinp's images locally, without pulling from any registry, and push the example app
# to the local registry. Each image carries a hash of its inputs (label dinp-build.hash)
# and is rebuilt only when they change, so a run with nothing to do takes well under 1 s.
#
#   dinp/busybox:1          FROM scratch + Debian's static busybox (/bin/busybox)
#   dinp-examples/hello:2   examples/hello: busybox httpd serving "hello from $DINP_APP
#                           instance $DINP_INSTANCE release $DINP_RELEASE", /health -> ok
#   127.0.0.1:5000/hello:2  the same image, pushed to the local registry
#
# Needs a running Docker engine and, for the push, the registry (scripts/setup.sh starts both).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REGISTRY=${DINP_REGISTRY:-127.0.0.1:5000}
BUSYBOX_BIN=/bin/busybox
BUSYBOX_IMAGE=dinp/busybox:1
HELLO_DIR="$ROOT/examples/hello"
HELLO_IMAGE=dinp-examples/hello:2
HELLO_REMOTE="$REGISTRY/hello:2"
HASH_LABEL=dinp-build.hash
export DOCKER_BUILDKIT=0  # the legacy builder: there is no buildx on these machines

say() { printf 'images: %s\n' "$*" >&2; }
die() { printf 'images: ERROR: %s\n' "$*" >&2; exit 1; }

docker info >/dev/null 2>&1 \
    || die "the Docker engine does not answer; run 'scripts/setup.sh services' first"

# The value of the hash label of a local image, empty if the image does not exist.
image_hash() {
    docker image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$1" 2>/dev/null || true
}

# build TAG HASH CONTEXT_DIR: docker build quietly, showing the output only on failure.
build() {
    local tag=$1 hash=$2 context=$3 log
    log=$(mktemp)
    if ! docker build --label "$HASH_LABEL=$hash" -t "$tag" "$context" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "docker build of $tag failed"
    fi
    rm -f "$log"
}

# --- dinp/busybox:1 -----------------------------------------------------------------------

BUSYBOX_DOCKERFILE='FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /tmp /root /www && chmod 1777 /tmp \
 && printf "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n" >/etc/passwd \
 && printf "root:x:0:\nnogroup:x:65534:\n" >/etc/group
CMD ["/bin/sh"]'

[ -x "$BUSYBOX_BIN" ] || die "$BUSYBOX_BIN is missing: apt-get install busybox-static"
file_type=$(head -c 4 "$BUSYBOX_BIN" | od -An -c | tr -d ' ')
[ "$file_type" = '177ELF' ] || die "$BUSYBOX_BIN is not an ELF binary"
if ldd "$BUSYBOX_BIN" >/dev/null 2>&1; then
    die "$BUSYBOX_BIN is dynamically linked; install busybox-static (not busybox)"
fi

busybox_hash=$({ sha256sum <"$BUSYBOX_BIN"; printf '%s' "$BUSYBOX_DOCKERFILE"; } \
    | sha256sum | cut -c1-16)
# Images replaced by a rebuild, removed at the end when no container uses them.
replaced=()
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

if [ "$(image_hash "$BUSYBOX_IMAGE")" != "$busybox_hash" ]; then
    replaced+=("$(image_id "$BUSYBOX_IMAGE")")
    say "building $BUSYBOX_IMAGE from $BUSYBOX_BIN"
    context=$(mktemp -d)
    trap 'rm -rf "$context"' EXIT
    cp "$BUSYBOX_BIN" "$context/busybox"
    printf '%s\n' "$BUSYBOX_DOCKERFILE" >"$context/Dockerfile"
    build "$BUSYBOX_IMAGE" "$busybox_hash" "$context"
    rm -rf "$context"
    trap - EXIT
fi

# --- dinp-examples/hello:2 ----------------------------------------------------------------

[ -f "$HELLO_DIR/Dockerfile" ] || die "$HELLO_DIR/Dockerfile is missing"
busybox_id=$(docker image inspect -f '{{.Id}}' "$BUSYBOX_IMAGE")
hello_hash=$({
    printf '%s\n' "$busybox_id"
    (cd "$HELLO_DIR" && find . -type f | LC_ALL=C sort | xargs sha256sum)
} | sha256sum | cut -c1-16)
if [ "$(image_hash "$HELLO_IMAGE")" != "$hello_hash" ]; then
    replaced=("$(image_id "$HELLO_IMAGE")" "${replaced[@]}")
    say "building $HELLO_IMAGE from examples/hello"
    build "$HELLO_IMAGE" "$hello_hash" "$HELLO_DIR"
fi

# --- push to the local registry -----------------------------------------------------------

# The digest the registry holds for hello:2 (empty if none), and the ones Docker knows
# for the local image: equal means the registry already has this very image.
remote_digest=$(curl -fsI --max-time 5 \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY/v2/hello/manifests/2" 2>/dev/null \
    | tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}' || true)
hello_id=$(docker image inspect -f '{{.Id}}' "$HELLO_IMAGE")
remote_id=$(docker image inspect -f '{{.Id}}' "$HELLO_REMOTE" 2>/dev/null || true)
local_digests=$(docker image inspect -f '{{join .RepoDigests " "}}' "$HELLO_REMOTE" 2>/dev/null || true)
if [ -z "$remote_digest" ] || [ "$remote_id" != "$hello_id" ] \
    || [[ " $local_digests " != *" $REGISTRY/hello@$remote_digest "* ]]; then
    curl -fs --max-time 5 -o /dev/null "http://$REGISTRY/v2/" \
        || die "no registry answers at http://$REGISTRY/v2/; run 'scripts/setup.sh services' first"
    say "pushing $HELLO_REMOTE"
    docker tag "$HELLO_IMAGE" "$HELLO_REMOTE"
    log=$(mktemp)
    if ! docker push "$HELLO_REMOTE" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "docker push $HELLO_REMOTE failed"
    fi
    rm -f "$log"
fi

for old in "${replaced[@]}"; do
    if [ -n "$old" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
done
