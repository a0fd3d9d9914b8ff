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
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from . import __version__, events, meta, mounts, scanner
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
    # Of the errors, the paths no earlier snapshot has: never backed up at all.
    never: set[RelPath] = field(default_factory=set)
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


# --- the tier decision --------------------------------------------------------
#
# What a walked entry needs, from the cheapest answer to the dearest. SAME_LINE
# is decided on the raw line (scanner.line_same, before anything is decoded);
# the rest by classify() on the decoded previous entry.

SAME_LINE = "same line"  # the previous line says exactly what the walk found: written back as is
SAME_STAT = "same stat"  # a decoded entry equal in every recorded field: its line is written back
KEEP_DIGEST = "same size, mtime, inode"  # attributes changed, content did not: the digest is kept
SAME_INODE_ELSEWHERE = "same inode elsewhere"  # a renamed folder's file: the digest found there
SEND_UNHASHED = "hashed while sent"  # new, nothing on the remote can hold it (hash_new=False)
HASH = "hash"
NOT_A_FILE = "not a file"  # a folder or link with new attributes: its entry is the walk's


@dataclass(slots=True, frozen=True)
class Policy:
    """What classify() trusts."""

    racy_before: int  # a file modified at or after this is re-read (see RACY_NS)
    checksum: bool = False  # re-read every file
    trust_inode: bool = True  # an inode change means new content
    hash_new: bool = True  # hash new files during the scan (else while they are sent)
    links: bool = True  # record hard-link counts
    moved_min: int = 16 << 10  # the least size find_moved is asked about (see _InodeIndex)
    # (inode, device, size, mtime) lookup of the previous scan's files: (digest, chunks)
    find_moved: Callable[[tuple], tuple[str, tuple[str, ...] | None] | None] | None = None


def classify(w: tuple, old: dict[str, Any] | None, policy: Policy
             ) -> tuple[str, tuple[str, tuple[str, ...] | None] | None]:
    """The tier of walk tuple w against its previous entry old (None: a new path),
    with the (digest, chunks) found for SAME_INODE_ELSEWHERE. Pure: no file
    system (find_moved answers from the previous snapshot)."""
    path, kind, size, mtime, mode, ino, dev, extra, uid, gid, ctime, nlink = w
    if old is not None and _same_stat(old, w, policy.links) and ctime < policy.racy_before and (
            kind != scanner.FILE or (not policy.checksum and old["mtime"] < policy.racy_before)):
        # (A status change just before the last scan may have hidden a later one
        # in the same tick: the xattrs are read again, the content is not.)
        return SAME_STAT, None
    if kind != scanner.FILE:
        return NOT_A_FILE, None
    if (not policy.checksum and old is not None and old.get("type") == FILE and "digest" in old
            and old.get("size") == size and old["mtime"] == mtime
            and (not policy.trust_inode or old.get("ino") == ino)
            and old["mtime"] < policy.racy_before):
        return KEEP_DIGEST, None
    if not policy.hash_new and old is None:
        # Nothing on the remote can hold this content: the copy that sends it
        # hashes it on the way (one read instead of two).
        return SEND_UNHASHED, None
    if old is None and policy.find_moved is not None and size >= policy.moved_min:
        known = policy.find_moved(w)
        if known is not None:
            # A file at a new path, but the very inode (or name), size and mtime of
            # one the last scan saw elsewhere (its folder was renamed, or it is a
            # hard link): the same trust as at its old path.
            return SAME_INODE_ELSEWHERE, known
    return HASH, None


def _same_stat(d: dict[str, Any], w: tuple, links: bool) -> bool:
    """Does the walk tuple match the previous entry in every recorded field?"""
    path, kind, size, mtime, mode, ino, dev, extra, uid, gid, ctime, nlink = w
    if d.get("type") != _KIND.get(kind):
        return False
    if d.get("mtime") != mtime or d.get("mode") != mode or d.get("ino") != ino or d.get("dev") != dev:
        return False
    if (d.get("ctime") != ctime or d.get("uid") != uid or d.get("gid") != gid
            or d.get("nlink", 1) != (nlink if links and kind == scanner.FILE else 1)):
        return False
    if kind == scanner.FILE:
        return bool(d.get("size") == size and "digest" in d)
    if kind == scanner.SYMLINK:
        t = d.get("target")
        return t is not None and t.encode("utf-8") == extra
    return True


