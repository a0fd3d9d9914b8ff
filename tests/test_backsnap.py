"""Older local snapshots kept as back-deltas of the next newer one (backsnap.py):
only the head stays plain, every kept snapshot reads back as the very lines it
was committed with, retention folds a removed snapshot into the one that leans
on it, and a kill at any point of that leaves every snapshot readable."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import orjson
import pytest

import torture
from btsoot import backsnap
from btsoot.snapshot import Entry, Header, SnapshotReader, SnapshotWriter, read_names
from btsoot.state import BlockState
from conftest import Env, assert_mirror
from test_record import a_day as change  # an edit, a new file, a deletion, a renamed folder


def put(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


@pytest.fixture
def block(env: Env) -> tuple[Env, Path, Path]:
    src, dst = env.root / "src", env.root / "remote"
    for i in range(40):
        put(src / "music" / f"song{i:02}.mp3", os.urandom(2000))
        put(src / "photos" / f"img{i:02}.jpg", os.urandom(3000))
    put(src / "docs" / "edited.txt", b"version 0")
    dst.mkdir()
    env.run("add", "b", src, dst, check=0)
    return env, src, dst


def backup(env: Env) -> str:
    return json.loads(env.run("backup", "b", "--json", check=0).stdout)["snapshot"]


def body(path: Path) -> list[bytes]:
    """A plain snapshot file's entry lines (no header, no trailer)."""
    return path.read_bytes().splitlines(keepends=True)[1:-1]


def state(env: Env) -> BlockState:
    return BlockState(str(env.state / "blocks" / "b"))


def runs(env: Env, src: Path, days: list[bool]) -> dict[str, tuple[list[bytes], object]]:
    """Back up once per day (changed or not); each head's lines and owner names
    as committed, by id."""
    seen: dict[str, tuple[list[bytes], object]] = {}
    for k, changed in enumerate(days):
        if changed:
            change(src, k)
        sid = backup(env)
        plain = Path(state(env).snapshot_path(sid))
        seen[sid] = (body(plain), read_names(str(plain)))
    return seen


def test_older_snapshots_are_back_deltas_and_read_back_exactly(block) -> None:
    env, src, dst = block
    seen = runs(env, src, [True, True, False, True, False, True])
    st = state(env)
    ids = st.committed_ids()
    assert ids == sorted(seen)
    files = sorted(p.name for p in Path(st.snapshots).iterdir())
    head = ids[-1]
    assert files == sorted([f"{head}.jsonl"] + [f"{i}.back.jsonl.gz" for i in ids[:-1]])
    for sid in ids:
        r = st.resolved(sid)
        assert [line for _, line in r.lines()] == seen[sid][0], sid
        assert r.names == seen[sid][1]
        assert r.header.id == sid and r.header.kind == "full"
    # A run that changed nothing leaves an empty delta; a day, its changes only.
    unchanged = ids[2]  # the third run changed nothing: the second's back-delta is empty
    with SnapshotReader(backsnap.back_path(st.snapshots, ids[1])) as r:
        assert list(r.records()) == [] and r.header.base == unchanged
    def by_path(lines: list[bytes]) -> dict[str, bytes]:
        return {orjson.loads(line)["path"]: line for line in lines}

    old, new = by_path(seen[ids[0]][0]), by_path(seen[ids[1]][0])
    differ = {p for p in old.keys() | new.keys() if old.get(p) != new.get(p)}
    with SnapshotReader(backsnap.back_path(st.snapshots, ids[0])) as r:
        recs = list(r.records())
    assert {rec.get("path", rec.get("del")) for rec in recs} == differ
    assert len(recs) == len(differ) < len(old) + len(new)
    plain = sum(len(b"".join(v[0])) for v in seen.values())
    kept = sum(os.path.getsize(os.path.join(st.snapshots, n)) for n in os.listdir(st.snapshots))
    assert kept < plain / 3, (kept, plain)
    # Restoring an older snapshot and diffing two go through them too.
    out = env.root / "old"
    env.run("restore", "b", "--snapshot", ids[0], "--to", out, check=0)
    assert (out / "docs" / "edited.txt").read_bytes() == b"version 0"
    diff = env.run("diff", "b", "--from", ids[0], "--to", ids[3], check=0).stdout
    assert "edited.txt" in diff
    assert_mirror(src, dst)


