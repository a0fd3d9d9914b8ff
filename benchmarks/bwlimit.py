"""How closely `backup --bwlimit` keeps to its rate over a run of about a minute.

    python3 benchmarks/bwlimit.py [--rate 2M] [--seconds 60] [--tmp /tmp]

A source of RATE x SECONDS bytes of random content (half in files of 4-64 KiB,
which go whole through the compiled small-file copy, half in files of 2-6 MiB,
which go buffer by buffer) backed up by a first backup into an empty local
folder with --bwlimit RATE, and the same data again with a limit of twice the
rate (half the time). For each: the bytes sent (btsoot's bytes_sent), the time
of the transfer phase and of the whole run, and the rate achieved over the
transfer phase as a share of the limit. Exit 1 when a share is outside 0.9-1.1
(the target: within 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from btsoot.limit import parse_rate  # noqa: E402


def make_source(src: Path, total: int, rng: random.Random) -> int:
    made = 0
    i = 0
    while made < total // 2:
        n = rng.randrange(4 << 10, 64 << 10)
        p = src / f"small{i // 200:03d}" / f"f{i:05d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(n))
        made += n
        i += 1
    while made < total:
        n = rng.randrange(2 << 20, 6 << 20)
        (src / f"big{i:05d}").write_bytes(rng.randbytes(n))
        made += n
        i += 1
    return made


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", default="2M")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--tmp", default=None)
    a = ap.parse_args()
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)  # as an installed wheel has it
    rate = parse_rate(a.rate)
    work = Path(tempfile.mkdtemp(prefix="bwlimit-bench-", dir=a.tmp))
    try:
        src = work / "src"
        total = make_source(src, int(rate * a.seconds), random.Random(7))
        print(f"source: {total:,} B; limit {a.rate} = {rate:,} B/s", flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
                   BTSOOT_CONFIG=str(work / "config.toml"), BTSOOT_STATE=str(work / "state"))
        bad = False
        for k, limit in enumerate((rate, 2 * rate)):
            dst = work / f"dst{k}"
            dst.mkdir()
            subprocess.run([sys.executable, "-m", "btsoot", "add", f"b{k}", str(src), str(dst)],
                           env=env, check=True, capture_output=True)
            p = subprocess.run([sys.executable, "-m", "btsoot", "backup", f"b{k}", "--json",
                                "--bwlimit", str(limit)], env=env, check=True,
                               capture_output=True, text=True)
            s = json.loads(p.stdout)
            t, whole = s["durations"]["transfer"], s["durations"]["total"]
            share = s["bytes_sent"] / t / limit
            bad |= not 0.9 <= share <= 1.1
            print(f"limit {limit:>12,} B/s: sent {s['bytes_sent']:,} B; transfer {t:.1f} s, run "
                  f"{whole:.1f} s; achieved {s['bytes_sent'] / t:,.0f} B/s = {share:.3f} of the limit",
                  flush=True)
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
