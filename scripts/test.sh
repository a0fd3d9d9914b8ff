#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it:
# once against the compiled core, once against the pure-Python twin.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in rsync xxhash sshfs openssh-server fuse3 util-linux strace; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
$PYTHON -m pip install -q --disable-pip-version-check -e '.[test]'

# The compiled core must be the one under test: no silent fallback.
BTSOOT_REQUIRE_COMPILED=1 $PYTHON -m pytest -q -p no:cacheprovider "$@"
# The pure-Python twin runs the scanner and backup suites too.
BTSOOT_PUREPYTHON=1 $PYTHON -m pytest -q -p no:cacheprovider -m 'not slow' \
    tests/test_scanner.py tests/test_backup.py
