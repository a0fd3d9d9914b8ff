"""The read side restore and verify share: which snapshot, is every entry safe, what is there.

- `open_snapshot`: the snapshot to restore or verify, from a block's local
  state or from the remote alone (its own `.btsoot/` record), as a
  `SnapshotSource` whose entries can be read more than once.
- `EntryChecker`: refuses, in snapshot order, an entry that could reach outside
  the root it is joined to (before anything is written or read by path).
- `walk_found`, `walk_decoded`, `lstat_found`: what a destination or a remote
  holds, as `Found` records in snapshot order, so `merge_found` can pair them
  with the snapshot's entries.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import remote as rmt
from . import scanner
from .errors import FatalIOError, StateError, UsageError, show_path
from .names import decode
from .paths import is_under, merge, parent
from .snapshot import (
    DIR,
    FILE,
    SYMLINK,
    Entry,
    Header,
    Names,
    SnapshotReader,
    SnapshotWriter,
    bad_path,
    read_names,
)
from .state import BlockState

# A folder opened below its parent's descriptor: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

show = show_path  # (the name restore's and verify's callers use)


# --- which snapshot ---------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SnapshotSource:
    """A remote folder and one snapshot of it. `entries()` can be read more than once.

    `current` reads the snapshot that describes what the remote holds now, when
    that is another (newer) one: the remote keeps only its newest state, so an
    older snapshot's file is found by its digest, at its own path or wherever
    the same content lives now.
    """

    remote: str
    header: Header
    entries: Callable[[], Iterator[Entry]]
    current: Callable[[], Iterator[Entry]] | None = None
    # The owner names the snapshot records (read when a restore maps owners by name).
    names: Callable[[], Names] = lambda: ({}, {})


def _read_local(path: str) -> tuple[Header, Callable[[], Iterator[Entry]]]:
    with SnapshotReader(path) as r:
        header = r.header

    def entries() -> Iterator[Entry]:
        with SnapshotReader(path) as r:
            yield from r

    return header, entries


def _read_back(state: BlockState, sid: str,
               ) -> tuple[Header, Callable[[], Iterator[Entry]], Callable[[], Names]]:
    """An older local snapshot: its back-deltas read over the head, as often as needed."""
    return (state.resolved(sid).header, lambda: state.resolved(sid).entries(),
            lambda: state.resolved(sid).read_names())


def _pick(want: str, ids: Iterable[str], where: str) -> str:
    ids = sorted(set(ids))
    if want in ids:
        return want
    hits = [i for i in ids if i.startswith(want)]
    if len(hits) == 1:
        return hits[0]
    known = ", ".join(ids[-5:]) or "none"
    what = "several snapshots start with" if hits else "no snapshot"
    raise UsageError(f"{where}: {what} {want!r} (newest: {known})")


def open_snapshot(remote: str, snap_id: str | None = None,
                  state: BlockState | None = None,
                  ident: dict[str, Any] | None = None) -> SnapshotSource:
    """The snapshot to restore or verify.

    With a block's state: its committed snapshot, or the one named (a local id,
    else one the remote keeps). Without: from the remote's own snapshots (the
    newest, or the one named), which needs no local state at all. An id may be
    shortened to a unique prefix. `ident`: the remote's block.json as
    `remote.check_remote` returned it (read here if not given).
    """
    if state is not None:
        rec = state.load_head()
        head = rec.head
        if head is None:
            raise UsageError("the block has no committed backup yet: nothing to restore")
        if ident is None:
            ident = rmt.read_block_id(remote)
        if snap_id is None and ident is not None and rmt.record_differs(rec, ident):
            # Another remote of the block (a rotated disk), or this one rolled back:
            # its own record says what it holds, not the local one.
            return open_snapshot(remote)
        path = state.head_path(head)
        if not os.path.exists(path):
            raise StateError(f"{path}: committed snapshot is missing")
        header, now = _read_local(path)
        if snap_id is None:
            return SnapshotSource(remote, header, now, names=lambda: read_names(path))
        local = state.committed_ids()
        if snap_id in local or [i for i in local if i.startswith(snap_id)]:
            sid = _pick(snap_id, local, "local snapshots")
            if sid == head:
                entries, names = now, lambda: read_names(path)  # noqa: E731
            else:
                header, entries, names = _read_back(state, sid)
        else:
            sid = _pick(snap_id, rmt.list_snapshots(remote), remote)
            header, entries, names = _resolved(remote, sid)
        return SnapshotSource(remote, header, entries, None if sid == head else now, names)
    want = _pick(snap_id, rmt.list_snapshots(remote), remote) if snap_id else None
    header, entries, names = _resolved(remote, want)
    if want is None:
        return SnapshotSource(remote, header, entries, names=names)
    newest = rmt.newest_resolvable(remote)
    return SnapshotSource(remote, header, entries,
                          None if newest == header.id else _resolved(remote, newest)[1],
                          names)


def _resolved(remote: str, snap_id: str | None,
              ) -> tuple[Header, Callable[[], Iterator[Entry]], Callable[[], Names]]:
    """A snapshot the remote keeps (full plus deltas), resolved once into a local
    temp file and read from there as often as the caller needs, its owner names
    with it: the remote's files cross the link once, and memory holds only what
    the deltas change. The file goes when the returned readers are dropped (or
    the process ends)."""
    held: list[Names] = []
    header, stream = rmt.stream(remote, snap_id, held)
    tmp = tempfile.mkdtemp(prefix="btsoot-snapshot-")
    path = os.path.join(tmp, "resolved.jsonl")
    w = SnapshotWriter(path, header, local=False)
    try:
        for e in stream:
            w.write(e)
        if held:
            w.names = held[-1]
    except BaseException:
        w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    w.commit(sync=False)

    def entries() -> Iterator[Entry]:
        with SnapshotReader(path) as r:
            yield from r

    def names() -> Names:
        assert entries is not None  # (keeps the file, which entries' finalizer removes)
        return read_names(path)

    weakref.finalize(entries, shutil.rmtree, tmp, True)
    return header, entries, names


# --- path safety ------------------------------------------------------------


def unsafe_path(path: bytes) -> str | None:
    """Why path must not be joined below a root (None if it is safe)."""
    return bad_path(path)


class EntryChecker:
    """Refuses, in snapshot order, any entry that could write outside its root."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._dirs: list[bytes] = []  # the folder entries above the current one

    def check(self, e: Entry) -> None:
        why = unsafe_path(e.path)
        if why is None:
            p = parent(e.path)
            while self._dirs and not is_under(p, self._dirs[-1]):
                self._dirs.pop()
            if p and (not self._dirs or self._dirs[-1] != p):
                why = "has no folder entry for its parent in the snapshot"
            elif e.kind == FILE and (e.size < 0 or not isinstance(e.digest, str)):
                why = "is a file without a size or digest"
            elif e.kind == SYMLINK and (not e.target or b"\x00" in e.target):
                why = "is a symlink with an empty target or a NUL byte in it"
        if why is not None:
            raise StateError(f"{self.where}: refusing to use this snapshot: entry "
                             f"{show(e.path)!r} {why}; nothing was written")
        if e.kind == DIR:
            self._dirs.append(e.path)


