"""A block's history as people ask about it: which snapshots are kept, how big
each was, what its run moved into the attic, and whether it restores exactly."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from . import remote as rmt
from .config import Block
from .remotefs import Remote
from .retention import Decision, Item, Policy, content_key, decide, select
from .snapshot import FILE, Entry, id_ns
from .state import BlockState


def snapshot_table(block: Block) -> list[dict[str, Any]]:
    """The kept snapshots, oldest first: id, time, files, bytes (from the run log),
    kept_by (the retention rules that keep it), attic_files and attic_bytes (what
    that run moved out of the mirror, from the remote's attic lists: None when the
    remote cannot be read), and complete: whether the content of every file it
    lists is still on the remote (in the mirror, as the newest snapshot says, or
    in the attic), i.e. whether it restores exactly."""
    st = BlockState(block.state)
    ids = st.committed_ids()
    # The run that committed each kept snapshot (the newest record of it), read
    # back from the newest until every kept id is found or the log ends.
    runs: dict[str, dict[str, Any]] = {}
    want = set(ids)
    for r in st.runs_backwards():
        sid = r.get("snapshot")
        if isinstance(sid, str) and sid in want and sid not in runs:
            runs[sid] = r
            if len(runs) == len(want):
                break
    attic = _attic(block.remote)
    reasons = select(ids, Policy.of(block))
    held: set[tuple[Any, ...] | None] = set()
    if attic is not None:
        held = set(attic[1])
        head = st.load_head().head
        if head in ids:
            held.update(content_key(e) for e in _entries(st, head))
    rows: list[dict[str, Any]] = []
    for sid in ids:
        r = runs.get(sid, {})
        ns = id_ns(sid)
        files, size = r.get("files"), r.get("bytes")
        n, nbytes = attic[0].get(sid, (0, 0)) if attic is not None else (None, None)
        rows.append({
            "id": sid,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9)) if ns else None,
            "files": files if type(files) is int else None,
            "bytes": size if type(size) is int else None,
            "attic_files": n,
            "attic_bytes": nbytes,
            "kept_by": reasons.get(sid, ["newest"]),
            # (Links and empty files come back from the record alone.)
            "complete": None if attic is None else all(
                content_key(e) in held for e in _entries(st, sid) if e.kind == FILE and e.size),
        })
    return rows


def _attic(remote_path: str) -> tuple[dict[str, tuple[int, int]], set[tuple[Any, ...] | None]] | None:
    """(run id -> (files, bytes) of what it moved into the attic, the contents the
    attic holds), from the lists; None if the remote cannot be opened (not
    mounted)."""
    if not os.path.isdir(remote_path):
        return None
    try:
        remote = Remote(remote_path)
    except OSError:
        return None
    out: dict[str, tuple[int, int]] = {}
    keys: set[tuple[Any, ...] | None] = set()
    try:
        for run, _, e, _prev, undo in rmt.attic_lists(remote):
            n, size = out.get(run, (0, 0))
            out[run] = (n + 1, size + (e.size if undo is None else undo["bytes"]))
            keys.add(content_key(e))
    finally:
        remote.close()
    return out, keys


def retain(block: Block, remote: Remote, st: BlockState, protect: set[str],
           dry_run: bool = False) -> Decision:
    """Apply the block's retention: the snapshots it lets go are removed here and
    on the remote, and the attic keeps exactly what the kept ones need (from the
    attic's own lists; the mirror is never listed). protect: ids kept whatever
    the policy says (the local and the remote head)."""
    ids = st.committed_ids()
    runs = rmt.attic_runs(remote)
    items = [Item(run, where, e, prev, undo)
             for run, where, e, prev, undo in rmt.attic_lists(remote, runs)]
    d = decide(ids, Policy.of(block), items, lambda sid: _entries(st, sid), protect)
    listed = {it.run for it in items}
    held = {it.run for it in d.held}
    oldest = min(d.kept) if d.kept else None
    # A run with nothing kept goes whole; one whose list cannot be read only once
    # no kept snapshot is older than it (nothing could need what it holds).
    whole: dict[str, set[bytes]] = {r: set() for r in runs if r not in held
                                     and (r in listed or oldest is None or r <= oldest)}
    parts: dict[str, set[bytes]] = {}
    for it in d.doomed:
        parts.setdefault(it.run, set()).add(it.entry.path)
    for run in whole:
        whole[run] = parts.pop(run, set())
    if not dry_run:
        keep = set(d.kept) | protect
        st.keep_only(keep)
        try:
            rmt.prune(remote, keep)
        except OSError:
            pass  # its snapshot files: tried again by the next run that writes
        rmt.prune_attic(remote, whole, parts)
    return d


def _entries(st: BlockState, sid: str) -> Iterator[Entry]:
    if sid not in st.committed_ids():
        return iter(())
    return st.entries(sid)


def prune(block: Block, dry_run: bool) -> Decision | None:
    """`btsoot prune`: what a backup that writes to the remote does at its end
    (retain), on its own; None when the block has no snapshot yet."""
    from .errors import FatalIOError
    from .state import Lock

    st = BlockState(block.state)
    st.ensure()
    with Lock(st.lock, f"block {block.name!r}"):
        head = st.load_head()
        rmt.check_remote(block.remote, block.name, head.head is not None)
        if head.head is None:
            return None
        try:
            with Remote(block.remote) as remote:
                return retain(block, remote, st, {i for i in (head.head, head.remote_head) if i},
                              dry_run)
        except OSError as e:
            raise FatalIOError(f"remote {block.remote}: cannot prune: {e.strerror}") from None


def snapshot_diff(block: Block, old: str, new: str | None) -> tuple[str, str, list[tuple[str, Entry]]]:
    """What changed between two kept snapshots (ids or unique prefixes; new: the
    newest if None), from the local record alone: (old id, new id, [(what, entry)])
    in path order, what being "added", "deleted", "changed" (content, or kind) or
    "attrs" (mode or mtime alone); the entry is the newer one (for deleted: the old)."""
    from .paths import merge
    from .reading import _pick

    st = BlockState(block.state)
    ids = st.committed_ids()
    if not ids:
        from .errors import UsageError

        raise UsageError(f"block {block.name!r} has no snapshots yet")
    a = _pick(old, ids, "local snapshots")
    b = _pick(new, ids, "local snapshots") if new is not None else ids[-1]
    out: list[tuple[str, Entry]] = []
    for o, n in merge(_entries(st, a), _entries(st, b)):
        if o is None:
            assert n is not None
            out.append(("added", n))
        elif n is None:
            out.append(("deleted", o))
        elif not o.same_content(n):
            out.append(("changed", n))
        elif (o.mode, o.mtime_ns) != (n.mode, n.mtime_ns) and n.kind != "dir":
            out.append(("attrs", n))
    return a, b, out
