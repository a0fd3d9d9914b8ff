"""The local state's older snapshots, kept as back-deltas of the next newer one.

A block keeps many snapshots (every run commits one; retention keeps dozens),
and each plain one costs about 180 bytes per entry: 30 of them at 10 million
files would be 55 GB, usually on a NAS's small system partition. Only the head
is read by every run (the scan compares the tree with it), so only the head
stays plain:

    snapshots/HEAD.jsonl              the newest, plain
    snapshots/ID.back.jsonl.gz        an older one: what differs from the next newer

A back-delta's header is its snapshot's own, with kind "delta" and base naming
the next newer snapshot; its lines, in snapshot order, are that snapshot's
entry lines where they differ from the base (verbatim, so a snapshot read back
is the very bytes the scan wrote) and `{"del": PATH}` for paths the base has
and it has not; its trailer carries its own owner names. A day's back-delta is
the day's changes; a run that changed nothing leaves an empty one.

Reading an older snapshot streams: the head's lines merged with the deltas on
the way back to it, all of them read at once in one sorted merge (the one
nearest the wanted snapshot wins a path), so memory stays flat however far back
it goes. Removing a snapshot others lean on folds its delta into the next older
one first (`remove`); a kill anywhere leaves every kept snapshot readable, and
`compact` (after every commit) turns any plain snapshot that is not the newest
into a back-delta, so a run killed half-way is finished by the next.
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Callable, Iterator
from dataclasses import replace

import orjson

from .durable import fsync_dir
from .errors import StateError
from .paths import sort_key
from .snapshot import (
    Entry,
    Header,
    Names,
    SnapshotReader,
    SnapshotWriter,
    entry_from_dict,
    get_bytes,
    owner_names,
    put_bytes,
)

PLAIN = ".jsonl"
BACK = ".back.jsonl.gz"

# (sort key, path, the entry line, or None where the snapshot lacks the path)
Change = tuple[bytes, bytes, "bytes | None"]


def plain_path(folder: str, sid: str) -> str:
    return os.path.join(folder, sid + PLAIN)


def back_path(folder: str, sid: str) -> str:
    return os.path.join(folder, sid + BACK)


def ids(folder: str) -> dict[str, str]:
    """id -> file of every committed snapshot (a plain file where both exist: a
    kill between writing a back-delta and removing the plain file it replaces)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for n in names:
        if n.endswith(BACK):
            out.setdefault(n[: -len(BACK)], os.path.join(folder, n))
    for n in names:
        if n.endswith(PLAIN) and not n.endswith(BACK):
            out[n[: -len(PLAIN)]] = os.path.join(folder, n)
    return out


def _changes(r: SnapshotReader) -> Iterator[Change]:
    """A back-delta's lines as changes, in order (checked: damage is a StateError)."""
    prev: bytes | None = None
    for lineno, p, line in r._lines():
        out: bytes | None = line
        if p is None:
            if line.startswith(b'{"del"'):
                try:
                    p = get_bytes(orjson.loads(line), "del")
                except (orjson.JSONDecodeError, ValueError):
                    p = None
                if p is None:
                    raise StateError(f"{r.path}:{lineno}: bad back-delta line")
                out = None
            else:
                p = r._entry(line, lineno)[0]
        k = sort_key(p)
        if prev is not None and k <= prev:
            raise StateError(f"{r.path}: entries out of order at {p!r}")
        prev = k
        yield k, p, out


def _chain(folder: str, sid: str, files: dict[str, str]) -> tuple[list[str], Header]:
    """The files from sid's to the plain one it leans on (that one last), and
    sid's own header."""
    out: list[str] = []
    first: Header | None = None
    cur = sid
    while True:
        if cur not in files:
            raise StateError(f"{folder}: snapshot {sid!r} leans on {cur!r}, which is gone")
        path = files[cur]
        out.append(path)
        if len(out) > len(files):
            raise StateError(f"{folder}: snapshot {sid!r}: its chain of back-deltas loops")
        with SnapshotReader(path) as r:
            header = r.header
        first = first or header
        if not path.endswith(BACK):
            return out, first
        if not isinstance(header.base, str):
            raise StateError(f"{path}: back-delta without base")
        cur = header.base


def _merged(readers: list[SnapshotReader]) -> Iterator[Change]:
    """The changes of several back-deltas, readers[0] applied first: per path the
    last one's (the one nearest the wanted snapshot)."""
    def ranked(r: SnapshotReader, rank: int) -> Iterator[tuple[bytes, int, bytes, bytes | None]]:
        for k, p, line in _changes(r):
            yield k, rank, p, line

    streams = [ranked(r, -i) for i, r in enumerate(readers)]
    last: bytes | None = None
    for k, _, p, line in heapq.merge(*streams):
        if k == last:
            continue
        last = k
        yield k, p, line