# --- the merge of the walk with the previous snapshot -----------------------------

class _Old:
    """A previous entry, decoded, with the line it was read from (written back
    verbatim when it still holds)."""

    __slots__ = ("d", "line")

    def __init__(self, d: dict[str, Any], line: bytes) -> None:
        self.d = d
        self.line = line


class _Item:
    """One output position in the ordered pipeline."""

    __slots__ = ("path", "entry", "walk", "fut", "idx", "old", "raw", "same")

    def __init__(self, path: bytes, entry: Entry | None = None, walk: tuple | None = None,
                 fut: Future | None = None, old: _Old | None = None,
                 raw: bytes | None = None) -> None:
        self.path = path
        self.entry = entry
        self.walk = walk
        self.fut = fut  # the hash batch this file is in (_UNSENT until submitted)
        self.idx = 0  # its place in that batch
        self.old = old
        self.raw = raw  # a line to write back as is (the entry unchanged, or carried forward)
        self.same: _Item | None = None  # another name of the same file: its hash is this one's


_UNSENT: Future = Future()
_LINKED_MAX = 100_000  # hard-linked files remembered at once (see hash_later)


class _Merge:
    """The walk merged with the previous snapshot, in order, into the new one:
    the writer, the counts, the diff, and the window of entries waiting for
    their hashes (written in walk order as the hashes come back)."""

    def __init__(self, root: bytes, out_path: str, previous: SnapshotReader | None,
                 writer: SnapshotWriter, started: int, pool: ThreadPoolExecutor,
                 on_progress: Callable[[ScanStats], None] | None,
                 keep: meta.Keep = meta.KEEP_ALL) -> None:
        self.root, self.out_path, self.previous = root, out_path, previous
        self.keep = keep
        self.writer, self.started, self.pool = writer, started, pool
        self.on_progress = on_progress
        self.stats = ScanStats()
        self.diff = Diff(dirs={})
        self.rewritten = False
        self.pending: deque[_Item] = deque()
        self.batch: list[_Item] = []
        self.batch_bytes = 0
        self.short = ShortPaths()
        self.last_progress = 0
        # Subtree that could not be listed: previous entries below it carry forward.
        self.error_prefix: bytes | None = None
        # Folders whose content changed after the walk began (see gone()).
        self.busy: dict[bytes, bool] = {}
        # Files with several hard links queued for hashing, by (device, inode).
        self.linked: dict[tuple[int, int], _Item] = {}

    # Counting what is written: one place for every path through the merge.
    def same(self, path: bytes, kind: str, size: int, folder: Entry | None) -> None:
        """Count an entry written back unchanged (folder: its entry, for the diff)."""
        self.count(kind, size)
        if kind == FILE:
            self.diff.unchanged_files += 1
        elif kind == DIR:
            if self.diff.keep:
                self.diff.dirs[path] = folder  # type: ignore[index,assignment]

    def count(self, kind: str, size: int) -> None:
        if kind == FILE:
            self.stats.files += 1
            self.stats.bytes += size
            self.diff.new_files += 1
        elif kind == DIR:
            self.stats.dirs += 1
        else:
            self.stats.symlinks += 1

    def hash_later(self, path: bytes, w: tuple, old: _Old | None) -> None:
        it = _Item(path, walk=w, fut=_UNSENT, old=old)
        if w[11] > 1 and self.keep.hard_links:
            # A hard link of a file hashed earlier in this scan is not read again.
            key = (w[6], w[5])
            first = self.linked.get(key)
            if first is not None and first.walk[2:4] == w[2:4]:  # type: ignore[index]
                it.same = first
                self.pending.append(it)
                return
            if len(self.linked) >= _LINKED_MAX:
                self.linked.clear()
            self.linked[key] = it
        self.pending.append(it)
        self.batch.append(it)
        self.batch_bytes += w[2]
        if len(self.batch) >= scanner.BATCH_FILES or self.batch_bytes >= scanner.BATCH_BYTES:
            self.send()

    def send(self) -> None:
        if self.batch:
            root, short = self.root, self.short
            fut = self.pool.submit(_hash_batch, [short(root + b"/" + it.path) for it in self.batch],
                                   self.keep)
            for i, it in enumerate(self.batch):
                it.fut, it.idx = fut, i
            self.batch, self.batch_bytes = [], 0

    def carry(self, path: bytes, old: _Old) -> None:
        """Write old back as it was (unreadable now, or vanished for this run)."""
        self.pending.append(_Item(path, old=old, raw=old.line))

    def emit(self, it: _Item) -> None:
        if it.raw is not None:  # identical to the previous entry, or carried forward
            self.writer.write_raw(it.path, it.raw)
            if it.old is None:  # a file or folder whose line matched its walk tuple
                w = it.walk
                assert w is not None
                if w[1] == scanner.FILE:
                    self.same(it.path, FILE, w[2], None)
                else:
                    self.same(it.path, DIR, 0, _folder(w))
                return
            d = it.old.d
            kind = d["type"]
            self.same(it.path, kind, d.get("size", 0),
                      entry_from_dict(d, self.out_path) if kind == DIR else None)
            return
        entry = it.entry
        if it.fut is not None:
            w = it.walk
            assert w is not None
            hashed, xattrs = it.fut.result()
            digest, chunks, size, mtime, ino, err = hashed[it.idx]
            if err == 0:
                entry = self.entry(w, digest, tuple(chunks) if chunks else None,
                                   size=size, mtime=mtime, ino=ino, xattrs=xattrs[it.idx])
                if it.same is None:
                    self.stats.hashed_files += 1
                    self.stats.hashed_bytes += size
            elif err in (errno.ENOENT, errno.ENOTDIR):
                entry = None  # vanished since the walk: deleted, not an error
            else:
                why = "changed while being read" if err == scanner.CHANGED else os.strerror(err)
                self.stats.errors.append((w[0], why))
                if it.old is None:
                    self.stats.never.add(w[0])
                if it.old is not None and it.old.d.get("type") == FILE:
                    it.raw = it.old.line
                    self.emit(it)
                    return
                entry = None
        old = entry_from_dict(it.old.d, self.out_path) if it.old is not None else None
        if entry is None:
            if old is not None:
                self.diff.removed[old.path] = old
                self.rewritten = True
            return
        self.writer.write(entry)
        self.count(entry.kind, entry.size)
        if entry.kind == DIR:
            if self.diff.keep:
                self.diff.dirs[entry.path] = entry  # type: ignore[index]
        if old != entry:
            self.rewritten = True
        self.diff.pair(old, entry)

    def drain(self, force: bool) -> None:
        pending = self.pending
        while pending:
            head = pending[0]
            if head.same is not None:  # (emitted before it: its batch was sent)
                head.fut, head.idx = head.same.fut, head.same.idx
            if head.fut is _UNSENT:
                if not force and len(pending) < _WINDOW:
                    break
                self.send()
            if head.fut is not None and not head.fut.done() and not force and len(pending) < _WINDOW:
                break
            self.emit(pending.popleft())
        if self.on_progress is not None and self.stats.files - self.last_progress >= 1000:
            self.last_progress = self.stats.files
            self.on_progress(self.stats)

    def changed_since_start(self, folder: bytes) -> bool:
        """Did folder's content change after the walk began? Its mtime must fall
        between the scan's start and now: a folder stamped in the future (a clock
        stepped back, a file server's clock ahead of ours) proves nothing, and
        must not keep deletions waiting. No margin below the start: a deletion
        made just before the run must not wait a run (where the file system
        keeps whole seconds, a change in the scan's first second is missed)."""
        known = self.busy.get(folder)
        if known is None:
            try:
                m = os.lstat(self.short(self.root + b"/" + folder) if folder else self.root).st_mtime_ns
                known = self.started <= m <= time.time_ns()
            except OSError:
                known = False  # gone itself: decided where its own entry is
            self.busy[folder] = known
        return known

    def gone(self, old: _Old, path: bytes) -> None:
        """A previous entry the walk did not meet."""
        ep = self.error_prefix
        if ep is not None and (path.startswith(ep) or ep == b""):
            self.carry(path, old)  # unreadable: carry forward
        elif old.d.get("type") == DIR and self.changed_since_start(path.rpartition(b"/")[0]):
            # A folder missing from a folder that changed while the walk ran:
            # perhaps moved into the part already walked. Kept as last backed up,
            # with all below it, for this run. (Folders only: a file costs little
            # to send again, and a folder written to all the time, a mailbox,
            # must not keep its deleted files on the remote run after run.)
            self.stats.vanished += 1
            self.carry(path, old)
            self.error_prefix = path + b"/"
        else:
            self.diff.removed[path] = entry_from_dict(old.d, self.out_path)
            self.rewritten = True

    def unreadable(self, path: bytes, err: int, old: _Old | None) -> None:
        """The walk could not read path (a folder it listed, or a file gone)."""
        if err in (errno.ENOENT, errno.ENOTDIR):
            # Listed, then gone before it was read. A folder is kept as last backed
            # up, with all below it, for this run (moved, perhaps, into the part
            # already walked); the next decides. A file is deleted. Neither is an
            # error.
            if old is not None and old.d.get("type") == DIR:
                self.stats.vanished += 1
                self.carry(path, old)
                self.error_prefix = path + b"/"
            elif old is not None:
                self.gone(old, path)
            return
        self.stats.errors.append((path, os.strerror(err)))
        if old is not None:
            self.carry(path, old)
        else:
            self.stats.never.add(path)
        if old is None or old.d.get("type") == DIR:
            self.error_prefix = path + b"/" if path else b""

    def place(self, path: bytes, w: tuple, old: _Old | None, policy: Policy) -> None:
        """A walked file, folder or link that is not its previous line verbatim."""
        tier, known = classify(w, old.d if old is not None else None, policy)
        if tier == SAME_STAT:
            assert old is not None
            if self.pending:
                self.carry(path, old)
            else:  # nothing to wait for: written at once
                self.writer.write_raw(path, old.line)
                kind = old.d["type"]
                self.same(path, kind, w[2], entry_from_dict(old.d, self.out_path) if kind == DIR else None)
            return
        if tier == NOT_A_FILE:
            self.pending.append(_Item(path, entry=self.entry(w), old=old))
        elif tier == KEEP_DIGEST:
            assert old is not None
            chunks = old.d.get("chunks")
            self.pending.append(_Item(path, entry=self.entry(
                w, old.d["digest"], tuple(chunks) if chunks else None), old=old))
        elif tier == SEND_UNHASHED:
            self.pending.append(_Item(path, entry=self.entry(w)))
        elif tier == SAME_INODE_ELSEWHERE:
            assert known is not None
            self.pending.append(_Item(path, entry=self.entry(w, known[0], known[1])))
        else:
            self.hash_later(path, w, old)

    def entry(self, w: tuple, digest: str | None = None, chunks: tuple[str, ...] | None = None,
              size: int | None = None, mtime: int | None = None, ino: int | None = None,
              xattrs: meta.Xattrs | None = None) -> Entry:
        """The entry of walk tuple w, its extended attributes read now unless given (a
        file's size, mtime, inode and xattrs as its hash found them, where it was hashed)."""
        path, kind, wsize, wmtime, mode, wino, dev, extra, uid, gid, ctime, nlink = w
        if xattrs is None:
            xattrs = meta.read_xattrs(self.short(self.root + b"/" + path), self.keep) or ()
        if kind == scanner.DIR:
            return Entry(path, DIR, 0, wmtime, mode, wino, dev, uid=uid, gid=gid, ctime_ns=ctime,
                         xattrs=xattrs)
        if kind == scanner.SYMLINK:
            return Entry(path, SYMLINK, wsize, wmtime, mode, wino, dev, target=extra, uid=uid,
                         gid=gid, ctime_ns=ctime, xattrs=xattrs)
        return Entry(path, FILE, wsize if size is None else size, wmtime if mtime is None else mtime,
                     mode, wino if ino is None else ino, dev, digest, chunks, uid=uid, gid=gid,
                     ctime_ns=ctime, nlink=nlink if self.keep.hard_links else 1, xattrs=xattrs)


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
    keep: meta.Keep = meta.KEEP_ALL,
    stable_inodes: bool = True,
    read_from: str | None = None,
    collect_diff: bool = True,
) -> ScanResult:
    """read_from: a snapshot of source to walk instead (frozen.py): the header
    still names the source, and no device number is recorded (each snapshot is
    another device; its inode numbers are the source's). collect_diff=False:
    the result's diff only counts (a first backup that streams: first.py)."""
    started = time.time_ns()
    root = os.fsencode(read_from or source)
    st = os.stat(root)
    real = os.stat(source) if read_from else st
    header = Header(
        block=block,
        source=source,
        id=snap_id,
        created_ns=started,
        scan_started_ns=started,
        source_dev=real.st_dev,
        source_fs=mounts.identity(source),
        chunk_size=scanner.CHUNK_SIZE,
        chunk_threshold=scanner.CHUNK_THRESHOLD,
        tool=f"btsoot {__version__}",
        root=Entry(b"", DIR, 0, st.st_mtime_ns, st.st_mode, uid=st.st_uid, gid=st.st_gid,
                   xattrs=meta.read_xattrs(root, keep) or ()),
    )
    racy_before = (previous.header.scan_started_ns - RACY_NS) if previous else 0
    prev_iter = previous.lines() if previous is not None else iter(())
    # (path, line); read before the writer exists: a damaged first line
    # must not leave an open temp file behind.
    prev = next(prev_iter, None)
    writer = SnapshotWriter(out_path, header)
    if not stable_inodes:
        # Inode numbers that change with every mount: none recorded, none trusted,
        # no hard links told apart; a moved file is known by its name instead.
        trust_inode = False
        keep = replace(keep, hard_links=False)
    moved = (_InodeIndex(previous.path, by_name=not stable_inodes)
             if previous is not None and not checksum and (trust_inode or not stable_inodes)
             else None)
    # Every new file is asked about: a small one is looked up only inside a folder
    # that is new to this scan (renamed or moved: see _InodeIndex), which costs a
    # dict lookup for the others.
    policy = Policy(racy_before, checksum, trust_inode, hash_new, keep.hard_links, 0,
                    (lambda w: moved.find(w, racy_before)) if moved is not None else None)
    # Files modified since then are re-read; --checksum re-reads every file.
    file_bound = -(1 << 63) if checksum else racy_before
    line_same = scanner.line_same
    decode = previous.decode if previous is not None else None
    pool = ThreadPoolExecutor(max_workers=threads or scanner.default_threads(),
                              thread_name_prefix="btsoot-scan")
    m = _Merge(root, out_path, previous, writer, started, pool, on_progress, keep)
    m.diff.keep = collect_diff
    diff, pending, same, write_raw = m.diff, m.pending, m.same, writer.write_raw
    links = keep.hard_links
    # The owner ids met, for their names (consecutive entries mostly share them).
    uids: set[int] = set()
    gids: set[int] = set()
    last_uid = last_gid = -1

    def take_prev() -> _Old:
        """Consume the current previous entry, decoded, with its line."""
        nonlocal prev
        assert prev is not None and decode is not None
        old = _Old(decode(prev[1]), prev[1])
        if old.d.get("type") == FILE:
            diff.old_files += 1
        prev = next(prev_iter, None)
        return old

    try:
        with pool:
            walk = scanner.walk(root, one_file_system, make_exclude(exclude))
            if not stable_inodes:
                walk = _without_ids(walk)
            elif read_from:
                walk = _without_dev(walk)
            for w in _unlistable_as_errors(walk):
                path, kind = w[0], w[1]
                if w[8] != last_uid:
                    last_uid = w[8]
                    uids.add(last_uid)
                if w[9] != last_gid:
                    last_gid = w[9]
                    gids.add(last_gid)
                if prev is not None and prev[0] != path:
                    key = sort_key(path)
                    while prev is not None and sort_key(prev[0]) < key:
                        p = prev[0]
                        m.gone(take_prev(), p)
                if prev is not None and prev[0] == path and line_same(prev[1], w, file_bound, racy_before,
                                                                      links):
                    # SAME_LINE, the common case, kept cheap: the line records exactly
                    # what the walk found (a file or folder); it is written back as is.
                    line = prev[1]
                    prev = next(prev_iter, None)
                    if kind == scanner.FILE:
                        diff.old_files += 1
                    if pending:
                        pending.append(_Item(path, walk=w, raw=line))
                        m.drain(False)
                    elif kind == scanner.FILE:
                        write_raw(path, line)
                        same(path, FILE, w[2], None)
                    else:
                        write_raw(path, line)
                        same(path, DIR, 0, _folder(w))
                    continue
                old = take_prev() if prev is not None and prev[0] == path else None
                if kind == scanner.ERROR:
                    m.unreadable(path, w[7], old)
                elif kind == scanner.SPECIAL:
                    m.stats.skipped.append(path)
                    if old is not None:
                        m.gone(old, path)
                else:
                    if kind == scanner.DIR and old is None and moved is not None:
                        moved.new_folder(path, w[5], w[6])
                    m.place(path, w, old, policy)
                    m.drain(False)
            while prev is not None:
                p = prev[0]
                m.gone(take_prev(), p)
            m.send()
            m.drain(True)
    except BaseException:
        writer.abort()
        raise
    finally:
        m.short.close()
        if moved is not None:
            moved.close()
    writer.names = meta.names_of(uids, gids)
    writer.commit(sync=False)
    return ScanResult(out_path, header, m.stats, diff, m.rewritten)


