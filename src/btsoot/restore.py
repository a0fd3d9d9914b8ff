"""Restore: bring a snapshot back from the remote into a destination folder.

Pipeline: resolve the snapshot (a block's committed one, a named local or
remote one, or the newest one a bare remote keeps in `.btsoot/`) -> check
every entry before anything is written -> merge the snapshot with a walk of
the destination (both in snapshot order, so memory stays flat) -> per path:
leave alone what already matches (size and mtime, or digest with checksum),
replace what differs (temp name, digest check, rename), keep or delete what
the snapshot does not have -> set each folder's mode and mtime once
everything inside it is done.

Never writes outside the destination. Paths are checked twice:

- Before any write, every entry: relative, no empty, `.` or `..` component,
  no NUL byte, and its parent is a folder entry of the same snapshot (so a
  snapshot cannot route a file through one of its own symlinks).
- At write time, every folder is opened from its parent's descriptor with
  O_NOFOLLOW, and every create, rename and delete is relative to that
  descriptor: a symlink in the destination, planted before or during the
  run, is never followed. A symlink where the snapshot has a folder is
  refused (with `delete`, the link itself is replaced by the folder).

The remote is read the same way, so a remote symlink cannot redirect a read.
Every copied file is hashed after the copy (the page cache is hot) and
before its rename: a file that does not match its snapshot digest never
reaches its final name, and the restore reports damage (exit code 7).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import xxhash

from . import profile as profiles
from . import remote as rmt
from . import scanner
from .config import Block, Lock
from .errors import (
    EXIT_DAMAGE,
    EXIT_OK,
    EXIT_PARTIAL,
    FatalIOError,
    GuardError,
    UsageError,
)
from .names import Codec
from .plan import is_under, parent
from .reading import DIR_FLAGS as _DIR_FLAGS
from .reading import (
    EntryChecker,
    Found,
    SnapshotSource,
    lstat_found,
    merge_found,
    open_snapshot,
    show,
    unsafe_path,
    walk_found,
)
from .remotefs import Remote
from .restore_pool import BatchPool
from .snapshot import DIR, FILE, SYMLINK, Entry
from .state import BlockState
from .transfer import copy_fd, syncfs, temp_name

Progress = Callable[[str, Any], None]

# O_NONBLOCK: a FIFO swapped in for a file must not block the open.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_TAG = "restore-"
_TMP_PREFIX = temp_name(b"x", _TMP_TAG)  # our own leftovers: removed, never listed
# The destination cannot take more: stop the run instead of failing file by file.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_SMALL = 4 << 20  # hashed in one read
_BUF = 1 << 20

# Outcomes of one file, reported by the workers to the main thread.
COPIED, SAME, ATTRS, WOULD_COPY, DAMAGED, ERROR = range(6)


# --- small file-system helpers (all relative to a folder descriptor) ----------


def _digest(fd: int, size: int) -> str:
    """XXH3-128 of an open file, which must hold exactly size bytes ("" if not)."""
    if size <= _SMALL:
        whole = os.pread(fd, size + 1, 0)
        return xxhash.xxh3_128_hexdigest(whole) if len(whole) == size else ""
    h = xxhash.xxh3_128()
    buf = bytearray(_BUF)
    view = memoryview(buf)
    off = 0
    while True:
        n = os.preadv(fd, [buf], off)
        if n == 0:
            break
        h.update(view[:n])  # releases the GIL on large buffers
        off += n
    return h.hexdigest() if off == size else ""


def _set_attrs(fd: int, e: Entry, apply: bool) -> bool:
    """Give an open file or folder the entry's mode and mtime; True if they differed."""
    st = os.fstat(fd)
    mode_ok = stat.S_IMODE(st.st_mode) == e.mode & 0o7777
    if mode_ok and st.st_mtime_ns == e.mtime_ns:
        return False
    if apply:
        if not mode_ok:
            os.fchmod(fd, e.mode & 0o7777)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
    return True


def _remove(parent_fd: int, name: bytes) -> None:
    """Delete name (a whole folder tree if it is one), never following a symlink."""
    try:
        os.unlink(name, dir_fd=parent_fd)
        return
    except IsADirectoryError:
        pass
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    # Iterative, so a deep tree cannot exhaust the recursion limit.
    stack = [(parent_fd, name, fd, iter(os.listdir(fd)))]
    try:
        while stack:
            pfd, dname, dfd, names = stack[-1]
            child = next(names, None)
            if child is None:
                stack.pop()
                os.close(dfd)
                os.rmdir(dname, dir_fd=pfd)
                continue
            c = os.fsencode(child)
            try:
                os.unlink(c, dir_fd=dfd)
            except IsADirectoryError:
                cfd = os.open(c, _DIR_FLAGS, dir_fd=dfd)
                stack.append((dfd, c, cfd, iter(os.listdir(cfd))))
    finally:
        for _, _, dfd, _ in stack:
            os.close(dfd)