class Resolved:
    """An older snapshot read through its chain: `header`, then iterate lines() or
    entries(); `names` once read through."""

    def __init__(self, folder: str, sid: str, files: dict[str, str] | None = None) -> None:
        self.files, header = _chain(folder, sid, files if files is not None else ids(folder))
        self.header = replace(header, kind="full", base=None)
        self.names: Names = ({}, {})

    def lines(self) -> Iterator[tuple[bytes, bytes]]:
        """(path, entry line) of the snapshot, in order."""
        with contextlib.ExitStack() as held:
            head = held.enter_context(SnapshotReader(self.files[-1]))
            backs = [held.enter_context(SnapshotReader(p)) for p in reversed(self.files[:-1])]
            changes = _merged(backs)
            ch = next(changes, None)
            for p, line in head.lines():
                k = sort_key(p)
                while ch is not None and ch[0] < k:
                    if ch[2] is not None:
                        yield ch[1], ch[2]
                    ch = next(changes, None)
                if ch is not None and ch[0] == k:
                    if ch[2] is not None:
                        yield ch[1], ch[2]
                    ch = next(changes, None)
                    continue
                yield p, line
            while ch is not None:
                if ch[2] is not None:
                    yield ch[1], ch[2]
                ch = next(changes, None)
            self.names = backs[-1].names if backs else head.names

    def entries(self) -> Iterator[Entry]:
        where = self.files[0]
        for _, line in self.lines():
            yield entry_from_dict(orjson.loads(line), where)

    def read_names(self) -> Names:
        """The owner names (read through to the trailer of the chain's file that holds them)."""
        for _ in self.lines():
            pass
        return self.names


def entries(folder: str, sid: str) -> Iterator[Entry]:
    """A committed snapshot's entries, plain or through its back-deltas."""
    yield from Resolved(folder, sid).entries()


def _del_line(path: bytes) -> bytes:
    d: dict[str, str] = {}
    put_bytes(d, "del", path)
    return orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE)


def _diff(old: Iterator[tuple[bytes, bytes]], new: Iterator[tuple[bytes, bytes]]) -> Iterator[Change]:
    """What turns new into old: old's lines where they differ, deletions of what
    only new has."""
    o, n = next(old, None), next(new, None)
    while o is not None or n is not None:
        if n is None or (o is not None and o[0] != n[0] and sort_key(o[0]) < sort_key(n[0])):
            assert o is not None
            yield sort_key(o[0]), o[0], o[1]
            o = next(old, None)
        elif o is None or o[0] != n[0]:
            yield sort_key(n[0]), n[0], None
            n = next(new, None)
        else:
            if o[1] != n[1]:
                yield sort_key(o[0]), o[0], o[1]
            o, n = next(old, None), next(new, None)


BLOCK = 1 << 20