# --- the destination side ---------------------------------------------------


@dataclass(slots=True, frozen=True)
class Found:
    """One entry found on disk (destination or remote), from a walk or an lstat."""

    path: bytes
    kind: str  # file, dir, symlink, special
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    target: bytes | None = None
    uid: int = -1  # -1: not read
    gid: int = -1


_KIND = {scanner.FILE: FILE, scanner.DIR: DIR, scanner.SYMLINK: SYMLINK,
         scanner.SPECIAL: "special"}


def walk_found(root: bytes, prefix: bytes, errors: list[tuple[bytes, str]],
               unlistable: set[bytes]) -> Iterator[Found]:
    """scanner.walk below root as Found records, paths prefixed; errors collected.

    A folder that cannot be listed goes into `unlistable`: what the snapshot
    has below it is unknown, not missing.
    """
    for path, kind, size, mtime, mode, _ino, _dev, extra, uid, gid, _ctime, _nlink in scanner.walk(
            root, True, None):
        rel = prefix + path
        if kind == scanner.ERROR:
            if not path:
                raise FatalIOError(f"{os.fsdecode(root)}: cannot be listed: "
                                   f"{os.strerror(extra)}")
            if extra == errno.ENOENT:
                continue  # gone while listed (a folder the restore just deleted): nothing there
            errors.append((rel, f"cannot be listed: {os.strerror(extra)}"))
            unlistable.add(rel)
            continue
        yield Found(rel, _KIND[kind], size, mtime, mode, extra if kind == scanner.SYMLINK else None,
                    uid, gid)


