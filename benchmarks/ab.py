#!/usr/bin/env python3
"""Two versions of btsoot, A and B, on one sshfs remote, run by turns.

    python3 benchmarks/ab.py BASE [--other REV] [--rounds 5] [--tree many]

Where `compare.py` measures btsoot against rsync, this measures btsoot against
itself: did a change make a scenario slower? On a shared, noisy machine two
tables taken an hour apart differ by more than most changes do (the tables in
the README moved 1.5-2x between days with the code unchanged). Here both
versions run on the same source tree, the same sshd, one after the other in
alternating order, each with its own remote folder and state, and the result
is the ratio of their medians.

A is BASE (a git revision); B is --other (default: the working tree's own
src/btsoot with its compiled core, `make dev`). Each revision is exported with
`git archive` and its compiled core built in place.

Scenarios, each on a cold sshfs cache (mounted afresh for every run, as a
nightly cron job meets it):
- first: the initial backup (once per version);
- nochange: a backup with nothing changed;
- day: a day of changes, new each round (1% of files edited, 0.1% added and
  0.1% deleted, a 10% top folder renamed), backed up by both versions.

Numbers are wall-clock seconds of the whole `btsoot backup` process.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the tree generator, sshd and sshfs of the rsync comparison)

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    compare.log(msg)


def export(rev: str, dest: Path) -> Path:
    """rev's src/ under dest, its compiled core built; returns the PYTHONPATH entry."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=dest,
                   check=True, capture_output=True)
    return dest / "src"


def working_tree(dest: Path) -> Path:
    pkg = ROOT / "src" / "btsoot"
    if not list(pkg.glob("_fastscan*.so")):
        sys.exit("the working tree has no compiled core: run `make dev` first")
    shutil.copytree(pkg, dest / "btsoot", ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    return dest


class Version:
    def __init__(self, label: str, pythonpath: Path, work: Path) -> None:
        self.label = label
        self.env = dict(os.environ, PYTHONPATH=str(pythonpath),
                        BTSOOT_CONFIG=str(work / f"config-{label}.toml"),
                        BTSOOT_STATE=str(work / f"state-{label}"))
        self.times: dict[str, list[float]] = {}

    def run(self, *args: str) -> float:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "btsoot", *args], env=self.env,
                           capture_output=True, text=True)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{self.label}: btsoot {' '.join(args)} exited {p.returncode}:\n"
                               f"{p.stdout}{p.stderr}")
        return dt


def day_change(src: Path, files: list[str], k: int) -> list[str]:
    """Round k's day of changes; returns the new file list."""
    rng = random.Random(f"ab-day-{k}")
    n = len(files)
    picked = rng.sample(files, n // 100 + n // 1000)
    for rel in picked[: n // 100]:
        with open(src / rel, "ab") as f:
            f.write(rng.randbytes(rng.randrange(100, 4000)))
        os.utime(src / rel, ns=(compare._now_ns(),) * 2)
    gone = set(picked[n // 100:])
    for rel in gone:
        (src / rel).unlink()
    dirs = sorted({f.rpartition("/")[0] for f in files if "/" in f})
    added = []
    for i in range(n // 1000):
        rel = f"{rng.choice(dirs)}/ab-{k}-{i:05d}.dat"
        if (src / rel).parent.is_dir():
            (src / rel).write_bytes(rng.randbytes(rng.randrange(100, 64_000)))
            added.append(rel)
    top = compare.TOP_NAMES[1]
    a, b = (top, top + "-renamed") if (src / top).exists() else (top + "-renamed", top)
    os.rename(src / a, src / b)
    out = [f for f in files if f not in gone] + added
    return [b + f[len(a):] if f.startswith(a + "/") else f for f in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="version A: a git revision")
    ap.add_argument("--other", help="version B: a git revision (default: the working tree)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tree", choices=["many", "small"], default="many",
                    help="many: the 100k-file tree of compare.py; small: 10k files")
    args = ap.parse_args()

    spec = compare.MANY if args.tree == "many" else compare.TreeSpec(
        "small", 10_000, 200, 64 * 1024)
    work = compare.BASE / "ab"
    if work.exists():
        subprocess.run(["fusermount3", "-u", str(work / "mnt")], check=False,
                       capture_output=True)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    versions = [
        Version("A", export(args.base, work / "A"), work),
        Version("B", export(args.other, work / "B") if args.other
                else working_tree(work / "B"), work),
    ]
    log(f"A = {args.base}, B = {args.other or 'working tree'}; tree {spec.name}")
    cache = compare.ensure_tree(spec)
    src = work / "src"
    # Every file its own copy: the day's edits must not reach the cached tree.
    subprocess.run(["cp", "-a", str(cache), str(src)], check=True)
    compare._set_dir_times(src, compare.OLD_MTIME)
    files = compare.list_files(src)
    server = compare.SshServer(work)
    mnt = work / "mnt"
    try:
        for v in versions:
            (server.served / v.label).mkdir()

        def on_mount(v: Version, *cmd: str) -> float:
            m = compare.SshfsMount(server, mnt, server.served)
            try:
                return v.run(*cmd)
            finally:
                m.close()
                server.quiesce()

        m = compare.SshfsMount(server, mnt, server.served)
        for v in versions:
            v.run("add", "b", str(src), str(mnt / v.label))
        m.close()
        for v in versions:
            compare.warm(src)
            v.times["first"] = [on_mount(v, "backup", "b", "-q")]
            log(f"{v.label} first backup: {v.times['first'][0]:.1f} s")
        for k in range(args.rounds):
            order = versions if k % 2 == 0 else versions[::-1]
            for v in order:
                v.times.setdefault("nochange", []).append(on_mount(v, "backup", "b", "-q"))
            files = day_change(src, files, k)
            compare.warm(src)
            for v in order:
                v.times.setdefault("day", []).append(on_mount(v, "backup", "b", "-q"))
            log(f"round {k + 1}/{args.rounds}: " + ", ".join(
                f"{v.label} nochange {v.times['nochange'][-1]:.2f} s day {v.times['day'][-1]:.2f} s"
                for v in versions))
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
        server.close()
    a, b = versions
    print(f"\nA = {args.base}, B = {args.other or 'working tree'}, tree {spec.name} "
          f"({len(files)} files), {args.rounds} rounds, load {compare.load1():.1f}")
    print("| scenario | A median | B median | B / A | A runs | B runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in ("first", "nochange", "day"):
        ma, mb = statistics.median(a.times[key]), statistics.median(b.times[key])
        print(f"| {key} | {ma:.2f} s | {mb:.2f} s | {mb / ma:.2f} | "
              f"{' '.join(f'{x:.2f}' for x in a.times[key])} | "
              f"{' '.join(f'{x:.2f}' for x in b.times[key])} |")


if __name__ == "__main__":
    main()
