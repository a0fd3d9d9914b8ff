#!/usr/bin/env bash
# Install btsoot and show its main job on a small generated tree: a first
# backup, a day of changes (edits, a new file, a deletion, a renamed folder),
# an incremental backup that moves instead of re-sending, a verify, and a
# restore from the remote alone.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv_setup .

demo=${DEMO_DIR:-$PWD/demo}
rm -rf "$demo"
mkdir -p "$demo/source" "$demo/offsite"
export BTSOOT_CONFIG="$demo/config.toml" BTSOOT_STATE="$demo/state"

"$PY" - "$demo/source" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(7)
for d in ("movies", "music/albums", "photos/2024", "photos/2025", "documents"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
    for i in range(40):
        with open(os.path.join(root, d, f"file{i:03d}.bin"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(100, 200_000)))
PY

run() { echo "+ btsoot $*"; btsoot "$@"; }
run add demo "$demo/source" "$demo/offsite"
run backup demo
echo "--- a day of changes: edit 3 files, add one, delete one, rename photos/2024"
for i in 001 002 003; do echo "edited" >> "$demo/source/documents/file$i.bin"; done
echo "new" > "$demo/source/documents/new.txt"
rm "$demo/source/music/albums/file000.bin"
mv "$demo/source/photos/2024" "$demo/source/photos/2024-holidays"
run diff demo
run backup demo
run list
run log demo last
run verify demo
echo "--- the disaster case: restore from the remote alone into a new folder"
run restore --from "$demo/offsite" --to "$demo/restored"
diff -r "$demo/source" "$demo/restored" && echo "restored tree is identical to the source"
echo "--- and with no btsoot at all: the remote's own restore.py, the system's python3 alone"
echo "+ python3 $demo/offsite/.btsoot/restore.py $demo/bare"
/usr/bin/python3 -I -S "$demo/offsite/.btsoot/restore.py" "$demo/bare"
diff -r "$demo/source" "$demo/bare" && echo "that tree is identical to the source too"
echo "demo finished: source $demo/source mirrored to $demo/offsite"
