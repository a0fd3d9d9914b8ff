#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine (the tools
# the tests drive, a project virtual environment with btsoot and the test and
# build tools), then check: ruff, mypy, and the suite twice, once against the
# compiled core and once against the pure-Python twin.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh

apt_install rsync xxhash sshfs openssh-server fuse3 util-linux strace faketime \
    exfat-fuse exfatprogs ntfs-3g xfsprogs e2fsprogs acl btrfs-progs systemd make
venv_setup '.[test]'

"$PY" -m ruff check src tests benchmarks
"$PY" -m mypy
# The compiled core must be the one under test: no silent fallback.
BTSOOT_REQUIRE_COMPILED=1 "$PY" -m pytest -q -p no:cacheprovider "$@"
# The pure-Python twin runs the suite too (the long crash and stress runs only once).
BTSOOT_PUREPYTHON=1 "$PY" -m pytest -q -p no:cacheprovider -m 'not slow' "$@"