def _is_empty_dir(parent_fd: int, name: bytes) -> bool:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        return not os.listdir(fd)
    finally:
        os.close(fd)


# --- result -----------------------------------------------------------------


@dataclass(slots=True)
class RestoreResult:
    destination: str
    snapshot: str
    block: str | None = None
    remote: str = ""
    result: str = "ok"  # ok | unchanged | partial | damaged | dry-run
    exit_code: int = EXIT_OK
    files: int = 0  # files in the snapshot (or the --only selection)
    file_bytes: int = 0
    copied_files: int = 0  # (dry run: would copy)
    copied_bytes: int = 0
    unchanged: int = 0  # entries that already matched: left alone
    attrs: int = 0  # entries whose mode or mtime only were set
    dirs_created: int = 0
    symlinks: int = 0  # symlinks written
    ops: int = 0  # snapshot entries handled so far (progress)
    bytes_done: int = 0
    extra: list[bytes] = field(default_factory=list)  # not in the snapshot (top-most paths)
    deleted: list[bytes] = field(default_factory=list)  # removed from the destination
    damaged: list[tuple[bytes, str]] = field(default_factory=list)  # remote copy bad or missing
    errors: list[tuple[bytes, str]] = field(default_factory=list)  # could not be restored
    actions: list[tuple[str, bytes]] = field(default_factory=list)  # dry run: what would be done
    durations: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "remote": self.remote,
            "destination": self.destination,
            "snapshot": self.snapshot,
            "result": self.result,
            "exit_code": self.exit_code,
            "files": self.files,
            "bytes": self.file_bytes,
            "copied_files": self.copied_files,
            "copied_bytes": self.copied_bytes,
            "unchanged": self.unchanged,
            "attributes_set": self.attrs,
            "dirs_created": self.dirs_created,
            "symlinks": self.symlinks,
            "extra": [show(p) for p in self.extra],
            "deleted": [show(p) for p in self.deleted],
            "damaged": [{"path": show(p), "error": w} for p, w in self.damaged],
            "errors": [{"path": show(p), "error": w} for p, w in self.errors],
            "actions": [{"op": o, "path": show(p)} for o, p in self.actions],
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
        }


# --- the restore ------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Dir:
    """A destination folder being restored: open while its subtree is processed."""

    path: bytes
    entry: Entry | None  # None: the destination root
    fd: int | None  # None: dry run, and the folder does not exist yet
    created: bool = False
    left: bool = False  # the walk has moved past its subtree
    rfd: int | None = None  # the same folder on the remote (opened on first use)
    rerr: str | None = None  # why the remote folder could not be opened
    stale: bool = False  # existed with another mode or mtime than the snapshot's
    parent: _Dir | None = None
    # (name, kind) of the files and links written into it: checked when it is done
    written: list[tuple[bytes, str]] = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class _Job:
    entry: Entry
    name: bytes
    check_first: bool  # --checksum and same size: compare digests before copying
    # Where the content is on the remote: None, at the entry's own path; else the path of
    # the same content now (an older snapshot's file that moved), or _NOWHERE.
    src: bytes | None = None


_NOWHERE = b"\x00"  # never a valid path


def _only_roots(only: Iterable[str | bytes], bases: Iterable[str]) -> list[bytes]:
    """--only arguments as snapshot paths: sorted, none inside another."""
    roots: list[bytes] = []
    for raw in only:
        p = os.fsencode(raw)
        if p.startswith(b"/"):
            for base in bases:
                b = os.fsencode(os.path.abspath(base)).rstrip(b"/")
                if p == b or p.startswith(b + b"/"):
                    p = p[len(b) + 1:]
                    break
            else:
                raise UsageError(f"--only {show(p)}: an absolute path must lie in the source "
                                 "or the destination; else give a path relative to them")
        while p.startswith(b"./"):
            p = p[2:]
        p = p.rstrip(b"/")
        if p in (b"", b"."):
            return [b""]
        why = unsafe_path(p)
        if why:
            raise UsageError(f"--only {show(p)}: {why}")
        roots.append(p)
    roots.sort(key=lambda r: r.replace(b"/", b"\x00"))
    out: list[bytes] = []
    for r in roots:
        if not out or not is_under(r, out[-1]):
            out.append(r)
    return out


