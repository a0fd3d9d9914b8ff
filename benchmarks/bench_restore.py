"""Benchmark restore and verify against cp -a and xxhsum on the same data.

Run as `python benchmarks/bench_restore.py [--strict]`. It reuses the data of
bench_core.py ($BTSOOT_BENCH_DIR or /tmp/btsoot-bench: a 100k-file tree and a
1 GiB file) and backs them up once into `restore/` beside it (kept for later
runs). Every contender runs once to warm the page cache, then the best of
three counts; each restore starts from an absent destination, with the
previous run's writes flushed first.

1. Full restore of the 100k-file tree from the remote into an empty folder,
   `btsoot restore NAME --to DIR` (which copies, checks every file against its
   digest, sets modes and mtimes, and syncs the file system before it says
   "done"), vs `cp -a` of the same tree, and vs `cp -a` followed by `sync -f`
   (the same durability promise).
2. verify of a block holding one 1 GiB file (the library call, in-process; the
   CLI's time, interpreter start-up included, is shown beside it) vs
   `xxhsum -H2` of that file on the remote.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import LAYOUT, ensure_data, ensure_xxhsum  # noqa: E402

SRC = Path(__file__).resolve().parent.parent / "src"


def btsoot(env: dict[str, str], *args: object) -> None:
    subprocess.run([sys.executable, "-m", "btsoot", *map(str, args)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def best_of_3(run: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    times = []
    for i in range(4):  # the first run warms the page cache and the code paths
        if before is not None:
            before()
        t0 = time.perf_counter()
        run()
        if i:
            times.append(time.perf_counter() - t0)
    return min(times)


def ensure_backups(base: Path, tree: Path, big: Path, env: dict[str, str]) -> None:
    """Blocks 'tree' (the 100k files) and 'big' (the 1 GiB file), backed up once."""
    work = base / "restore"
    marker = work / "complete"
    if marker.exists() and marker.read_text() == LAYOUT:
        return
    print(f"backing up the benchmark data under {work} (once; reused later) ...", flush=True)
    if work.exists():
        shutil.rmtree(work)
    for d in ("remote-tree", "remote-big", "big-src"):
        (work / d).mkdir(parents=True)
    os.link(big, work / "big-src" / big.name)  # the same file, no second GiB on disk
    btsoot(env, "add", "tree", tree, work / "remote-tree")
    btsoot(env, "add", "big", work / "big-src", work / "remote-big")
    btsoot(env, "backup", "tree", "big")
    marker.write_text(LAYOUT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    args = ap.parse_args()

    base = Path(os.environ.get("BTSOOT_BENCH_DIR", "/tmp/btsoot-bench"))
    xxhsum = ensure_xxhsum()
    tree, bigs = ensure_data(base)
    work = base / "restore"
    env = dict(os.environ, BTSOOT_CONFIG=str(work / "config.toml"),
               BTSOOT_STATE=str(work / "state"),
               PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ensure_backups(base, tree, bigs[0], env)
    dest = work / "dest"

    def fresh() -> None:
        if dest.exists():
            shutil.rmtree(dest)
        subprocess.run(["sync", "-f", str(work)], check=True)

    rows: list[tuple[str, str, str, float, str, bool | None]] = []  # None: for information
    t_restore = best_of_3(lambda: btsoot(env, "restore", "tree", "--to", dest, "--quiet"), fresh)
    # cp -a copies the same tree (the source; the remote holds the same bytes).
    cp = ["cp", "-a", "--no-target-directory", str(tree), str(dest)]
    t_cp = best_of_3(lambda: subprocess.run(cp, check=True), fresh)
    t_cp_sync = best_of_3(lambda: (subprocess.run(cp, check=True),
                                   subprocess.run(["sync", "-f", str(dest)], check=True)), fresh)
    fresh()
    r = t_cp / t_restore
    rows.append(("restore 100k files: speed vs cp -a", f"{t_restore:.2f} s", f"{t_cp:.2f} s",
                 r, ">= 0.90", r >= 0.9))
    r2 = t_cp_sync / t_restore
    rows.append(("restore 100k files: speed vs cp -a + sync -f", f"{t_restore:.2f} s",
                 f"{t_cp_sync:.2f} s", r2, ">= 0.90", r2 >= 0.9))

    # verify in-process (the library call: lock, snapshot, walk, read, compare), as
    # bench_core measures hashing; the CLI adds the interpreter's start-up, shown apart.
    os.environ.update(BTSOOT_CONFIG=env["BTSOOT_CONFIG"], BTSOOT_STATE=env["BTSOOT_STATE"])
    sys.path.insert(0, str(SRC))
    from btsoot.config import Config
    from btsoot.verify import verify

    big_block = Config.load().get("big")

    def run_verify() -> None:
        assert verify(big_block).exit_code == 0

    remote_big = work / "remote-big" / bigs[0].name
    t_verify = best_of_3(run_verify)
    t_xxh = best_of_3(lambda: subprocess.run([xxhsum, "-H2", str(remote_big)], check=True,
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))  # its progress line
    t_cli = best_of_3(lambda: btsoot(env, "verify", "big", "--quiet"))
    r = t_xxh / t_verify
    rows.append(("verify 1 GiB: speed vs xxhsum -H2", f"{t_verify:.2f} s", f"{t_xxh:.2f} s",
                 r, ">= 0.80", r >= 0.8))
    rows.append(("  the same through the CLI (+ start-up)", f"{t_cli:.2f} s", f"{t_xxh:.2f} s",
                 t_xxh / t_cli, "-", None))

    head = ("measurement", "btsoot", "reference", "ratio", "target", "result")
    table = [head] + [(w, b, o, f"{r:.2f}", t, "-" if p is None else "PASS" if p else "FAIL")
                      for w, b, o, r, t, p in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 1 if (args.strict and any(row[5] is False for row in rows)) else 0


if __name__ == "__main__":
    sys.exit(main())
