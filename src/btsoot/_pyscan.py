"""Pure-Python twin of `_fastscan`: the same API, the same results.

It is the reference the compiled core is tested against (golden digests pin
both), and the fallback where the extension is not built. Select it with
BTSOOT_PUREPYTHON=1.

walk() order: depth-first pre-order with the children of each directory
sorted by their name bytes. That is the snapshot order: paths compared by
their components, as if b"/" sorted before every other byte, so a directory's
whole subtree is contiguous and directly follows the directory itself.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import stat
from collections.abc import Callable, Iterator

import xxhash

from ._kinds import CHANGED, DIR, ERROR, FILE, SPECIAL, SYMLINK
from .longpath import ShortPaths

IMPLEMENTATION = "python"
_BUFSIZE = 1 << 20


def walk(
    root: bytes,
    one_file_system: bool = True,
    exclude: Callable[[bytes, bool], bool] | None = None,
) -> Iterator[tuple]:
    """Yield (path, kind, size, mtime_ns, mode, ino, dev, extra, uid, gid, ctime_ns,
    nlink) for every entry below root.

    path is relative to root (bytes). extra is the link target for SYMLINK,
    the errno for ERROR, else None. The root itself is not yielded. A
    directory that cannot be listed is yielded as DIR and then as ERROR.
    """
    # stat, not lstat: a root that is a symlink is listed through, so
    # one_file_system must compare against the device actually walked.
    root_dev = os.stat(root).st_dev
    # Stack of (relative dir path, iterator over its sorted names).
    stack: list[tuple[bytes, Iterator[bytes]]] = []
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        yield (b"", ERROR, 0, 0, 0, 0, 0, e.errno or _errno.EIO, 0, 0, 0, 0)
        return
    stack.append((b"", iter(names)))
    short = ShortPaths()  # paths beyond PATH_MAX go through a folder descriptor
    try:
        yield from _walk(root, root_dev, stack, one_file_system, exclude, short)
    finally:
        short.close()


def _walk(root: bytes, root_dev: int, stack: list[tuple[bytes, Iterator[bytes]]],
          one_file_system: bool, exclude: Callable[[bytes, bool], bool] | None,
          short: ShortPaths) -> Iterator[tuple]:
    while stack:
        prefix, it = stack[-1]
        name = next(it, None)
        if name is None:
            stack.pop()
            continue
        rel = prefix + name
        full = short(root + b"/" + rel)
        try:
            st = os.lstat(full)
        except OSError as e:
            yield (rel, ERROR, 0, 0, 0, 0, 0, e.errno or _errno.EIO, 0, 0, 0, 0)
            continue
        m = st.st_mode
        is_dir = stat.S_ISDIR(m)
        if exclude is not None and exclude(rel, is_dir):
            continue
        if stat.S_ISREG(m):
            yield (rel, FILE, st.st_size, st.st_mtime_ns, m, st.st_ino, st.st_dev, None, *_more(st))
        elif is_dir:
            yield (rel, DIR, 0, st.st_mtime_ns, m, st.st_ino, st.st_dev, None, *_more(st))
            if one_file_system and st.st_dev != root_dev:
                continue
            try:
                children = _list_subdir(full)
            except OSError as e:
                yield (rel, ERROR, 0, 0, 0, 0, 0, e.errno or _errno.EIO, 0, 0, 0, 0)
                continue
            stack.append((rel + b"/", iter(children)))
        elif stat.S_ISLNK(m):
            try:
                target = os.readlink(full)
            except OSError as e:
                yield (rel, ERROR, 0, 0, 0, 0, 0, e.errno or _errno.EIO, 0, 0, 0, 0)
                continue
            yield (rel, SYMLINK, st.st_size, st.st_mtime_ns, m, st.st_ino, st.st_dev, target, *_more(st))
        else:
            yield (rel, SPECIAL, 0, st.st_mtime_ns, m, st.st_ino, st.st_dev, None, *_more(st))


def _more(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_uid, st.st_gid, st.st_ctime_ns, st.st_nlink


def _list_subdir(path: bytes) -> list[bytes]:
    """Sorted names in directory path; O_NOFOLLOW: a dir swapped for a symlink is not followed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # listdir(fd) gives str names; fsencode restores the exact bytes (surrogateescape).
        return sorted(os.fsencode(n) for n in os.listdir(fd))
    finally:
        os.close(fd)


