"""scan() of two builds on one tree, by turns: a run with no change and a day.

    python3 benchmarks/scan_ab.py CHECKOUT_A CHECKOUT_B [--rounds 7]

Each CHECKOUT is a source tree with its compiled core built in place (a git
worktree: `git worktree add /tmp/a REV`, then `python setup.py build_ext
--inplace` there, or copy the .so when the .pyx did not change). A tree of
100,000 small files is made once under /tmp/scanab; a first scan by each
build gives its previous snapshot; then each build scans against it, alternating which goes
first (no change), and again after a day (a folder of 10,000 files renamed,
400 files given new modes). Prints the medians and B/A. Only scan() is
timed: no remote, no commit. Run it with nothing else on the machine; or with
--callgrind, which counts the instructions of one no-change scan of each
build instead (valgrind: the same count on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

TOP = "/tmp/scanab"
TREE = f"{TOP}/src"

# One scan in a fresh interpreter: argv = checkout, previous snapshot, output, tree.
RUN = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1] + "/src")
from btsoot.scan import scan
from btsoot.snapshot import SnapshotReader
if sys.argv[2] == "-":
    scan(block="b", source=sys.argv[4], out_path=sys.argv[3], snap_id="1", previous=None, exclude=[])
else:
    with SnapshotReader(sys.argv[2]) as prev:
        t = time.perf_counter()
        r = scan(block="b", source=sys.argv[4], out_path=sys.argv[3], snap_id="2", previous=prev,
                 exclude=[])
        print(json.dumps({"t": time.perf_counter() - t, "files": r.stats.files}))
"""


def make_tree() -> None:
    if os.path.exists(TREE):
        return
    for d in range(200):
        p = f"{TREE}/d{d // 20}/e{d}"
        os.makedirs(p)
        for f in range(500):
            with open(f"{p}/f{f}", "wb") as fh:
                fh.write(b"x" * (f % 300))


def scan_once(checkout: str, base: str, out: str) -> float | None:
    p = subprocess.run([sys.executable, "-c", RUN, checkout, base, out, TREE],
                       check=True, capture_output=True, text=True)
    return json.loads(p.stdout)["t"] if p.stdout else None


def instructions(checkout: str, base: str) -> int:
    """Instructions one no-change scan takes (callgrind: the same count however busy
    the machine is), interpreter start included."""
    out = f"{TOP}/callgrind.out"
    p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, "-c", RUN, checkout, base, f"{TOP}/out.jsonl", TREE],
                       check=True, capture_output=True, text=True)
    os.unlink(out)
    m = re.search(r"refs:\s+([\d,]+)", p.stderr)
    assert m, p.stderr
    return int(m.group(1).replace(",", ""))


def by_turns(a: str, b: str, bases: dict[str, str], rounds: int,
             into: dict[str, list[float]]) -> None:
    for r in range(rounds):
        for c in (a, b) if r % 2 == 0 else (b, a):
            t = scan_once(c, bases[c], f"{TOP}/out.jsonl")
            assert t is not None
            into[c].append(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--callgrind", action="store_true",
                    help="instead of timing: count the instructions of one no-change scan each")
    args = ap.parse_args()
    make_tree()
    # Each build's own previous snapshot: the two may write different formats.
    bases = {args.a: f"{TOP}/base-a.jsonl", args.b: f"{TOP}/base-b.jsonl"}
    time.sleep(2.5)  # no file modified within the racy window of the first scans
    for c, base in bases.items():
        scan_once(c, "-", base)
    time.sleep(2.5)
    if args.callgrind:
        ia, ib = instructions(args.a, bases[args.a]), instructions(args.b, bases[args.b])
        print(f"no change, instructions: A {ia:,}, B {ib:,}, B/A {ib / ia:.3f}")
        return
    results = {}
    for name in ("no change", "a day"):
        if name == "a day":
            os.rename(f"{TREE}/d0", f"{TREE}/d0-renamed")
            for d in range(20, 24):
                for f in range(0, 500, 5):
                    os.chmod(f"{TREE}/d1/e{d}/f{f}", 0o600)
        times: dict[str, list[float]] = {args.a: [], args.b: []}
        by_turns(args.a, args.b, bases, args.rounds, times)
        results[name] = times
    os.rename(f"{TREE}/d0-renamed", f"{TREE}/d0")
    for d in range(20, 24):
        for f in range(0, 500, 5):
            os.chmod(f"{TREE}/d1/e{d}/f{f}", 0o644)
    for name, times in results.items():
        ma, mb = statistics.median(times[args.a]), statistics.median(times[args.b])
        runs = " ".join(f"{x:.3f}" for x in times[args.a]), " ".join(f"{x:.3f}" for x in times[args.b])
        print(f"{name}: A {ma:.3f} s, B {mb:.3f} s, B/A {mb / ma:.3f}  (A: {runs[0]}; B: {runs[1]})")


if __name__ == "__main__":
    main()
