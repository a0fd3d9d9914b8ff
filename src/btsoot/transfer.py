"""Moving bytes: the kernel copy path, temp-name writes, remote durability.

`copy_fd` tries copy_file_range (server-side or reflink copies where the file
systems allow), then sendfile, then a plain read/write loop, remembering per
process which of them the kernel refused so the fallback costs one failed call.
It serves remote-side copies. A copy from the source goes through a buffer
instead (`copy_hashed`), hashing the very bytes it writes: that is the only way
to be sure the digest the snapshot records is the digest of what the remote got.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

from . import meta, scanner
from .errors import SourceError
from .limit import Limiter
from .remotefs import Remote
from .scanner import CHUNK_SIZE, CHUNK_THRESHOLD
from .snapshot import FILE, Entry

_BUF = 1 << 20
_CHUNK = 1 << 30
_no_cfr = False
_no_sendfile = False

# Errors that mean "this copy method does not work between these two files".
_FALLBACK = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EIO}


# Files below this size are copied whole, holes or not (one lseek less each).
SPARSE_MIN = 1 << 20

# The run's bandwidth limit on what goes from the source to the remote (see
# limit.py): copies and patches wait here; remote-side copies do not.
_limit: Limiter | None = None


@contextlib.contextmanager
def limited(rate: int) -> Iterator[None]:
    """Within the block, send at most `rate` bytes per second (0: no limit)."""
    global _limit
    _limit = Limiter(rate) if rate else None
    try:
        yield
    finally:
        _limit = None


def _sending(n: int) -> None:
    lim = _limit
    if lim is not None:
        lim.take(n)


def data_map(fd: int, size: int) -> list[tuple[int, int]] | None:
    """A sparse file's data: [(start, end)] by SEEK_DATA/SEEK_HOLE, in order; None
    when the file has no hole (or is small, or its file system cannot tell). The
    file position is left anywhere."""
    if size < SPARSE_MIN:
        return None
    try:
        if os.lseek(fd, 0, os.SEEK_HOLE) >= size:
            return None
        segs: list[tuple[int, int]] = []
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break  # nothing but a hole to the end
                raise
            if start >= size:
                break
            off = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segs.append((start, off))
        return segs
    except OSError:
        return None


def copy_fd(src: int, dst: int, size: int, holes: bool = False) -> int:
    """Copy size bytes (or until EOF) from src to dst from offset 0; returns bytes copied.
    A sparse src (data_map) gets its data copied and its holes left holes. With
    holes, a file of SPARSE_MIN bytes or more from a src that reports none (a
    remote that keeps no holes: exFAT, sshfs) gets its runs of zeros left as holes."""
    segs = data_map(src, size)
    if segs is not None:
        return _copy_segments(src, dst, size, segs)
    if holes and size >= SPARSE_MIN:
        return _copy_zeros_as_holes(src, dst, size)
    os.lseek(src, 0, os.SEEK_SET)
    return _copy_all(src, dst, size)


_HOLE_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(_HOLE_BLOCK)


def _copy_zeros_as_holes(src: int, dst: int, size: int) -> int:
    """Copy through a buffer, leaving every all-zero block of _HOLE_BLOCK bytes
    unwritten (a hole once the file is cut to size), as `cp --sparse` does."""
    buf = bytearray(_BUF)
    view = memoryview(buf)
    off = 0
    while off < size:
        n = os.preadv(src, [view[:min(_BUF, size - off)]], off)
        if n == 0:
            break
        start = -1  # the first of a run of blocks with data
        for i in range(0, n, _HOLE_BLOCK):
            j = min(n, i + _HOLE_BLOCK)
            zero = buf.startswith(_ZERO_BLOCK if j - i == _HOLE_BLOCK else bytes(j - i), i)
            if not zero and start < 0:
                start = i
            elif zero and start >= 0:
                _pwrite_all(dst, view[start:i], off + start)
                start = -1
        if start >= 0:
            _pwrite_all(dst, view[start:n], off + start)
        off += n
    os.ftruncate(dst, off)
    return off


def _copy_segments(src: int, dst: int, size: int, segs: list[tuple[int, int]]) -> int:
    global _no_cfr
    for start, end in segs:
        off = start
        while off < end:
            n = -1
            if not _no_cfr:
                try:
                    n = os.copy_file_range(src, dst, end - off, off, off)
                except OSError as e:
                    if e.errno not in _FALLBACK:
                        raise
                    if e.errno != errno.EIO:
                        _no_cfr = True
            if n < 0:  # through a buffer
                buf = os.pread(src, min(_BUF, end - off), off)
                n = len(buf)
                if n:
                    _pwrite_all(dst, buf, off)
            if n == 0:
                return off  # shorter than said: the caller checks
            off += n
    os.ftruncate(dst, size)
    return size


def fchmod_kept(fd: int, mode: int) -> PermissionError | None:
    """fchmod, or where the file system refuses set-id bits (exFAT), the rest of
    the mode (the snapshot keeps them, and a restore gives them back); returns
    that refusal (None: the whole mode was set)."""
    try:
        os.fchmod(fd, mode & 0o7777)
    except PermissionError as e:
        if not mode & 0o6000:
            raise
        os.fchmod(fd, mode & 0o1777)
        return e
    return None


def _pwrite_all(fd: int, data: bytes | memoryview, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _copy_all(src: int, dst: int, size: int) -> int:
    global _no_cfr, _no_sendfile
    done = 0
    if not _no_cfr and size > 0:
        try:
            while done < size:
                n = os.copy_file_range(src, dst, min(_CHUNK, size - done))
                if n == 0:
                    return done
                done += n
            return done
        except OSError as e:
            if e.errno not in _FALLBACK or done:
                raise
            if e.errno != errno.EIO:
                _no_cfr = True
    if not _no_sendfile and size > 0:
        try:
            while done < size:
                n = os.sendfile(dst, src, done, min(_CHUNK, size - done))
                if n == 0:
                    return done
                done += n
            return done
        except OSError as e:
            if e.errno not in _FALLBACK or done:
                raise
            _no_sendfile = True
    os.lseek(src, done, os.SEEK_SET)
    os.lseek(dst, done, os.SEEK_SET)
    # One buffer, sized to what is left: os.read(src, 1 MiB) allocates the whole
    # MiB on every call, an empty file's included.
    buf = bytearray(min(_BUF, max(size - done, 1 << 16)))
    while True:
        got = os.readv(src, [buf])
        if not got:
            return done
        view = memoryview(buf)[:got]
        while view:
            n = os.write(dst, view)
            view = view[n:]
            done += n


def copy_hashed(src: int, dst: int, size: int, chunk_size: int = 0,
                chunk_threshold: int = 0) -> tuple[int, str, list[str] | None, int]:
    """Copy up to size bytes from src (a source file) to dst through a buffer, hashing
    exactly the bytes written (XXH3-128, the snapshot's digest); returns (bytes,
    digest, chunks, bytes written). A failed read is a SourceError.

    With chunk_size, a file of at least chunk_threshold bytes also gets its
    per-chunk digests (reads never cross a chunk boundary), as the scanner does.
    A sparse source (data_map) sends only its data: a stretch of hole is hashed
    as the zeros it reads as, and left a hole in dst.
    """
    h = xxhash.xxh3_128()
    chunks: list[str] | None = [] if chunk_size and size >= chunk_threshold else None
    part = xxhash.xxh3_128() if chunks is not None else None
    in_part = 0
    buf = bytearray(min(_BUF, max(size, 1)))
    view = memoryview(buf)
    segs = data_map(src, size)
    zeros = memoryview(bytes(len(buf))) if segs is not None else None
    seg = 0
    done = written = 0
    while done < size:
        want = min(len(buf), size - done)
        if part is not None:
            want = min(want, chunk_size - in_part)
        if segs is not None:
            while seg < len(segs) and segs[seg][1] <= done:
                seg += 1
            hole = seg == len(segs) or segs[seg][0] >= done + want
        else:
            hole = False
        if hole:
            assert zeros is not None
            data, n = zeros[:want], want  # a hole: read as zeros, not written
        else:
            try:
                n = os.preadv(src, [view[:want]], done)
            except OSError as e:
                raise SourceError.of(e) from None
            if n == 0:
                break
            data = view[:n]
        h.update(data)
        if part is not None:
            part.update(data)
            in_part += n
            if in_part == chunk_size:
                chunks.append(part.hexdigest())  # type: ignore[union-attr]
                part.reset()
                in_part = 0
        if not hole:
            _sending(n)
            _pwrite_all(dst, data, done)
            written += n
        done += n
    if segs is not None:
        os.ftruncate(dst, done)  # (holes at the end)
    if part is not None and in_part:
        chunks.append(part.hexdigest())  # type: ignore[union-attr]
    return done, h.hexdigest(), chunks, written


def temp_name(path: bytes, tag: str) -> bytes:
    """A name in the target's own folder (so the final rename is atomic)."""
    d, _, _ = path.rpartition(b"/")
    t = b".btsoot-tmp-" + tag.encode()
    return d + b"/" + t if d else t


