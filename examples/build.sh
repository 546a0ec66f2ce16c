#!/usr/bin/env bash
# Make each example app's build output, as a team's own build would, for `dinp build`:
#
#   examples/build.sh [OUTDIR]        (default: build/examples at the top of the repo)
#
#   binary.tar.gz      hello.c compiled static with gcc (Debian's gcc, libc6-dev), Procfile
#   war.war            examples/war zipped (a .war is a zip): index.html, hello.jsp, WEB-INF
#   python.tar.gz      app.py with bottle vendored in vendor/, Procfile
#   node.tar.gz  php.tar.gz  static.tar.gz  dockerfile.tar.gz    the directory as it is
#
# The tarballs are reproducible (sorted, owner 0, fixed times), so the same sources give
# the same sha256 and dinp build's cache stays warm.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/../build/examples}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}

die() { printf 'examples/build.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# tarball NAME DIR FILE...: a reproducible NAME.tar.gz of FILEs in DIR.
tarball() {
    local name=$1 dir=$2
    shift 2
    tar -C "$dir" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        --exclude=__pycache__ -cf - "$@" | gzip -n >"$OUT/$name.tar.gz"
}

command -v gcc >/dev/null || die "gcc is missing: apt-get install gcc libc6-dev"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -static -Os -s -o "$work/hello" "$HERE/binary/hello.c" \
    || die "gcc -static failed (is libc6-dev installed?)"
cp "$HERE/binary/Procfile" "$work/Procfile"
tarball binary "$work" hello Procfile

(cd "$HERE/war" && rm -f "$OUT/war.war" && "$PYTHON" -m zipfile -c "$OUT/war.war" \
    index.html hello.jsp WEB-INF)
tarball python "$HERE/python" Procfile app.py requirements.txt vendor
tarball node "$HERE/node" package.json server.js
tarball php "$HERE/php" index.php
tarball static "$HERE/static" index.html style.css
tarball dockerfile "$HERE/dockerfile" Dockerfile index.html
ls "$OUT"
