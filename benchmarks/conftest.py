"""Fixtures for the pytest-benchmark micro-benchmarks (benchmarks/test_bench_*.py).

Run with `make bench` or `python -m pytest benchmarks --benchmark-only`. The
normal suite never collects these: pyproject's testpaths is `tests`.

Data: a 20k-file tree and a 64 MiB file, generated once and cached under
$BTSOOT_BENCH_DIR (default /tmp/btsoot-bench) in `micro/`; two synthetic
1M-entry snapshots (1% of the entries differ) written with SnapshotWriter into
a temp folder once per session.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

# Benchmark this checkout (its compiled core built in place by `make dev`), not
# whatever btsoot happens to be installed.
_SRC = Path(__file__).resolve().parent.parent / "src"
if list((_SRC / "btsoot").glob("_fastscan*.so")) and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from btsoot.snapshot import DIR, FILE, Entry, Header, SnapshotWriter  # noqa: E402

BASE = Path(os.environ.get("BTSOOT_BENCH_DIR", "/tmp/btsoot-bench")) / "micro"
TREE_FILES = 20_000
BIG = 64 << 20
LAYOUT = f"micro v1 files={TREE_FILES} big={BIG}\n"
OLD_MTIME = 1_600_000_000

SNAP_FILES = 1_000_000  # 100 x 100 folders of 100 files


@pytest.fixture(scope="session")
def micro_data() -> dict[str, Path]:
    tree, big, marker = BASE / "tree", BASE / "big.bin", BASE / "complete"
    if not (marker.exists() and marker.read_text() == LAYOUT):
        if BASE.exists():
            shutil.rmtree(BASE)
        tree.mkdir(parents=True)
        rng = random.Random(7)
        pool = rng.randbytes(1 << 20)
        lo, hi = math.log(1 << 10), math.log(64 << 10)
        for i in range(TREE_FILES):
            d = tree / f"d{i // 2000:02d}" / f"d{i // 100 % 20:02d}"
            if i % 100 == 0:
                d.mkdir(parents=True, exist_ok=True)
            size = int(math.exp(rng.uniform(lo, hi)))
            start = rng.randrange(len(pool) - size)
            p = d / f"f{i % 100:03d}.bin"
            p.write_bytes(f"{i}\n".encode() + pool[start:start + size])
            os.utime(p, (OLD_MTIME, OLD_MTIME))
        with open(big, "wb") as f:
            for _ in range(BIG // (16 << 20)):
                f.write(rng.randbytes(16 << 20))
        marker.write_text(LAYOUT)
    return {"tree": tree, "big": big}


def _digest(i: int, gen: int = 0) -> str:
    return f"{(i * 2654435761 + gen * 97) & ((1 << 128) - 1):032x}"


def synthetic_entries(changed: bool) -> Iterator[Entry]:
    """1M files in snapshot order; with changed=True, 1% differ: 0.6% modified,
    0.2% removed, 0.2% added (the same entries on every call)."""
    n = 0
    for a in range(100):
        da = f"d{a:03d}".encode()
        yield Entry(da, DIR, 0, OLD_MTIME * 10**9, 0o40755, 1_000_000 + a, 1)
        for b in range(100):
            db = da + f"/s{b:03d}".encode()
            yield Entry(db, DIR, 0, OLD_MTIME * 10**9, 0o40755, 2_000_000 + a * 100 + b, 1)
            for c in range(100):
                e = Entry(db + f"/f{c:03d}.jpg".encode(), FILE, 1000 + n % 50000,
                          OLD_MTIME * 10**9 + n, 0o100644, 10_000_000 + n, 1, _digest(n))
                k = n % 500
                n += 1
                if not changed:
                    yield e
                    continue
                if k == 1:  # removed (0.2%)
                    continue
                if k in (3, 4, 5):  # modified (0.6%)
                    yield replace(e, size=e.size + 10, mtime_ns=e.mtime_ns + 10**9,
                                  digest=_digest(n, 1))
                else:
                    yield e
                if k == 7:  # added (0.2%)
                    yield Entry(db + f"/f{c:03d}x.jpg".encode(), FILE, 4096, OLD_MTIME * 10**9,
                                0o100644, 50_000_000 + n, 1, _digest(n, 2))


@pytest.fixture(scope="session")
def snapshot_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("snapshots")
    paths = []
    for name, changed in (("old", False), ("new", True)):
        path = str(d / f"{name}.jsonl")
        w = SnapshotWriter(path, Header(block="bench", source="/src", id=name, created_ns=0,
                                        scan_started_ns=0))
        w.write_all(synthetic_entries(changed))
        w.commit(sync=False)
        paths.append(path)
    return paths[0], paths[1]
