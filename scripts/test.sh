#!/usr/bin/env bash
# The whole suite (`make test`), in two pytest processes at once: the end-to-end tests,
# one at a time (their waits are timed, and each file starts real clusters of its own),
# beside the unit and integration tests. The two reports are printed one after the
# other; the run fails if either does. On two cores this takes about 10 minutes instead
# of 15 for one process.
#
#   scripts/test.sh [PYTEST ARGS...]
#
# Arguments go to both (`-k foo`); when one names tests (a path under tests/), a single
# pytest runs just what they name.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTEST=.venv/bin/pytest

for arg in "$@"; do
    if [[ $arg == tests/* || $arg == ./tests/* ]]; then
        exec "$PYTEST" "$@"
    fi
done

log=$(mktemp /tmp/dinp-e2e.XXXXXX)
trap 'rm -f "$log"' EXIT
# (-p no:cacheprovider: the two runs would write .pytest_cache at once.)
"$PYTEST" -p no:cacheprovider tests/e2e "$@" >"$log" 2>&1 &
e2e=$!
"$PYTEST" -p no:cacheprovider tests/unit tests/integration "$@"
rest=$?
wait "$e2e"
ended=$?
echo
echo "=================== tests/e2e (ran beside the tests above) ===================="
cat "$log"
if [ "$rest" -ne 0 ] || [ "$ended" -ne 0 ]; then
    echo "test: FAILED (unit and integration: exit $rest; end-to-end: exit $ended)" >&2
    exit 1
fi
