"""Carrying out the restore walk's actions (see restore_walk).

`Applier` writes the destination: every create, rename and delete relative to
a folder descriptor opened with O_NOFOLLOW, every copied file hashed before
its rename. `DryRunApplier` writes nothing: it records each action in the
result (`RestoreResult.actions`) and counts what would be done. Both still
read the destination (folders that exist, --checksum digests) and share the
worker pool (restore_pool), so their counts and their order are the same.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from . import meta
from . import profile as profiles
from .errors import EXIT_OK, FatalIOError
from .names import Codec
from .reading import DIR_FLAGS, SnapshotSource, show
from .remotefs import Remote
from .restore_pool import BatchPool
from .restore_walk import (
    NOWHERE,
    TMP_TAG,
    Action,
    CheckFile,
    DeleteExtra,
    EnterDir,
    Folder,
    Keep,
    KeepExtra,
    Leftover,
    MakeDir,
    NowIndex,
    PutFile,
    PutSymlink,
    Refuse,
    SetAttrs,
    Skip,
    basename,
)
from .snapshot import FILE, SYMLINK, Entry
from .transfer import apply_undo, copy_fd, fchmod_kept, temp_name

Progress = Callable[[str, Any], None]

# O_NONBLOCK: a FIFO swapped in for a file must not block the open.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The destination holds no hard links (or no more of this file).
_NO_HARD_LINK = {errno.EPERM, errno.EMLINK, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS}
# The destination cannot take more: stop the run instead of failing file by file.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_SMALL = 4 << 20  # hashed in one read
_BUF = 1 << 20

# Outcomes of one file, reported by the workers to the main thread.
COPIED, SAME, ATTRS, WOULD_COPY, DAMAGED, ERROR = range(6)


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
    links: int = 0  # hard links made (the other names of a file restored once)
    ops: int = 0  # snapshot entries handled so far (progress)
    bytes_done: int = 0
    extra: list[bytes] = field(default_factory=list)  # not in the snapshot (top-most paths)
    deleted: list[bytes] = field(default_factory=list)  # removed from the destination
    damaged: list[tuple[bytes, str]] = field(default_factory=list)  # remote copy bad or missing
    errors: list[tuple[bytes, str]] = field(default_factory=list)  # could not be restored
    actions: list[tuple[str, bytes]] = field(default_factory=list)  # dry run: what would be done
    # Owners and xattrs the destination refused, by kind (not an error: reported once).
    not_applied: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
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
            "hard_links": self.links,
            "metadata_not_applied": self.not_applied,
            "warnings": self.warnings,
            "extra": [show(p) for p in self.extra],
            "deleted": [show(p) for p in self.deleted],
            "damaged": [{"path": show(p), "error": w} for p, w in self.damaged],
            "errors": [{"path": show(p), "error": w} for p, w in self.errors],
            "actions": [{"op": o, "path": show(p)} for o, p in self.actions],
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
        }


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


def _set_attrs(fd: int, e: Entry, apply: bool, how: meta.Apply, misses: meta.Misses) -> bool:
    """Give an open file or folder the entry's mode and mtime, and its owner and
    xattrs as `how` says; True if any differed."""
    st = os.fstat(fd)
    mode_ok = stat.S_IMODE(st.st_mode) == e.mode & 0o7777
    other = (how.owners or how.xattrs) and meta.differs(fd, st, e, how)
    if mode_ok and st.st_mtime_ns == e.mtime_ns and not other:
        return False
    if apply:
        if other:
            meta.apply_fd(fd, st, e, how, misses)  # (before the mode: see apply_fd)
        if not mode_ok or other:
            _fchmod(fd, e.mode, misses)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
    return True


def _fchmod(fd: int, mode: int, misses: meta.Misses) -> None:
    """The mode; where the file system refuses set-id bits (exFAT), the rest of it,
    and the refusal counted."""
    refused = fchmod_kept(fd, mode)
    if refused is not None:
        misses.add("set-id bits", refused)


def _remove(parent_fd: int, name: bytes) -> None:
    """Delete name (a whole folder tree if it is one), never following a symlink."""
    try:
        os.unlink(name, dir_fd=parent_fd)
        return
    except IsADirectoryError:
        pass
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
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
                cfd = os.open(c, DIR_FLAGS, dir_fd=dfd)
                stack.append((dfd, c, cfd, iter(os.listdir(cfd))))
    finally:
        for _, _, dfd, _ in stack:
            os.close(dfd)


# --- the appliers -----------------------------------------------------------


@dataclass(slots=True, frozen=True)
class _Job:
    """One file for the worker pool."""

    entry: Entry
    name: bytes
    check_first: bool  # --checksum and same size: compare digests before copying
    src: bytes | None = None  # where the remote holds the content (see PutFile)


_Outcome = tuple[_Job, int, int, str]  # (job, outcome, bytes copied, message)


def _codec(remote: Remote) -> Codec:
    """The name encoding the remote's profile describes (none if it has no profile)."""
    p = profiles.load(remote)
    return p.codec() if p is not None else Codec()


