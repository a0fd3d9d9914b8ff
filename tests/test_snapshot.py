"""The snapshot format: exact round trips, order, and damage that must never pass as a tree.

A damaged snapshot read as a smaller tree would make the next backup delete
what is missing from it, so every kind of damage must raise StateError (exit 8
at the CLI), whichever reader (entries or raw lines) reads it.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import orjson
import pytest

from btsoot.errors import StateError
from btsoot.snapshot import (
    DIR,
    FILE,
    SYMLINK,
    Entry,
    Header,
    SnapshotReader,
    SnapshotWriter,
    sort_key,
)
from conftest import Env

ODD = [b"\xff\xfe", b"caf\xe9", b"new\nline", b"back\\slash", b"-dash", b"x" * 255, b"\x01ctl",
       b"tab\t", b'quote"', b"\xe2\x82\xac", b"a b", b"a!"]


def header(**kw: object) -> Header:
    d = dict(block="b", source="/src", id="20260101T000000.000000Z", created_ns=1,
             scan_started_ns=2, source_dev=3, chunk_size=4 << 20, chunk_threshold=16 << 20,
             tool="test")
    d.update(kw)
    return Header(**d)  # type: ignore[arg-type]


def entries() -> list[Entry]:
    out = [Entry(b"d", DIR, 0, 5, 0o40755, 7, 8)]
    for i, n in enumerate(ODD):
        out.append(Entry(b"d/" + n, FILE, i, 10**18 + i, 0o100644, 100 + i, 8, f"{i:032x}",
                         (f"{i:032x}", f"{i + 1:032x}") if i % 2 else None))
        # (a link's size is its target's length: not recorded, so 0 here)
        out.append(Entry(b"l-" + n, SYMLINK, 0, 3, 0o120777, target=n + b"/\xff target"))
    return sorted(out, key=lambda e: sort_key(e.path))


def write(path: Path, es: list[Entry], compress: bool = False, **kw: object) -> Path:
    w = SnapshotWriter(str(path), header(**kw), compress=compress)
    w.write_all(es)
    w.commit()
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_is_exact(tmp_path: Path, compress: bool) -> None:
    es = entries()
    p = write(tmp_path / "s", es, compress)
    with SnapshotReader(str(p)) as r:
        assert r.header == header()
        assert list(r) == es
    with SnapshotReader(str(p)) as r:
        assert [path for path, _, _ in r.raw()] == [e.path for e in es]
    assert not [n for n in os.listdir(tmp_path) if n != "s"]  # no temp file left


def test_text_paths_stay_readable_and_others_are_base64(tmp_path: Path) -> None:
    p = write(tmp_path / "s", entries())
    lines = [json.loads(x) for x in p.read_bytes().splitlines()[1:-1]]
    by = {tuple(sorted(k for k in d if k.startswith("path"))): d for d in lines}
    assert ("path",) in by and ("path_b64",) in by
    assert any(d.get("path") == "d/new\nline" for d in lines)


def test_order_puts_a_folder_s_subtree_right_after_it() -> None:
    paths = [b"a!", b"a/b/c", b"a b", b"a", b"a\xff", b"a/b", b"a/b!", b"a.b/c", b"a/b/c/d"]
    assert sorted(paths, key=sort_key) == [
        b"a", b"a/b", b"a/b/c", b"a/b/c/d", b"a/b!", b"a b", b"a!", b"a.b/c", b"a\xff"]


def test_writer_refuses_entries_out_of_order(tmp_path: Path) -> None:
    w = SnapshotWriter(str(tmp_path / "s"), header())
    w.write(Entry(b"a/b", FILE))
    with pytest.raises(ValueError):
        w.write(Entry(b"a", FILE))  # a folder after its own content
    with pytest.raises(ValueError):
        w.write(Entry(b"a/a", FILE))  # a name before the last one
    w.write(Entry(b"a b", FILE))  # bytewise before "a/b", but "/" sorts first: in order
    with pytest.raises(ValueError):
        w.write(Entry(b"a/b", FILE))  # a duplicate
    w.abort()
    assert not os.listdir(tmp_path)


def _lines(es: list[Entry], trailer: int | None = None) -> bytes:
    out = [orjson.dumps(header().to_dict())]
    out += [orjson.dumps({"path": e.path.decode(), "type": e.kind, "mtime": 1, "mode": 1,
                          "size": 0, "digest": "0" * 32}) for e in es]
    out.append(orjson.dumps({"end": True, "count": len(es) if trailer is None else trailer}))
    return b"\n".join(out) + b"\n"


def read_all(p: Path) -> None:
    """Read p both ways, to the end."""
    with SnapshotReader(str(p)) as r:
        list(r)
    with SnapshotReader(str(p)) as r:
        list(r.raw())


def test_reader_refuses_entries_out_of_order(tmp_path: Path) -> None:
    p = tmp_path / "s"
    p.write_bytes(_lines([Entry(b"b", FILE), Entry(b"a", FILE)]))
    with pytest.raises(StateError, match="out of order"):
        with SnapshotReader(str(p)) as r:
            list(r)
    with pytest.raises(StateError, match="out of order"):
        with SnapshotReader(str(p)) as r:
            list(r.raw())


@pytest.mark.parametrize("compress", [False, True])
def test_every_truncation_is_detected(tmp_path: Path, compress: bool) -> None:
    whole = write(tmp_path / "whole", entries()[:8], compress).read_bytes()
    p = tmp_path / "cut"
    for n in range(len(whole)):
        p.write_bytes(whole[:n])
        with pytest.raises(StateError):
            read_all(p)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda b: b.replace(b'"mode"', b'"mo\x00de"', 1), id="bad-json"),
    pytest.param(lambda b: b.replace(b'"type":"file"', b'"type":"fifo"', 1), id="unknown-type"),
    pytest.param(lambda b: b.replace(b'"mtime":', b'"mtim":', 1), id="missing-field"),
    pytest.param(lambda b: b.replace(b'"mtime":', b'"mtime":"x",', 1), id="wrong-type"),
    pytest.param(lambda b: b.replace(b'"path_b64":"', b'"path_b64":"!', 1), id="bad-base64"),
    pytest.param(lambda b: b.replace(b'"count":', b'"count":1', 1), id="wrong-count"),
    pytest.param(lambda b: b + b'{"path":"zzz","type":"file","mtime":1,"mode":1}\n',
                 id="after-trailer"),
    pytest.param(lambda b: b.split(b"\n", 1)[1], id="no-header"),
])
def test_corruption_is_detected(tmp_path: Path, damage) -> None:
    good = write(tmp_path / "good", entries()).read_bytes()
    bad = damage(good)
    assert bad != good
    p = tmp_path / "bad"
    p.write_bytes(bad)
    with pytest.raises(StateError):
        read_all(p)
    p.write_bytes(gzip.compress(bad))
    with pytest.raises(StateError):
        read_all(p)


@pytest.mark.parametrize("change, says", [
    ({"version": 3}, "newer"),
    ({"version": "1"}, "version"),
    ({"format": "something-else"}, "not a btsoot snapshot"),
    ({"hash": "sha1"}, "hash"),
    ({"block": None, "id": None, "created_ns": "soon"}, "header"),
])
def test_future_or_foreign_header_is_refused(tmp_path: Path, change: dict, says: str) -> None:
    good = write(tmp_path / "good", entries()[:3]).read_bytes()
    head, rest = good.split(b"\n", 1)
    h = orjson.loads(head)
    h.update(change)
    if h.get("block") is None:
        del h["block"]
    p = tmp_path / "bad"
    p.write_bytes(orjson.dumps(h) + b"\n" + rest)
    with pytest.raises(StateError, match=says):
        read_all(p)


@pytest.mark.parametrize("content", [b"", b"\n", b"[]\n", b"\x1f\x8bnot gzip", os.urandom(64)])
def test_not_a_snapshot(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "junk"
    p.write_bytes(content)
    with pytest.raises(StateError):
        read_all(p)


@pytest.mark.parametrize("damage", ["truncate", "future", "digest"])
def test_backup_stops_on_a_damaged_committed_snapshot(block: tuple[Env, Path, Path],
                                                      damage: str) -> None:
    """The CLI: exit 8, one line, and nothing on the remote changes (no deletions).
    "digest": the line of an unchanged file, damaged after its fixed fields, where
    the scan's byte comparison with the walk must not pass it through unread."""
    env, src, dst = block
    for i in range(5):
        (src / f"f{i}").write_bytes(b"%d" % i)
    env.run("backup", "b", check=0)
    (snap,) = (env.state / "blocks/b/snapshots").iterdir()
    data = snap.read_bytes()
    if damage == "truncate":
        snap.write_bytes(data[: len(data) // 2])
    elif damage == "digest":
        head, rest = data.split(b"\n", 1)
        assert rest.count(b'"}\n') == 5
        snap.write_bytes(head + b"\n" + rest.replace(b'"}\n', b'}\n', 1))
    else:
        head, rest = data.split(b"\n", 1)
        snap.write_bytes(head.replace(b'"version":2', b'"version":99') + b"\n" + rest)
    (src / "new").write_bytes(b"new")
    before = sorted(os.listdir(dst))
    p = env.run("backup", "b", check=8)
    assert len(p.stderr.strip().splitlines()) == 1 and str(snap) in p.stderr
    assert sorted(os.listdir(dst)) == before


def _as_version_1(data: bytes) -> bytes:
    """A snapshot as btsoot wrote it before owners, ctime, links and xattrs."""
    head, *lines = data.splitlines()
    h = orjson.loads(head)
    h["version"] = 1
    h.pop("root", None)
    out = [orjson.dumps(h)]
    for line in lines:
        d = orjson.loads(line)
        for k in ("ctime", "uid", "gid", "nlink", "xattrs"):
            d.pop(k, None)
        d.pop("names", None)
        out.append(orjson.dumps(d))
    return b"\n".join(out) + b"\n"


def test_a_version_1_snapshot_is_read_and_carried_on(block: tuple[Env, Path, Path],
                                                     tmp_path: Path) -> None:
    """Snapshots written before version 2 read with owners "not recorded"; the
    next backup starts from them without sending or changing anything, records
    the new fields, and a restore is exact."""
    env, src, dst = block
    (src / "d").mkdir()
    for i in range(4):
        (src / "d" / f"f{i}").write_bytes(b"%d" % i * 100)
    os.chown(src / "d" / "f1", 1234, 2345)
    env.run("backup", "b", check=0)
    (snap,) = (env.state / "blocks/b/snapshots").iterdir()
    old = _as_version_1(snap.read_bytes())
    assert b'"uid"' not in old and b'"version":1' in old
    snap.write_bytes(old)
    with SnapshotReader(str(snap)) as r:
        entries = list(r)
    assert r.header.id and len(entries) == 5
    assert all(e.uid is None and e.gid is None and e.xattrs == () for e in entries)

    p = env.run("backup", "b", "--json", check=0)
    out = json.loads(p.stdout)
    assert out["bytes_sent"] == 0 and not out["operations"], out
    new = max((env.state / "blocks/b/snapshots").iterdir())
    with SnapshotReader(str(new)) as r:
        by_path = {e.path: e for e in r}
    assert by_path[b"d/f1"].uid == 1234
    assert by_path[b"d/f1"].gid == 2345 and by_path[b"d/f0"].ctime_ns > 0
    env.run("restore", "b", "--to", tmp_path / "back", check=0)
    assert os.stat(tmp_path / "back" / "d" / "f1").st_uid == 1234
    assert (tmp_path / "back" / "d" / "f3").read_bytes() == b"3" * 100


def test_a_status_change_recheck_that_finds_nothing_writes_nothing(
        block: tuple[Env, Path, Path]) -> None:
    """Entries whose ctime is too close to the last scan have their xattrs and owner
    looked at again (not their content); when nothing changed, the run writes no
    snapshot: the entries it decodes and builds again are equal, xattrs included."""
    env, src, dst = block
    hour_ago = time.time_ns() - 3600 * 10**9
    for i in range(20):
        (src / f"f{i}").write_bytes(b"%d" % i)
        os.utime(src / f"f{i}", ns=(hour_ago, hour_ago))  # (the ctime is now)
    os.setxattr(src / "f3", "user.k", b"v")
    env.run("backup", "b", check=0)
    snaps = sorted((env.state / "blocks/b/snapshots").iterdir())
    s = json.loads(env.run("backup", "b", "--json", check=0).stdout)
    assert s["hashed_files"] == 0 and s["result"] == "nothing", s
    assert sorted((env.state / "blocks/b/snapshots").iterdir()) == snaps


def test_reading_only_the_entries_of_wanted_digests(tmp_path) -> None:
    """backup._Read.with_digests decodes only lines naming a wanted digest: the
    same entries, in the same order, as a full read filtered; a name that spells
    the key itself is no match."""
    from btsoot.backup import _Read
    from btsoot.snapshot import Entry, Header, SnapshotWriter

    path = str(tmp_path / "s.jsonl")
    w = SnapshotWriter(path, Header(block="b", source="/s", id="x", created_ns=1, scan_started_ns=1))
    names = [b'a', b'b"digest":"' + b"0" * 32, b'c', b'd\xff', b'e']
    for i, n in enumerate(names):
        w.write(Entry(n, "file", i, 1, 0o100644, digest=f"{i % 3:032x}" if i != 2 else None))
    w.commit()
    want = {f"{0:032x}"}  # the second name spells it, its digest is another
    got = [e.path for e in _Read(path).with_digests(want)]
    full = [e.path for e in _Read(path)() if e.digest in want]
    assert got == full == [b'a', b'd\xff']
    assert [e.path for e in _Read(path).with_digests({f"{1:032x}"})] == [names[1], b'e']
