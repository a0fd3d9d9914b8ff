"""The remote tree, as ground btsoot does not trust: every operation stays beneath its root.

Other people and programs can change the remote between two runs, or during
one: a folder replaced by a symlink to somewhere else would, with plain path
joins, send btsoot's writes, renames and deletions out of the remote (into the
source, even). So no remote operation here ever passes a path with a slash to
the kernel. A path is resolved one component at a time from a descriptor of
the remote root, each folder opened with `O_PATH | O_DIRECTORY | O_NOFOLLOW`
(a symlink or a file where a folder belongs fails with ENOTDIR, never
followed), and the operation itself is the `*at` form on the last component,
relative to its parent's descriptor, with no-follow semantics where the call
has a choice (`O_NOFOLLOW` opens, `AT_SYMLINK_NOFOLLOW` times, chmod through
a descriptor of the very inode after checking it is no link). `.` and `..`
components are refused, so nothing climbs above the root either.

Folder descriptors are cached, least recently used first out, so a plan
walked in its sorted order resolves each folder once (on a network mount a
lookup is a round trip; this costs no more of them than the kernel's own walk
of a joined path). A cached descriptor is counted while an operation uses it
and closed only when unused, so transfer threads never see a descriptor
number reused under them. Renaming or removing a folder drops the cached
descriptors at and below it: a descriptor follows its folder wherever it
moves, and a path must not.

Paths beyond PATH_MAX need nothing special: no call sees more than one name.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from .errors import show_path

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CACHE_LIMIT = 256


def _raise_fd_limit() -> None:
    """Descriptors held for a window of parallel operations can pass the usual soft
    limit of 1024; the hard limit is the real bound."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft != resource.RLIM_INFINITY and soft < min(want, 1 << 16):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 1 << 16), hard))
        except (ValueError, OSError):
            pass


_raise_fd_limit()


def _same(name: bytes) -> bytes:
    return name


def split(rel: bytes) -> list[bytes]:
    """A remote-relative path's components; refuses empty, `.` and `..` ones."""
    parts = rel.split(b"/")
    for p in parts:
        if p in (b"", b".", b".."):
            raise OSError(errno.EINVAL, "not a plain path below the remote root",
                          os.fsdecode(rel) or ".")
    return parts


class Blocked(OSError):
    """A folder on the way to a path is missing (ENOENT) or is no folder (ENOTDIR:
    a link, a file). `rel` is that folder's path: the caller may repair it."""

    def __init__(self, err: int, rel: bytes, shown: str) -> None:
        super().__init__(err, os.strerror(err), shown)
        self.rel = rel


class _Slot:
    __slots__ = ("fd", "refs", "live")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1
        self.live = True


T = TypeVar("T")


class _Held(Generic[T]):
    """A folder descriptor in use: released (never closed under its user) on exit."""

    __slots__ = ("remote", "slot", "value")

    def __init__(self, remote: Remote, slot: _Slot, value: T) -> None:
        self.remote, self.slot, self.value = remote, slot, value

    def __enter__(self) -> T:
        return self.value

    def __exit__(self, *exc: object) -> None:
        self.remote._release(self.slot)