def _codec(remote: Remote) -> Codec:
    """The name encoding the remote's profile describes (none if it has no profile)."""
    p = profiles.load(remote)
    return p.codec() if p is not None else Codec()


class _Restorer:
    def __init__(self, source: SnapshotSource, dest: str, res: RestoreResult,
                 roots: list[bytes], delete: bool, dry_run: bool, checksum: bool,
                 exclude: Callable[[bytes, bool], bool] | None, jobs: int,
                 progress: Progress | None) -> None:
        self.source = source
        self.dest = os.fsencode(dest)
        self.remote = os.fsencode(source.remote)
        # The remote through the one seam (see remotefs), for reads by path; and how the
        # backup stored names the remote cannot hold (see names.py).
        try:
            self.rem = Remote(source.remote)
        except OSError as e:
            raise FatalIOError(f"remote {source.remote}: {e.strerror}") from None
        self.codec = _codec(self.rem)
        self.rem.encode, self.rem.escape = self.codec.encode, self.codec.escape
        self.res = res
        self.roots = roots
        self.delete = delete
        self.dry_run = dry_run
        self.checksum = checksum
        self.exclude = exclude
        self.jobs = jobs
        self.progress = progress
        self.unlistable: set[bytes] = set()
        self._ancestors = {parent(r) for r in roots if r}
        for r in list(self._ancestors):
            while r:
                r = parent(r)
                self._ancestors.add(r)
        self._ancestors.discard(b"")
        self._tag = f"{_TMP_TAG}{os.getpid()}-"
        self._count = itertools.count()
        self._pool: BatchPool[_Dir, _Job, list[tuple[_Job, int, int, str]]] = BatchPool(
            jobs, self._start, self._settle)
        self._open: list[_Dir] = []  # every _Dir whose descriptors are still open
        self._root_rfd: int | None = None

    # ----- the two sorted streams

    def selected(self) -> Iterator[Entry]:
        # Checked again as read: a snapshot file swapped since the first pass is still refused.
        checker = EntryChecker(f"snapshot {self.source.header.id}")
        for e in self.source.entries():
            checker.check(e)
            if self.roots == [b""] or e.path in self._ancestors or any(
                    is_under(e.path, r) for r in self.roots):
                yield e

    def found(self) -> Iterator[Found]:
        errors = self.res.errors
        if self.roots == [b""]:
            yield from walk_found(self.dest, b"", errors, self.unlistable)
            return
        real_dirs: dict[bytes, bool] = {}
        for r in self.roots:
            parts = r.split(b"/")
            reachable = True
            for i in range(1, len(parts)):
                a = b"/".join(parts[:i])
                if a not in real_dirs:
                    f = lstat_found(self.dest, a)
                    real_dirs[a] = f is not None and f.kind == DIR
                    if f is not None:
                        yield f
                if not real_dirs[a]:
                    reachable = False
                    break
            if not reachable:
                continue
            f = lstat_found(self.dest, r)
            if f is not None:
                yield f
                if f.kind == DIR:
                    yield from walk_found(self.dest + b"/" + r, r + b"/", errors, self.unlistable)

    # ----- main loop

    def run(self) -> None:
        if not self.dry_run:
            try:
                os.makedirs(self.dest, exist_ok=True)
            except OSError as e:
                raise FatalIOError(f"destination {os.fsdecode(self.dest)}: {e.strerror}") from None
        try:
            root_fd: int | None = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not self.dry_run:
                raise
            root_fd = None  # dry run into a folder that does not exist yet
        except OSError as e:
            raise FatalIOError(f"destination {os.fsdecode(self.dest)}: {e.strerror}") from None
        root = self._push(_Dir(b"", None, root_fd))
        if self.source.current is not None:
            self._index_now(root)
        pairs = (merge_found(self.selected(), self.found()) if root_fd is not None
                 else ((e, None) for e in self.selected()))
        try:
            with self._pool:
                self._walk(root, pairs)
        finally:
            for d in list(self._open):
                self._close(d)
            self.rem.close()
        res = self.res
        if res.damaged:
            res.result, res.exit_code = "damaged", EXIT_DAMAGE
        elif res.errors:
            res.result, res.exit_code = "partial", EXIT_PARTIAL
        elif self.dry_run:
            res.result = "dry-run"
        elif not (res.copied_files or res.attrs or res.dirs_created or res.symlinks
                  or res.deleted):
            res.result = "unchanged"

    def _index_now(self, root: _Dir) -> None:
        """Restoring an older snapshot: learn where each content lives on the remote now."""
        checker = EntryChecker("the remote's current snapshot")
        self._now_path: dict[bytes, str | None] = {}
        self._now_digest: dict[str, bytes] = {}
        assert self.source.current is not None
        for e in self.source.current():
            checker.check(e)
            if e.escaped:
                self.rem.escaped.add(e.path)
            if e.kind == FILE and e.digest:
                self._now_path[e.path] = e.digest
                self._now_digest.setdefault(e.digest, e.path)
        if not self.dry_run:
            self._root_rfd = self._remote_dir(root)
            if self._root_rfd is None:
                raise FatalIOError(f"remote {self.source.remote}: {root.rerr}")

    def _source_of(self, e: Entry) -> bytes | None:
        if self.source.current is None or self._now_path.get(e.path) == e.digest:
            return None
        assert e.digest is not None
        return self._now_digest.get(e.digest, _NOWHERE)

    def _walk(self, root: _Dir, pairs: Iterable[tuple[Entry | None, Found | None]]) -> None:
        """Handle every (snapshot entry, destination entry) pair in snapshot order.

        `stack` holds the open folders from the root down to the current
        entry's parent; `skip` a subtree given up (or handled as a whole).
        """
        stack = [root]
        skip: bytes | None = None
        for s, d in pairs:
            path = s.path if s is not None else d.path  # type: ignore[union-attr]
            if skip is not None:
                if is_under(path, skip):
                    if s is not None:
                        self._done(s)
                    continue
                skip = None
            while stack[-1].path and not path.startswith(stack[-1].path + b"/"):
                self._leave(stack.pop())
            cur = stack[-1]
            if parent(path) != cur.path:
                raise AssertionError(f"restore: {path!r} is not inside {cur.path!r}")
            if s is None:
                assert d is not None
                self._extra(cur, d)
                if d.kind == DIR:
                    skip = path  # listed (or deleted) as one
            elif s.kind == DIR:
                sub = self._folder(cur, s, d)
                if sub is None:
                    skip = path
                else:
                    stack.append(sub)
                self._done(s)
            elif not self._leaf(cur, s, d):
                skip = path
        while stack:
            self._leave(stack.pop())
        self._pool.drain()

    def _done(self, e: Entry) -> None:
        """One snapshot entry handled (or given up): progress."""
        self.res.ops += 1
        self.res.bytes_done += e.size
        if self.progress is not None:
            self.progress("progress", (self.res.ops, self.res.bytes_done))

    def _act(self, op: str, path: bytes) -> None:
        if self.dry_run:
            self.res.actions.append((op, path))

    def _name(self, path: bytes) -> bytes:
        return path.rpartition(b"/")[2]

    # ----- what the snapshot does not have

    def _extra(self, cur: _Dir, d: Found) -> None:
        """A destination entry the snapshot lacks: kept and listed, or deleted (a folder as
        a whole)."""
        name = self._name(d.path)
        if name.startswith(_TMP_PREFIX) and d.kind != DIR:
            if not self.dry_run and cur.fd is not None:
                try:
                    os.unlink(name, dir_fd=cur.fd)  # our own leftover from an interrupted restore
                except OSError:
                    pass
            return
        if self.exclude is not None and self.exclude(d.path, d.kind == DIR):
            return  # never backed up: not the restore's business
        shown = d.path + b"/" if d.kind == DIR else d.path
        if not self.delete:
            self.res.extra.append(shown)
            self._act("keep-extra", shown)
            return
        if self.dry_run or cur.fd is None:
            self._act("delete", shown)
            self.res.deleted.append(shown)
            return
        try:
            _remove(cur.fd, name)
            self.res.deleted.append(shown)
        except OSError as e:
            self._dest_error(e, d.path, "cannot delete")

    # ----- folders

    def _folder(self, cur: _Dir, s: Entry, d: Found | None) -> _Dir | None:
        """Make sure folder s exists and open it; None if it cannot be restored."""
        name = self._name(s.path)
        created = False
        if d is not None and d.kind != DIR:
            if d.kind == SYMLINK and not self.delete:
                self._error(s.path, "is a symlink in the destination, the snapshot has a folder: "
                            "refusing to restore through it (remove it, or use --delete)")
                return None
            self._act("replace", s.path)
            if not self.dry_run and not self._unlink(cur, s.path):
                return None
            self.res.deleted.append(s.path)
            d = None
        if d is None:
            self._act("mkdir", s.path)
            self.res.dirs_created += 1
            if self.dry_run or cur.fd is None:
                return self._push(_Dir(s.path, s, None, True, parent=cur))
            try:
                os.mkdir(name, 0o700, dir_fd=cur.fd)
                created = True
            except FileExistsError:
                self.res.dirs_created -= 1  # there after all (a race, or hidden from the walk)
            except OSError as e:
                self._dest_error(e, s.path, "cannot create folder")
                return None
        if cur.fd is None:
            return self._push(_Dir(s.path, s, None, created, parent=cur))
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=cur.fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                self._error(s.path, "is not a folder in the destination (replaced during the "
                            "restore?): refusing to restore through it")
            else:
                self._dest_error(e, s.path, "cannot open folder")
            return None
        sub = self._push(_Dir(s.path, s, fd, created, parent=cur))
        if not created:
            st = os.fstat(fd)
            sub.stale = (stat.S_IMODE(st.st_mode) != s.mode & 0o7777
                         or st.st_mtime_ns != s.mtime_ns)
            if not self.dry_run and st.st_mode & 0o700 != 0o700 and os.geteuid() != 0:
                try:
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)  # set right when left
                except OSError:
                    pass
        return sub

    def _push(self, d: _Dir) -> _Dir:
        self._open.append(d)
        return d

    def _leave(self, d: _Dir) -> None:
        self._pool.flush_for(d)
        d.left = True
        if not self._pool.busy(d):
            self._finish(d)

    def _finish(self, d: _Dir) -> None:
        """Everything inside d is done: give it its mode and mtime, close it."""
        if d.written and d.fd is not None:
            self._check_written(d)
        if d.entry is not None and d.fd is not None:
            try:
                _set_attrs(d.fd, d.entry, not self.dry_run)
                if d.stale:  # not just the mtime our own writes inside moved
                    self.res.attrs += 1
                    self._act("attrs", d.path)
            except OSError as e:
                self._dest_error(e, d.path, "cannot set attributes")
        self._close(d)

    def _check_written(self, d: _Dir) -> None:
        """Is every name written into d there, byte for byte? A destination that folds
        case keeps one of two twins; one that refuses or rewrites names keeps none:
        such a file is reported (exit 3), never counted as restored."""
        assert d.fd is not None
        try:
            there = {os.fsencode(n) for n in os.listdir(d.fd)}
        except OSError as e:
            self._dest_error(e, d.path, "cannot be listed")
            return
        for name, kind in d.written:
            if name in there:
                continue
            path = d.path + b"/" + name if d.path else name
            self.res.errors.append((path, "not in the destination after it was written: its "
                                    "file system refused or merged the name (case?)"))
            if kind == FILE:
                self.res.copied_files -= 1
            else:
                self.res.symlinks -= 1
        d.written.clear()

    def _close(self, d: _Dir) -> None:
        for fd in (d.fd, d.rfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        d.fd = d.rfd = None
        try:
            self._open.remove(d)
        except ValueError:
            pass

    # ----- files and symlinks

    def _leaf(self, cur: _Dir, s: Entry, d: Found | None) -> bool:
        """Restore a file or symlink; False if the destination's folder there must be skipped."""
        res = self.res
        name = self._name(s.path)
        if d is not None and d.kind == DIR:
            if not self.delete and not (cur.fd is not None and _is_empty_dir(cur.fd, name)):
                self._error(s.path, f"is a folder in the destination, the snapshot has a "
                            f"{s.kind}: kept (use --delete to replace it)")
                self._done(s)
                return False
            self._act("replace", s.path)
            if not self.dry_run and cur.fd is not None:
                try:
                    _remove(cur.fd, name)
                except OSError as e:
                    self._dest_error(e, s.path, "cannot remove folder")
                    self._done(s)
                    return False
            res.deleted.append(s.path + b"/")
            d = None
            skip_after = True
        else:
            skip_after = False
        if s.kind == SYMLINK:
            self._symlink(cur, s, d, name)
            self._done(s)
        elif d is not None and d.kind == FILE and d.size == s.size and (
                self.checksum or d.mtime_ns == s.mtime_ns):
            if self.checksum:
                self._queue(cur, _Job(s, name, True, self._source_of(s)))
            else:
                self._same_file(cur, s, d, name)
                self._done(s)
        elif self.dry_run:
            if self._source_of(s) == _NOWHERE:
                self._account(_Job(s, name, False), ERROR, 0, self._gone)
            else:
                self._act("copy", s.path)
                res.copied_files += 1
                res.copied_bytes += s.size
                self._done(s)
        else:
            self._queue(cur, _Job(s, name, False, self._source_of(s)))
        return not skip_after

    def _same_file(self, cur: _Dir, s: Entry, d: Found, name: bytes) -> None:
        if stat.S_IMODE(d.mode) == s.mode & 0o7777:
            self.res.unchanged += 1
            return
        self.res.attrs += 1
        self._act("attrs", s.path)
        if self.dry_run or cur.fd is None:
            return
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=cur.fd)
            try:
                _set_attrs(fd, s, True)
            finally:
                os.close(fd)
        except OSError as e:
            self._dest_error(e, s.path, "cannot set attributes")

    def _symlink(self, cur: _Dir, s: Entry, d: Found | None, name: bytes) -> None:
        assert s.target is not None
        if d is not None and d.kind == SYMLINK and d.target == s.target:
            if d.mtime_ns == s.mtime_ns:
                self.res.unchanged += 1
                return
            self.res.attrs += 1
            self._act("attrs", s.path)
            if not self.dry_run and cur.fd is not None:
                try:
                    os.utime(name, ns=(s.mtime_ns, s.mtime_ns), dir_fd=cur.fd,
                             follow_symlinks=False)
                except OSError:
                    pass  # some file systems cannot set a link's time
            return
        self._act("symlink", s.path)
        self.res.symlinks += 1
        if self.dry_run or cur.fd is None:
            return
        tmp = temp_name(name, f"{self._tag}{next(self._count)}")
        try:
            os.symlink(s.target, tmp, dir_fd=cur.fd)
            try:
                os.utime(tmp, ns=(s.mtime_ns, s.mtime_ns), dir_fd=cur.fd, follow_symlinks=False)
            except OSError:
                pass
            os.rename(tmp, name, src_dir_fd=cur.fd, dst_dir_fd=cur.fd)
            cur.written.append((name, SYMLINK))
        except OSError as e:
            self.res.symlinks -= 1
            try:
                os.unlink(tmp, dir_fd=cur.fd)
            except OSError:
                pass
            self._dest_error(e, s.path, "cannot create symlink")

    def _unlink(self, cur: _Dir, path: bytes) -> bool:
        assert cur.fd is not None
        try:
            os.unlink(self._name(path), dir_fd=cur.fd)
            return True
        except OSError as e:
            self._dest_error(e, path, "cannot remove")
            return False

    # ----- the worker pool

    def _queue(self, cur: _Dir, job: _Job) -> None:
        self._pool.add(cur, job, job.entry.size)

    def _start(self, d: _Dir, batch: list[_Job]
               ) -> Callable[[], list[tuple[_Job, int, int, str]]] | None:
        """A batch handed over (main thread): open d's remote folder if needed; the
        work for a worker, or None if no job of it is left to run."""
        rfd: int | None = -1
        if not self.dry_run and any(j.src is None for j in batch):
            rfd = self._remote_dir(d)
            if rfd is None:
                for j in batch:
                    if j.src is None:
                        self._account(j, DAMAGED, 0, d.rerr or "missing on the remote")
                batch = [j for j in batch if j.src is not None]
                if not batch:
                    return None
                rfd = -1
        assert rfd is not None
        dfd, fd = d.fd, rfd
        return lambda: self._work(dfd, fd, batch)

    def _settle(self, d: _Dir, results: list[tuple[_Job, int, int, str]], last: bool) -> None:
        """A batch's results (main thread); d is finished once the last is in and the walk
        has left it."""
        for job, outcome, n, msg in results:
            self._account(job, outcome, n, msg)
            if outcome == COPIED:
                d.written.append((job.name, FILE))
        if last and d.left:
            self._finish(d)

    def _account(self, job: _Job, outcome: int, n: int, msg: str) -> None:
        res, e = self.res, job.entry
        if outcome == COPIED:
            res.copied_files += 1
            res.copied_bytes += n
        elif outcome == WOULD_COPY:
            res.copied_files += 1
            res.copied_bytes += e.size
            self._act("copy", e.path)
        elif outcome == SAME:
            res.unchanged += 1
        elif outcome == ATTRS:
            res.attrs += 1
            self._act("attrs", e.path)
        elif outcome == DAMAGED:
            res.damaged.append((e.path, msg))
        else:
            res.errors.append((e.path, msg))
        self._done(e)

    def _stored(self, e: Entry | None, name: bytes) -> bytes:
        """The name under which the backup stored entry e (see names.py)."""
        if e is not None and e.escaped:
            return self.codec.escape(name)
        return self.codec.encode(name)

    def _remote_dir(self, d: _Dir) -> int | None:
        """d's folder on the remote, opened with O_NOFOLLOW from its parent (main thread)."""
        if d.rfd is not None or d.rerr is not None:
            return d.rfd
        try:
            if d.parent is None:
                d.rfd = os.open(self.remote, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            else:
                prfd = self._remote_dir(d.parent)
                if prfd is None:
                    d.rerr = d.parent.rerr
                    return None
                d.rfd = os.open(self._stored(d.entry, self._name(d.path)), _DIR_FLAGS,
                                dir_fd=prfd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                d.rerr = f"missing on the remote (its folder {show(d.path)}/ is missing)"
            else:
                d.rerr = f"cannot be read on the remote: {e.strerror}"
            return None
        return d.rfd

    def _work(self, dfd: int | None, rfd: int, batch: list[_Job]) -> list[tuple[_Job, int, int, str]]:
        return [(job, *self._file(dfd, rfd, job)) for job in batch]

    def _file(self, dfd: int | None, rfd: int, job: _Job) -> tuple[int, int, str]:
        """Restore one file (worker thread): (outcome, bytes copied, message)."""
        e = job.entry
        if job.check_first and dfd is not None:
            try:
                fd = os.open(job.name, _READ_FLAGS, dir_fd=dfd)
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode) and _digest(fd, e.size) == e.digest:
                        return (ATTRS if _set_attrs(fd, e, not self.dry_run) else SAME), 0, ""
                finally:
                    os.close(fd)
            except OSError:
                pass  # unreadable: replace it
        if job.src == _NOWHERE:
            return ERROR, 0, self._gone
        if self.dry_run or dfd is None:
            return WOULD_COPY, 0, ""
        return self._copy_in(dfd, rfd, e, job.name, job.src)

    @property
    def _gone(self) -> str:
        return ("not on the remote any more: changed or deleted after snapshot "
                f"{self.source.header.id} (the remote keeps only its newest state)")

    def _copy_in(self, dfd: int, rfd: int, e: Entry, name: bytes,
                 src: bytes | None) -> tuple[int, int, str]:
        try:
            if src is None:
                sfd = os.open(self._stored(e, name), _READ_FLAGS, dir_fd=rfd)
            else:
                sfd = self.rem.open_file(src)  # where the remote holds it now
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                return DAMAGED, 0, "missing on the remote"
            if err.errno == errno.ELOOP:
                return DAMAGED, 0, "is a symlink on the remote, the snapshot has a file"
            return DAMAGED, 0, f"cannot be read on the remote: {err.strerror}"
        try:
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode):
                return DAMAGED, 0, "is not a regular file on the remote"
            if st.st_size != e.size:
                return DAMAGED, 0, (f"has {st.st_size} bytes on the remote, the snapshot says "
                                    f"{e.size}: not restored")
            tmp = temp_name(name, f"{self._tag}{next(self._count)}")
            try:
                tfd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=dfd)
            except OSError as err:
                return self._dest_failure(err, "cannot create a file")
            placed = False
            try:
                try:
                    n = copy_fd(sfd, tfd, e.size)
                except OSError as err:
                    if err.errno in _FATAL_ERRNOS:
                        return self._dest_failure(err, "cannot write")
                    return DAMAGED, 0, f"cannot be read on the remote: {err.strerror}"
                if n != e.size:
                    return DAMAGED, 0, "is shorter on the remote than the snapshot says"
                if _digest(tfd, e.size) != e.digest:
                    return DAMAGED, 0, ("does not match its snapshot digest: the copy on the "
                                        "remote is corrupt; not restored")
                os.fchmod(tfd, e.mode & 0o7777)
                os.utime(tfd, ns=(e.mtime_ns, e.mtime_ns))
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                placed = True
                return COPIED, n, ""
            except OSError as err:
                return self._dest_failure(err, "cannot write")
            finally:
                os.close(tfd)
                if not placed:
                    try:
                        os.unlink(tmp, dir_fd=dfd)
                    except OSError:
                        pass
        finally:
            os.close(sfd)

    # ----- errors

    def _dest_failure(self, e: OSError, what: str) -> tuple[int, int, str]:
        if e.errno in _FATAL_ERRNOS:
            raise FatalIOError(f"destination {os.fsdecode(self.dest)}: {e.strerror}") from None
        return ERROR, 0, f"{what}: {e.strerror}"

    def _dest_error(self, e: OSError, path: bytes, what: str) -> None:
        self._error(path, self._dest_failure(e, what)[2])

    def _error(self, path: bytes, why: str) -> None:
        self.res.errors.append((path, why))