def _hash_batch(paths: list[bytes], keep: meta.Keep) -> tuple[list[tuple], list[meta.Xattrs]]:
    """hash_batch, and the extended attributes of each file hashed: both on the
    pool's threads, off the merge's."""
    hashed = scanner.hash_batch(paths, scanner.CHUNK_SIZE, scanner.CHUNK_THRESHOLD, HASH_RETRIES)
    return hashed, [(meta.read_xattrs(p, keep) or ()) if r[5] == 0 else () for p, r in zip(
        paths, hashed, strict=True)]


# Files below this size are cheaper to read again than to look up.
MOVED_MIN_SIZE = 16 << 10


class _InodeIndex:
    """Where a file at a new path was before, so its content is not read again: a
    day run meets new paths (a renamed folder holds thousands) and would otherwise
    hash every file in them. Built on the first lookup by reading the previous
    snapshot again; only byte offsets are kept (canonical lines), and a hit reads
    and decodes its one line.

    - Inside a folder new to this scan (new_folder): a renamed or moved folder
      keeps its inode, so the previous snapshot's folder of that inode and device
      is where its files were; its entries (contiguous in snapshot order) are
      read once, and a file with the same name, inode, size and mtime is found,
      whatever its size. Memory: the previous snapshot's folders, and one
      folder's files at a time.
    - Elsewhere, by (inode, device, size, mtime) over the files of MOVED_MIN_SIZE
      or more (a file moved on its own; smaller ones cost less to read again).
    - Where the source's inode numbers do not last (`by_name`: a FUSE or SMB
      mount remounted gives every file another), by (name, size, mtime) over
      every file (a read crosses the network); a key two files share finds
      neither.
    """

    def __init__(self, path: str, by_name: bool = False) -> None:
        self.path = path
        self.by_name = by_name
        self.index: dict[tuple, int] | None = None
        self.folders: dict[tuple[int, int], tuple[bytes, int]] = {}  # (ino, dev) -> (path, offset)
        self.new: dict[bytes, tuple[int, int]] = {}  # this scan's new folders: path -> (ino, dev)
        # The files of the moved folders on the walk's current path, by their new
        # path (the walk comes back to a folder after each of its subfolders).
        self.open: dict[bytes, dict[bytes, tuple[int, int, int, int, int | None, int]]] = {}
        self.f: Any = None

    def new_folder(self, path: bytes, ino: int, dev: int) -> None:
        """The walk met a folder at a path the previous snapshot does not have."""
        if not self.by_name and ino:
            self.new[path] = (ino, dev)

    def _build(self) -> dict[tuple, int]:
        index: dict[tuple, int] = {}
        f = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        if f.read(2) == b"\x1f\x8b":  # compressed: no cheap seeks; do without
            f.close()
            return index
        f.seek(0)
        self.f = f
        off = len(f.readline())
        match, folder = _FILE_FIELDS.match, _DIR_FIELDS.match
        by_name, least = self.by_name, 0 if self.by_name else MOVED_MIN_SIZE
        folders = self.folders
        for line in f:
            m = match(line)
            if m is not None:
                size = int(m["size"])
                if size >= least:
                    mtime = int(m["mtime"])
                    if by_name:
                        # A name, size and mtime that two files share tells neither.
                        key = (m["path"].rpartition(b"/")[2], size, mtime)
                        index[key] = -1 if key in index else off
                    else:
                        index[(int(m["ino"]), int(m["dev"]), size, mtime)] = off
            elif not by_name and (d := folder(line)) is not None:
                folders[(int(d["ino"]), int(d["dev"]))] = (d["path"], off)
            off += len(line)
        return index

    def _folder(self, new: bytes, old: bytes, off: int
                ) -> dict[bytes, tuple[int, int, int, int, int | None, int]]:
        """The files directly in previous folder old (its line at off), now at new:
        name -> (inode, device, size, mtime, ctime, offset of the line)."""
        files = self.open.get(new)
        if files is not None:
            return files
        for p in [p for p in self.open if not new.startswith(p + b"/")]:
            del self.open[p]  # left behind by the walk
        files = {}
        prefix = b'{"path":"' + old + b"/"
        f, match = self.f, _FILE_FIELDS.match
        f.seek(off)
        pos = off + len(f.readline())
        for line in f:
            if not line.startswith(prefix):
                break  # past the folder's entries (they sort together, right after it)
            rest = line[len(prefix):]
            if rest.find(b"/") < 0 or rest.find(b"/") > rest.find(b'"'):  # directly in it
                m = match(line)
                if m is not None:
                    name = m["path"].rpartition(b"/")[2]
                    files[name] = (int(m["ino"]), int(m["dev"]), int(m["size"]), int(m["mtime"]),
                                   int(m["ctime"]) if m["ctime"] is not None else None, pos)
            pos += len(line)
        self.open[new] = files
        return files

    def find(self, w: tuple, racy_before: int) -> tuple[str, tuple[str, ...] | None] | None:
        """(digest, chunks) of a previous file with w's inode, device (or name), size
        and mtime."""
        if w[3] >= racy_before:
            return None
        parent, _, name = w[0].rpartition(b"/")
        moved_folder = self.new.get(parent)
        if moved_folder is None and w[2] < MOVED_MIN_SIZE and not self.by_name:
            return None  # a small file on its own: reading it costs less
        if self.index is None:
            self.index = self._build()
        off = None
        was = self.folders.get(moved_folder) if moved_folder is not None else None
        if was is not None and self.f is not None:
            hit = self._folder(parent, *was).get(name)
            # Its status-change time too: a folder's rename leaves its files' alone,
            # while a file put in place of another (the inode number reused, size and
            # mtime set alike) has a new one.
            if hit is not None and hit[:4] == (w[5], w[6], w[2], w[3]) and hit[4] in (None, w[10]):
                off = hit[5]
        if off is None:
            key = ((name, w[2], w[3]) if self.by_name else (w[5], w[6], w[2], w[3]))
            off = self.index.get(key)
        if off is None or off < 0:
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