class Remote:
    """The remote folder `root`; every path given is relative to it (bytes), in the
    source's names: each is stored under `encode(name)` (see names.py)."""

    def __init__(self, root: str | bytes, limit: int = CACHE_LIMIT) -> None:
        self.root = os.fsencode(root)
        # How a name is stored (names.Codec.encode); set from the remote's profile.
        self.encode: Callable[[bytes], bytes] = _same
        # Paths stored under their escaped name (case twins, see snapshot.Entry.escaped).
        self.escaped: set[bytes] = set()
        self.escape: Callable[[bytes], bytes] = _same
        # The finest mtime step the remote keeps (sshfs and exFAT: whole seconds);
        # set from the profile. A remote mtime within it of the recorded one is equal.
        self.mtime_step = 1
        self.limit = limit
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._root = _Slot(fd)  # never evicted; refs stays >= 1 until close()
        self._cache: OrderedDict[bytes, _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for slot in self._cache.values():
                slot.live = False
                if slot.refs == 0:
                    os.close(slot.fd)
            self._cache.clear()
            if self._root.fd >= 0:
                os.close(self._root.fd)
                self._root.fd = -1

    def show(self, rel: bytes) -> str:
        """rel as a full path, for messages."""
        return show_path(self.root + b"/" + rel if rel else self.root)

    def _stored(self, rel: bytes, name: bytes) -> bytes:
        """The name under which the entry rel (last component `name`) is stored."""
        if self.escaped and rel in self.escaped:
            return self.escape(name)
        return self.encode(name)

    def same_mtime(self, remote_ns: int, recorded_ns: int) -> bool:
        """Is the mtime found on the remote the recorded one, as far as it keeps time?"""
        return abs(remote_ns - recorded_ns) < self.mtime_step

    # --- folder descriptors --------------------------------------------------

    def _acquire(self, rel: bytes) -> _Slot:
        with self._lock:
            if not rel:
                self._root.refs += 1
                return self._root
            # The common case: a folder resolved before (a key was validated when made).
            hit = self._cache.get(rel)
            if hit is not None:
                hit.refs += 1
                self._cache.move_to_end(rel)
                return hit
        comps = split(rel)
        with self._lock:
            k = len(comps)
            cur = None
            while k > 0:
                cur = self._cache.get(b"/".join(comps[:k]))
                if cur is not None:
                    break
                k -= 1
            if cur is None:
                cur = self._root
            cur.refs += 1
            if k:
                self._cache.move_to_end(b"/".join(comps[:k]))
        try:
            for j in range(k, len(comps)):
                key = b"/".join(comps[: j + 1])
                try:
                    fd = os.open(self._stored(key, comps[j]), _DIR_FLAGS, dir_fd=cur.fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR):
                        raise Blocked(e.errno, key, self.show(key)) from None
                    raise
                with self._lock:
                    found = self._cache.get(key)
                    if found is not None:  # another thread opened it meanwhile
                        os.close(fd)
                        found.refs += 1
                        nxt = found
                    else:
                        nxt = _Slot(fd)
                        self._cache[key] = nxt
                        self._evict()
                    self._unref(cur)
                cur = nxt
        except BaseException:
            with self._lock:
                self._unref(cur)
            raise
        return cur

    def _unref(self, slot: _Slot) -> None:
        """Drop one use of slot (the caller holds the lock)."""
        slot.refs -= 1
        if slot.refs == 0 and not slot.live:
            os.close(slot.fd)

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            self._unref(slot)

    def _evict(self) -> None:
        if len(self._cache) <= self.limit:
            return
        for key in list(self._cache):
            if len(self._cache) <= self.limit:
                break
            slot = self._cache[key]
            if slot.refs == 0:
                del self._cache[key]
                slot.live = False
                os.close(slot.fd)

    def forget(self, rel: bytes) -> None:
        """rel was renamed or removed: its cached descriptors, and those below it, go."""
        prefix = rel + b"/"
        with self._lock:
            for key in [k for k in self._cache if k == rel or k.startswith(prefix)]:
                slot = self._cache.pop(key)
                slot.live = False
                if slot.refs == 0:
                    os.close(slot.fd)

    def dir(self, rel: bytes) -> _Held[int]:
        """A descriptor (O_PATH) of the remote folder rel, for `*at` calls (a context
        manager: the descriptor stays open while it is used)."""
        slot = self._acquire(rel)
        return _Held(self, slot, slot.fd)

    def at(self, rel: bytes) -> _Held[tuple[int, bytes]]:
        """(descriptor of rel's folder, the name rel is stored under there), as a
        context manager. Every operation on the remote comes through here: it is
        a class, not a generator, because it runs once per file."""
        head, sep, name = rel.rpartition(b"/")
        if name in (b"", b".", b"..") or (sep and not head):
            raise OSError(errno.EINVAL, "not a plain path below the remote root", self.show(rel))
        stored = self._stored(rel, name)
        slot = self._acquire(head)
        return _Held(self, slot, (slot.fd, stored))

    @contextmanager
    def path(self, rel: bytes) -> Iterator[bytes]:
        """A path naming rel through its folder's descriptor (`/proc/self/fd/N/NAME`),
        for code that takes paths (a snapshot writer, the hashing pool). Valid
        while the block runs; the last name is the only one the kernel resolves."""
        with self.at(rel) as (fd, name):
            yield b"/proc/self/fd/%d/%s" % (fd, name)

    # --- operations ----------------------------------------------------------

    def lstat(self, rel: bytes) -> os.stat_result:
        if not rel:
            return os.stat(self._root.fd)
        with self.at(rel) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def lexists(self, rel: bytes) -> bool:
        try:
            self.lstat(rel)
        except (FileNotFoundError, NotADirectoryError, Blocked):
            return False  # or a folder above it is not a folder: rel is not there
        return True

    def isdir(self, rel: bytes) -> bool:
        """Is rel a real folder (not a link to one)?"""
        try:
            return stat.S_ISDIR(self.lstat(rel).st_mode)
        except (FileNotFoundError, NotADirectoryError, Blocked):
            return False

    def readlink(self, rel: bytes) -> bytes:
        with self.at(rel) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def mkdir(self, rel: bytes, mode: int = 0o700) -> None:
        with self.at(rel) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    def makedirs(self, rel: bytes, mode: int = 0o700) -> None:
        """mkdir -p, one component at a time; an existing non-folder fails."""
        done = b""
        for comp in split(rel):
            done = done + b"/" + comp if done else comp
            try:
                self.mkdir(done, mode)
            except FileExistsError:
                if not self.isdir(done):
                    raise Blocked(errno.ENOTDIR, done, self.show(done)) from None

    def rename(self, src: bytes, dst: bytes) -> None:
        with self.at(src) as (sfd, sname), self.at(dst) as (dfd, dname):
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        self.forget(src)
        self.forget(dst)

    def unlink(self, rel: bytes) -> None:
        with self.at(rel) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def rmdir(self, rel: bytes) -> None:
        with self.at(rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)
        self.forget(rel)

    def symlink(self, target: bytes, rel: bytes) -> None:
        with self.at(rel) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    def open(self, rel: bytes, flags: int, mode: int = 0o600) -> int:
        """open(2) of rel; never follows a link at any step (O_NOFOLLOW is added)."""
        with self.at(rel) as (fd, name):
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)

    def open_file(self, rel: bytes) -> int:
        """rel opened for reading, which must be a regular file: a fifo planted on
        the remote cannot hang the run, a device cannot be read."""
        fd = self.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", self.show(rel))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def utime(self, rel: bytes, mtime_ns: int) -> None:
        """Set rel's times, a link's own times if rel is a link."""
        if not rel:
            os.utime(self._root.fd, ns=(mtime_ns, mtime_ns))
            return
        with self.at(rel) as (fd, name):
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)

    def chmod(self, rel: bytes, mode: int) -> None:
        """chmod rel itself; a link there is refused (ELOOP), never followed."""
        with self.at(rel) if rel else self._root_at() as (fd, name):
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            if stat.S_ISLNK(os.fstat(pfd).st_mode):
                raise OSError(errno.ELOOP, "a symlink where a file or folder belongs",
                              self.show(rel))
            # The descriptor pins the inode checked above: no path is looked up again.
            try:
                os.chmod(b"/proc/self/fd/%d" % pfd, mode)
            except PermissionError:
                if not mode & 0o6000:
                    raise
                # Set-id bits refused (exFAT): the rest; the snapshot keeps them all.
                os.chmod(b"/proc/self/fd/%d" % pfd, mode & 0o1777)
        finally:
            os.close(pfd)

    @contextmanager
    def _root_at(self) -> Iterator[tuple[int, bytes]]:
        yield self._root.fd, b"."

    def write_atomic(self, rel: bytes, data: bytes) -> None:
        """Replace rel by data durably (see durable.py): a temp file beside it,
        fsynced, renamed over it, its folder synced."""
        tmp = rel + b".tmp"
        with os.fdopen(self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.rename(tmp, rel)
        self.sync_dir(rel.rpartition(b"/")[0])  # b"": the root

    def sync_dir(self, rel: bytes) -> None:
        """fsync folder rel (its entries), where the file system supports that."""
        with self.dir(rel) as pfd:
            try:
                fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            except OSError:
                return
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                raise
        finally:
            os.close(fd)

    def listdir(self, rel: bytes) -> list[bytes]:
        with self.dir(rel) as pfd:
            fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
        try:
            return [os.fsencode(n) for n in os.listdir(fd)]
        finally:
            os.close(fd)
