"""The first backup streams (first.py): the operations make_plan would give, run a
chunk at a time, with memory that does not grow with the tree. Real trees, real
backups through the library (small chunks, so boundaries fall everywhere)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from btsoot import first, snapshot
from btsoot.ops import Link, Mkdir, SetAttr
from btsoot.plan import make_plan
from btsoot.scan import scan
from btsoot.snapshot import FILE, SnapshotReader, read_names
from btsoot.state import BlockState
from conftest import Env, assert_mirror
from test_reliability import lib_backup, make_env


def grow(src: Path) -> None:
    """Folders, files (empty ones too), symlinks, and hard-link groups whose names
    fall into different chunks."""
    for d in range(4):
        for f in range(6):
            p = src / f"d{d}" / f"s{f % 2}" / f"f{f}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(f * 300))
    (src / "empty-dir").mkdir()
    (src / "empty").write_bytes(b"")
    os.link(src / "d0/s0/f2", src / "d3/hard-a")
    os.link(src / "d0/s0/f2", src / "zz-hard-b")
    os.link(src / "d1/s1/f3", src / "d1/s1/f3-again")
    os.symlink("d0/s0/f2", src / "link")


def describe(op: object) -> tuple:
    return (type(op).__name__, getattr(op, "path", None), getattr(op, "src", None))


def test_the_operations_are_make_plans(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    grow(src)
    out = str(tmp_path / "scan.jsonl")
    scan(block="b", source=str(src), out_path=out, snap_id="1", previous=None, exclude=[],
         hash_new=False)

    def entries():
        with SnapshotReader(out) as r:
            yield from r

    planned = [describe(op) for op in make_plan(lambda: iter(()), entries, links=True).ops]
    # One chunk: the very same operations in the very same order.
    assert [describe(op) for op in first.replay(out, links=True)] == planned
    # Small chunks: the same operations; each folder made before anything below it,
    # each link after its group's copy, the folders' attributes last, deepest first.
    first.CHUNK, chunk = 4, first.CHUNK
    try:
        ops = list(first.replay(out, links=True))
    finally:
        first.CHUNK = chunk
    assert sorted(map(describe, ops)) == sorted(planned)
    made: set[bytes] = {b""}
    copied: set[bytes] = set()
    for op in ops:
        if isinstance(op, SetAttr):
            continue
        assert op.path.rpartition(b"/")[0] in made, op
        if isinstance(op, Mkdir):
            made.add(op.path)
        elif isinstance(op, Link):
            assert op.src in copied, op
        copied.add(op.path)
    attrs = [op.path for op in ops if isinstance(op, SetAttr)]
    assert ops[-len(attrs):] == [op for op in ops if isinstance(op, SetAttr)]
    assert all(not b.startswith(a + b"/") for i, a in enumerate(attrs) for b in attrs[i + 1:])


@pytest.mark.parametrize("chunk", [3, 1000])
def test_a_streamed_first_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    env, src, dst = make_env(tmp_path / "b")
    grow(src)
    monkeypatch.setattr(first, "CHUNK", chunk)
    res = lib_backup(env)
    assert res.exit_code == 0, res.summary()
    assert_mirror(src, dst)
    # Hard links stay hard links on the remote, across chunks.
    assert os.stat(dst / "d3/hard-a").st_ino == os.stat(dst / "zz-hard-b").st_ino == \
        os.stat(dst / "d0/s0/f2").st_ino
    s = res.summary()
    assert s["operations"] == {"mkdir": 13, "copy": 25, "link": 3, "symlink": 1, "set-attributes": 13}
    # The snapshot: every file with the digest its copy learnt, the owners' names.
    st = BlockState(str(env.state / "blocks" / "b"))
    path = st.snapshot_path(res.snapshot)
    with SnapshotReader(path) as r:
        files = [e for e in r if e.kind == FILE]
    assert len(files) == 28 and all(e.digest for e in files)
    assert read_names(path)[0]
    # What the run did is kept item by item, as make_plan would have listed it.
    got = env.run("log", "b", "last", "--json", check=0).stdout.splitlines()
    assert len(got) == sum(s["operations"].values()) == s["items"]
    # Nothing left to do.
    again = lib_backup(env)
    assert again.result == "nothing", again.summary()


def test_a_file_gone_before_its_chunk_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, src, dst = make_env(tmp_path / "b")
    grow(src)
    monkeypatch.setattr(first, "CHUNK", 3)

    def progress(what: str, value: object) -> None:
        if (what, value) == ("phase", "transfer"):
            os.unlink(src / "d2/s1/f5")  # after the scan listed it, before its chunk runs

    res = lib_backup(env, progress=progress)
    s = res.summary()
    assert res.exit_code == 3 and s["causes"] == {"vanished": 1}, s
    assert not (dst / "d2/s1/f5").exists()
    with SnapshotReader(BlockState(str(env.state / "blocks" / "b")).snapshot_path(res.snapshot)) as r:
        assert b"d2/s1/f5" not in {e.path for e in r}
    assert lib_backup(env).exit_code == 0
    assert_mirror(src, dst)


def _peak(env: Env) -> int:
    tracemalloc.start()
    try:
        assert lib_backup(env).exit_code == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak Python memory of a first backup, 2,000 files against 8,000: the slope per
    file stays far below what a whole plan in memory costs (several hundred bytes a
    file). The bounded buffers are made small, so both trees fill them: chunks of
    8,192 entries and 1 MiB snapshot buffers would otherwise grow with these trees."""
    monkeypatch.setattr(snapshot, "FLUSH_BYTES", 16 << 10)
    first.CHUNK, chunk = 500, first.CHUNK
    try:
        peaks = []
        for n in (10, 2000, 8000):  # (the first: every module imported before measuring)
            env, src, _ = make_env(tmp_path / str(n))
            for i in range(n):
                p = src / f"d{i // 100:03d}" / f"file-{i:06d}.txt"
                p.parent.mkdir(exist_ok=True)
                p.write_bytes(b"x" * (i % 7))
            peaks.append(_peak(env))
    finally:
        first.CHUNK = chunk
    per_file = (peaks[2] - peaks[1]) / 6000
    assert per_file < 50, f"{per_file:.0f} bytes per file (peaks {peaks})"
