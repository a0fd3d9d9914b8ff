"""Memory that does not grow with the tree: the peak of Python's allocations of a
command, run in this process on a tree of 2,000 files and of 8,000, per file.
Before it streamed, verify held an entry per file (510 bytes a file here).
(Allocations are counted by tracemalloc, not timed. The restores' slopes are
measured by benchmarks/memory.py instead: measured here, one run in several
showed a megabyte more at 8,000 files, whose source is not yet found.)"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from btsoot import snapshot
from btsoot.cli import main
from test_reliability import lib_backup, make_env

SIZES = (2000, 8000)


def _tree(root: Path, n: int) -> tuple[Path, Path]:
    """A tree of n files backed up twice: the first snapshot's files, the second's
    (one file in 50 edited, one folder renamed)."""
    env, src, dst = make_env(root)
    for i in range(n):
        p = src / f"d{i // 100:03d}" / f"file-{i:06d}.txt"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x" * (i % 7))
    assert lib_backup(env).exit_code == 0
    for i in range(0, n, 50):
        with open(src / f"d{i // 100:03d}" / f"file-{i:06d}.txt", "ab") as f:
            f.write(b"edited")
    (src / "d000").rename(src / "d000-renamed")
    assert lib_backup(env).exit_code == 0
    return src, dst


def _peak(args: list[str]) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0, args
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _slope(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command) -> float:
    # Bounded buffers made small, so both trees fill them.
    monkeypatch.setattr(snapshot, "FLUSH_BYTES", 16 << 10)
    monkeypatch.setattr("btsoot.verify.HASH_BATCH", 256)
    # (restore keeps up to jobs x 4 batches of BATCH_FILES in flight: about 1 MiB,
    # which the larger tree fills and the smaller may not, depending on timing)
    monkeypatch.setattr("btsoot.restore_pool.BATCH_FILES", 4)
    peaks = []
    for n in (50, *SIZES):  # (the first: every module imported before measuring)
        root = tmp_path / str(n)
        src, dst = _tree(root, n)
        monkeypatch.setenv("BTSOOT_CONFIG", str(root / "config.toml"))
        monkeypatch.setenv("BTSOOT_STATE", str(root / "state"))
        # The least of two runs: a transient (a thread pool's timing, cyclic garbage
        # awaiting a collection) can add a megabyte to one run; what grows with the
        # tree shows in both.
        peaks.append(min(_peak(command(root, dst, k)) for k in range(2)))
    return (peaks[2] - peaks[1]) / (SIZES[1] - SIZES[0])


def test_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_file = _slope(tmp_path, monkeypatch, lambda root, dst, k: ["verify", "b", "-q"])
    assert per_file < 50, f"{per_file:.0f} bytes per file"