# The fixed fields of a file's canonical line (version 1 lines have no ctime,
# owner and link count).
_DIR_FIELDS = re.compile(
    rb'{"path":"(?P<path>[^"\\]*)","type":"dir","mtime":-?\d+,(?:"ctime":-?\d+,)?"mode":\d+,'
    rb'(?:"uid":\d+,"gid":\d+,)?"ino":(?P<ino>\d+),"dev":(?P<dev>\d+)[,}]')
_FILE_FIELDS = re.compile(
    rb'{"path":"(?P<path>[^"\\]*)","type":"file","size":(?P<size>\d+),"mtime":(?P<mtime>-?\d+),'
    rb'(?:"ctime":(?P<ctime>-?\d+),)?"mode":\d+,(?:"uid":\d+,"gid":\d+,)?"ino":(?P<ino>\d+),'
    rb'"dev":(?P<dev>\d+),(?:"nlink":\d+,)?"digest":"')


def _without_dev(walk: Iterator[tuple]) -> Iterator[tuple]:
    """The walk with device numbers left out (0): a snapshot of the source is a new
    device every time, with the source's inode numbers."""
    for w in walk:
        yield w[:6] + (0,) + w[7:]


def _without_ids(walk: Iterator[tuple]) -> Iterator[tuple]:
    """The walk with inode and device numbers left out (0): a source whose inode
    numbers change with every mount records none, so its lines stay the same."""
    for w in walk:
        yield w[:5] + (0, 0) + w[7:]


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


def _folder(w: tuple) -> Entry:
    """A folder's entry as the walk found it, for the attribute pass of the plan
    (its xattrs unknown: an attribute pass leaves them as they are)."""
    return Entry(w[0], DIR, 0, w[3], w[4], w[5], w[6], uid=w[8], gid=w[9], ctime_ns=w[10],
                 xattrs=None)