def test_removing_a_snapshot_folds_it_into_the_older_one(block) -> None:
    env, src, dst = block
    seen = runs(env, src, [True, True, True, False, True, True])
    st = state(env)
    ids = st.committed_ids()
    keep = {ids[0], ids[3], ids[-1]}  # the ones between go; ids[0] leaned on ids[1]
    st.head_path(ids[4])  # one of them kept plain beside its back-delta (a kill's leftover)
    assert os.path.exists(st.snapshot_path(ids[4]))
    st.keep_only(keep)
    assert st.committed_ids() == sorted(keep)
    assert not [n for n in os.listdir(st.snapshots) if n.startswith(ids[4])]
    for sid in keep:
        assert [line for _, line in st.resolved(sid).lines()] == seen[sid][0], sid
    with SnapshotReader(backsnap.back_path(st.snapshots, ids[0])) as r:
        assert r.header.base == ids[3]
    # The head goes only when retention says so of a plain newest: the one before
    # it becomes plain until the next commit turns it back.
    st.keep_only({ids[0]})
    assert st.committed_ids() == [ids[0]]
    assert [line for _, line in st.resolved(ids[0]).lines()] == seen[ids[0]][0]


def test_snapshots_of_an_older_btsoot_are_turned_at_the_next_run(block) -> None:
    """A state of plain snapshots only (as an older btsoot left it)."""
    env, src, dst = block
    seen = runs(env, src, [True, True, True])
    st = state(env)
    for sid in st.committed_ids()[:-1]:  # put them back plain
        os.unlink(backsnap.back_path(st.snapshots, sid))
        h = Header(block="b", source=str(src), id=sid, created_ns=1, scan_started_ns=1)
        w = SnapshotWriter(st.snapshot_path(sid), h)
        for line in seen[sid][0]:
            w.write_raw(b"", line)
        w.names = seen[sid][1]  # type: ignore[assignment]
        w.commit()
    assert all(n.endswith(".jsonl") for n in os.listdir(st.snapshots))
    change(src, 9)
    last = backup(env)
    names = sorted(os.listdir(st.snapshots))
    assert names == sorted([f"{last}.jsonl"] + [f"{i}.back.jsonl.gz" for i in seen])
    for sid in seen:
        assert [line for _, line in st.resolved(sid).lines()] == seen[sid][0]


def test_a_kill_while_compacting_leaves_every_snapshot_readable(block, tmp_path: Path) -> None:
    """SIGKILL at every system call of the compaction after a commit; each time
    every committed snapshot reads as committed, and the next run finishes it."""
    env, src, dst = block
    seen = runs(env, src, [True, True])
    saved = tmp_path / "saved"
    shutil.copytree(env.root, saved, symlinks=True)
    change(src, 5)
    trace = tmp_path / "trace.json"
    labels = _run(env, 0, trace)
    points = [i + 1 for i, lab in enumerate(labels) if lab.partition(":")[0] == "compact"]
    assert len(points) >= 4, labels[-20:]
    for idx in points:
        for name in ("src", "remote", "state"):
            shutil.rmtree(env.root / name)
            shutil.copytree(saved / name, env.root / name, symlinks=True)
        change(src, 5)
        assert _run(env, idx) == []
        st = state(env)
        now = st.committed_ids()
        assert set(seen) <= set(now)
        for sid in seen:
            assert [line for _, line in st.resolved(sid).lines()] == seen[sid][0], (idx, sid)
        last = backup(env)
        assert sorted(os.listdir(st.snapshots)) == sorted(
            [f"{last}.jsonl"] + [f"{i}.back.jsonl.gz" for i in now if i != last])
        assert_mirror(src, dst)


def _run(env: Env, kill_at: int, trace: Path | None = None) -> list[str]:
    p, r = torture.start(env.vars(), ("backup", "b"), kill_at, 0.0,
                         str(trace) if trace is not None else None)
    try:
        p.communicate(timeout=120)
    finally:
        os.close(r)
    if kill_at:
        assert p.returncode == -signal.SIGKILL
        return []
    assert p.returncode == 0
    assert trace is not None
    return orjson.loads(trace.read_bytes())["events"]


