"""A sparse file backed up: btsoot beside rsync -S (and plain rsync -a).

    python3 benchmarks/sparse_vs_rsync.py [--size-gib 4] [--data-mib 8] [--top /tmp/sparsebench]

One file of SIZE GiB holding DATA MiB of random data in a few places (holes at
the start, in the middle and at the end), backed up by each tool into its own
folder on the same file system. Prints, for each: the time, the bytes it sent
(btsoot: bytes_sent; rsync: literal data of --stats) and the bytes the copy
allocates (st_blocks), beside the source's.
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
import time

MiB = 1 << 20


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr}")
    return p.stdout, time.monotonic() - t


def allocated(path: str) -> int:
    return os.lstat(path).st_blocks * 512


def literal(out: str) -> int:
    m = re.search(r"Literal data: ([\d,]+)", out)
    assert m, out
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=int, default=4)
    ap.add_argument("--data-mib", type=int, default=8)
    ap.add_argument("--top", default="/tmp/sparsebench")
    a = ap.parse_args()
    shutil.rmtree(a.top, ignore_errors=True)
    src, bt = os.path.join(a.top, "src"), os.path.join(a.top, "btsoot")
    for d in (src, bt):
        os.makedirs(d)
    size = a.size_gib << 30
    rng = random.Random(1)
    path = os.path.join(src, "disk.img")
    pieces = 4
    with open(path, "wb") as f:
        for k in range(pieces):
            f.seek(size * (2 * k + 1) // (2 * pieces))
            f.write(rng.randbytes(a.data_mib * MiB // pieces))
        f.truncate(size)
    env = dict(os.environ, BTSOOT_STATE=os.path.join(a.top, "state"),
               BTSOOT_CONFIG=os.path.join(a.top, "config.toml"))
    btsoot = [sys.executable, "-m", "btsoot"]
    run(btsoot + ["add", "b", src, bt], env)
    out, secs = run(btsoot + ["backup", "b", "--json"], env)
    s = json.loads(out)
    print(f"a {a.size_gib} GiB file holding {a.data_mib} MiB of data; source allocates "
          f"{allocated(path):,} B")
    print(f"{'':<22}{'time':>8}{'sent':>16}{'allocated':>16}")
    print(f"{'btsoot':<22}{secs:>7.1f}s{s['bytes_sent']:>16,}"
          f"{allocated(os.path.join(bt, 'disk.img')):>16,}")
    for name, flags in (("rsync -aS", ["-aS"]), ("rsync -a", ["-a"])):
        dst = os.path.join(a.top, name.replace(" ", ""))
        os.makedirs(dst)
        out, secs = run(["rsync", *flags, "--stats", src + "/", dst + "/"])
        print(f"{name:<22}{secs:>7.1f}s{literal(out):>16,}"
              f"{allocated(os.path.join(dst, 'disk.img')):>16,}")
    shutil.rmtree(a.top, ignore_errors=True)


if __name__ == "__main__":
    main()