def _same_body(a: str, b: str) -> Names | None:
    """When two plain snapshot files are the same bytes after their header lines
    (a run that changed nothing), the owner names of their trailer; else None.
    A compare of memory, not of lines: a no-change run pays almost nothing here."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ha, hb = fa.readline(), fb.readline()
        if ha[:2] == b"\x1f\x8b" or hb[:2] == b"\x1f\x8b":
            return None
        before = last_block = b""  # the two blocks read last: the trailer is in them
        while True:
            ca, cb = fa.read(BLOCK), fb.read(BLOCK)
            if ca != cb:
                return None
            if not ca:
                break
            before, last_block = last_block, ca
    last = (before + last_block).rstrip(b"\n").rpartition(b"\n")[2]
    try:
        obj = orjson.loads(last)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("end") is not True:
        return None  # (a trailer larger than the tail kept: the slow way)
    return owner_names(obj.get("names"))


def _write_back(out: str, header: Header, changes: Iterator[Change],
                names: Callable[[], Names]) -> None:
    """Write a back-delta: these changes, then the owner names (asked for once
    the changes, which read the file that holds them, are through)."""
    w = SnapshotWriter(out, header, compress=True)
    try:
        for _, p, line in changes:
            w.write_raw(p, line if line is not None else _del_line(p))
        w.names = names()
    except BaseException:
        w.abort()
        raise
    w.commit()


def make_back(folder: str, sid: str, base: str, files: dict[str, str]) -> None:
    """Turn plain snapshot sid into a back-delta of base (the next newer one)."""
    plain = files[sid]
    same = None if files[base].endswith(BACK) else _same_body(plain, files[base])
    with contextlib.ExitStack() as held:
        old = held.enter_context(SnapshotReader(plain))
        header = replace(old.header, kind="delta", base=base)
        if same is not None:  # nothing differs: an empty delta, the names as they were
            _write_back(back_path(folder, sid), header, iter(()), lambda: same)
        else:
            new_lines = (Resolved(folder, base, files).lines() if files[base].endswith(BACK)
                         else held.enter_context(SnapshotReader(files[base])).lines())
            _write_back(back_path(folder, sid), header, _diff(old.lines(), new_lines),
                        lambda: old.names)
    os.unlink(plain)
    files[sid] = back_path(folder, sid)


def compact(folder: str, head: str | None) -> int:
    """Turn every plain snapshot but the head and the newest into a back-delta of
    the next newer one, oldest first (each then diffs two plain files). Returns
    how many were turned."""
    files = ids(folder)
    order = sorted(files)
    done = unlinked = 0
    for i, sid in enumerate(order[:-1]):
        if sid == head or files[sid].endswith(BACK):
            continue
        unlinked += 1
        back = back_path(folder, sid)
        if os.path.exists(back):  # written, then killed before the plain one went
            os.unlink(files[sid])
            files[sid] = back
            continue
        make_back(folder, sid, order[i + 1], files)
        done += 1
    if unlinked:
        # The plain files removed, durably: a power cut must not bring back a
        # name whose inode a later file took over.
        fsync_dir(folder)
    return done


def remove(folder: str, doomed: set[str]) -> None:
    """Remove these snapshots. One that an older kept snapshot leans on is folded
    into it first: that one's changes over the doomed one's, against the doomed
    one's base (written whole before the doomed file goes)."""
    files = ids(folder)
    bases = _bases(folder)
    # Oldest first: what leans on a doomed snapshot is older, so kept by now.
    for sid in sorted(doomed):
        if sid not in files:
            continue
        for dep in [d for d, b in bases.items() if b == sid]:
            if files.get(dep) == plain_path(folder, dep):
                # Kept plain too (the head, or a kill before compact removed it):
                # the plain file is whole; compact writes its delta again.
                os.unlink(back_path(folder, dep))
                del bases[dep]
            elif (now := _fold(folder, dep, sid, files)) is not None:
                bases[dep] = now
            else:
                del bases[dep]  # plain now
        os.unlink(files.pop(sid))
        if sid in bases:  # its back-delta too, where a plain file stood beside it
            del bases[sid]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(back_path(folder, sid))
    if doomed:
        fsync_dir(folder)


def _bases(folder: str) -> dict[str, str | None]:
    """Every back-delta's base, by snapshot id (whether or not a plain file
    stands beside it); one that cannot be read leans on nothing known."""
    out: dict[str, str | None] = {}
    for n in os.listdir(folder):
        if n.endswith(BACK):
            try:
                with SnapshotReader(os.path.join(folder, n)) as r:
                    out[n[: -len(BACK)]] = r.header.base
            except StateError:
                out[n[: -len(BACK)]] = None
    return out


def write_plain(folder: str, sid: str, files: dict[str, str] | None = None) -> str:
    """Write snapshot sid out as a plain file (its back-delta stays until compact
    finds it is no longer the head)."""
    r = Resolved(folder, sid, files)
    w = SnapshotWriter(plain_path(folder, sid), r.header)
    try:
        for p, line in r.lines():
            w.write_raw(p, line)
        w.names = r.names
    except BaseException:
        w.abort()
        raise
    w.commit()
    return plain_path(folder, sid)


def _fold(folder: str, dep: str, mid: str, files: dict[str, str]) -> str | None:
    """dep leans on mid: make it lean on what mid leans on (or, where mid is
    plain, make dep plain). Returns what dep leans on now (None: nothing)."""
    mid_path, dep_path = files[mid], files[dep]
    with contextlib.ExitStack() as held:
        d = held.enter_context(SnapshotReader(dep_path))
        base: str | None = None
        if not mid_path.endswith(BACK):
            # mid is plain (it may be the newest): dep becomes plain itself.
            path = write_plain(folder, dep, files)
        else:
            m = held.enter_context(SnapshotReader(mid_path))
            base = m.header.base
            assert isinstance(base, str)
            # Written over dep's own file (a temp name, renamed): a kill leaves
            # the old delta or the new one, each whole.
            _write_back(dep_path, replace(d.header, base=base), _merged([m, d]), lambda: d.names)
            path = dep_path
    if path != dep_path:
        os.unlink(dep_path)
    files[dep] = path
    return base
