"""Peak memory of every command, at two tree sizes: the per-file slope.

Run as `python benchmarks/memory.py [--sizes 50k,200k]` (`make memory`). For each
size, a tree of small files (folders of 100, 0-2 KiB) is generated once under
$BTSOOT_BENCH_DIR or /tmp/btsoot-bench/memory/N, backed up to a local remote
folder, and each command is run as its own process: its peak RSS (ru_maxrss of
the process, from os.wait4) and wall time are printed. The slope between the two
sizes is what grows per file; the project's target is at most 150 MiB for any
command on any tree and under 20 bytes per file (issue "Scale"). A report, never
an assertion: the numbers are for finding what grows.

Commands, in order, on the same block:

- backup (first), backup (no change), backup (a day: 1% of files edited, one
  folder of ~10% renamed), diff (after another edit), list, log, snapshots,
  verify (reads every file of the remote), restore --to a new folder (all files),
  restore --from REMOTE --to another new folder (the remote's record alone),
  restore --snapshot (the oldest) --to a folder with the newest already in it,
  prune.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s.rstrip("km")) * mult)


def generate(root: Path, n: int) -> Path:
    """N small files in folders of 100, deterministic; made once, then reused."""
    src = root / "src"
    done = root / ".done"
    if done.exists():
        return src
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(n)
    payload = os.urandom(2048)
    t = time.monotonic()
    for i in range(n):
        d = src / f"a{i // 10_000:03d}" / f"b{i // 100:05d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        fd = os.open(d / f"f{i:07d}.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, payload[: rng.randrange(2048)])
        os.close(fd)
    done.write_text(f"{time.monotonic() - t:.1f}")
    return src


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB, exit code) of one run of cmd. Through GNU
    time: the child of a fork counts its parent's pages until it execs, so a
    child of this process would report this process's size for small commands."""
    t = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "maxrss=%M", *cmd], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    lines = p.stderr.strip().splitlines()
    rss = int(lines[-1].removeprefix("maxrss=")) if lines and lines[-1].startswith("maxrss=") else -1
    if p.returncode not in (0, 3):
        print(f"  ! {' '.join(cmd[2:])} exited {p.returncode}: {' '.join(lines[-3:])[:300]}",
              file=sys.stderr)
    return time.monotonic() - t, rss, p.returncode


def freeze(base: Path) -> Path:
    """A copy of the source tree (the compiled core included) that edits to the
    checkout during a long run do not reach."""
    frozen = base / "src-frozen"
    shutil.rmtree(frozen, ignore_errors=True)
    shutil.copytree(ROOT / "src", frozen, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return frozen


def run_size(n: int, base: Path, code: Path) -> dict[str, tuple[float, int, int]]:
    work = base / str(n)
    src = generate(work, n)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    dst = run / "remote"
    dst.mkdir()
    env = dict(os.environ, BTSOOT_CONFIG=str(run / "config.toml"), BTSOOT_STATE=str(run / "state"),
               PYTHONPATH=str(code))
    bt = [sys.executable, "-m", "btsoot"]
    subprocess.run(bt + ["add", "b", str(src), str(dst)], env=env, check=True, capture_output=True)
    out: dict[str, tuple[float, int, int]] = {}

    def m(label: str, *args: str) -> None:
        out[label] = measured(bt + list(args), env)
        t, rss, code = out[label]
        print(f"  {n:>9,} {label:<26} {t:7.1f} s {rss / 1024:8.1f} MiB  exit {code}", flush=True)

    rng = random.Random(7)
    files = sorted(src.rglob("*.txt"))
    m("backup (first)", "backup", "b", "-q")
    m("backup (no change)", "backup", "b", "-q")
    first_snapshot = sorted(os.listdir(run / "state" / "blocks" / "b" / "snapshots"))[0][:-6]
    edited = rng.sample(files, max(1, n // 100))
    for p in edited:
        with open(p, "ab") as f:
            f.write(b"edit")
    top = sorted({p.parent.parent for p in files})
    moved = top[len(top) // 2]
    os.rename(moved, moved.with_name(moved.name + "-renamed"))
    m("backup (a day)", "backup", "b", "-q")
    stayed = next(p for p in edited if not p.is_relative_to(moved))
    with open(stayed, "ab") as f:
        f.write(b"again")
    m("diff", "diff", "b")
    m("list", "list")
    m("log", "log", "b")
    m("snapshots", "snapshots", "b")
    m("verify", "verify", "b", "-q")
    m("restore --to", "restore", "b", "--to", str(run / "r1"), "-q")
    m("restore --from --to", "restore", "--from", str(dst), "--to", str(run / "r2"), "-q")
    m("restore --snapshot (old)", "restore", "b", "--snapshot", first_snapshot, "--to", str(run / "r1"),
      "-q")
    m("prune", "prune", "b")
    # Put the tree back as generated, for the next run.
    os.rename(moved.with_name(moved.name + "-renamed"), moved)
    (work / ".done").unlink()  # (edited files: generated again next time)
    shutil.rmtree(run, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50k,200k", help="two or more tree sizes (default 50k,200k)")
    ap.add_argument("--dir", default=os.environ.get("BTSOOT_BENCH_DIR", "/tmp/btsoot-bench"))
    args = ap.parse_args()
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    base = Path(args.dir) / "memory"
    base.mkdir(parents=True, exist_ok=True)
    print(f"btsoot memory by command; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load {os.getloadavg()[0]:.1f}; {' '.join(sys.argv)}")
    code = freeze(base)
    results = {n: run_size(n, base, code) for n in sizes}
    lo, hi = sizes[0], sizes[-1]
    print(f"\n| command | peak RSS at {lo:,} files | at {hi:,} files | per file | time at {hi:,} |")
    print("| --- | --- | --- | --- | --- |")
    for label in results[hi]:
        a, b = results[lo][label][1], results[hi][label][1]
        slope = (b - a) * 1024 / (hi - lo)
        flag = "" if b <= 150 * 1024 and slope < 20 else " (over target)"
        print(f"| {label} | {a / 1024:.1f} MiB | {b / 1024:.1f} MiB | {slope:.0f} B{flag} | "
              f"{results[hi][label][0]:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
