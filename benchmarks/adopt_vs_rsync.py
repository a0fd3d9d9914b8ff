"""Taking over an existing copy: `btsoot backup --adopt` beside `rsync -a` run again.

    python3 benchmarks/adopt_vs_rsync.py [--files 100000] [--tmp /tmp]

A source of FILES small files (0-8 KiB, random content, folders of 100, every
mtime an hour back or more), copied once with `rsync -a` (not timed): the copy
someone switching to btsoot already has. Two scenarios, each on fresh copies of
that copy made with `cp -a` (not timed), one for each tool:

1. the copy is current: `btsoot backup NAME --adopt` (a new block) against
   `rsync -a --delete --stats SRC/ COPY/`;
2. the copy is stale: since it was made, 1% of the files were edited (same
   size, new bytes), 0.2% added, 0.2% deleted, and one folder of 1% of the files
   renamed; then the same two commands.

Per run: the wall time, the bytes of file content each tool wrote (btsoot:
bytes_sent; rsync: "Literal data"), and a check that the copy ended as the
source (every relative path, kind, size and mtime in whole seconds, and the
content of every file the scenario touched plus every 50th file). Everything
lives in a fresh folder under --tmp, removed at the end. Exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from sparse_vs_rsync import literal, run  # (the same rsync and run helpers)

ROOT = Path(__file__).resolve().parent.parent


def make_tree(src: Path, files: int, rng: random.Random) -> None:
    old = 1_700_000_000 - 3600
    for i in range(files):
        p = src / f"d{i // 10000:02d}" / f"f{i // 100:04d}" / f"file{i:06d}.bin"
        if i % 100 == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randrange(8192)))
        t = old - rng.randrange(10**7)
        os.utime(p, (t, t))


def stale(src: Path, made: list[Path], rng: random.Random) -> tuple[set[str], str]:
    """The day since the copy was made; returns the paths touched and the renamed folder."""
    n = len(made)
    touched: set[str] = set()
    for p in rng.sample(made, n // 100):
        size = p.stat().st_size
        p.write_bytes(rng.randbytes(size))
        touched.add(str(p.relative_to(src)))
    for i in range(n // 500):
        p = src / "added" / f"new{i:05d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randrange(8192)))
        touched.add(str(p.relative_to(src)))
    for p in rng.sample(made, n // 500):
        if p.exists():
            p.unlink()
    (src / "d00" / "group").rename(src / "d00-archive")
    # A folder of 1% of the files (at least 100) renamed: made of whole f-folders
    # the day before (the copy already has that folder).
    return touched, "d00/group (renamed to d00-archive)"


def group(src: Path, files: int) -> int:
    """Put the first 1% of the files (whole folders of 100, at least one) into
    d00/group, before the copy is made; returns the files there."""
    g = src / "d00" / "group"
    g.mkdir()
    k = max(1, files // 10_000)
    for i in range(k):
        (src / "d00" / f"f{i:04d}").rename(g / f"f{i:04d}")
    return 100 * k


def tree(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dp, dns, fns in os.walk(root):
        dns[:] = [d for d in dns if d != ".btsoot"]
        for n in fns:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, int(st.st_mtime))
    return out


def check(src: Path, dst: Path, extra: set[str]) -> str:
    want, got = tree(src), tree(dst)
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:3]
        return f"FAIL: {len(set(want.items()) ^ set(got.items()))} differ, e.g. {diff}"
    for i, rel in enumerate(sorted(want)):
        if (i % 50 == 0 or rel in extra) and (src / rel).read_bytes() != (dst / rel).read_bytes():
            return f"FAIL: {rel} differs"
    return "ok"


class Btsoot:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
                        BTSOOT_CONFIG=str(work / "config.toml"), BTSOOT_STATE=str(work / "state"))

    def adopt(self, name: str, src: Path, dst: Path) -> tuple[float, int, dict]:
        run([sys.executable, "-m", "btsoot", "add", name, str(src), str(dst)], self.env)
        out, secs = run([sys.executable, "-m", "btsoot", "backup", name, "--adopt", "--json"],
                        self.env)
        s = json.loads(out)
        return secs, s["bytes_sent"], s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--tmp", default=None)
    a = ap.parse_args()
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)  # as an installed wheel has it
    work = Path(tempfile.mkdtemp(prefix="adopt-bench-", dir=a.tmp))
    try:
        rng = random.Random(20261130)
        src = work / "src"
        make_tree(src, a.files, rng)
        grouped = group(src, a.files)
        made = sorted(p for p in src.rglob("*.bin"))
        copy = work / "copy"
        run(["rsync", "-a", f"{src}/", f"{copy}/"])
        print(f"source: {a.files:,} files; the copy made with rsync -a", flush=True)
        bt = Btsoot(work)
        rows = []
        touched: set[str] = set()
        for scenario in ("current copy", "stale copy"):
            if scenario == "stale copy":
                touched, moved = stale(src, made, rng)
                print(f"since the copy: {len(touched):,} files edited or added, "
                      f"{a.files // 500:,} deleted, {moved} ({grouped:,} files)", flush=True)
            name = "current" if scenario == "current copy" else "stale"
            b_dst, r_dst = work / f"bt-{name}", work / f"rs-{name}"
            for d in (b_dst, r_dst):
                run(["cp", "-a", str(copy), str(d)])
            secs, sent, s = bt.adopt(name, src, b_dst)
            what = ", ".join(f"{k} {v}" for k, v in sorted(s["operations"].items()))
            what += "; phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["durations"].items())
            rows.append((scenario, "btsoot --adopt", secs, sent, what, check(src, b_dst, touched)))
            out, secs = run(["rsync", "-a", "--delete", "--stats", f"{src}/", f"{r_dst}/"])
            rows.append((scenario, "rsync -a --delete", secs, literal(out), "",
                         check(src, r_dst, touched)))
            for r in rows[-2:]:
                print(f"  {r[0]:13} {r[1]:18} {r[2]:8.2f} s  {r[3]:>13,} B  {r[5]}  {r[4]}",
                      flush=True)
        print()
        print("| scenario | tool | seconds | content written | check |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:,} B | {r[5]} |")
        return 1 if any(r[5] != "ok" for r in rows) else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
