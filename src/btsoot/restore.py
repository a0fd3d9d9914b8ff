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

Where things are: reading.py opens the snapshot, checks its entries and walks
the destination (verify shares it); restore_walk.py decides one action per
(snapshot entry, destination entry) pair; restore_apply.py carries the
actions out (`Applier`) or records them (`DryRunApplier`, for --dry-run);
restore_pool.py hands the files to worker threads in batches. This module
ties them together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import meta, scanner
from . import remote as rmt
from .config import Block
from .errors import EXIT_DAMAGE, EXIT_PARTIAL, FatalIOError, GuardError, UsageError
from .paths import is_under
from .reading import EntryChecker, SnapshotSource, merge_found, open_snapshot, show, unsafe_path
from .restore_apply import Applier, DryRunApplier, Progress, RestoreResult
from .restore_walk import NowIndex, PairWalker, found, selected
from .snapshot import FILE
from .state import BlockState, Lock
from .transfer import syncfs

__all__ = ["RestoreResult", "SnapshotSource", "open_snapshot", "restore", "restore_block",
           "restore_from", "show"]


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


def _check_all(source: SnapshotSource, roots: list[bytes], res: RestoreResult) -> None:
    """Check every entry before the first write; count the files selected."""
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


def _run(source: SnapshotSource, dest: str, res: RestoreResult, roots: list[bytes], *,
         delete: bool, dry_run: bool, checksum: bool,
         exclude: Callable[[bytes, bool], bool] | None, jobs: int,
         progress: Progress | None, how: meta.Apply) -> None:
    """Walk the snapshot and the destination together; apply (or record) each decision."""
    applier = (DryRunApplier if dry_run else Applier)(source, dest, res, jobs, progress, how)
    try:
        root = applier.open_root()
        now = None
        if source.current is not None:
            now = NowIndex(source.current, applier.rem.escaped,
                           lambda: rmt.attic_contents(applier.rem), source.entries)
            applier.now = now
            applier.relocating(root)
        walker = PairWalker(delete, checksum, exclude, now, how)
        entries = selected(source, roots)
        pairs = (merge_found(entries, found(applier.dest, roots, res.errors))
                 if root.fd is not None else ((e, None) for e in entries))
        with applier.pool:
            walker.walk(root, pairs, applier)
            applier.pool.drain()
        applier.finish_links()
        if roots == [b""] and source.header.root is not None:
            applier.finish_root(source.header.root)
        applier.finish_meta()
    finally:
        applier.close()
    if res.damaged:
        res.result, res.exit_code = "damaged", EXIT_DAMAGE
    elif res.errors:
        res.result, res.exit_code = "partial", EXIT_PARTIAL
    elif dry_run:
        res.result = "dry-run"
    elif not (res.copied_files or res.attrs or res.dirs_created or res.symlinks
              or res.deleted):
        res.result = "unchanged"


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
    owners: bool | None = None,
    numeric_ids: bool = False,
    xattrs: bool = True,
    acls: bool = True,
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
    _check_all(source, roots, res)
    res.durations["check"] = time.monotonic() - t0
    if confirm is not None and not dry_run:
        confirm(source, dest)

    t = time.monotonic()
    if progress is not None:
        progress("total", res.file_bytes)
    if owners is None:
        owners = os.geteuid() == 0
    ids = (meta.id_mapper(source.names(), numeric_ids) if owners and not numeric_ids
           else meta.same_ids)
    how = meta.Apply(owners, xattrs, xattrs and acls, ids)
    _run(source, dest, res, roots, delete=delete, dry_run=dry_run, checksum=checksum,
         exclude=exclude, jobs=jobs or scanner.default_threads(), progress=progress, how=how)
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
    **meta_options: Any,
) -> RestoreResult:
    """Restore a block's committed snapshot (or the one named) into its source, or `to`.
    `meta_options`: restore()'s owners, numeric_ids, xattrs and acls.

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
                       block=block.name, bases=[block.source], **meta_options)


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
