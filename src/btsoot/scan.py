"""Scan a block's source into a new snapshot, with tiered change detection.

The walk (compiled core) and the previous snapshot are both in snapshot
order, so they are merged as two sorted streams. A file whose size, mtime and
inode match its previous entry keeps the previous digest unread, unless that
entry was "racy": modified so close to the previous scan's start that a later
write within the same timestamp tick could have gone unseen. Everything else
is hashed on a thread pool, results kept in order through a bounded window.

An entry identical to its previous one is written back as the very line read
(no re-encoding), and the differences found on the way are collected as the
`Diff` the planner starts from — so a run where little changed costs one walk,
one read and one write of the snapshot.

A file or folder that cannot be read is never treated as deleted: its previous
entries are carried forward unchanged, and the error is reported.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import __version__, events, mounts, scanner
from .diff import Diff
from .errors import ConfigError
from .longpath import ShortPaths
from .snapshot import (
    DIR,
    FILE,
    SYMLINK,
    Entry,
    Header,
    SnapshotReader,
    SnapshotWriter,
    entry_from_dict,
    sort_key,
)

# A file modified less than this before the previous scan started is re-read:
# covers coarse timestamps (FAT: 2 s) and writes racing the scan itself.
RACY_NS = 2_000_000_000
HASH_RETRIES = 3
_WINDOW = 2048
_KIND = {scanner.FILE: FILE, scanner.DIR: DIR, scanner.SYMLINK: SYMLINK}


RelPath = bytes  # (a field of ScanStats is named bytes)


@dataclass(slots=True)
class ScanStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    errors: list[tuple[RelPath, str]] = field(default_factory=list)
    skipped: list[RelPath] = field(default_factory=list)  # fifos, sockets, devices
    # Folders gone while the walk ran (deleted, or moved by someone during the walk,
    # perhaps into the part already walked): kept as last backed up for this run,
    # decided by the next (a moved folder then becomes a move, not a deletion now
    # and a full copy tomorrow).
    vanished: int = 0


@dataclass(slots=True)
class ScanResult:
    path: str  # the snapshot file written (not yet committed)
    header: Header
    stats: ScanStats
    diff: Diff  # against the previous snapshot
    rewritten: bool  # some entry differs from the previous snapshot in any field


def make_exclude(patterns: list[str]) -> Callable[[bytes, bool], bool] | None:
    if not patterns:
        return None
    import pathspec  # only blocks with excludes pay for its import

    try:
        spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    except ValueError as e:  # pathspec's pattern errors are ValueErrors
        raise ConfigError(f"exclude: {e}") from None

    def exclude(rel: bytes, is_dir: bool) -> bool:
        p = rel.decode("utf-8", "surrogateescape")
        return bool(spec.match_file(p + "/" if is_dir else p))

    return exclude


class _Item:
    """One output position in the ordered pipeline."""

    __slots__ = ("path", "entry", "walk", "fut", "idx", "old", "raw")

    def __init__(self, path: bytes, entry: Entry | None = None, walk: tuple | None = None,
                 fut: Future | None = None, old: dict[str, Any] | None = None,
                 raw: bytes | None = None) -> None:
        self.path = path
        self.entry = entry
        self.walk = walk
        self.fut = fut  # the hash batch this file is in (_UNSENT until submitted)
        self.idx = 0  # its place in that batch
        self.old = old
        self.raw = raw


_UNSENT: Future = Future()


def _same_stat(d: dict[str, Any], w: tuple) -> bool:
    """Does the walk tuple match the previous entry in every recorded field?"""
    kind = w[1]
    if d.get("type") != _KIND.get(kind):
        return False
    if d.get("mtime") != w[3] or d.get("mode") != w[4] or d.get("ino") != w[5] or d.get("dev") != w[6]:
        return False
    if kind == scanner.FILE:
        return bool(d.get("size") == w[2] and "digest" in d)
    if kind == scanner.SYMLINK:
        t = d.get("target")
        return t is not None and t.encode("utf-8") == w[7]
    return True


@events.in_phase("scan")
def scan(
    *,
    block: str,
    source: str,
    out_path: str,
    snap_id: str,
    previous: SnapshotReader | None,
    exclude: list[str],
    one_file_system: bool = True,
    checksum: bool = False,
    threads: int | None = None,
    trust_inode: bool = True,
    hash_new: bool = True,
    on_progress: Callable[[ScanStats], None] | None = None,
) -> ScanResult:
    started = time.time_ns()
    root = os.fsencode(source)
    st = os.stat(root)
    header = Header(
        block=block,
        source=source,
        id=snap_id,
        created_ns=started,
        scan_started_ns=started,
        source_dev=st.st_dev,
        source_fs=mounts.identity(source),
        chunk_size=scanner.CHUNK_SIZE,
        chunk_threshold=scanner.CHUNK_THRESHOLD,
        tool=f"btsoot {__version__}",
    )
    racy_before = (previous.header.scan_started_ns - RACY_NS) if previous else 0
    stats = ScanStats()
    diff = Diff(dirs={})
    rewritten = False
    prev_iter = previous.lines() if previous is not None else iter(())
    # (path, line); read before the writer exists: a damaged first line
    # must not leave an open temp file behind.
    prev = next(prev_iter, None)
    writer = SnapshotWriter(out_path, header)
    pending: deque[_Item] = deque()
    threads = threads or scanner.default_threads()

    short = ShortPaths()
    last_progress = 0
    batch: list[_Item] = []
    batch_bytes = 0

    def send() -> None:
        nonlocal batch, batch_bytes
        if batch:
            fut = pool.submit(scanner.hash_batch, [short(root + b"/" + it.path) for it in batch],
                              scanner.CHUNK_SIZE, scanner.CHUNK_THRESHOLD, HASH_RETRIES)
            for i, it in enumerate(batch):
                it.fut, it.idx = fut, i
            batch, batch_bytes = [], 0

    def count(kind: str, size: int) -> None:
        if kind == FILE:
            stats.files += 1
            stats.bytes += size
            diff.new_files += 1
        elif kind == DIR:
            stats.dirs += 1
        else:
            stats.symlinks += 1

    def emit(it: _Item) -> None:
        nonlocal rewritten
        if it.raw is not None:  # identical to the previous entry, or carried forward
            writer.write_raw(it.path, it.raw)
            if it.old is None:  # a file or folder whose line matched its walk tuple
                w = it.walk
                assert w is not None
                if w[1] == scanner.FILE:
                    count(FILE, w[2])
                    diff.unchanged_files += 1
                else:
                    count(DIR, 0)
                    diff.dirs[it.path] = _entry(w)  # type: ignore[index]
                return
            kind = it.old["type"]
            count(kind, it.old.get("size", 0))
            if kind == FILE:
                diff.unchanged_files += 1
            elif kind == DIR:
                diff.dirs[it.path] = entry_from_dict(it.old, out_path)  # type: ignore[index]
            return
        entry = it.entry
        if it.fut is not None:
            w = it.walk
            assert w is not None
            digest, chunks, size, mtime, ino, err = it.fut.result()[it.idx]
            if err == 0:
                entry = Entry(w[0], FILE, size, mtime, w[4], ino, w[6], digest,
                              tuple(chunks) if chunks else None)
                stats.hashed_files += 1
                stats.hashed_bytes += size
            elif err in (errno.ENOENT, errno.ENOTDIR):
                entry = None  # vanished since the walk: deleted, not an error
            else:
                why = "changed while being read" if err == scanner.CHANGED else os.strerror(err)
                stats.errors.append((w[0], why))
                if it.old is not None and it.old.get("type") == FILE:
                    it.raw = it.old["\0line"]
                    emit(it)
                    return
                entry = None
        old = entry_from_dict(it.old, out_path) if it.old is not None else None
        if entry is None:
            if old is not None:
                diff.removed[old.path] = old
                rewritten = True
            return
        writer.write(entry)
        count(entry.kind, entry.size)
        if entry.kind == DIR:
            diff.dirs[entry.path] = entry  # type: ignore[index]
        if old != entry:
            rewritten = True
        diff.pair(old, entry)

    def drain(force: bool) -> None:
        nonlocal last_progress
        while pending:
            head = pending[0]
            if head.fut is _UNSENT:
                if not force and len(pending) < _WINDOW:
                    break
                send()
            if head.fut is not None and not head.fut.done() and not force and len(pending) < _WINDOW:
                break
            emit(pending.popleft())
        if on_progress is not None and stats.files - last_progress >= 1000:
            last_progress = stats.files
            on_progress(stats)

    def take_prev() -> dict[str, Any]:
        """Consume the current previous entry; keep its line for verbatim reuse."""
        nonlocal prev
        assert prev is not None and previous is not None
        obj = previous.decode(prev[1])
        obj["\0line"] = prev[1]
        if obj.get("type") == FILE:
            diff.old_files += 1
        prev = next(prev_iter, None)
        return obj

    # Subtree that could not be listed: previous entries below it carry forward.
    error_prefix: bytes | None = None
    # Folders whose content changed after the walk began (see gone()): asked of the
    # folder itself when something is missing from it. Its mtime must fall between
    # the scan's start and now: a folder stamped in the future (a clock stepped
    # back, a file server's clock ahead of ours) proves nothing, and must not keep
    # deletions waiting. No margin below the start: a deletion made just before
    # the run must not wait a run (where the file system keeps whole seconds, a
    # change in the scan's first second is therefore missed).
    busy: dict[bytes, bool] = {}

    def changed_since_start(folder: bytes) -> bool:
        known = busy.get(folder)
        if known is None:
            try:
                m = os.lstat(short(root + b"/" + folder) if folder else root).st_mtime_ns
                known = started <= m <= time.time_ns()
            except OSError:
                known = False  # gone itself: decided where its own entry is
            busy[folder] = known
        return known

    def gone(obj: dict[str, Any], path: bytes) -> None:
        nonlocal rewritten, error_prefix
        if error_prefix is not None and (path.startswith(error_prefix) or error_prefix == b""):
            pending.append(_Item(path, old=obj, raw=obj["\0line"]))  # unreadable: carry forward
        elif obj.get("type") == DIR and changed_since_start(path.rpartition(b"/")[0]):
            # A folder missing from a folder that changed while the walk ran:
            # perhaps moved into the part already walked. Kept as last backed up,
            # with all below it, for this run. (Folders only: a file costs little
            # to send again, and a folder written to all the time, a mailbox,
            # must not keep its deleted files on the remote run after run.)
            stats.vanished += 1
            pending.append(_Item(path, old=obj, raw=obj["\0line"]))
            error_prefix = path + b"/"
        else:
            e = entry_from_dict(obj, out_path)
            diff.removed[path] = e
            rewritten = True

    moved = (_InodeIndex(previous.path) if previous is not None and trust_inode and not checksum
             else None)
    # Files modified since then are re-read; --checksum re-reads every file.
    file_bound = -(1 << 63) if checksum else racy_before
    line_same = scanner.line_same
    write_raw = writer.write_raw
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="btsoot-scan") as pool:
            for w in _unlistable_as_errors(scanner.walk(root, one_file_system,
                                                        make_exclude(exclude))):
                path, kind = w[0], w[1]
                if prev is not None and prev[0] != path:
                    key = sort_key(path)
                    while prev is not None and sort_key(prev[0]) < key:
                        p = prev[0]
                        gone(take_prev(), p)
                if prev is not None and prev[0] == path and line_same(prev[1], w, file_bound):
                    # The common case, kept cheap: the line records exactly what
                    # the walk found (a file or folder); it is written back as is.
                    line = prev[1]
                    prev = next(prev_iter, None)
                    if kind == scanner.FILE:
                        diff.old_files += 1
                    if pending:
                        pending.append(_Item(path, walk=w, raw=line))
                        drain(False)
                    elif kind == scanner.FILE:
                        write_raw(path, line)
                        stats.files += 1
                        stats.bytes += w[2]
                        diff.new_files += 1
                        diff.unchanged_files += 1
                    else:
                        write_raw(path, line)
                        stats.dirs += 1
                        diff.dirs[path] = _entry(w)  # type: ignore[index]
                    continue
                old = take_prev() if prev is not None and prev[0] == path else None
                if kind == scanner.ERROR:
                    if w[7] in (errno.ENOENT, errno.ENOTDIR):
                        # Listed, then gone before it was read. A folder is kept as
                        # last backed up, with all below it, for this run (moved,
                        # perhaps, into the part already walked); the next decides.
                        # A file is deleted. Neither is an error.
                        if old is not None and old.get("type") == DIR:
                            stats.vanished += 1
                            pending.append(_Item(path, old=old, raw=old["\0line"]))
                            error_prefix = path + b"/"
                        elif old is not None:
                            gone(old, path)
                        continue
                    stats.errors.append((path, os.strerror(w[7])))
                    if old is not None:
                        pending.append(_Item(path, old=old, raw=old["\0line"]))
                    if old is None or old.get("type") == DIR:
                        error_prefix = path + b"/" if path else b""
                    continue
                if kind == scanner.SPECIAL:
                    stats.skipped.append(path)
                    if old is not None:
                        gone(old, path)
                    continue
                if old is not None and _same_stat(old, w) and (
                    kind != scanner.FILE
                    or (not checksum and old["mtime"] < racy_before)
                ):
                    if pending:
                        pending.append(_Item(path, old=old, raw=old["\0line"]))
                    else:  # the common case, kept cheap: nothing to wait for
                        writer.write_raw(path, old["\0line"])
                        if kind == scanner.FILE:
                            stats.files += 1
                            stats.bytes += w[2]
                            diff.new_files += 1
                            diff.unchanged_files += 1
                        elif kind == scanner.DIR:
                            stats.dirs += 1
                            diff.dirs[path] = entry_from_dict(old, out_path)  # type: ignore[index]
                        else:
                            stats.symlinks += 1
                    continue
                elif kind != scanner.FILE:
                    pending.append(_Item(path, entry=_entry(w), old=old))
                elif (
                    not checksum
                    and old is not None
                    and old.get("type") == FILE
                    and "digest" in old
                    and old.get("size") == w[2]
                    and old["mtime"] == w[3]
                    and (not trust_inode or old.get("ino") == w[5])
                    and old["mtime"] < racy_before
                ):
                    chunks = old.get("chunks")
                    pending.append(_Item(path, entry=Entry(
                        path, FILE, w[2], w[3], w[4], w[5], w[6], old["digest"],
                        tuple(chunks) if chunks else None), old=old))
                elif hash_new is False and old is None:
                    # Nothing on the remote can hold this content: the copy that
                    # sends it hashes it on the way (one read instead of two).
                    pending.append(_Item(path, entry=Entry(
                        path, FILE, w[2], w[3], w[4], w[5], w[6]), old=None))
                elif (old is None and moved is not None and w[2] >= MOVED_MIN_SIZE
                      and (known := moved.find(w, racy_before)) is not None):
                    # A file at a new path, but the very inode, size and mtime of
                    # one the last scan saw elsewhere (its folder was renamed, or
                    # it is a hard link): the same trust as at its old path.
                    pending.append(_Item(path, entry=Entry(
                        path, FILE, w[2], w[3], w[4], w[5], w[6], known[0], known[1]), old=None))
                else:
                    it = _Item(path, walk=w, fut=_UNSENT, old=old)
                    pending.append(it)
                    batch.append(it)
                    batch_bytes += w[2]
                    if len(batch) >= scanner.BATCH_FILES or batch_bytes >= scanner.BATCH_BYTES:
                        send()
                drain(False)
            while prev is not None:
                p = prev[0]
                gone(take_prev(), p)
            send()
            drain(True)
    except BaseException:
        writer.abort()
        raise
    finally:
        short.close()
        if moved is not None:
            moved.close()
    writer.commit(sync=False)
    return ScanResult(out_path, header, stats, diff, rewritten)


# Files below this size are cheaper to read again than to look up.
MOVED_MIN_SIZE = 16 << 10


class _InodeIndex:
    """The previous snapshot's files by (inode, device, size, mtime), built on the
    first lookup by reading that snapshot again: a day run meets new paths (a
    renamed folder holds thousands) and would otherwise hash every file in them.

    Only byte offsets are kept (files of MOVED_MIN_SIZE or more, canonical lines),
    so memory stays small; a hit reads and decodes its one line.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.index: dict[tuple[int, int, int, int], int] | None = None
        self.f: Any = None

    def _build(self) -> dict[tuple[int, int, int, int], int]:
        index: dict[tuple[int, int, int, int], int] = {}
        f = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        if f.read(2) == b"\x1f\x8b":  # compressed: no cheap seeks; do without
            f.close()
            return index
        f.seek(0)
        self.f = f
        off = len(f.readline())
        match = _FILE_FIELDS.match
        for line in f:
            m = match(line)
            if m is not None and int(m[1]) >= MOVED_MIN_SIZE:
                index[(int(m[4]), int(m[5]), int(m[1]), int(m[2]))] = off
            off += len(line)
        return index

    def find(self, w: tuple, racy_before: int) -> tuple[str, tuple[str, ...] | None] | None:
        """(digest, chunks) of a previous file with w's inode, device, size and mtime."""
        if self.index is None:
            self.index = self._build()
        off = self.index.get((w[5], w[6], w[2], w[3]))
        if off is None or w[3] >= racy_before:
            return None
        self.f.seek(off)
        try:
            d = orjson.loads(self.f.readline())
        except orjson.JSONDecodeError:
            return None
        digest, chunks = d.get("digest"), d.get("chunks")
        if type(digest) is not str or not (chunks is None or (
                type(chunks) is list and all(type(c) is str for c in chunks))):
            return None
        return digest, tuple(chunks) if chunks else None

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


# The fixed fields of a file's canonical line: size, mtime, mode, ino, dev.
_FILE_FIELDS = re.compile(
    rb'{"path":"[^"\\]*","type":"file","size":(\d+),"mtime":(-?\d+),"mode":(\d+),'
    rb'"ino":(\d+),"dev":(\d+),"digest":"')


def _unlistable_as_errors(walk: Iterator[tuple]) -> Iterator[tuple]:
    """The walk yields a folder it cannot list as DIR, then ERROR: keep only the ERROR.

    Then the folder's last backed-up entry is carried forward like its content,
    rather than its new attributes (a chmod 000 must not reach the remote copy,
    where it would also lock out the next run).
    """
    held: tuple | None = None
    for w in walk:
        if held is not None:
            if w[1] != scanner.ERROR or w[0] != held[0]:
                yield held
            held = None
        if w[1] == scanner.DIR:
            held = w
        else:
            yield w
    if held is not None:
        yield held


def _entry(w: tuple) -> Entry:
    path, kind, size, mtime, mode, ino, dev, extra = w
    if kind == scanner.DIR:
        return Entry(path, DIR, 0, mtime, mode, ino, dev)
    return Entry(path, SYMLINK, size, mtime, mode, ino, dev, target=extra)