class SourceChanged(Exception):
    """The source file's size or mtime moved while it was copied."""


def _open_source(path: bytes) -> tuple[int, os.stat_result]:
    """A source file opened for reading (never through a link) and its stat; a
    failure is the source's (SourceError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise SourceError.of(e, path) from None
    try:
        return fd, os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise SourceError.of(e, path) from None


def write_file(src: bytes | int, dfd: int, dst_tmp: bytes, dst_final: bytes, entry: Entry,
               check_source: bool, sync: bool = False) -> tuple[int, str | None, list[str] | None]:
    """Copy src (a path, or an open descriptor the caller closes) to dst_tmp, set
    mode and mtime, rename onto dst_final; both are names in the remote folder
    dfd (see remotefs), so nothing is written through a link.

    With check_source, the source's size and mtime must equal the entry's
    before and after the copy, and the bytes written must hash to the entry's
    digest, else SourceChanged is raised and nothing reaches dst_final. (Size
    and mtime alone miss a file rewritten with its times kept, or rewritten in
    the same timestamp tick, between the scan and the copy or during either:
    the digest of what was actually written cannot miss it.) An entry without
    a digest (the scan left hashing to the copy) takes the digest written.

    With sync, the file is fsynced before the rename: for remotes where one sync
    of the whole file system at the end does not reach the far end (sshfs).

    Returns (bytes written: of a sparse file its data only, digest, chunk
    digests) — the digests only when the copy computed them.
    """
    if check_source and entry.size < scanner.SMALL_COPY_MAX:
        # Most files: the compiled core reads, hashes, writes and renames with two
        # GIL hand-offs instead of a dozen (which, with several transfer threads,
        # cost more than the copying).
        assert isinstance(src, bytes)
        _sending(entry.size)
        digest, err, side = scanner.copy_small(src, dfd, dst_tmp, dst_final, entry.size,
                                               entry.mtime_ns, entry.mode, entry.digest, sync)
        if err == scanner.CHANGED:
            raise SourceChanged()
        if err:
            raise (SourceError if side == 0 else OSError)(
                err, os.strerror(err), src if side == 0 else dst_tmp)
        return entry.size, digest, None
    # src as a path is the source; as a descriptor, a file on the remote (a remote-side
    # copy): only the source's errors are SourceError.
    if isinstance(src, bytes):
        sfd, st = _open_source(src)
    else:
        sfd = src
        st = os.fstat(sfd)
    try:
        if check_source and (st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns):
            raise SourceChanged()
        tfd = os.open(dst_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dfd)
        try:
            chunks = None
            if check_source:
                n, digest, chunks, sent = copy_hashed(
                    sfd, tfd, entry.size, *((CHUNK_SIZE, CHUNK_THRESHOLD)
                                            if entry.digest is None else (0, 0)))
            else:
                n, digest = copy_fd(sfd, tfd, entry.size), None
                sent = n
            if n != entry.size:
                raise SourceChanged()
            if check_source:
                st2 = os.fstat(sfd)
                if (st2.st_size != entry.size or st2.st_mtime_ns != entry.mtime_ns
                        or (entry.digest is not None and digest != entry.digest)):
                    raise SourceChanged()
            fchmod_kept(tfd, entry.mode)
            if sync:
                os.fsync(tfd)
        except BaseException:
            os.close(tfd)
            _unlink_quiet(dfd, dst_tmp)
            raise
        os.close(tfd)
    finally:
        if isinstance(src, bytes):
            os.close(sfd)
    try:
        # After the close: a network file system may flush (and re-time) at close.
        os.utime(dst_tmp, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dfd, follow_symlinks=False)
        os.rename(dst_tmp, dst_final, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        _unlink_quiet(dfd, dst_tmp)
        raise
    return sent, digest, chunks


# --- patches: a large file's changed chunks, written in place -----------------
#
# A redo file in the remote's .btsoot/patch/ holds the new chunks (a header
# line, then their bytes). It is complete and durable before the first byte of
# the target changes, and removed only once the patched target is durable. So a
# crash leaves the target either untouched (no complete redo file: it never
# changed) or finishable (replay applies the redo file again; writing the same
# bytes twice is harmless). Never the old and new content mixed for good.

PATCH_FORMAT = "btsoot-patch"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def patch_file(src_path: bytes, remote: Remote, redo: bytes, target: bytes, entry: Entry,
               idx: tuple[int, ...]) -> int:
    """Bring the remote file `target` to entry's content by writing only the chunks
    in idx, read from src_path, through the redo file `redo` (both paths relative
    to the remote); returns the bytes of those chunks.

    Every chunk read must hash to the entry's chunk digest, and the source's size
    and mtime must equal the entry's before and after, else SourceChanged is
    raised before the target is touched. The unchanged chunks on the remote are
    the ones the scan found equal, so the target ends up holding exactly the
    content the entry's digest describes.
    """
    assert entry.chunks is not None
    digests = entry.chunks
    sfd, st = _open_source(src_path)
    try:
        if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
            raise SourceChanged()
        header = {"format": PATCH_FORMAT, "size": entry.size, "mode": entry.mode & 0o7777,
                  "mtime": entry.mtime_ns, "chunk_size": CHUNK_SIZE,
                  "chunks": [[i, entry.chunks[i]] for i in idx]}

        def chunks() -> Iterator[bytes]:
            for i in idx:
                off = i * CHUNK_SIZE
                try:
                    buf = os.pread(sfd, min(CHUNK_SIZE, entry.size - off), off)
                except OSError as e:
                    raise SourceError.of(e, src_path) from None
                if len(buf) != min(CHUNK_SIZE, entry.size - off) or (
                        xxhash.xxh3_128_hexdigest(buf) != digests[i]):
                    raise SourceChanged()
                _sending(len(buf))
                yield buf
            st2 = os.fstat(sfd)
            if st2.st_size != entry.size or st2.st_mtime_ns != entry.mtime_ns:
                raise SourceChanged()

        sent = _write_record(remote, redo, header, chunks())
    finally:
        os.close(sfd)
    apply_redo(remote, redo, target, check=False)
    remote.unlink(redo)
    return sent


def _write_record(remote: Remote, rel: bytes, header: dict[str, Any],
                  chunks: Iterable[bytes]) -> int:
    """A redo or undo record at rel: the header line, then the chunks, synced with
    its folder; removed if anything fails on the way (a chunk that raises too).
    Returns the bytes of the chunks."""
    fd = remote.open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    n = 0
    try:
        _write_all(fd, orjson.dumps(header, option=orjson.OPT_APPEND_NEWLINE))
        for buf in chunks:
            _write_all(fd, buf)
            n += len(buf)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            remote.unlink(rel)
        except OSError:
            pass
        raise
    os.close(fd)
    remote.sync_dir(rel.rpartition(b"/")[0])
    return n


def apply_redo(remote: Remote, redo: bytes, target: bytes, check: bool = True) -> bool:
    """Write a redo file's chunks into target, set its size, mode and mtime, and
    make it durable. With check (replay after a crash), the redo file is read
    and verified in full first, and one that is incomplete or damaged changes
    nothing: False. The target must be a regular file (never a link). Both paths
    are relative to the remote."""
    rfd = remote.open_file(redo)
    try:
        rec = read_record(rfd)
        if rec is None or (check and not _apply_spans(rfd, rec, None, True)):
            return False
        tfd = remote.open(target, os.O_WRONLY)
        try:
            if not stat.S_ISREG(os.fstat(tfd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", remote.show(target))
            _apply_spans(rfd, rec, tfd, False)
            mtime = rec.header["mtime"]
            fchmod_kept(tfd, rec.header["mode"])
            os.utime(tfd, ns=(mtime, mtime))
            os.fsync(tfd)
        finally:
            os.close(tfd)
    finally:
        os.close(rfd)
    return True


@dataclass(frozen=True, slots=True)
class Record:
    """A redo or undo record read and checked for form: its header, where its data
    starts, and its spans (offset in the target, length, digest) in order."""

    header: dict[str, Any]
    start: int
    spans: list[tuple[int, int, str]]


def read_record(fd: int) -> Record | None:
    """The record in fd, if complete and well-formed (its size is the header's
    sum); else None."""
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        try:
            h = orjson.loads(f.readline())
            size, cs = int(h["size"]), int(h["chunk_size"])
            h["mode"], h["mtime"] = int(h["mode"]), int(h["mtime"])
            chunks = [(int(i), str(d)) for i, d in h["chunks"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        start = f.tell()
    if h.get("format") != PATCH_FORMAT or cs <= 0 or size < 0:
        return None
    spans = [(i * cs, max(0, min(cs, size - i * cs)), d) for i, d in chunks]
    if os.fstat(fd).st_size != start + sum(n for _, n, _ in spans):
        return None
    return Record(h, start, spans)


def _apply_spans(fd: int, rec: Record, tfd: int | None, check: bool) -> bool:
    """Write rec's chunks into tfd (None: write nothing) and cut it to the record's
    size; with check, each chunk is checked against its digest first (False at
    the first that does not match)."""
    pos = rec.start
    for off, n, d in rec.spans:
        buf = os.pread(fd, n, pos)
        pos += n
        if check and (len(buf) != n or xxhash.xxh3_128_hexdigest(buf) != d):
            return False
        if tfd is not None:
            _pwrite_all(tfd, buf, off)
    if tfd is not None:
        os.ftruncate(tfd, int(rec.header["size"]))
    return True


class NotTheOld(Exception):
    """The remote file is not the content the snapshot says it replaces."""


def undo_chunks(old: Entry, new: Entry, idx: tuple[int, ...]) -> list[int]:
    """The chunks of old that a patch of new's chunks idx overwrites or cuts off."""
    assert old.chunks is not None and new.chunks is not None
    cut = [i for i in range(len(new.chunks), len(old.chunks))]
    return sorted({i for i in idx if i < len(old.chunks)} | set(cut))


