"""Verify: re-read the remote and compare it with the snapshot that describes it.

The remote is walked once (lstat only) and merged with the snapshot, both in
snapshot order: every entry's presence, kind, size and link target is checked
on every run. Reading and hashing (XXH3-128, on the scanner's thread pool)
is the expensive part, so it can be limited to a share of the files:

- `subset=(K, N)`: the files whose path hashes to slice K of N. Slices are
  disjoint and together cover every file, and a path stays in its slice as
  the tree changes.
- `sample=P`: each file with probability P percent.
- `rotate=(K, N)`: the next K slices of N, from a cursor kept in the block's
  state and moved on when the run ends: a nightly `--next 1/30` reads the whole
  remote once every 30 runs, whatever the length of the month (a date-based
  `--subset "$(date +%-d)/31"` never reads slice 31 in a month of 30 days).

Missing and corrupt entries of the block's committed snapshot are remembered
(`BlockState.save_damaged`), and the next backup re-sends them. Entries the
remote holds beyond the snapshot are listed apart: they are not damage.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import xxhash

from . import profile as profiles
from . import remote as rmt
from . import scanner
from .config import Block
from .errors import EXIT_DAMAGE, EXIT_OK, EXIT_PARTIAL, FatalIOError, UsageError
from .paths import is_under
from .reading import (
    EntryChecker,
    Found,
    SnapshotSource,
    merge_found,
    open_snapshot,
    show,
    walk_decoded,
    walk_found,
)
from .remotefs import Remote
from .snapshot import DIR, FILE, SYMLINK, Entry
from .state import BlockState, Lock

Progress = Callable[[str, Any], None]
Select = Callable[[bytes], bool]


def parse_subset(text: str, option: str = "--subset") -> tuple[int, int]:
    """'3/31' -> (3, 31); 1 <= K <= N."""
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise UsageError(f"{option}: expected K/N like 3/31, got {text!r}")
    ki, ni = int(k), int(n)
    if not 1 <= ki <= ni:
        raise UsageError(f"{option} {text}: K must be between 1 and N")
    return ki, ni


def subset(k: int, n: int) -> Select:
    """Slice k of n (1-based), by a hash of the path: stable, disjoint, complete."""
    return lambda path: xxhash.xxh3_64_intdigest(path) % n == k - 1


def slices(first: int, count: int, n: int) -> Select:
    """Slices first .. first+count-1 of n (1-based, wrapping round)."""
    want = {(first - 1 + i) % n for i in range(count)}
    return lambda path: xxhash.xxh3_64_intdigest(path) % n in want


def sample(percent: float, rng: random.Random | None = None) -> Select:
    if not 0 < percent <= 100:
        raise UsageError(f"--sample {percent}: expected a percentage above 0, at most 100")
    draw = (rng or random.Random()).random
    return lambda path: draw() * 100 < percent


@dataclass(slots=True)
class VerifyResult:
    snapshot: str
    remote: str
    block: str | None = None
    result: str = "ok"  # ok | damaged | partial
    exit_code: int = EXIT_OK
    files: int = 0  # files in the snapshot
    file_bytes: int = 0
    checked_files: int = 0  # files read and hashed
    checked_bytes: int = 0
    missing_files: int = 0  # files missing, those below a missing folder included
    missing: list[bytes] = field(default_factory=list)  # top-most missing paths
    corrupt: list[tuple[bytes, str]] = field(default_factory=list)
    extra: list[bytes] = field(default_factory=list)  # on the remote, not in the snapshot
    errors: list[tuple[bytes, str]] = field(default_factory=list)  # could not be checked
    recorded: int = 0  # damaged paths remembered: the next backup re-sends them
    rotation: dict[str, int] | None = None  # with rotate: the slices read, the next one
    durations: dict[str, float] = field(default_factory=dict)
    # With attic=True: the attic's files read and checked against their lists (kept
    # apart: nothing is re-sent for them, and nothing in the attic is ever deleted).
    attic_files: int | None = None
    attic_missing: list[bytes] = field(default_factory=list)
    attic_corrupt: list[tuple[bytes, str]] = field(default_factory=list)

    @property
    def damaged(self) -> set[bytes]:
        return set(self.missing) | {p for p, _ in self.corrupt}

    def summary(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "remote": self.remote,
            "snapshot": self.snapshot,
            "result": self.result,
            "exit_code": self.exit_code,
            "files": self.files,
            "bytes": self.file_bytes,
            "checked_files": self.checked_files,
            "checked_bytes": self.checked_bytes,
            "missing_files": self.missing_files,
            "missing": [show(p) for p in self.missing],
            "corrupt": [{"path": show(p), "error": w} for p, w in self.corrupt],
            "extra": [show(p) for p in self.extra],
            "errors": [{"path": show(p), "error": w} for p, w in self.errors],
            "recorded_for_next_backup": self.recorded,
            "rotation": self.rotation,
            "attic": None if self.attic_files is None else {
                "checked_files": self.attic_files,
                "missing": [show(p) for p in self.attic_missing],
                "corrupt": [{"path": show(p), "error": w} for p, w in self.attic_corrupt]},
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
        }


def verify_remote(source: SnapshotSource, select: Select | None = None, *,
                  jobs: int | None = None, progress: Progress | None = None,
                  attic: bool = False) -> VerifyResult:
    """Compare source.remote with source's snapshot; hash the files `select` picks (all).
    attic: also read the attic's files (those `select` picks) against their lists."""
    t0 = time.monotonic()
    res = VerifyResult(snapshot=source.header.id, remote=source.remote)
    root = os.fsencode(source.remote)
    try:
        remote = Remote(root)
    except OSError as err:
        raise FatalIOError(f"remote {source.remote}: {err.strerror}") from None
    prof = profiles.load(remote) or profiles.Profile()
    codec = prof.codec()
    remote.encode, remote.escape = codec.encode, codec.escape
    unlistable: set[bytes] = set()
    walk = walk_decoded if codec.active or prof.case_insensitive else walk_found
    found = (f for f in walk(root, b"", res.errors, unlistable)
             if not is_under(f.path, rmt.META.encode()))
    if progress is not None:
        progress("phase", "list")
        progress("total", sum(e.size for e in source.entries()
                              if e.kind == FILE and (select is None or select(e.path))))
        progress("phase", "verify")
    with remote:
        # Listed and read in one pass, a batch of files at a time: memory does not
        # grow with the tree.
        _compare(source, res, remote, found, unlistable, select,
                 lambda batch: _hash_all(res, remote, batch, jobs, progress))
        res.durations["read"] = time.monotonic() - t0
        if attic:
            t = time.monotonic()
            held: list[Entry] = []
            undos: list[Entry] = []
            for where, e, undo in rmt.attic_contents(remote):
                if e.kind == FILE and e.digest and (select is None or select(where)):
                    (held if undo is None else undos).append(e.with_path(where))
            part = VerifyResult(snapshot=res.snapshot, remote=res.remote)
            _hash_all(part, remote, held, jobs, None)
            _check_undos(part, remote, undos)
            res.attic_files = len(held) + len(undos)
            res.attic_missing, res.attic_corrupt = part.missing, part.corrupt
            res.errors += part.errors
            res.durations["attic"] = time.monotonic() - t
    if res.missing or res.corrupt or res.attic_missing or res.attic_corrupt:
        res.result, res.exit_code = "damaged", EXIT_DAMAGE
    elif res.errors:
        res.result, res.exit_code = "partial", EXIT_PARTIAL
    res.durations["total"] = time.monotonic() - t0
    return res


