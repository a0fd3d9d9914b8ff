"""The local state's size over a month of nightly runs, and what keeping older
snapshots as back-deltas costs a run.

Run as `python benchmarks/state_size.py [--files 100k] [--days 30]` (`make
state-size`). A tree of small files (folders of 100, 0-2 KiB; as memory.py
makes it, under $BTSOOT_BENCH_DIR or /tmp/btsoot-bench/state/N) is backed up
to a local remote folder once, then once per day for DAYS days: 1% of the files
edited, 0.2% added, 0.2% deleted, and every tenth day a folder of 100 renamed.
Every snapshot stays (the default keep_within of 30 days). Printed:

- the state folder's snapshots after the month: bytes, bytes per file, and
  bytes per file per kept snapshot (the issue's target: under 25), beside
  what the same snapshots would take kept plain (the head's size each);
- then one more day and one no-change run, in this process, with the time of
  their "compact" phase (the head they replaced turned into a back-delta)
  beside the whole run's.

A report, never an assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from memory import generate, parse_size  # noqa: E402


def day(src: Path, rng: random.Random, k: int) -> None:
    files = sorted(p for p in src.rglob("*.txt"))
    n = len(files)
    for p in rng.sample(files, n // 100):
        with open(p, "ab") as f:
            f.write(b"edited on day %d\n" % k)
    doomed = rng.sample(files, n // 500)
    for p in doomed:
        p.unlink()
    for i in range(n // 500):
        d = files[rng.randrange(n)].parent
        (d / f"new-{k}-{i}.txt").write_bytes(os.urandom(rng.randrange(2048)))
    if k % 10 == 0:
        folders = sorted({p.parent for p in files if p.parent.exists()})
        d = rng.choice(folders)
        os.rename(d, d.with_name(d.name + f"-renamed{k}"))


def snapshots_bytes(state: Path) -> tuple[int, int, int]:
    """(bytes of all snapshot files, of the plain head, how many snapshots)."""
    d = state / "blocks" / "b" / "snapshots"
    total = head = count = 0
    for n in os.listdir(d):
        size = os.path.getsize(d / n)
        total += size
        count += 1
        if n.endswith(".jsonl"):
            head = size
    return total, head, count


class Timer:
    """An events watcher: seconds spent in each phase."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._at: dict[str, float] = {}

    def phase(self, name: str, entering: bool) -> None:
        if entering:
            self._at[name] = time.perf_counter()
        else:
            self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - self._at.pop(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="100k")
    ap.add_argument("--days", type=int, default=30)
    a = ap.parse_args()
    n = parse_size(a.files)
    base = Path(os.environ.get("BTSOOT_BENCH_DIR", "/tmp/btsoot-bench")) / "state" / str(n)
    base.mkdir(parents=True, exist_ok=True)
    pristine = generate(base / "tree", n)
    work = base / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    src, dst, state, config = work / "src", work / "remote", work / "state", work / "config.toml"
    shutil.copytree(pristine, src, symlinks=True)
    dst.mkdir()
    env = dict(os.environ, BTSOOT_CONFIG=str(config), BTSOOT_STATE=str(state))
    os.environ.update(BTSOOT_CONFIG=str(config), BTSOOT_STATE=str(state))

    def cli(*args: str) -> dict:
        p = subprocess.run([sys.executable, "-m", "btsoot", *args], env=env, capture_output=True,
                           text=True, check=False)
        if p.returncode != 0:
            sys.exit(f"btsoot {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}

    cli("add", "b", str(src), str(dst))
    rng = random.Random(n)
    t = time.monotonic()
    cli("backup", "b", "--json")
    print(f"{n:,} files; first backup {time.monotonic() - t:.1f} s")
    for k in range(1, a.days + 1):
        day(src, rng, k)
        cli("backup", "b", "--json")
    total, head, count = snapshots_bytes(state)
    print(f"after {a.days} days: {count} snapshots kept, {total:,} B "
          f"({total / n:.1f} B/file, {total / n / count:.1f} B/file per kept snapshot)")
    print(f"  kept plain they would take about {head * count:,} B "
          f"({head / n:.1f} B/file per kept snapshot); the head alone {head:,} B")

    from btsoot import events
    from btsoot.backup import backup
    from btsoot.config import Config

    for what in ("a day", "no change"):
        if what == "a day":
            day(src, rng, a.days + 1)
        timer = Timer()
        events.watch(timer)
        t = time.perf_counter()
        res = backup(Config.load(str(config)).get("b"))
        wall = time.perf_counter() - t
        events.watch(None)
        assert res.exit_code == 0, res
        c = timer.spent.get("compact", 0.0)
        print(f"{what}: run {wall:.2f} s, of which compact {c:.3f} s ({100 * c / wall:.1f}%)")
    total, head, count = snapshots_bytes(state)
    print(f"at the end: {count} snapshots, {total / n / count:.1f} B/file per kept snapshot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