def write_undo(remote: Remote, target: bytes, undo: bytes, old: Entry, new: Entry,
               idx: tuple[int, ...]) -> int:
    """Before target (holding old) is patched to new's content: keep the chunks
    about to be overwritten or cut off as an undo record at `undo` (the format of
    a redo file, plus the content it applies to: `base`, new's digest and size),
    written and synced. old's content is then new's plus this record. Returns the
    record's size. Raises NotTheOld if a chunk read does not hash to old's."""
    assert old.chunks is not None and new.digest is not None
    keep = undo_chunks(old, new, idx)
    header = {"format": PATCH_FORMAT, "size": old.size, "mode": old.mode & 0o7777,
              "mtime": old.mtime_ns, "chunk_size": CHUNK_SIZE,
              "chunks": [[i, old.chunks[i]] for i in keep],
              "base": new.digest, "base_size": new.size}
    digests = old.chunks
    tfd = remote.open_file(target)

    def chunks() -> Iterator[bytes]:
        for i in keep:
            off = i * CHUNK_SIZE
            want = min(CHUNK_SIZE, old.size - off)
            buf = os.pread(tfd, want, off)
            if len(buf) != want or xxhash.xxh3_128_hexdigest(buf) != digests[i]:
                raise NotTheOld()
            yield buf

    try:
        n = _write_record(remote, undo, header, chunks())
    finally:
        os.close(tfd)
    return len(orjson.dumps(header, option=orjson.OPT_APPEND_NEWLINE)) + n


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def clone_fd(src: int, dst: int) -> bool:
    """Make dst share src's blocks (a reflink); False where the file system cannot."""
    import fcntl

    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                       errno.EBADF, errno.EPERM):
            return False
        raise
    return True