HASH_BATCH = 4096  # files handed to the reading pass at a time


def _compare(source: SnapshotSource, res: VerifyResult, remote: Remote, found: Iterator[Found],
             unlistable: set[bytes], select: Select | None,
             read: Callable[[list[Entry]], None]) -> None:
    """The listing pass: every entry's presence, kind, size and link target checked
    against what was found; the files to hash go to read, HASH_BATCH at a time."""
    checker = EntryChecker(f"snapshot {source.header.id}")
    to_hash: list[Entry] = []
    skip: bytes | None = None

    def corrupt(path: bytes, why: str) -> None:
        res.corrupt.append((path, why))

    s: Entry | None
    d: Found | None
    for s, d in merge_found(_checked(source, checker, res, remote), found):
        path = s.path if s is not None else d.path  # type: ignore[union-attr]
        if skip is not None and is_under(path, skip):
            if s is not None and s.kind == FILE and d is None:
                res.missing_files += 1
            continue
        skip = None
        if s is not None and any(is_under(path, u) for u in unlistable):
            continue  # below a folder that could not be listed: reported there
        if d is None:
            assert s is not None
            res.missing.append(s.path)
            res.missing_files += s.kind == FILE
            skip = s.path if s.kind == DIR else None
        elif s is None:
            res.extra.append(d.path + b"/" if d.kind == DIR else d.path)
            skip = d.path if d.kind == DIR else None
        elif s.kind != d.kind:
            corrupt(path, f"is a {d.kind} on the remote, the snapshot has a {s.kind}")
            skip = path if DIR in (s.kind, d.kind) else None
        elif s.kind == FILE:
            if d.size != s.size:
                corrupt(path, f"has {d.size} bytes on the remote, the snapshot says {s.size}")
            elif select is None or select(path):
                to_hash.append(s)
                if len(to_hash) >= HASH_BATCH:
                    read(to_hash)
                    to_hash = []
        elif s.kind == SYMLINK and d.target != s.target:
            corrupt(path, "points elsewhere on the remote than in the snapshot")
    if to_hash:
        read(to_hash)


