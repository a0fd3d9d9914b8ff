"""A block's history as people ask about it: which snapshots are kept, how big
each was, what its run moved into the attic, and whether it restores exactly."""

from __future__ import annotations

import os
import time
from typing import Any

from . import remote as rmt
from .config import Block
from .ops import ATTIC
from .remotefs import Remote
from .snapshot import id_ns
from .state import BlockState


def snapshot_table(block: Block) -> list[dict[str, Any]]:
    """The kept snapshots, oldest first: id, time, files, bytes (from the run log),
    attic_files and attic_bytes (what that run moved out of the mirror, from the
    remote's attic lists: None when the remote cannot be read), and complete:
    whether every file it lists is still on the remote (in the mirror or the
    attic), i.e. whether it restores exactly."""
    st = BlockState(block.state)
    ids = st.committed_ids()
    runs = {r.get("snapshot"): r for r in reversed(st.recent_runs(100_000))
            if isinstance(r.get("snapshot"), str)}
    attic = _attic_sizes(block.remote)
    rows: list[dict[str, Any]] = []
    for sid in ids:
        r = runs.get(sid, {})
        ns = id_ns(sid)
        files, size = r.get("files"), r.get("bytes")
        rows.append({
            "id": sid,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9)) if ns else None,
            "files": files if type(files) is int else None,
            "bytes": size if type(size) is int else None,
            "attic_files": attic[sid][0] if attic is not None and sid in attic else
            (0 if attic is not None else None),
            "attic_bytes": attic[sid][1] if attic is not None and sid in attic else
            (0 if attic is not None else None),
            "moved_out": _moved_out(r),
        })
    # A snapshot restores exactly when every later run that moved content out of
    # the mirror still has its attic (or moved nothing out).
    complete = True
    for row in reversed(rows):
        row["complete"] = complete if attic is not None else None
        moved = row.pop("moved_out")
        if moved is not False and (attic is None or not row["attic_files"]):
            complete = False  # this run replaced or deleted files and kept no attic of them
    return rows


def _moved_out(run: dict[str, Any]) -> bool | None:
    """Did the run replace or delete files (None: its log line does not say)?"""
    w = run.get("change_weight")
    return w > 0 if type(w) is int else None


def _attic_sizes(remote_path: str) -> dict[str, tuple[int, int]] | None:
    """run id -> (files, bytes) of its attic, from the lists; None if the remote
    cannot be opened (not mounted)."""
    if not os.path.isdir(remote_path):
        return None
    try:
        remote = Remote(remote_path)
    except OSError:
        return None
    out: dict[str, tuple[int, int]] = {}
    try:
        for where, e in rmt.attic_contents(remote):
            run = os.fsdecode(where[len(ATTIC) + 1:].partition(b"/")[0])
            n, size = out.get(run, (0, 0))
            out[run] = (n + 1, size + e.size)
    finally:
        remote.close()
    return out


def prune(block: Block, dry_run: bool) -> list[str]:
    """Remove the attic of runs more than attic_days before now (never before the
    newest snapshot: a clock stepped back does not keep more, and ids only grow),
    as a backup that writes does; returns those runs (with dry_run: those that
    would be removed, nothing is)."""
    from .errors import FatalIOError
    from .snapshot import new_id
    from .state import Lock

    st = BlockState(block.state)
    st.ensure()
    with Lock(st.lock, f"block {block.name!r}"):
        head = st.load_head()
        ident = rmt.check_remote(block.remote, block.name, head.head is not None)
        if head.head is None:
            return []
        newest = max(filter(None, (head.head, (ident or {}).get("snapshot"))))
        now = id_ns(new_id(after=newest))
        assert now is not None
        before = rmt.attic_cutoff(block.attic_days, now)
        try:
            with Remote(block.remote) as remote:
                if dry_run:
                    return [r for r in rmt.attic_runs(remote) if r < before]
                return rmt.prune_attic(remote, before)
        except OSError as e:
            raise FatalIOError(f"remote {block.remote}: cannot prune the attic: {e.strerror}") from None