def clone_to(remote: Remote, target: bytes, dst: bytes) -> bool:
    """Before target is patched in place: dst a clone of it (sharing its blocks:
    a reflink), synced. False, and nothing left at dst, where the file system
    cannot clone."""
    tfd = remote.open_file(target)
    try:
        dfd = remote.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            ok = clone_fd(tfd, dfd)
            if ok:
                os.fsync(dfd)
        except BaseException:
            ok = False
            raise
        finally:
            os.close(dfd)
            if not ok:
                try:
                    remote.unlink(dst)
                except OSError:
                    pass
    finally:
        os.close(tfd)
    if ok:
        remote.sync_dir(dst.rpartition(b"/")[0])
    return ok


def undo_meta(new: Entry, nbytes: int) -> dict[str, Any]:
    """What an undo record's list line says of it: the content it applies to, and
    its own size."""
    return {"base": new.digest, "base_size": new.size, "bytes": nbytes}


def apply_undo(ufd: int, tfd: int | None) -> bool:
    """Turn tfd (holding the record's base content) into the content before the
    patch: write the record's chunks (each checked against its digest) and set
    the size. False if the record is damaged (tfd is then not to be used).
    tfd None: only check the record."""
    rec = read_record(ufd)
    return rec is not None and _apply_spans(ufd, rec, tfd, True)


