"""Benchmark the compiled scanner core against find, xxhsum and the pure-Python twin.

Run as `python benchmarks/bench_core.py [--strict]`. Every ratio compares two
measurements taken in the same run, cache-hot: each contender runs once to
warm the page cache, then the best of three runs counts.

1. walk + lstat of a 100k-file tree vs `find DIR -printf '%s %T@ %p\\n'`.
2. XXH3-128 of a 1 GiB file on one thread vs `xxhsum -H2 FILE`; and two
   1 GiB files on two workers (scanner.hash_files) vs xxhsum on both in turn.
3. hashing the 100k small files on the scanner's thread pool: compiled vs
   the pure-Python twin (each in its own process, selected the way users do).

The data lives in $BTSOOT_BENCH_DIR or /tmp/btsoot-bench and is reused when a
previous run completed it. --strict makes a failed target exit non-zero.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TREE_FILES = 100_000
FILES_PER_DIR = 100
FANOUT = 10  # 10 x 10 x 10 leaf directories of 100 files
BIG_SIZE = 1 << 30
MIN_SMALL, MAX_SMALL = 1 << 10, 100 << 10  # log-uniform: median ~10 KiB
LAYOUT = f"v1 files={TREE_FILES} per_dir={FILES_PER_DIR} sizes={MIN_SMALL}-{MAX_SMALL}\n"


def best_of_3(run: Callable[[], object]) -> float:
    run()  # warm the page cache and the code paths
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


# ---------------------------------------------------------------------------
# Data


def _pattern(size: int) -> bytes:
    return random.Random(1).randbytes(size)


def small_file_paths(tree: Path) -> list[bytes]:
    paths = []
    n = 0
    for a in range(FANOUT):
        for b in range(FANOUT):
            for c in range(FANOUT):
                d = tree / f"d{a:02d}" / f"d{b:02d}" / f"d{c:02d}"
                for i in range(FILES_PER_DIR):
                    if n == TREE_FILES:
                        return paths
                    paths.append(os.fsencode(d / f"f{i:03d}.bin"))
                    n += 1
    return paths


def ensure_data(base: Path) -> tuple[Path, list[Path]]:
    tree = base / "tree"
    bigs = [base / "big1.bin", base / "big2.bin"]
    marker = base / "complete"
    if marker.exists() and marker.read_text() == LAYOUT:
        return tree, bigs
    print(f"generating benchmark data under {base} (once; reused later) ...", flush=True)
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    pool = _pattern(2 * MAX_SMALL + (1 << 20))
    rng = random.Random(42)
    lo, hi = math.log(MIN_SMALL), math.log(MAX_SMALL)
    for p in small_file_paths(tree):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        size = int(math.exp(rng.uniform(lo, hi)))
        start = rng.randrange(len(pool) - size)
        with open(p, "wb") as f:
            f.write(pool[start : start + size])
    block = _pattern(64 << 20)
    for i, big in enumerate(bigs):
        with open(big, "wb") as f:
            for j in range(BIG_SIZE // len(block)):
                # Distinct blocks: no run of the file repeats a neighbour.
                f.write(bytes([i, j & 0xFF]) + block[2:])
    marker.write_text(LAYOUT)
    return tree, bigs


def ensure_xxhsum() -> str:
    exe = shutil.which("xxhsum")
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "xxhash"], check=True,
                       stdout=subprocess.DEVNULL)
        exe = shutil.which("xxhsum")
    if exe is None:
        sys.exit("xxhsum is not available")
    return exe


# ---------------------------------------------------------------------------
# Contenders


def run_find(tree: Path) -> None:
    with open(os.devnull, "wb") as null:
        subprocess.run(["find", str(tree), "-printf", "%s %T@ %p\\n"], stdout=null, check=True)


def run_walk(tree: Path) -> None:
    from btsoot import _fastscan

    n = 0
    for _entry in _fastscan.walk(os.fsencode(tree)):
        n += 1
    assert n >= TREE_FILES, n


def run_xxhsum(exe: str, files: list[Path]) -> None:
    subprocess.run([exe, "-H2", *map(str, files)], stdout=subprocess.DEVNULL, check=True)


def run_hash_one(big: Path) -> None:
    from btsoot import _fastscan

    # Chunk digests off: the same work as xxhsum, one digest of the whole file.
    res = _fastscan.hash_file(os.fsencode(big), 1 << 22, 1 << 62)
    assert res[5] == 0, res


def run_hash_two(bigs: list[Path]) -> None:
    from btsoot import scanner

    assert scanner.IMPLEMENTATION == "compiled"
    for res in scanner.hash_files(map(os.fsencode, bigs), threads=2, chunk_threshold=1 << 62):
        assert res[5] == 0, res


def time_small_hashing(tree: Path, pure_python: bool) -> float:
    """Best-of-3 seconds for scanner.hash_files over the small files (its thread
    pool, its batching), in a fresh process."""
    env = dict(os.environ, BTSOOT_PUREPYTHON="1" if pure_python else "0")
    out = subprocess.run(
        [sys.executable, __file__, "--_hash-small", str(tree)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return float(out.split()[-1])


def _hash_small_child(tree: Path) -> None:
    from btsoot import scanner

    paths = small_file_paths(tree)

    def run() -> None:
        for res in scanner.hash_files(paths):
            assert res[5] == 0, res

    print(scanner.IMPLEMENTATION, best_of_3(run))


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    ap.add_argument("--_hash-small", dest="hash_small", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hash_small:
        _hash_small_child(Path(args.hash_small))
        return 0

    from btsoot import _fastscan  # noqa: F401  (fail early if the extension is not built)

    base = Path(os.environ.get("BTSOOT_BENCH_DIR", "/tmp/btsoot-bench"))
    xxhsum = ensure_xxhsum()
    tree, bigs = ensure_data(base)
    gib = BIG_SIZE / (1 << 30)

    rows = []  # (what, btsoot, other, ratio, target text, passed)

    t_walk, t_find = best_of_3(lambda: run_walk(tree)), best_of_3(lambda: run_find(tree))
    r = t_walk / t_find
    rows.append(("walk+stat 100k: btsoot / find time", f"{t_walk:.3f} s", f"{t_find:.3f} s",
                 r, "<= 1.50", r <= 1.5))

    t_one, t_x1 = best_of_3(lambda: run_hash_one(bigs[0])), best_of_3(
        lambda: run_xxhsum(xxhsum, bigs[:1]))
    r = (gib / t_one) / (gib / t_x1)
    rows.append(("XXH3-128 1 GiB, 1 thread: btsoot / xxhsum GB/s",
                 f"{gib / t_one:.2f} GiB/s", f"{gib / t_x1:.2f} GiB/s", r, ">= 0.80", r >= 0.8))

    t_two, t_x2 = best_of_3(lambda: run_hash_two(bigs)), best_of_3(
        lambda: run_xxhsum(xxhsum, bigs))
    r = t_x2 / t_two
    rows.append(("2 x 1 GiB: 2 workers vs xxhsum sequential (speedup)",
                 f"{t_two:.3f} s", f"{t_x2:.3f} s", r, "> 1.00", r > 1.0))

    t_c, t_p = time_small_hashing(tree, False), time_small_hashing(tree, True)
    r = t_p / t_c
    rows.append(("hash 100k small files, scanner.hash_files: compiled vs python",
                 f"{t_c:.3f} s", f"{t_p:.3f} s", r, ">= 2.00", r >= 2.0))

    head = ("measurement", "btsoot", "reference", "ratio", "target", "result")
    table = [head] + [(w, b, o, f"{r:.2f}", t, "PASS" if p else "FAIL")
                      for w, b, o, r, t, p in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    failed = [row for row in rows if not row[5]]
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