def restore(
    source: SnapshotSource,
    dest: str,
    *,
    only: Iterable[str | bytes] = (),
    delete: bool = False,
    dry_run: bool = False,
    checksum: bool = False,
    exclude: Callable[[bytes, bool], bool] | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    confirm: Callable[[SnapshotSource, str], None] | None = None,
    block: str | None = None,
    bases: Iterable[str] = (),
) -> RestoreResult:
    """Restore source's snapshot into dest (created if missing).

    `only`: snapshot paths (or absolute paths under dest or `bases`) to restore,
    each a file or a subtree. `delete`: remove what the snapshot does not have
    (within `only`); else such entries are kept and listed in `extra`.
    `exclude(path, is_dir)`: destination entries never to list or delete.
    `confirm(source, dest)` runs after every entry was checked and before
    anything is written; it may raise to stop (the CLI's countdown).
    Raises StateError for a snapshot with unsafe entries (nothing written),
    FatalIOError when the destination is full or read-only; damage and
    per-file errors are in the result (`exit_code` 7 and 3).
    """
    t0 = time.monotonic()
    dest = os.path.abspath(dest)
    rd, rr = os.path.realpath(dest), os.path.realpath(source.remote)
    if rd == rr or rd.startswith(rr + os.sep) or rr.startswith(rd + os.sep):
        raise UsageError(f"destination {dest} and remote {source.remote} must not contain "
                         "one another")
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise UsageError(f"destination {dest} exists and is not a folder")
    roots = _only_roots(only, [dest, *bases]) if only else [b""]
    res = RestoreResult(destination=dest, snapshot=source.header.id, block=block,
                        remote=source.remote)

    # Every entry is checked before the first write.
    checker = EntryChecker(f"snapshot {source.header.id}")
    seen_roots: set[bytes] = set()
    want = set(roots)
    for e in source.entries():
        checker.check(e)
        if roots == [b""] or any(is_under(e.path, r) for r in roots):
            if e.path in want:
                seen_roots.add(e.path)
            if e.kind == FILE:
                res.files += 1
                res.file_bytes += e.size
    missing = [r for r in roots if r and r not in seen_roots]
    if missing:
        raise UsageError(f"--only {show(missing[0])}: not in snapshot {source.header.id}")
    res.durations["check"] = time.monotonic() - t0
    if confirm is not None and not dry_run:
        confirm(source, dest)

    t = time.monotonic()
    if progress is not None:
        progress("total", res.file_bytes)
    r = _Restorer(source, dest, res, roots, delete, dry_run, checksum, exclude,
                  jobs or scanner.default_threads(), progress)
    r.run()
    res.durations["restore"] = time.monotonic() - t
    if not dry_run and (res.copied_files or res.dirs_created or res.symlinks or res.deleted
                        or res.attrs):
        t = time.monotonic()
        try:
            syncfs(dest)  # the restored tree is durable before we say so
        except OSError as e:
            raise FatalIOError(f"destination {dest}: cannot sync: {e.strerror}") from None
        res.durations["sync"] = time.monotonic() - t
    res.durations["total"] = time.monotonic() - t0
    return res


