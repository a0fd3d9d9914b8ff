"""Scan a block's source into a new snapshot, with tiered change detection.

The walk (compiled core) and the previous snapshot are both in snapshot
order, so they are merged as two sorted streams. A file whose size, mtime and
inode match its previous entry keeps the previous digest unread, unless that
entry was "racy": modified so close to the previous scan's start that a later
write within the same timestamp tick could have gone unseen. Everything else
is hashed on a thread pool, results kept in order through a bounded window.

A file or folder that cannot be read is never treated as deleted: its previous
entries are carried forward unchanged, and the error is reported.
"""

from __future__ import annotations

import errno
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pathspec

from . import __version__, scanner
from .snapshot import DIR, FILE, SYMLINK, Entry, Header, SnapshotReader, SnapshotWriter, sort_key

# A file modified less than this before the previous scan started is re-read:
# covers coarse timestamps (FAT: 2 s) and writes racing the scan itself.
RACY_NS = 2_000_000_000
HASH_RETRIES = 3
_WINDOW = 2048


@dataclass(slots=True)
class ScanStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    errors: list[tuple[bytes, str]] = field(default_factory=list)
    skipped: list[bytes] = field(default_factory=list)  # fifos, sockets, devices


@dataclass(slots=True, frozen=True)
class ScanResult:
    path: str  # the uncommitted snapshot file
    header: Header
    stats: ScanStats


def make_exclude(patterns: list[str]) -> Callable[[bytes, bool], bool] | None:
    if not patterns:
        return None
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)

    def exclude(rel: bytes, is_dir: bool) -> bool:
        p = rel.decode("utf-8", "surrogateescape")
        return spec.match_file(p + "/" if is_dir else p)

    return exclude


def _entry(w: tuple, digest: str | None = None, chunks: list[str] | None = None) -> Entry:
    path, kind, size, mtime, mode, ino, dev, extra = w
    if kind == scanner.FILE:
        return Entry(path, FILE, size, mtime, mode, ino, dev, digest, tuple(chunks) if chunks else None)
    if kind == scanner.DIR:
        return Entry(path, DIR, 0, mtime, mode, ino, dev)
    return Entry(path, SYMLINK, size, mtime, mode, ino, dev, target=extra)


def _previous(prev: SnapshotReader | None) -> Iterator[Entry]:
    if prev is not None:
        yield from prev


def scan(
    *,
    block: str,
    source: str,
    out_path: str,
    previous: SnapshotReader | None,
    exclude: list[str],
    one_file_system: bool = True,
    checksum: bool = False,
    threads: int | None = None,
    trust_inode: bool = True,
    on_progress: Callable[[ScanStats], None] | None = None,
) -> ScanResult:
    started = time.time_ns()
    root = os.fsencode(source)
    st = os.stat(root)
    header = Header(
        block=block,
        source=source,
        id="",  # set at commit
        created_ns=started,
        scan_started_ns=started,
        source_dev=st.st_dev,
        chunk_size=scanner.CHUNK_SIZE,
        chunk_threshold=scanner.CHUNK_THRESHOLD,
        tool=f"btsoot {__version__}",
    )
    racy_before = (previous.header.scan_started_ns - RACY_NS) if previous else 0
    stats = ScanStats()
    writer = SnapshotWriter(out_path, header)
    prev_iter = _previous(previous)
    prev: Entry | None = next(prev_iter, None)
    pending: deque[tuple[Entry | None, tuple | None, Future | None, Entry | None]] = deque()
    threads = threads or scanner.default_threads()

    def hash_one(full: bytes) -> tuple:
        for _ in range(HASH_RETRIES):
            r = scanner.hash_file(full, scanner.CHUNK_SIZE, scanner.CHUNK_THRESHOLD)
            if r[5] != scanner.CHANGED:
                return r
        return r

    def emit(item: tuple) -> None:
        entry, w, fut, old = item
        if fut is not None:
            digest, chunks, size, mtime, ino, err = fut.result()
            if err == 0:
                assert w is not None
                entry = Entry(w[0], FILE, size, mtime, w[4], ino, w[6], digest,
                              tuple(chunks) if chunks else None)
                stats.hashed_files += 1
                stats.hashed_bytes += size
            elif err in (errno.ENOENT, errno.ENOTDIR):
                return  # vanished since the walk: deleted, not an error
            else:
                assert w is not None
                why = "changed while being read" if err == scanner.CHANGED else os.strerror(err)
                stats.errors.append((w[0], why))
                entry = old if old is not None and old.kind == FILE else None
                if entry is None:
                    return
        assert entry is not None
        if entry.kind == FILE:
            stats.files += 1
            stats.bytes += entry.size
        elif entry.kind == DIR:
            stats.dirs += 1
        else:
            stats.symlinks += 1
        writer.write(entry)

    def drain(force: bool) -> None:
        while pending:
            head = pending[0]
            if head[2] is not None and not head[2].done() and not force and len(pending) < _WINDOW:
                return
            emit(pending.popleft())
        if on_progress is not None:
            on_progress(stats)

    # Subtrees that could not be listed: previous entries below them carry forward.
    error_prefix: bytes | None = None

    def carry(old: Entry) -> None:
        pending.append((old, None, None, None))

    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="btsoot-scan") as pool:
            for w in scanner.walk(root, one_file_system, make_exclude(exclude)):
                path, kind = w[0], w[1]
                key = sort_key(path)
                # Previous entries that sort before this one are gone from the source,
                # unless they lie under a folder we could not read.
                while prev is not None and sort_key(prev.path) < key:
                    if error_prefix is not None and prev.path.startswith(error_prefix):
                        carry(prev)
                    prev = next(prev_iter, None)
                old = prev if prev is not None and prev.path == path else None
                if kind == scanner.ERROR:
                    if w[7] in (errno.ENOENT, errno.ENOTDIR):
                        continue
                    stats.errors.append((path, os.strerror(w[7])))
                    if old is not None:
                        carry(old)
                        prev = next(prev_iter, None)
                    if old is None or old.kind == DIR:
                        error_prefix = path + b"/" if path else b""
                    continue
                if old is not None:
                    prev = next(prev_iter, None)
                if kind == scanner.SPECIAL:
                    stats.skipped.append(path)
                    continue
                if kind != scanner.FILE:
                    pending.append((_entry(w), None, None, None))
                elif (
                    not checksum
                    and old is not None
                    and old.kind == FILE
                    and old.digest is not None
                    and old.size == w[2]
                    and old.mtime_ns == w[3]
                    and (not trust_inode or old.ino == w[5])
                    and old.mtime_ns < racy_before
                ):
                    pending.append((_entry(w, old.digest, list(old.chunks or ())), None, None, None))
                else:
                    fut = pool.submit(hash_one, root + b"/" + path)
                    pending.append((None, w, fut, old))
                drain(False)
            while prev is not None:
                if error_prefix is not None and prev.path.startswith(error_prefix):
                    carry(prev)
                prev = next(prev_iter, None)
            drain(True)
    except BaseException:
        writer.abort()
        raise
    writer.commit(sync=False)
    return ScanResult(out_path, header, stats)
