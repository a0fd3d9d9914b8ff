"""Micro-benchmarks of the pipeline stages: walk, hash, snapshot write/read, scan, plan.

Each is a few seconds at most; the data comes from conftest.py. Ratios against
external tools live in bench_core.py and compare.py; these track btsoot's own
stages from commit to commit (`pytest benchmarks --benchmark-only
--benchmark-autosave`, then `--benchmark-compare`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from btsoot import scanner
from btsoot.plan import make_plan
from btsoot.scan import scan
from btsoot.snapshot import Header, SnapshotReader, SnapshotWriter
from conftest import SNAP_FILES, TREE_FILES, synthetic_entries


def _files(tree: Path) -> list[bytes]:
    return sorted(os.fsencode(os.path.join(d, f)) for d, _, fs in os.walk(tree) for f in fs)


# --- walk ---------------------------------------------------------------------

def test_walk_20k(benchmark, micro_data):
    root = os.fsencode(micro_data["tree"])
    benchmark.extra_info["implementation"] = scanner.IMPLEMENTATION

    def walk() -> int:
        return sum(1 for _ in scanner.walk(root))

    assert benchmark(walk) >= TREE_FILES


# --- hash ---------------------------------------------------------------------

def test_hash_64mib_one_thread(benchmark, micro_data):
    path = os.fsencode(micro_data["big"])
    res = benchmark(scanner.hash_file, path, scanner.CHUNK_SIZE, scanner.CHUNK_THRESHOLD)
    assert res[5] == 0 and res[2] == 64 << 20


def test_hash_20k_small_files_pool(benchmark, micro_data):
    paths = _files(micro_data["tree"])

    def run() -> int:
        return sum(1 for r in scanner.hash_files(paths) if r[5] == 0)

    assert benchmark.pedantic(run, rounds=3, warmup_rounds=1) == TREE_FILES


# --- snapshot write / read ------------------------------------------------------

N_SNAP = 200_000


@pytest.fixture(scope="module")
def entries_200k():
    out = []
    for e in synthetic_entries(False):
        out.append(e)
        if len(out) == N_SNAP:
            return out
    return out


def test_snapshot_write_200k(benchmark, entries_200k, tmp_path):
    path = str(tmp_path / "w.jsonl")

    def write() -> None:
        w = SnapshotWriter(path, Header(block="b", source="/s", id="x", created_ns=0, scan_started_ns=0))
        w.write_all(entries_200k)
        w.commit(sync=False)

    benchmark.pedantic(write, rounds=3, warmup_rounds=1)


@pytest.fixture(scope="module")
def snapshot_200k(entries_200k, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("snap") / "r.jsonl")
    w = SnapshotWriter(path, Header(block="b", source="/s", id="x", created_ns=0, scan_started_ns=0))
    w.write_all(entries_200k)
    w.commit(sync=False)
    return path


def test_snapshot_read_entries_200k(benchmark, snapshot_200k):
    def read() -> int:
        with SnapshotReader(snapshot_200k) as r:
            return sum(1 for _ in r)

    assert benchmark.pedantic(read, rounds=3, warmup_rounds=1) == N_SNAP


def test_snapshot_read_raw_200k(benchmark, snapshot_200k):
    """Decode each line once and keep it for verbatim reuse (deltas, the planner)."""
    def read() -> int:
        with SnapshotReader(snapshot_200k) as r:
            return sum(1 for _ in r.raw())

    assert benchmark.pedantic(read, rounds=3, warmup_rounds=1) == N_SNAP


def test_snapshot_read_lines_200k(benchmark, snapshot_200k):
    """The no-change scan's path: paths found in canonical lines without decoding."""
    def read() -> int:
        with SnapshotReader(snapshot_200k) as r:
            return sum(1 for _ in r.lines())

    assert benchmark.pedantic(read, rounds=3, warmup_rounds=1) == N_SNAP


# --- scan (walk + tiered detection + snapshot) -----------------------------------

@pytest.fixture(scope="module")
def scanned_20k(micro_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("scan")
    first = str(d / "first.jsonl")
    scan(block="b", source=str(micro_data["tree"]), out_path=first, snap_id="1",
         previous=None, exclude=[])
    return first, d


def test_scan_no_change_20k(benchmark, micro_data, scanned_20k):
    """A backup's scan when nothing changed: every file trusted by size+mtime+inode."""
    first, d = scanned_20k
    out = str(d / "again.jsonl")

    def again():
        with SnapshotReader(first) as prev:
            return scan(block="b", source=str(micro_data["tree"]), out_path=out, snap_id="2",
                        previous=prev, exclude=[])

    res = benchmark.pedantic(again, rounds=3, warmup_rounds=1)
    assert res.stats.hashed_files == 0 and res.stats.files == TREE_FILES


# --- plan ---------------------------------------------------------------------

def test_plan_1m_entries_1pct_changed(benchmark, snapshot_pair):
    """make_plan over two streamed 1M-file snapshots with 1% of the files changed
    (no precomputed diff: the planner merges both streams itself)."""
    old, new = snapshot_pair

    def opener(path):
        def it():
            with SnapshotReader(path) as r:
                yield from r
        return it

    t0 = time.perf_counter()
    plan = benchmark.pedantic(lambda: make_plan(opener(old), opener(new)), rounds=1, iterations=1)
    benchmark.extra_info["entries"] = SNAP_FILES
    benchmark.extra_info["seconds_with_setup"] = round(time.perf_counter() - t0, 2)
    counts = plan.count()
    assert counts["copy"] + counts["remote-copy"] == SNAP_FILES * 8 // 1000, counts
    assert counts["delete"] == SNAP_FILES * 2 // 1000, counts