def make_symlink(dfd: int, dst_tmp: bytes, dst_final: bytes, entry: Entry) -> None:
    """A symlink at dst_final, made under dst_tmp and renamed (names in folder dfd)."""
    assert entry.target is not None
    _unlink_quiet(dfd, dst_tmp)
    os.symlink(entry.target, dst_tmp, dir_fd=dfd)
    try:
        os.utime(dst_tmp, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dfd, follow_symlinks=False)
    except OSError:
        pass  # some file systems cannot set a link's time; the link itself is what matters
    os.rename(dst_tmp, dst_final, src_dir_fd=dfd, dst_dir_fd=dfd)


def set_attrs(remote: Remote, rel: bytes, entry: Entry, how: meta.Apply = meta.NOTHING,
              misses: meta.Misses | None = None) -> None:
    """Give the remote entry rel entry's mode and mtime (a link: its own mtime only),
    and first its owner and xattrs, as far as `how` says (see apply_meta)."""
    if how.owners or how.xattrs:
        apply_meta(remote, rel, entry, how, misses or meta.Misses())
    if entry.kind != "symlink":
        remote.chmod(rel, entry.mode & 0o7777)
    try:
        remote.utime(rel, entry.mtime_ns)
    except OSError:
        if entry.kind != "symlink":
            raise