def hash_on_remote(remote: Remote, entries: list[Entry], jobs: int | None,
                   chunk_threshold: int = 1 << 62) -> Iterator[tuple[Entry, tuple]]:
    """Each entry's file on the remote hashed: (entry, scanner.hash_file's result),
    in order. A file that cannot be reached is reported as ENOENT or ENOTDIR.
    Each file is read through its folder's descriptor (see remotefs), held until its
    result is back: a folder swapped for a link meanwhile cannot redirect the read."""
    held: deque[AbstractContextManager[bytes]] = deque()

    def paths() -> Iterator[bytes]:
        for e in entries:
            cm: AbstractContextManager[bytes] = remote.path(e.path)
            try:
                p = cm.__enter__()
            except OSError as err:  # a folder on the way is gone or is no folder now
                cm = nullcontext(b"\0")  # an impossible path: reported as missing below
                p = cm.__enter__()
                if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise
            held.append(cm)
            yield p

    results = scanner.hash_files(paths(), jobs, chunk_threshold=chunk_threshold)
    for e, r in zip(entries, results, strict=True):
        held.popleft().__exit__(None, None, None)
        yield e, r


def _hash_all(res: VerifyResult, remote: Remote, to_hash: list[Entry], jobs: int | None,
              progress: Progress | None) -> None:
    """The reading pass: each file hashed and compared with its snapshot digest
    (chunk digests off: the whole-file digest is what the snapshot is checked against)."""
    for e, r in hash_on_remote(remote, to_hash, jobs):
        _hashed(res, e, r)
        if progress is not None:
            progress("progress", (res.checked_files, res.checked_bytes))


def _check_undos(res: VerifyResult, remote: Remote, undos: list[Entry]) -> None:
    """Undo records (transfer.write_undo): each chunk they keep, against its digest."""
    from .transfer import apply_undo

    for e in undos:
        try:
            fd = remote.open_file(e.path)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                res.missing.append(e.path)
            else:
                res.corrupt.append((e.path, f"cannot be read: {err.strerror}"))
            continue
        try:
            if not apply_undo(fd, None):
                res.corrupt.append((e.path, "undo record damaged"))
        except OSError as err:
            res.corrupt.append((e.path, f"cannot be read: {err.strerror}"))
        finally:
            os.close(fd)


def _hashed(res: VerifyResult, e: Entry, r: tuple) -> None:
    """Account one file's hash result."""
    digest, _chunks, _size, _mtime, _ino, err = r
    if err == 0:
        if digest != e.digest:
            res.corrupt.append((e.path, "does not match its snapshot digest"))
    elif err in (errno.ENOENT, errno.ENOTDIR):
        res.missing.append(e.path)
        res.missing_files += 1
    elif err == errno.EIO:
        res.corrupt.append((e.path, "cannot be read: I/O error"))
    elif err == scanner.CHANGED:
        res.errors.append((e.path, "changed while it was read"))
    else:
        res.errors.append((e.path, f"cannot be read: {os.strerror(err)}"))
    res.checked_files += 1
    res.checked_bytes += e.size


def _checked(source: SnapshotSource, checker: EntryChecker, res: VerifyResult,
             remote: Remote) -> Iterator[Entry]:
    """The snapshot's entries, each refused if unsafe to join below the remote; counted."""
    for e in source.entries():
        checker.check(e)
        if e.escaped:
            remote.escaped.add(e.path)
        if e.kind == FILE:
            res.files += 1
            res.file_bytes += e.size
        yield e


def verify(
    block: Block,
    *,
    snapshot: str | None = None,
    select: Select | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    attic: bool = False,
    rotate: tuple[int, int] | None = None,
) -> VerifyResult:
    """Verify a block's remote against its committed snapshot (or the one named).
    rotate=(K, N): the next K slices of N from the block's cursor (see above).

    Holds the block's lock. Refuses a remote that does not carry the block's
    `.btsoot/block.json` (an unmounted share would look like total loss).
    Damage found against the committed snapshot is remembered for the next
    backup; against an older snapshot it is only reported (the remote has
    moved on since, so differences are expected).
    """
    st = BlockState(block.state)
    st.ensure()
    with Lock(st.lock, f"block {block.name!r}"):
        ident = rmt.check_remote(block.remote, block.name, True)
        source = open_snapshot(block.remote, snapshot, st, ident)
        first = 1
        if rotate is not None:
            count, n = rotate
            cursor = st.load_verify_cursor()
            first = cursor.get("next", 1) if cursor.get("of") == n else 1
            first = first if isinstance(first, int) and 1 <= first <= n else 1
            select = slices(first, count, n)
        res = verify_remote(source, select, jobs=jobs or block.jobs or None, progress=progress,
                            attic=attic)
        res.block = block.name
        if rotate is not None:
            nxt = (first - 1 + count) % n + 1
            st.save_verify_cursor({"of": n, "next": nxt})  # read: the cursor moves on
            res.rotation = {"first": first, "count": count, "of": n, "next": nxt}
        damaged = res.damaged
        if damaged and source.header.id == st.load_head().head:
            st.save_damaged(damaged)
            res.recorded = len(damaged)
        return res