class _Base:
    """What both appliers do alike: dispatch, counting, progress, folders, the pool."""

    def __init__(self, source: SnapshotSource, dest: str, res: RestoreResult, jobs: int,
                 progress: Progress | None, how: meta.Apply = meta.NOTHING) -> None:
        self.source = source
        self.how = how  # owners and xattrs to give (see meta.Apply)
        self.misses = meta.Misses()
        self._mine = (os.geteuid(), os.getegid())
        # Hard links: the first restored path of each group, and the other members
        # with their folder (linked once everything is written; see finish_links).
        self.link_first: dict[tuple[int, int], bytes] = {}
        self.link_later: list[tuple[Entry, Entry | None]] = []
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
        self.progress = progress
        self.now: NowIndex | None = None  # restoring an older snapshot: where content is now
        self.pool: BatchPool[Folder, _Job, list[_Outcome]] = BatchPool(
            jobs, self._start, self._settle)
        self._open: list[Folder] = []  # every Folder whose descriptors are still open

    # ----- the run

    def open_root(self) -> Folder:
        """The destination root, opened (a run that writes creates it first)."""
        raise NotImplementedError

    def _open_root(self, missing_ok: bool) -> Folder:
        try:
            fd: int | None = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not missing_ok:
                raise
            fd = None  # dry run into a folder that does not exist yet
        except OSError as e:
            raise FatalIOError(f"destination {os.fsdecode(self.dest)}: {e.strerror}") from None
        return self._push(Folder(b"", None, fd))

    def relocating(self, root: Folder) -> None:
        """An older snapshot is restored: content may be read from other paths."""

    def close(self) -> None:
        for d in list(self._open):
            self._close(d)
        self.rem.close()

    def record(self, op: str, path: bytes) -> None:
        """What would be done (a dry run lists it)."""

    def done(self, e: Entry) -> None:
        """One snapshot entry handled (or given up): progress."""
        self.res.ops += 1
        self.res.bytes_done += e.size
        if self.progress is not None:
            self.progress("progress", (self.res.ops, self.res.bytes_done))

    # ----- the actions

    def apply(self, cur: Folder, a: Action) -> Folder | None:
        if isinstance(a, (PutFile, CheckFile, Keep, SetAttrs)) and a.entry.link_key is not None:
            member = a.entry
            first = self.link_first.setdefault(member.link_key, member.path)  # type: ignore[arg-type]
            if first != member.path:  # another name of a file restored before
                self.link_later.append((member, cur.entry))
                self.done(member)
                return None
        match a:
            case Skip(entry=e):
                if e is not None:
                    self.done(e)
            case Leftover(found=d):
                self._leftover(cur, basename(d.path))
            case KeepExtra():
                self.res.extra.append(a.shown)
                self.record("keep-extra", a.shown)
            case DeleteExtra(found=d):
                self._delete_extra(cur, d.path, a.shown)
            case Refuse(entry=e, why=why):
                self._error(e.path, why)
                self.done(e)
            case MakeDir(entry=e, replace=replace):
                sub = self._make_dir(cur, e, replace)
                self.done(e)
                return sub
            case EnterDir(entry=e):
                sub = self._enter(cur, e, False)
                self.done(e)
                return sub
            case Keep(entry=e):
                self.res.unchanged += 1
                self.done(e)
            case SetAttrs(entry=e):
                if self._set_attrs_of(cur, e):
                    self.res.attrs += 1
                    self.record("attrs", e.path)
                else:  # (its recorded xattrs were there already)
                    self.res.unchanged += 1
                self.done(e)
            case PutSymlink(entry=e, replace=replace):
                if not replace or self._replace_dir(cur, e):
                    self.record("symlink", e.path)
                    self.res.symlinks += 1
                    self._symlink(cur, e)
                self.done(e)
            case PutFile(entry=e, src=src, replace=replace):
                if replace and not self._replace_dir(cur, e):
                    self.done(e)
                else:
                    self._put_file(cur, e, src)
            case CheckFile(entry=e, src=src):
                self._queue(cur, _Job(e, basename(e.path), True, src))
        return None

    # Overridden by the appliers: what each action does to the destination.

    def _leftover(self, cur: Folder, name: bytes) -> None:
        raise NotImplementedError

    def _delete_extra(self, cur: Folder, path: bytes, shown: bytes) -> None:
        raise NotImplementedError

    def _unlink(self, cur: Folder, path: bytes) -> bool:
        raise NotImplementedError

    def _mkdir(self, cur: Folder, e: Entry) -> Folder | None:
        raise NotImplementedError

    def _open_up(self, fd: int, st: os.stat_result) -> None:
        """An existing folder was entered (st: its stat)."""

    def _fix_attrs(self, fd: int, e: Entry) -> bool:
        """Do the open file's or folder's mode and mtime differ from e's? (Set them.)"""
        raise NotImplementedError

    def _set_attrs_of(self, cur: Folder, e: Entry) -> bool:
        """Give the file or link e in folder cur its attributes; False if it had them."""
        raise NotImplementedError

    def _file_attrs(self, cur: Folder, e: Entry, apply: bool) -> bool:
        """The file's attributes differ from e's (and, with apply, are set)."""
        if cur.fd is None:
            return True
        try:
            fd = os.open(basename(e.path), _READ_FLAGS, dir_fd=cur.fd)
            try:
                return _set_attrs(fd, e, apply, self.how, self.misses)
            finally:
                os.close(fd)
        except OSError as err:
            self._dest_error(err, e.path, "cannot set attributes")
            return False

    def _remove_dir(self, cur: Folder, e: Entry) -> bool:
        raise NotImplementedError

    def _symlink(self, cur: Folder, e: Entry) -> None:
        raise NotImplementedError

    def _put_file(self, cur: Folder, e: Entry, src: bytes | None) -> None:
        raise NotImplementedError

    def _start(self, d: Folder, batch: list[_Job]) -> Callable[[], list[_Outcome]] | None:
        raise NotImplementedError

    def _fetch(self, dfd: int | None, rfd: int, job: _Job) -> tuple[int, int, str]:
        raise NotImplementedError

    # ----- hard links

    def finish_links(self) -> None:
        """Give every other member of a hard-link group its name: a link to the
        member restored first (once all files are written), then the folders
        the links went into their mtime again."""
        failed = {p for p, _ in self.res.errors} | {p for p, _ in self.res.damaged}
        folders: dict[bytes, Entry] = {}
        for e, folder in self.link_later:
            first = self.link_first[e.link_key]  # type: ignore[index]
            if first in failed:
                self.res.errors.append((e.path, f"not restored: {show(first)}, another name "
                                        "of the same file, could not be restored"))
                continue
            if self._link(first, e):
                self.record("link", e.path)
                self.res.links += 1
                if folder is not None:
                    folders[folder.path] = folder
            else:
                self.res.unchanged += 1
        for f in folders.values():
            self._folder_mtime(f)
        self.link_later.clear()

    def _link(self, first: bytes, e: Entry) -> bool:
        """Make e.path a hard link to first; False if it is one already."""
        raise NotImplementedError

    def _folder_mtime(self, e: Entry) -> None:
        """Set folder e's mtime again (links made inside it moved it)."""

    def finish_root(self, e: Entry) -> None:
        """The whole tree was restored: give the destination folder the source's
        mode, mtime, owner and xattrs."""
        try:
            fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return  # a dry run into a folder that does not exist yet
        try:
            if self._fix_attrs(fd, e):
                self.res.attrs += 1
                self.record("attrs", b".")
        except OSError as err:
            self._dest_error(err, b".", "cannot set attributes")
        finally:
            os.close(fd)

    def finish_meta(self) -> None:
        """What the destination refused, as one line per kind."""
        self.res.not_applied = self.misses.summary()
        self.res.warnings.extend(self.misses.lines())

    # ----- folders

    def _make_dir(self, cur: Folder, e: Entry, replace: bool) -> Folder | None:
        """Create folder e (replacing the non-folder there) and enter it; None if it cannot be
        restored."""
        if replace:
            self.record("replace", e.path)
            if not self._unlink(cur, e.path):
                return None
            self.res.deleted.append(e.path)
        self.record("mkdir", e.path)
        self.res.dirs_created += 1
        return self._mkdir(cur, e)

    def _enter(self, cur: Folder, e: Entry, created: bool) -> Folder | None:
        """Open folder e; None if it cannot be restored."""
        if cur.fd is None:
            return self._push(Folder(e.path, e, None, created, parent=cur))
        try:
            fd = os.open(basename(e.path), DIR_FLAGS, dir_fd=cur.fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                self._error(e.path, "is not a folder in the destination (replaced during the "
                            "restore?): refusing to restore through it")
            else:
                self._dest_error(err, e.path, "cannot open folder")
            return None
        sub = self._push(Folder(e.path, e, fd, created, parent=cur))
        if not created:
            st = os.fstat(fd)
            sub.stale = (stat.S_IMODE(st.st_mode) != e.mode & 0o7777
                         or st.st_mtime_ns != e.mtime_ns)
            self._open_up(fd, st)
        return sub

    def _push(self, d: Folder) -> Folder:
        self._open.append(d)
        return d

    def leave(self, d: Folder) -> None:
        self.pool.flush_for(d)
        d.left = True
        if not self.pool.busy(d):
            self._finish(d)

    def _finish(self, d: Folder) -> None:
        """Everything inside d is done: give it its mode and mtime, close it."""
        if d.written and d.fd is not None:
            self._check_written(d)
        if d.entry is not None and d.fd is not None:
            try:
                self._fix_attrs(d.fd, d.entry)
                if d.stale:  # not just the mtime our own writes inside moved
                    self.res.attrs += 1
                    self.record("attrs", d.path)
            except OSError as e:
                self._dest_error(e, d.path, "cannot set attributes")
        self._close(d)

    def _check_written(self, d: Folder) -> None:
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

    def _close(self, d: Folder) -> None:
        for fd in (d.fd, d.rfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        d.fd = d.rfd = None
        try:
            self._open.remove(d)
        except ValueError:
            pass

    # ----- files

    def _replace_dir(self, cur: Folder, e: Entry) -> bool:
        """A folder where the snapshot has a file or symlink (empty, or --delete): removed."""
        self.record("replace", e.path)
        if not self._remove_dir(cur, e):
            return False
        self.res.deleted.append(e.path + b"/")
        return True

    def _queue(self, cur: Folder, job: _Job) -> None:
        self.pool.add(cur, job, job.entry.size)

    def _settle(self, d: Folder, results: list[_Outcome], last: bool) -> None:
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
            self.record("copy", e.path)
        elif outcome == SAME:
            res.unchanged += 1
        elif outcome == ATTRS:
            res.attrs += 1
            self.record("attrs", e.path)
        elif outcome == DAMAGED:
            res.damaged.append((e.path, msg))
        else:
            res.errors.append((e.path, msg))
        self.done(e)

    def _work(self, dfd: int | None, rfd: int, batch: list[_Job]) -> list[_Outcome]:
        return [(job, *self._file(dfd, rfd, job)) for job in batch]

    def _file(self, dfd: int | None, rfd: int, job: _Job) -> tuple[int, int, str]:
        """Restore one file (worker thread): (outcome, bytes copied, message)."""
        e = job.entry
        if job.check_first and dfd is not None:
            try:
                fd = os.open(job.name, _READ_FLAGS, dir_fd=dfd)
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode) and _digest(fd, e.size) == e.digest:
                        return (ATTRS if self._fix_attrs(fd, e) else SAME), 0, ""
                finally:
                    os.close(fd)
            except OSError:
                pass  # unreadable: replace it
        if job.src == NOWHERE:
            return ERROR, 0, self._gone
        return self._fetch(dfd, rfd, job)

    @property
    def _gone(self) -> str:
        return ("not on the remote any more: changed or deleted after snapshot "
                f"{self.source.header.id}, and not in its attic (old versions are kept "
                "as long as the block's retention keeps a snapshot that has them)")

    # ----- errors

    def _dest_failure(self, e: OSError, what: str) -> tuple[int, int, str]:
        if e.errno in _FATAL_ERRNOS:
            raise FatalIOError(f"destination {os.fsdecode(self.dest)}: {e.strerror}") from None
        return ERROR, 0, f"{what}: {e.strerror}"

    def _dest_error(self, e: OSError, path: bytes, what: str) -> None:
        self._error(path, self._dest_failure(e, what)[2])

    def _error(self, path: bytes, why: str) -> None:
        self.res.errors.append((path, why))


class DryRunApplier(_Base):
    """Writes nothing: records each action in `res.actions`, counts what would be done."""

    def open_root(self) -> Folder:
        return self._open_root(missing_ok=True)

    def record(self, op: str, path: bytes) -> None:
        self.res.actions.append((op, path))

    def _fix_attrs(self, fd: int, e: Entry) -> bool:
        return _set_attrs(fd, e, False, self.how, self.misses)

    def _link(self, first: bytes, e: Entry) -> bool:
        return True

    def _leftover(self, cur: Folder, name: bytes) -> None:
        pass

    def _delete_extra(self, cur: Folder, path: bytes, shown: bytes) -> None:
        self.record("delete", shown)
        self.res.deleted.append(shown)

    def _unlink(self, cur: Folder, path: bytes) -> bool:
        return True

    def _mkdir(self, cur: Folder, e: Entry) -> Folder | None:
        return self._push(Folder(e.path, e, None, True, parent=cur))

    def _set_attrs_of(self, cur: Folder, e: Entry) -> bool:
        return e.kind == SYMLINK or self._file_attrs(cur, e, False)

    def _remove_dir(self, cur: Folder, e: Entry) -> bool:
        return True

    def _symlink(self, cur: Folder, e: Entry) -> None:
        pass

    def _put_file(self, cur: Folder, e: Entry, src: bytes | None) -> None:
        if src == NOWHERE:
            self._account(_Job(e, basename(e.path), False), ERROR, 0, self._gone)
            return
        self.record("copy", e.path)
        self.res.copied_files += 1
        self.res.copied_bytes += e.size
        self.done(e)

    def _start(self, d: Folder, batch: list[_Job]) -> Callable[[], list[_Outcome]] | None:
        dfd = d.fd
        return lambda: self._work(dfd, -1, batch)

    def _fetch(self, dfd: int | None, rfd: int, job: _Job) -> tuple[int, int, str]:
        return WOULD_COPY, 0, ""


class Applier(_Base):
    """Writes the destination; reads the remote through its own folder descriptors."""

    def __init__(self, source: SnapshotSource, dest: str, res: RestoreResult, jobs: int,
                 progress: Progress | None, how: meta.Apply = meta.NOTHING) -> None:
        super().__init__(source, dest, res, jobs, progress, how)
        self._tag = f"{TMP_TAG}{os.getpid()}-"
        self._count = itertools.count()

    def open_root(self) -> Folder:
        try:
            os.makedirs(self.dest, exist_ok=True)
        except OSError as e:
            raise FatalIOError(f"destination {os.fsdecode(self.dest)}: {e.strerror}") from None
        return self._open_root(missing_ok=False)

    def relocating(self, root: Folder) -> None:
        if self._remote_dir(root) is None:
            raise FatalIOError(f"remote {self.source.remote}: {root.rerr}")

    @staticmethod
    def _fd(d: Folder) -> int:
        assert d.fd is not None  # every folder of a run that writes is open
        return d.fd

    def _tmp(self, name: bytes) -> bytes:
        return temp_name(name, f"{self._tag}{next(self._count)}")

    # ----- the actions

    def _leftover(self, cur: Folder, name: bytes) -> None:
        try:
            os.unlink(name, dir_fd=self._fd(cur))  # our own leftover from an interrupted restore
        except OSError:
            pass

    def _delete_extra(self, cur: Folder, path: bytes, shown: bytes) -> None:
        try:
            _remove(self._fd(cur), basename(path))
            self.res.deleted.append(shown)
        except OSError as e:
            self._dest_error(e, path, "cannot delete")

    def _unlink(self, cur: Folder, path: bytes) -> bool:
        try:
            os.unlink(basename(path), dir_fd=self._fd(cur))
            return True
        except OSError as e:
            self._dest_error(e, path, "cannot remove")
            return False

    def _mkdir(self, cur: Folder, e: Entry) -> Folder | None:
        created = False
        try:
            os.mkdir(basename(e.path), 0o700, dir_fd=self._fd(cur))
            created = True
        except FileExistsError:
            self.res.dirs_created -= 1  # there after all (a race, or hidden from the walk)
        except OSError as err:
            self._dest_error(err, e.path, "cannot create folder")
            return None
        return self._enter(cur, e, created)

    def _fix_attrs(self, fd: int, e: Entry) -> bool:
        return _set_attrs(fd, e, True, self.how, self.misses)

    def _dest_dir(self, path: bytes) -> int:
        """The destination folder path, opened one component at a time, never
        through a link."""
        fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for part in path.split(b"/") if path else ():
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = nfd
        return fd

    def _link(self, first: bytes, e: Entry) -> bool:
        try:
            sdir = self._dest_dir(first.rpartition(b"/")[0])
            try:
                ddir = self._dest_dir(e.path.rpartition(b"/")[0])
                try:
                    return self._link_at(sdir, basename(first), ddir, e)
                finally:
                    os.close(ddir)
            finally:
                os.close(sdir)
        except OSError as err:
            self._dest_error(err, e.path, "cannot make the hard link")
            return False

    def _link_at(self, sdir: int, sname: bytes, ddir: int, e: Entry) -> bool:
        dname = basename(e.path)
        st = os.stat(sname, dir_fd=sdir, follow_symlinks=False)
        try:
            have = os.stat(dname, dir_fd=ddir, follow_symlinks=False)
            if (have.st_ino, have.st_dev) == (st.st_ino, st.st_dev):
                return False
        except FileNotFoundError:
            pass
        tmp = self._tmp(dname)
        try:
            os.link(sname, tmp, src_dir_fd=sdir, dst_dir_fd=ddir, follow_symlinks=False)
        except OSError as err:
            if err.errno not in _NO_HARD_LINK:
                raise
            # The destination holds no hard links (exFAT): a copy of the first name.
            self.misses.add("hard links", err)
            self._copy_local(sdir, sname, ddir, tmp, e)
        try:
            os.rename(tmp, dname, src_dir_fd=ddir, dst_dir_fd=ddir)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=ddir)
            except OSError:
                pass
            raise
        return True

    def _copy_local(self, sdir: int, sname: bytes, ddir: int, tmp: bytes, e: Entry) -> None:
        """Copy a restored file within the destination to tmp, and give it e's
        attributes as any restored file gets them."""
        sfd = os.open(sname, _READ_FLAGS, dir_fd=sdir)
        try:
            tfd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=ddir)
            try:
                if copy_fd(sfd, tfd, e.size, holes=True) != e.size:
                    raise OSError(errno.EIO, "changed while copied", tmp)
                _set_attrs(tfd, e, True, self.how, self.misses)
            except BaseException:
                os.close(tfd)
                os.unlink(tmp, dir_fd=ddir)
                raise
            os.close(tfd)
        finally:
            os.close(sfd)

    def _folder_mtime(self, e: Entry) -> None:
        try:
            fd = self._dest_dir(e.path)
            try:
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            finally:
                os.close(fd)
        except OSError as err:
            self._dest_error(err, e.path, "cannot set attributes")

    def _open_up(self, fd: int, st: os.stat_result) -> None:
        if st.st_mode & 0o700 != 0o700 and os.geteuid() != 0:
            try:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)  # set right when left
            except OSError:
                pass

    def _set_attrs_of(self, cur: Folder, e: Entry) -> bool:
        name, dfd = basename(e.path), self._fd(cur)
        if e.kind == SYMLINK:
            meta.apply_link_owner(dfd, name, e, self.how, self.misses)
            try:
                os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dfd, follow_symlinks=False)
            except OSError:
                pass  # some file systems cannot set a link's time
            return True
        return self._file_attrs(cur, e, True)

    def _remove_dir(self, cur: Folder, e: Entry) -> bool:
        try:
            _remove(self._fd(cur), basename(e.path))
            return True
        except OSError as err:
            self._dest_error(err, e.path, "cannot remove folder")
            return False

    def _symlink(self, cur: Folder, e: Entry) -> None:
        assert e.target is not None
        name, dfd = basename(e.path), self._fd(cur)
        tmp = self._tmp(name)
        try:
            os.symlink(e.target, tmp, dir_fd=dfd)
            meta.apply_link_owner(dfd, tmp, e, self.how, self.misses)
            try:
                os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dfd, follow_symlinks=False)
            except OSError:
                pass
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            cur.written.append((name, SYMLINK))
        except OSError as err:
            self.res.symlinks -= 1
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            self._dest_error(err, e.path, "cannot create symlink")

    def _put_file(self, cur: Folder, e: Entry, src: bytes | None) -> None:
        self._queue(cur, _Job(e, basename(e.path), False, src))

    # ----- the remote

    def _start(self, d: Folder, batch: list[_Job]) -> Callable[[], list[_Outcome]] | None:
        """A batch handed over (main thread): open d's remote folder if needed; the work
        for a worker, or None if no job of it is left to run."""
        rfd = -1
        if any(j.src is None for j in batch):
            opened = self._remote_dir(d)
            if opened is not None:
                rfd = opened
            else:
                for j in batch:
                    if j.src is None:
                        self._account(j, DAMAGED, 0, d.rerr or "missing on the remote")
                batch = [j for j in batch if j.src is not None]
                if not batch:
                    return None
        dfd = d.fd
        return lambda: self._work(dfd, rfd, batch)

    def _stored(self, e: Entry | None, name: bytes) -> bytes:
        """The name under which the backup stored entry e (see names.py).

        Not Remote._stored, which looks the path up in `Remote.escaped`: that set
        holds the current snapshot's escaped paths (NowIndex fills it, for content
        read where it lives now through `rem`) and is empty when the newest
        snapshot is restored. A folder or file opened here at its own path is
        named by the restored entry's own flag instead. The two agree as long as
        a path keeps its escaped name, which the backup keeps while the path
        exists (backup._mark_case_twins)."""
        if e is not None and e.escaped:
            return self.codec.escape(name)
        return self.codec.encode(name)

    def _remote_dir(self, d: Folder) -> int | None:
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
                d.rfd = os.open(self._stored(d.entry, basename(d.path)), DIR_FLAGS,
                                dir_fd=prfd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                d.rerr = f"missing on the remote (its folder {show(d.path)}/ is missing)"
            else:
                d.rerr = f"cannot be read on the remote: {e.strerror}"
            return None
        return d.rfd

    # ----- the copy (worker threads)

    def _fetch(self, dfd: int | None, rfd: int, job: _Job) -> tuple[int, int, str]:
        assert dfd is not None
        return self._copy_in(dfd, rfd, job.entry, job.name, job.src)

    def _copy_in(self, dfd: int, rfd: int, e: Entry, name: bytes,
                 src: bytes | None) -> tuple[int, int, str]:
        if src is not None and self.now is not None and src in self.now.undo:
            return self._rebuild(dfd, e, name, src)
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
            return self._write_checked(dfd, sfd, e, name)
        finally:
            os.close(sfd)

    def _rebuild(self, dfd: int, e: Entry, name: bytes, undo: bytes) -> tuple[int, int, str]:
        """An older version of a file patched in place since: its newer content,
        with the undo records of the patches applied newest first."""
        assert self.now is not None
        chain = self.now.rebuild_chain(undo)
        if chain is None:
            return DAMAGED, 0, "its undo record's base content is no longer on the remote"
        start, size, undos = chain
        try:
            sfd = self.rem.open_file(start)
        except OSError as err:
            return DAMAGED, 0, f"cannot be read on the remote: {err.strerror}"
        fds: list[int] = []
        try:
            if os.fstat(sfd).st_size != size:
                return DAMAGED, 0, "the content its undo record applies to has another size"
            for u in undos:
                fds.append(self.rem.open_file(u))
            return self._write_checked(dfd, sfd, e, name, size, fds)
        except OSError as err:
            return DAMAGED, 0, f"cannot be read on the remote: {err.strerror}"
        finally:
            for fd in [sfd, *fds]:
                os.close(fd)

    def _write_checked(self, dfd: int, sfd: int, e: Entry, name: bytes,
                       base_size: int | None = None, undos: list[int] | None = None,
                       ) -> tuple[int, int, str]:
        """Copy sfd into a temp file beside name (with undos: sfd's base_size bytes,
        then each undo record applied), check its digest, rename it into place."""
        tmp = self._tmp(name)
        try:
            tfd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=dfd)
        except OSError as err:
            return self._dest_failure(err, "cannot create a file")
        placed = False
        try:
            want = e.size if base_size is None else base_size
            try:
                n = copy_fd(sfd, tfd, want, holes=True)
                for ufd in undos or ():
                    if not apply_undo(ufd, tfd):
                        return DAMAGED, 0, "an undo record of it on the remote is damaged"
            except OSError as err:
                if err.errno in _FATAL_ERRNOS:
                    return self._dest_failure(err, "cannot write")
                return DAMAGED, 0, f"cannot be read on the remote: {err.strerror}"
            if n != want:
                return DAMAGED, 0, "is shorter on the remote than the snapshot says"
            if undos:
                n = e.size
            if _digest(tfd, e.size) != e.digest:
                return DAMAGED, 0, ("does not match its snapshot digest: the copy on the "
                                    "remote is corrupt; not restored")
            how = self.how
            if (how.owners or how.xattrs) and (
                    how.want_owner(e) not in (None, self._mine) or how.want_xattrs(e)):
                meta.apply_fd(tfd, os.fstat(tfd), e, how, self.misses)
            _fchmod(tfd, e.mode, self.misses)
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