def apply_meta(remote: Remote, rel: bytes, entry: Entry, how: meta.Apply,
               misses: meta.Misses) -> None:
    """Give the remote entry rel entry's owner and xattrs (what `how` says the
    remote keeps), opened beneath the remote root without following a link;
    what the remote refuses is counted in misses, never raised."""
    with remote.at(rel) as (dfd, name):
        if entry.kind == "symlink":
            meta.apply_link_owner(dfd, name, entry, how, misses)
            return
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(name, flags | (os.O_DIRECTORY if entry.kind == "dir" else 0), dir_fd=dfd)
        try:
            meta.apply_fd(fd, os.fstat(fd), entry, how, misses)
        finally:
            os.close(fd)


def matches(remote: Remote, rel: bytes, entry: Entry) -> bool:
    """Does the remote entry rel look like entry (size+mtime, or link target)? One lstat."""
    try:
        st = remote.lstat(rel)
    except OSError:
        return False
    if entry.kind == FILE:
        return stat.S_ISREG(st.st_mode) and st.st_size == entry.size and (
            remote.same_mtime(st.st_mtime_ns, entry.mtime_ns))
    if entry.kind == "symlink":
        try:
            return stat.S_ISLNK(st.st_mode) and remote.readlink(rel) == entry.target
        except OSError:
            return False
    return stat.S_ISDIR(st.st_mode)


def _unlink_quiet(dfd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


_libc = None


def syncfs(path: str) -> None:
    """Make everything written to path's file system durable, in one call."""
    global _libc
    if _libc is None:
        # The running process's own symbols include libc's: no library search
        # (ctypes.util.find_library spawns helper processes, ~0.2 s a call).
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)
