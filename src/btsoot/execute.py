"""Execute a plan against the remote, journalling every operation.

Operations run in plan order; consecutive transfers (copies from the source
and remote-side copies) run in parallel on `jobs` threads. A source file that
fails its before/after check is re-hashed and copied again; if it keeps
changing or cannot be read, it is reported and its path keeps what the remote
already held. Any error writing the remote stops the run (FatalIOError): the
journal lets the next run pick up from there.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from . import scanner
from .errors import FatalIOError
from .journal import Journal, op_record
from .longpath import ShortPaths
from .plan import (
    DAMAGED,
    PATCH,
    STASH,
    Copy,
    Delete,
    Mkdir,
    Move,
    Op,
    Plan,
    RemoteCopy,
    Rmdir,
    SetAttr,
    Symlink,
    parent,
)
from .remotefs import Remote
from .snapshot import DIR, Entry
from .transfer import (
    SourceChanged,
    make_symlink,
    matches,
    patch_file,
    set_attrs,
    temp_name,
    write_file,
)

COPY_RETRIES = 3


@dataclass(slots=True)
class ExecStats:
    ops: int = 0
    bytes_sent: int = 0  # from the source across the link
    bytes_remote_copied: int = 0
    set_aside: list[tuple[bytes, bytes]] = field(default_factory=list)  # (path, where it went)
    unpatched: int = 0  # planned patches that became whole copies
    hashed_files: int = 0  # files hashed while sent (the scan left them unread)
    hashed_bytes: int = 0
    # path -> entry the remote now holds there instead of the planned one (None: nothing)
    failed: dict[bytes, Entry | None] = field(default_factory=dict)
    # path -> corrected entry (a file re-hashed after it changed during the copy)
    updated: dict[bytes, Entry] = field(default_factory=dict)
    errors: list[tuple[bytes, str]] = field(default_factory=list)


class Executor:
    def __init__(
        self,
        source: str,
        remote: Remote,
        journal: Journal,
        run_id: str,
        jobs: int = 4,
        on_progress: Callable[[ExecStats], None] | None = None,
        damaged: set[bytes] | None = None,
        small_inline: bool = False,
    ) -> None:
        self.src = os.fsencode(source)
        # Every remote operation goes through it: beneath the root, never via a link.
        self.remote = remote
        self.journal = journal
        self.run_id = run_id
        self.jobs = max(1, jobs)
        self.stats = ExecStats()
        self.on_progress = on_progress
        self._stash_ready = False
        self._patch_ready = False
        self._lock = threading.Lock()  # stats are added to from every transfer thread
        # Paths `btsoot verify` found damaged: whatever is there may be in the way.
        self.damaged = damaged or set()
        self._aside = 0
        # Copy files under SMALL_COPY_MAX in this thread, only larger ones on the
        # pool (local disks: see remote.NETWORK_FS).
        self.small_inline = small_inline
        self.short = ShortPaths()

    def s(self, rel: bytes) -> bytes:
        """The source path of rel, likewise."""
        return self.short(self.src + b"/" + rel)

    def run(self, plan: Plan) -> ExecStats:
        ops = plan.ops
        i = 0
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="btsoot-copy") as pool:
            while i < len(ops):
                if isinstance(ops[i], (Copy, RemoteCopy)):
                    j = i
                    while j < len(ops) and isinstance(ops[j], (Copy, RemoteCopy)):
                        j += 1
                    if self.jobs == 1:
                        for op in ops[i:j]:
                            self._transfer(op)  # type: ignore[arg-type]
                            self._progress()
                    else:
                        # A bounded window: memory stays flat however many files are
                        # sent, and after a fatal error few transfers are still queued.
                        window: deque[Future] = deque()
                        for op in ops[i:j]:
                            if (self.small_inline and isinstance(op, Copy) and op.patch is None
                                    and op.entry.size < scanner.SMALL_COPY_MAX):
                                self._transfer(op)
                                self._progress()
                                continue
                            window.append(pool.submit(self._transfer, op))  # type: ignore[arg-type]
                            if len(window) >= self.jobs * 8:
                                window.popleft().result()
                                self._progress()
                        while window:
                            window.popleft().result()
                            self._progress()
                    i = j
                else:
                    self._one(ops[i])
                    self._progress()
                    i += 1
        self.journal.sync()
        self.short.close()
        return self.stats

    def _progress(self) -> None:
        self.stats.ops += 1
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def _fatal(self, e: OSError, what: str, path: bytes) -> FatalIOError:
        why = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            why = "no space left on the remote"
        return FatalIOError(f"remote: {what} {self.remote.show(path)}: {why}")

    # --- single operations ---------------------------------------------------

    def _make_writable(self, op: Op) -> bool:
        """Give the owner write access to the remote folders op changes; False if it had it.

        A read-only source folder is mirrored read-only, and then, unless btsoot
        runs as root, nothing inside it can be added, renamed or removed. The
        plan sets every such folder's attributes after all changes inside it, so
        its mode comes back; the journal records it as changed (mtime unknown),
        so after a crash the next plan sets it again.
        """
        paths = (op.src, op.dst) if isinstance(op, Move) else (op.path,)
        folders = {parent(p) for p in paths} | ({op.src} if isinstance(op, Move) else set())
        changed = False
        for d in sorted(f for f in folders if f):
            try:
                st = self.remote.lstat(d)
            except OSError:
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode) and mode & 0o300 != 0o300:
                i = self.journal.begin(op_record("attr", entry=Entry(d, DIR, 0, 0,
                                                                     st.st_mode | 0o700)))
                self.remote.chmod(d, mode | 0o700)
                self.journal.done(i)
                changed = True
        return changed

    def _set_aside(self, path: bytes) -> bool:
        """Move what blocks a damaged path (a file where a folder belongs, a folder
        where a file does) to REMOTE/.btsoot/damaged/RUN/N; never deleted. False
        if path is not one `btsoot verify` reported."""
        if path not in self.damaged:
            return False
        with self._lock:
            self._aside += 1
            dst = DAMAGED + b"/" + self.run_id.encode() + b"/" + str(self._aside).encode()
        self.remote.makedirs(dst.rpartition(b"/")[0])
        i = self.journal.begin(op_record("move", src=path, dst=dst))
        self.remote.rename(path, dst)
        self.journal.done(i)
        with self._lock:
            self.stats.set_aside.append((path, dst))
        return True

    def _one(self, op: Op, retry: bool = True) -> None:
        try:
            if isinstance(op, Mkdir):
                i = self.journal.begin(op_record("mkdir", entry=op.entry))
                try:
                    self.remote.mkdir(op.path, 0o700)
                except FileExistsError:
                    if not self.remote.isdir(op.path):  # a link to a folder is no folder
                        if not self._set_aside(op.path):
                            raise
                        self.remote.mkdir(op.path, 0o700)
                self.journal.done(i)
            elif isinstance(op, Move):
                if op.dst.startswith(STASH + b"/") and not self._stash_ready:
                    self.remote.makedirs(op.dst.rpartition(b"/")[0])
                    self._stash_ready = True
                i = self.journal.begin(op_record("move", src=op.src, dst=op.dst, entry=op.entry))
                self.remote.rename(op.src, op.dst)
                if op.entry is not None and op.entry.kind == "file":
                    set_attrs(self.remote, op.dst, op.entry)
                self.journal.done(i)
            elif isinstance(op, Symlink):
                tmp = temp_name(op.path, f"{self.run_id}-l")
                i = self.journal.begin(op_record("put", entry=op.entry, tmp=tmp))
                try:
                    with self.remote.at(op.path) as (dfd, name):
                        make_symlink(dfd, tmp.rpartition(b"/")[2], name, op.entry)
                except OSError as e:
                    if e.errno not in _IN_THE_WAY or not self._set_aside(op.path):
                        raise
                    with self.remote.at(op.path) as (dfd, name):
                        make_symlink(dfd, tmp.rpartition(b"/")[2], name, op.entry)
                self.journal.done(i)
            elif isinstance(op, Delete):
                i = self.journal.begin(op_record("del", path=op.path))
                try:
                    self.remote.unlink(op.path)
                except FileNotFoundError:
                    pass
                self.journal.done(i)
            elif isinstance(op, Rmdir):
                i = self.journal.begin(op_record("del", path=op.path))
                try:
                    self.remote.rmdir(op.path)
                except FileNotFoundError:
                    pass
                self.journal.done(i)
            elif isinstance(op, SetAttr):
                i = self.journal.begin(op_record("attr", entry=op.entry))
                set_attrs(self.remote, op.path, op.entry)
                self.journal.done(i)
        except OSError as e:
            if isinstance(e, PermissionError) and retry and self._make_writable(op):
                return self._one(op, retry=False)
            where = op.src if isinstance(op, Move) else op.path
            raise self._fatal(e, type(op).__name__.lower(), where) from None

    def _patch(self, op: Copy) -> bool:
        """Write only op's changed chunks into the remote file, in place. False when
        that cannot be done safely (the remote file is not the one the snapshot
        describes, or has other hard links that must keep the old content; the
        source changed): then nothing was written to it, and a full copy follows."""
        assert op.old is not None and op.patch is not None
        try:
            st = self.remote.lstat(op.path)
        except OSError:
            return False
        if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_mode & stat.S_IWUSR
                and st.st_size == op.old.size and st.st_mtime_ns == op.old.mtime_ns):
            return False
        try:
            if not self._patch_ready:
                self.remote.makedirs(PATCH)
                self.remote.sync_dir(PATCH.rpartition(b"/")[0])
                self._patch_ready = True
            redo = PATCH + b"/" + f"{self.run_id}-{id(op)}".encode()
            i = self.journal.begin(op_record("patch", entry=op.entry, redo=redo))
            n = patch_file(self.s(op.path), self.remote, redo, op.path, op.entry, op.patch)
        except SourceChanged:
            return False
        except OSError as e:
            if _is_source_error(e, self.src):
                return False  # the full copy meets it again and reports it
            raise self._fatal(e, "patch", op.path) from None
        self.journal.done(i)
        with self._lock:
            self.stats.bytes_sent += n
        return True

    def _transfer(self, op: Copy | RemoteCopy) -> None:
        if isinstance(op, Copy) and op.patch is not None:
            if self._patch(op):
                return
            with self._lock:
                self.stats.unpatched += 1
        entry = op.entry
        unlocked = cleared = False
        for attempt in range(COPY_RETRIES + 1):
            tmp = temp_name(op.path, f"{self.run_id}-{id(op)}-{attempt}")
            i = self.journal.begin(op_record("put", entry=entry, tmp=tmp))
            try:
                tmp_name = tmp.rpartition(b"/")[2]
                if isinstance(op, RemoteCopy):
                    sfd = self.remote.open_file(op.src)
                    try:
                        with self.remote.at(op.path) as (dfd, name):
                            n, _, _ = write_file(sfd, dfd, tmp_name, name, entry, False)
                    finally:
                        os.close(sfd)
                    with self._lock:
                        self.stats.bytes_remote_copied += n
                else:
                    with self.remote.at(op.path) as (dfd, name):
                        n, digest, chunks = write_file(self.s(op.path), dfd, tmp_name, name,
                                                       entry, True)
                    with self._lock:
                        self.stats.bytes_sent += n
                    if entry.digest is None:  # hashed while sent
                        entry = replace(entry, digest=digest,
                                        chunks=tuple(chunks) if chunks else None)
                        self.journal.done(i, digest=digest, chunks=chunks)
                        self.stats.updated[op.path] = entry
                        with self._lock:
                            self.stats.hashed_files += 1
                            self.stats.hashed_bytes += n
                        return
                self.journal.done(i)
                if entry is not op.entry:
                    self.stats.updated[op.path] = entry
                return
            except SourceChanged:
                pass
            except OSError as e:
                if isinstance(op, Copy) and _is_source_error(e, self.src):
                    self._source_failed(op, os.strerror(e.errno or errno.EIO))
                    return
                if isinstance(e, PermissionError) and not unlocked and self._make_writable(op):
                    unlocked = True
                    continue
                if e.errno in _IN_THE_WAY and not cleared and self._set_aside(op.path):
                    cleared = True
                    continue
                raise self._fatal(e, "write", op.path) from None
            # The source changed under us: hash it again and retry with the new state.
            r = scanner.hash_file(self.s(op.path), scanner.CHUNK_SIZE,
                                  scanner.CHUNK_THRESHOLD)
            digest, chunks, size, mtime, ino, err = r
            if err != 0:
                if err in (errno.ENOENT, errno.ENOTDIR):
                    self._source_failed(op, "vanished during backup")
                    return
                if err != scanner.CHANGED:
                    self._source_failed(op, os.strerror(err))
                    return
                continue
            entry = replace(entry, digest=digest, chunks=tuple(chunks) if chunks else None,
                            size=size, mtime_ns=mtime, ino=ino)
        self._source_failed(op, "kept changing while being copied")

    def _source_failed(self, op: Copy | RemoteCopy, why: str) -> None:
        self.stats.errors.append((op.path, why))
        # The remote keeps what it held at this path, if anything.
        keep = op.old if op.old is not None and matches(self.remote, op.path, op.old) else None
        self.stats.failed[op.path] = keep


# A rename onto a path that holds a folder (or a folder blocking a file's parent).
_IN_THE_WAY = {errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR}


def _is_source_error(e: OSError, src_root: bytes) -> bool:
    fn = e.filename
    if isinstance(fn, str):
        fn = os.fsencode(fn)
    return isinstance(fn, bytes) and fn.startswith(src_root + b"/")
