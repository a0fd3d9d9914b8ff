"""Memory that does not grow with the tree: the peak of Python's allocations of a
command, run in this process on a tree of 2,000 files and of 8,000, per file.
Before they streamed, these commands held an entry (or more) per file: several
hundred bytes each. (Allocations are counted by tracemalloc, not timed: the
numbers are the same on a busy machine; a transient that depends on the timing
of threads shows as a megabyte more in some runs: the copy loop's 1 MiB read
buffer was one, before it was sized to what is left to read.)"""

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
        peaks.append(_peak(command(root, dst)))
    return (peaks[2] - peaks[1]) / (SIZES[1] - SIZES[0])


def test_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_file = _slope(tmp_path, monkeypatch, lambda root, dst: ["verify", "b", "-q"])
    assert per_file < 50, f"{per_file:.0f} bytes per file"


def test_restore_from_the_remote_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_file = _slope(tmp_path, monkeypatch, lambda root, dst: [
        "restore", "--from", str(dst), "--to", str(root / "back"), "-q"])
    assert per_file < 50, f"{per_file:.0f} bytes per file"


def test_restore_an_older_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The content of an older snapshot is found where it is now: only the files
    not at their own path are looked up (NowIndex), not every file of the remote."""
    def oldest(root: Path) -> str:
        return min(".".join(p.name.split(".")[:2])  # ID.jsonl, ID.back.jsonl.gz
                   for p in (root / "state" / "blocks" / "b" / "snapshots").iterdir())

    per_file = _slope(tmp_path, monkeypatch, lambda root, dst: [
        "restore", "b", "--snapshot", oldest(root), "--to", str(root / "back"), "-q"])
    assert per_file < 50, f"{per_file:.0f} bytes per file"