def walk_decoded(root: bytes, prefix: bytes, errors: list[tuple[bytes, str]],
                 unlistable: set[bytes]) -> Iterator[Found]:
    """Like walk_found, for a remote that stores names encoded (see names.py): each
    name found is decoded, and each folder's names are sorted as the source's
    names sort, so the walk merges with a snapshot. Folders are opened with
    O_NOFOLLOW from their parent: a link is reported, never followed."""
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise FatalIOError(f"{os.fsdecode(root)}: cannot be listed: {e.strerror}") from None

    def listing(fd: int, rel: bytes) -> list[tuple[bytes, bytes]]:
        try:
            stored = [os.fsencode(n) for n in os.listdir(fd)]
        except OSError as e:
            errors.append((rel, f"cannot be listed: {e.strerror}"))
            unlistable.add(rel)
            return []
        return sorted(((decode(n), n) for n in stored), key=lambda t: t[0], reverse=True)

    stack = [(top, b"", listing(top, b""))]
    try:
        while stack:
            fd, rel, todo = stack[-1]
            if not todo:
                os.close(fd)
                stack.pop()
                continue
            name, stored = todo.pop()
            path = rel + b"/" + name if rel else prefix + name
            try:
                st = os.stat(stored, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            m = st.st_mode
            if stat.S_ISLNK(m):
                try:
                    target: bytes | None = os.readlink(stored, dir_fd=fd)
                except OSError:
                    target = None
                yield Found(path, SYMLINK, st.st_size, st.st_mtime_ns, m, target)
            elif stat.S_ISDIR(m):
                yield Found(path, DIR, 0, st.st_mtime_ns, m)
                try:
                    cfd = os.open(stored, DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    errors.append((path, f"cannot be listed: {e.strerror}"))
                    unlistable.add(path)
                    continue
                stack.append((cfd, path, listing(cfd, path)))
            else:
                kind = FILE if stat.S_ISREG(m) else "special"
                yield Found(path, kind, st.st_size if kind == FILE else 0, st.st_mtime_ns, m)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


#: paths.merge over a snapshot and what is found on disk.
merge_found = merge


def lstat_found(root: bytes, rel: bytes) -> Found | None:
    try:
        st = os.lstat(root + b"/" + rel)
    except OSError:
        return None
    m = st.st_mode
    ids = (st.st_uid, st.st_gid)
    if stat.S_ISLNK(m):
        try:
            target: bytes | None = os.readlink(root + b"/" + rel)
        except OSError:
            target = None
        return Found(rel, SYMLINK, st.st_size, st.st_mtime_ns, m, target, *ids)
    kind = FILE if stat.S_ISREG(m) else DIR if stat.S_ISDIR(m) else "special"
    return Found(rel, kind, st.st_size if kind == FILE else 0, st.st_mtime_ns, m, None, *ids)
