"""A day of changes with history kept: btsoot's attic beside rsync --backup-dir.

    python3 benchmarks/attic_vs_rsync.py [--files 1000] [--size 102400] [--top /tmp/atticbench]

One tree, backed up first by each tool into its own folder on the same file
system; then a day: a folder of 10% of the files renamed, 5% rewritten, 5%
deleted. Each tool runs again, keeping what it replaces or deletes (btsoot:
keep_within = "30d"; rsync: --backup --backup-dir=.rsync-attic/DAY). Prints, for the
day, the bytes each sent (btsoot: bytes_sent; rsync: literal data of --stats)
and the bytes its folder holds afterwards (du -sb: mirror plus history). Then a
large file edited in ten places: what each sends and how much its folder grows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr}")
    return p.stdout


def du(path: str) -> int:
    return int(run(["du", "-sb", path]).split()[0])


def rsync_literal(out: str) -> int:
    m = re.search(r"Literal data: ([\d,]+)", out)
    assert m, out
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--size", type=int, default=100 * 1024)
    ap.add_argument("--top", default="/tmp/atticbench")
    ap.add_argument("--big", type=int, default=1024, metavar="MIB",
                    help="then a file of this size, edited in 10 places (0: skip)")
    a = ap.parse_args()
    shutil.rmtree(a.top, ignore_errors=True)
    src, bt, rs = (os.path.join(a.top, n) for n in ("src", "btsoot", "rsync"))
    rng = random.Random(1)
    for i in range(a.files):
        d = os.path.join(src, f"folder{i // 100}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.bin"), "wb") as f:
            f.write(rng.randbytes(a.size))
    os.makedirs(bt)
    os.makedirs(rs)
    env = dict(os.environ, BTSOOT_STATE=os.path.join(a.top, "state"),
               BTSOOT_CONFIG=os.path.join(a.top, "config.toml"))
    btsoot = [sys.executable, "-m", "btsoot"]
    run(btsoot + ["add", "b", src, bt, "--keep-within", "30d"], env)
    run(btsoot + ["backup", "b", "-q"], env)
    rsync = ["rsync", "-a", "--delete", "--stats"]
    run(rsync + [src + "/", rs + "/"])

    # A day: a folder renamed, 5% rewritten, 5% deleted.
    os.rename(os.path.join(src, "folder0"), os.path.join(src, "folder0-renamed"))
    files = sorted(os.path.join(dp, n) for dp, _, ns in os.walk(src) for n in ns
                   if "folder0-renamed" not in dp)
    rng.shuffle(files)
    k = a.files // 20
    for p in files[:k]:
        with open(p, "wb") as f:
            f.write(rng.randbytes(a.size))
    for p in files[k:2 * k]:
        os.unlink(p)

    s = json.loads(run(btsoot + ["backup", "b", "--json", "--override"], env))
    out = run(rsync + ["--backup", "--backup-dir=.rsync-attic/day1", src + "/", rs + "/"])
    print(f"{a.files} files of {a.size} bytes; a day: {a.files // 10} renamed with their folder, "
          f"{k} rewritten, {k} deleted")
    print(f"{'':<28}{'sent':>14}{'stored after':>16}")
    print(f"{'btsoot, keep_within = 30d':<28}{s['bytes_sent']:>14,}{du(bt):>16,}")
    print(f"{'rsync --backup-dir':<28}{rsync_literal(out):>14,}{du(rs):>16,}")
    print(f"(source: {du(src):,} bytes)")
    if a.big:
        big_file(a, src, bt, rs, btsoot, rsync, env, rng)


def big_file(a: argparse.Namespace, src: str, bt: str, rs: str, btsoot: list[str],
             rsync: list[str], env: dict[str, str], rng: random.Random) -> None:
    """A large file (a disk image) edited in ten places: btsoot patches it in place
    and keeps the overwritten chunks as undo records; rsync --backup-dir keeps the
    whole old file (rsync run with --inplace --no-whole-file, its cheapest way to
    update a big file)."""
    p = os.path.join(src, "disk.img")
    with open(p, "wb") as f:
        for _ in range(a.big):
            f.write(rng.randbytes(1 << 20))
    run(btsoot + ["backup", "b", "-q"], env)
    run(rsync + [src + "/", rs + "/"])
    before_bt, before_rs = du(bt), du(rs)
    size = a.big << 20
    with open(p, "r+b") as f:
        for k in range(10):
            f.seek(size * k // 10 + 12345)
            f.write(rng.randbytes(100))
    s = json.loads(run(btsoot + ["backup", "b", "--json"], env))
    out = run(rsync + ["--inplace", "--no-whole-file", "--backup", "--backup-dir=.rsync-attic/day2",
                       src + "/", rs + "/"])
    print(f"a {a.big} MiB file edited in 10 places (100 bytes each):")
    print(f"{'':<28}{'sent':>14}{'stored growth':>16}")
    print(f"{'btsoot (undo records)':<28}{s['bytes_sent']:>14,}{du(bt) - before_bt:>16,}")
    print(f"{'rsync --backup-dir':<28}{rsync_literal(out):>14,}{du(rs) - before_rs:>16,}")


if __name__ == "__main__":
    main()
