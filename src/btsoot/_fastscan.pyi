"""Compiled scanner core (see _fastscan.pyx); same API and results as `_pyscan`."""

from collections.abc import Callable, Iterator
from os import PathLike

IMPLEMENTATION: str  # "compiled"

#: (path, kind, size, mtime_ns, mode, ino, dev, extra)
WalkEntry = tuple[bytes, int, int, int, int, int, int, bytes | int | None]
#: (digest, chunks, size, mtime_ns, ino, err)
HashResult = tuple[str | None, list[str] | None, int, int, int, int]

def walk(
    root: bytes,
    one_file_system: bool = True,
    exclude: Callable[[bytes, bool], bool] | None = None,
) -> Iterator[WalkEntry]:
    """Yield (path, kind, size, mtime_ns, mode, ino, dev, extra) for every entry below root.

    Depth-first pre-order, each directory's children sorted by name bytes, so
    a directory's whole subtree directly follows it. path is relative to root;
    the root itself is not yielded. kind is FILE, DIR, SYMLINK, SPECIAL (fifo,
    socket, device) or ERROR (see btsoot._kinds). size is 0 for DIR and
    SPECIAL; for SYMLINK it is the target length. extra is the link target
    (bytes) for SYMLINK, the errno for ERROR, else None; ERROR entries carry
    zeros in the other fields.

    Symlinks are never followed. A directory that cannot be listed is yielded
    as DIR and then as ERROR; an entry that cannot be lstat'ed is yielded as
    ERROR; the walk always goes on. exclude(relpath, is_dir) returning true
    drops the entry, and an excluded directory is never opened. With
    one_file_system, a directory on another device than root is yielded but
    not descended. Raises OSError (on the first next()) only if root itself
    cannot be lstat'ed.
    """

def hash_file(
    path: bytes | str | PathLike[bytes] | PathLike[str], chunk_size: int, chunk_threshold: int
) -> HashResult:
    """Hash one file: (digest, chunks, size, mtime_ns, ino, err).

    digest is the XXH3-128 hex digest of the whole content (as `xxhsum -H2`
    prints it); chunks is the list of hex digests of each chunk_size piece
    when size >= chunk_threshold, else None. err is 0 on success, an errno on
    failure (then size/mtime_ns/ino are 0), or CHANGED when the size or mtime
    differed before and after reading or a different number of bytes was
    read (then digest and chunks are None). size/mtime_ns/ino come from the
    fstat taken before reading. The path is opened with O_NOFOLLOW (a symlink
    gives ELOOP); a directory gives EISDIR and any other non-regular file
    EINVAL, without being read. Raises ValueError if chunk_size <= 0.
    """

def line_path(line: bytes) -> bytes | None:
    """The path of a snapshot entry line in the writer's canonical form
    ({"path":"..." with no escapes in the path), else None."""

def line_same(line: bytes, w: WalkEntry, racy_before: int) -> bool:
    """Is line (whose path the caller matched to w[0]) the canonical record of
    walk tuple w, field for field? Files must also carry a digest and have an
    mtime before racy_before. Only files and folders can answer True."""

SMALL_COPY_MAX: int

def copy_small(src: bytes, dir_fd: int, tmp: bytes, final: bytes, size: int, mtime_ns: int,
               mode: int, expect_digest: str | None, sync: bool = False) -> tuple[str | None, int, int]:
    """Copy a file smaller than SMALL_COPY_MAX: (digest, err, side).

    The source must have size and mtime_ns before and after it is read, and
    hash to expect_digest when that is given; else err is CHANGED and nothing
    is written. Then the bytes go to tmp (created, mode 0600, never through a
    link), get mode and mtime_ns, and tmp is renamed onto final; tmp and final
    are names in the folder dir_fd (or paths, with os's AT_FDCWD, -100). err
    is 0, CHANGED, or an errno;
    side says where an errno came from: 0 the source, 1 the remote (tmp is
    removed then).
    """
