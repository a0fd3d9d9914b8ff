"""The scanner API: walk a tree, hash files in parallel.

Picks the compiled core (`_fastscan`) unless BTSOOT_PUREPYTHON=1 asks for the
pure-Python twin (`_pyscan`), or the extension is not built (an sdist installed
without a C compiler). Set BTSOOT_REQUIRE_COMPILED=1 to make a missing extension
an error instead of a fallback (CI does, so a broken build cannot hide).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from ._kinds import CHANGED, DIR, ERROR, FILE, KIND_NAMES, SPECIAL, SYMLINK

#: True when the compiled core was wanted but is not installed, so the pure one
#: runs unasked: the CLI says so once (fallback_warning), the library stays quiet.
FALLBACK: bool = False

if os.environ.get("BTSOOT_PUREPYTHON") == "1":
    from . import _pyscan as _impl
else:
    try:
        from . import _fastscan as _impl  # type: ignore[no-redef]
    except ImportError:
        if os.environ.get("BTSOOT_REQUIRE_COMPILED") == "1":
            raise
        from . import _pyscan as _impl
        FALLBACK = True

IMPLEMENTATION: str = _impl.IMPLEMENTATION
walk = _impl.walk
hash_file = _impl.hash_file
line_path = _impl.line_path
line_same = _impl.line_same
copy_small = _impl.copy_small
SMALL_COPY_MAX: int = _impl.SMALL_COPY_MAX

#: Files at or above CHUNK_THRESHOLD bytes also get one digest per CHUNK_SIZE
#: bytes, recorded in the snapshot, so a later version can send only changed chunks.
CHUNK_SIZE = 4 << 20
CHUNK_THRESHOLD = 16 << 20

__all__ = [
    "CHANGED", "CHUNK_SIZE", "CHUNK_THRESHOLD", "DIR", "ERROR", "FALLBACK", "FILE", "IMPLEMENTATION",
    "KIND_NAMES", "SMALL_COPY_MAX", "SPECIAL", "SYMLINK", "copy_small", "default_threads",
    "fallback_warning", "hash_batch", "hash_file", "hash_files", "line_path", "line_same", "walk",
]

_warned = False


def fallback_warning() -> str | None:
    """The line the CLI prints on stderr when the pure core runs unasked; None when
    the compiled core is in use, the pure one was asked for, or it was already
    given in this process. Returned rather than printed: importing btsoot as a
    library must not write to stderr."""
    global _warned
    if not FALLBACK or _warned:
        return None
    _warned = True
    return ("btsoot: warning: the compiled core is not installed (built without a C compiler?): "
            "using the pure-Python core, several times slower; install a wheel, "
            "or reinstall with a compiler")


def default_threads() -> int:
    """Hashing is I/O-bound on spinning disks and CPU-bound on page cache: a few per core."""
    return max(2, min(8, (os.cpu_count() or 2) * 2))


def hash_batch(paths: list[bytes], chunk_size: int = CHUNK_SIZE,
               chunk_threshold: int = CHUNK_THRESHOLD, retries: int = 1) -> list[tuple]:
    """hash_file() over a few paths in one pool task (a task per small file costs
    more than hashing it). A file that changed while read is tried `retries` times."""
    out = []
    for p in paths:
        for _ in range(retries):
            r = hash_file(p, chunk_size, chunk_threshold)
            if r[5] != CHANGED:
                break
        out.append(r)
    return out


#: A pool task hashes up to BATCH_FILES files or about BATCH_BYTES bytes.
BATCH_FILES = 64
BATCH_BYTES = 8 << 20


def hash_files(
    paths: Iterable[bytes],
    threads: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    chunk_threshold: int = CHUNK_THRESHOLD,
) -> Iterator[tuple]:
    """hash_file() over many paths on a thread pool; results in input order.

    Paths go to the pool in batches of BATCH_FILES; the input is consumed
    lazily with a bounded window, so a generator of millions of paths keeps
    memory flat.
    """
    threads = threads or default_threads()
    if threads <= 1:
        for p in paths:
            yield hash_file(p, chunk_size, chunk_threshold)
        return
    window = threads * 4
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="btsoot-hash") as pool:
        pending: deque = deque()
        batch: list[bytes] = []
        for p in paths:
            batch.append(p)
            if len(batch) >= BATCH_FILES:
                pending.append(pool.submit(hash_batch, batch, chunk_size, chunk_threshold))
                batch = []
                if len(pending) >= window:
                    yield from pending.popleft().result()
        if batch:
            pending.append(pool.submit(hash_batch, batch, chunk_size, chunk_threshold))
        while pending:
            yield from pending.popleft().result()