def test_the_fast_compare_and_the_line_diff_agree(tmp_path: Path) -> None:
    """Bodies alike byte for byte (a run that changed nothing) take the fast path;
    one changed field anywhere (an inode number alone) takes the line diff, and
    that line comes back as it was."""
    d = str(tmp_path)

    def snap(sid: str, ino_of_last: int) -> None:
        w = SnapshotWriter(backsnap.plain_path(d, sid),
                           Header(block="b", source="/s", id=sid, created_ns=1, scan_started_ns=1))
        for i in range(3000):
            w.write(Entry(b"d/f%05d" % i, "file", i, 10**18, 0o100644,
                          ino_of_last if i == 2999 else 100 + i, 1, "ab" * 16))
        w.names = ({1000: "alice"}, {})
        w.commit()

    snap("20260101T000000.000001Z", 9)
    snap("20260101T000000.000002Z", 9)
    snap("20260101T000000.000003Z", 7)
    lines = {sid: body(Path(backsnap.plain_path(d, sid))) for sid in backsnap.ids(d)}
    assert backsnap._same_body(backsnap.plain_path(d, "20260101T000000.000001Z"),
                               backsnap.plain_path(d, "20260101T000000.000002Z")) is not None
    assert backsnap._same_body(backsnap.plain_path(d, "20260101T000000.000002Z"),
                               backsnap.plain_path(d, "20260101T000000.000003Z")) is None
    assert backsnap.compact(d, "20260101T000000.000003Z") == 2
    with SnapshotReader(backsnap.back_path(d, "20260101T000000.000001Z")) as r:
        assert list(r.records()) == []
    with SnapshotReader(backsnap.back_path(d, "20260101T000000.000002Z")) as r:
        assert [rec["ino"] for rec in r.records()] == [9]
    for sid, want in lines.items():
        res = backsnap.Resolved(d, sid)
        assert [line for _, line in res.lines()] == want
        assert res.names == ({1000: "alice"}, {})


def test_a_damaged_back_delta_is_an_error_never_a_smaller_snapshot(block) -> None:
    env, src, dst = block
    runs(env, src, [True, True])
    st = state(env)
    old = st.committed_ids()[0]
    p = Path(backsnap.back_path(st.snapshots, old))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    r = env.run("restore", "b", "--snapshot", old, "--to", env.root / "x")
    assert r.returncode == 8 and "Traceback" not in r.stderr, r.stderr  # damaged state
    assert len(r.stderr.strip().splitlines()) == 1 and "back.jsonl.gz" in r.stderr, r.stderr
    # The backup itself never reads it: it goes on.
    change(src, 3)
    env.run("backup", "b", check=0)


def test_a_head_put_back_to_an_older_snapshot_is_read_plain(block) -> None:
    """state.json naming an older snapshot (the state folder restored from a
    backup of itself): that snapshot is written out plain and the run plans from
    it, as from any head; its back-delta goes at the next compaction."""
    env, src, dst = block
    seen = runs(env, src, [True, True, True])
    st = state(env)
    ids = st.committed_ids()
    p = Path(st.root) / "state.json"
    rec = orjson.loads(p.read_bytes())
    rec["head"] = ids[0]
    p.write_bytes(orjson.dumps(rec))
    r = env.run("diff", "b")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(st.snapshot_path(ids[0]))
    assert body(Path(st.snapshot_path(ids[0]))) == seen[ids[0]][0]
    st.keep_only({ids[0], ids[2]})  # the one ids[0] leaned on goes: its plain file stays whole
    assert [line for _, line in st.resolved(ids[0]).lines()] == seen[ids[0]][0]
    change(src, 7)
    last = backup(env)
    assert_mirror(src, dst)
    for sid in st.committed_ids():
        if sid in seen:
            assert [line for _, line in st.resolved(sid).lines()] == seen[sid][0], sid
    assert sorted(n for n in os.listdir(st.snapshots) if n.endswith(".jsonl")) == [f"{last}.jsonl"]