def restore_block(
    block: Block,
    *,
    to: str | None = None,
    snapshot: str | None = None,
    only: Iterable[str | bytes] = (),
    delete: bool = False,
    dry_run: bool = False,
    checksum: bool = False,
    jobs: int | None = None,
    progress: Progress | None = None,
    confirm: Callable[[SnapshotSource, str], None] | None = None,
) -> RestoreResult:
    """Restore a block's committed snapshot (or the one named) into its source, or `to`.

    Holds the block's lock, so no backup reads the source while it is written.
    The block's exclude patterns apply to the destination: what was never
    backed up is neither listed nor deleted.
    """
    from .scan import make_exclude

    st = BlockState(block.state)
    st.ensure()
    with Lock(st.lock, f"block {block.name!r}"):
        ident = rmt.check_remote(block.remote, block.name, True)
        source = open_snapshot(block.remote, snapshot, st, ident)
        return restore(source, to or block.source, only=only, delete=delete, dry_run=dry_run,
                       checksum=checksum, exclude=make_exclude(block.exclude),
                       jobs=jobs or block.jobs or None, progress=progress, confirm=confirm,
                       block=block.name, bases=[block.source])


def restore_from(
    remote: str,
    to: str,
    *,
    snapshot: str | None = None,
    **kw: Any,
) -> RestoreResult:
    """Restore from a bare remote: no config, no local state (the disaster case).

    Takes no lock: there is no block to lock, and nothing else of btsoot's
    writes into `to`.
    """
    if not os.path.isdir(remote):
        raise GuardError(f"remote {remote} does not exist or is not a folder "
                         "(is the share mounted?)")
    if not os.path.isdir(rmt.meta(remote)):
        # Like a missing remote (an unmounted share's mount point), not damaged state.
        raise GuardError(f"remote {remote} holds no btsoot backup (no {rmt.META}/ folder; "
                         "is the share mounted?)")
    return restore(open_snapshot(remote, snapshot), to, **kw)