def hash_file(path: bytes, chunk_size: int, chunk_threshold: int) -> tuple:
    """Hash one file: (digest, chunks, size, mtime_ns, ino, err).

    digest is the XXH3-128 hex digest of the whole content; chunks is the list
    of per-chunk hex digests when size >= chunk_threshold, else None. err is 0
    on success, an errno on failure, or CHANGED when the file's size or mtime
    differed before and after reading (then digest and chunks are None).
    size/mtime_ns/ino are from the fstat taken before reading. A path that is
    not a regular file is not read: err is EISDIR for a directory, else EINVAL.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    try:
        # O_NONBLOCK: opening a FIFO swapped in for the file must not block.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        return (None, None, 0, 0, 0, e.errno or _errno.EIO)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            # Never read a FIFO or device: it may block or never end.
            err = _errno.EISDIR if stat.S_ISDIR(before.st_mode) else _errno.EINVAL
            return (None, None, 0, 0, 0, err)
        os.set_blocking(fd, True)
        whole = xxhash.xxh3_128()
        chunks: list[str] | None = [] if before.st_size >= chunk_threshold else None
        part = xxhash.xxh3_128() if chunks is not None else None
        in_part = 0
        total = 0
        while True:
            want = _BUFSIZE if part is None else min(_BUFSIZE, chunk_size - in_part)
            buf = os.read(fd, want)
            if not buf:
                break
            total += len(buf)
            if total > before.st_size:
                break  # it grew: CHANGED; a file that keeps growing cannot hold us
            whole.update(buf)
            if part is not None:
                part.update(buf)
                in_part += len(buf)
                if in_part == chunk_size:
                    chunks.append(part.hexdigest())  # type: ignore[union-attr]
                    part.reset()
                    in_part = 0
        if part is not None and in_part:
            chunks.append(part.hexdigest())  # type: ignore[union-attr]
        after = os.fstat(fd)
    except OSError as e:
        return (None, None, 0, 0, 0, e.errno or _errno.EIO)
    finally:
        os.close(fd)
    if (
        total != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
    ):
        return (None, None, before.st_size, before.st_mtime_ns, before.st_ino, CHANGED)
    return (whole.hexdigest(), chunks, before.st_size, before.st_mtime_ns, before.st_ino, 0)


# --- snapshot lines: the no-change fast path (see _fastscan) -----------------

_PATH_PREFIX = b'{"path":"'
# After '"digest":"': the digest, optional chunk digests, the end of the line.
_DIGEST_TAIL = re.compile(rb'[0-9a-f]{32}"(?:,"chunks":\["[0-9a-f]{32}"(?:,"[0-9a-f]{32}")*\])?}\n')


def line_path(line: bytes) -> bytes | None:
    """The path of an entry line in the writer's canonical form, else None."""
    if not line.startswith(_PATH_PREFIX):
        return None
    end = line.find(b'"', 9)
    if end < 0:
        return None
    path = line[9:end]
    return None if b"\\" in path else path


def line_same(line: bytes, w: tuple, racy_before: int, ctime_before: int, links: bool) -> bool:
    """Is line (whose path the caller matched to w[0]) the canonical record of
    walk tuple w, field for field? Files must also carry a digest and have an
    mtime before racy_before; files and folders a ctime before ctime_before
    (else their extended attributes are read again). links: a file's link
    count is recorded when above one. Only files and folders can answer True."""
    off = 9 + len(w[0])
    kind = w[1]
    if w[10] >= ctime_before:
        return False
    if kind == FILE:
        if w[3] >= racy_before:
            return False
        want = (b'","type":"file","size":%d,"mtime":%d,"ctime":%d,"mode":%d,"uid":%d,"gid":%d,'
                b'"ino":%d,"dev":%d,' % (w[2], w[3], w[10], w[4], w[8], w[9], w[5], w[6]))
        if links and w[11] > 1:
            want += b'"nlink":%d,' % w[11]
        want += b'"digest":"'
        return line.startswith(want, off) and _DIGEST_TAIL.fullmatch(line, off + len(want)) is not None
    if kind == DIR:
        want = b'","type":"dir","mtime":%d,"ctime":%d,"mode":%d,"uid":%d,"gid":%d,"ino":%d,"dev":%d}\n' % (
            w[3], w[10], w[4], w[8], w[9], w[5], w[6])
        return len(line) == off + len(want) and line.endswith(want)
    return False


# --- small-file copies (see _fastscan.copy_small) ------------------------------

SMALL_COPY_MAX = _BUFSIZE
AT_FDCWD = -100  # Linux's value: "paths, not names in a folder descriptor"


def copy_small(src: bytes, dir_fd: int, tmp: bytes, final: bytes, size: int, mtime_ns: int,
               mode: int, expect_digest: str | None, sync: bool = False) -> tuple[str | None, int, int]:
    """Copy a file smaller than SMALL_COPY_MAX: (digest, err, side); see _fastscan."""
    if size >= SMALL_COPY_MAX:
        raise ValueError("copy_small: file too large")
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        return None, e.errno or _errno.EIO, 0
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None, _errno.EISDIR if stat.S_ISDIR(before.st_mode) else _errno.EINVAL, 0
        if before.st_size != size or before.st_mtime_ns != mtime_ns:
            return None, CHANGED, 0
        os.set_blocking(fd, True)
        data = b""
        while len(data) <= size:
            got = os.read(fd, size + 1 - len(data))
            if not got:
                break
            data += got
        after = os.fstat(fd)
    except OSError as e:
        return None, e.errno or _errno.EIO, 0
    finally:
        os.close(fd)
    if len(data) != size or after.st_size != size or after.st_mtime_ns != mtime_ns:
        return None, CHANGED, 0
    digest = xxhash.xxh3_128_hexdigest(data)
    if expect_digest is not None and digest != expect_digest:
        return None, CHANGED, 0
    dfd = None if dir_fd == AT_FDCWD else dir_fd
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=dfd)
    except OSError as e:
        return None, e.errno or _errno.EIO, 1
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
            try:
                os.fchmod(out, mode & 0o7777)
            except PermissionError:
                if not mode & 0o6000:  # (set-id bits some remotes refuse: see _fastscan)
                    raise
                os.fchmod(out, mode & 0o1777)
            os.utime(out, ns=(mtime_ns, mtime_ns))
            if sync:
                os.fsync(out)
        finally:
            os.close(out)
        os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException as e:  # an interrupt (SIGINT, SIGTERM) too: no temp file left
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        return None, e.errno or _errno.EIO, 1
    return digest, 0, 0
