"""What each run did, kept: the run log's records and every real run's item list.

    STATE/blocks/NAME/runs.jsonl           one record per run: the run's summary,
                                           as `backup --json` prints it
    STATE/blocks/NAME/items/RUN.jsonl.gz   each thing the run did or failed to do,
                                           one JSON object per line (gzip)
    STATE/blocks/NAME/unsent.json          files the source has and the remote does
                                           not hold as they are: since when, and
                                           whether it holds any version of them

A record's per-path lists (errors, skipped, ...) stop at LIST_CAP entries, their
full counts beside them: a run that cannot read a million files must not make a
record nobody can load. The item lists hold everything, up to a cap on their
total size (the oldest runs' lists go first; one run larger than the cap is cut,
its last line saying how many items were left out).

An item: {"op": verb, "path": ...} and what the verb needs: "from" (a move's or
remote copy's source), "bytes" (sent), "size", "target" (a symlink's), "error"
and "cause" (op "failed": the source file could not be read or the remote would
not take it), or op "resend" (a file verify found damaged, or gone from the
remote, sent again).
"""

from __future__ import annotations

import errno
import glob
import gzip
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from .durable import atomic_write, fsync_dir
from .errors import show_path

LIST_CAP = 100
ITEMS_CAP = 64 << 20  # bytes of compressed item lists kept per block
LISTS = ("errors", "skipped", "set_aside", "remade")

# Why a file was not backed up, as exit 3 counts it apart.
CAUSES = ("vanished", "busy", "permission", "remote", "other")
_VANISHED = {os.strerror(errno.ENOENT), os.strerror(errno.ENOTDIR), "vanished during backup"}
_BUSY = {os.strerror(errno.EBUSY), os.strerror(errno.ETXTBSY), os.strerror(errno.EAGAIN),
         "changed while being read", "kept changing while being copied"}
_PERMISSION = {os.strerror(errno.EACCES), os.strerror(errno.EPERM)}


def cause(why: str) -> str:
    """The kind of an error message (the scanner's and the executor's own words)."""
    if why in _VANISHED:
        return "vanished"
    if why in _BUSY:
        return "busy"
    if why in _PERMISSION:
        return "permission"
    if why.startswith("the remote cannot hold it"):
        return "remote"
    return "other"


def causes(errors: Iterable[tuple[bytes, str]]) -> dict[str, int]:
    c = Counter(cause(w) for _, w in errors)
    return {k: c[k] for k in CAUSES if c[k]}


def capped(record: dict[str, Any]) -> dict[str, Any]:
    """record with each per-path list cut at LIST_CAP; "counts" holds their lengths."""
    out = dict(record)
    counts = {}
    for k in LISTS:
        v = out.get(k)
        if isinstance(v, list):
            counts[k] = len(v)
            if len(v) > LIST_CAP:
                out[k] = v[:LIST_CAP]
    out["counts"] = counts
    return out


def items_dir(state_root: str) -> str:
    return os.path.join(state_root, "items")


def items_path(state_root: str, run: str) -> str:
    return os.path.join(items_dir(state_root), f"{run}.jsonl.gz")


def write_items(state_root: str, run: str, records: Iterable[dict[str, Any]],
                cap: int = ITEMS_CAP) -> int:
    """Write a run's item list (compressed, at most cap bytes), then drop the
    oldest lists until all of them fit in cap. Returns how many items it holds."""
    d = items_dir(state_root)
    os.makedirs(d, exist_ok=True)
    path = items_path(state_root, run)
    tmp = path + ".tmp"
    n = left_out = 0
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as z:
            for rec in records:
                if left_out or raw.tell() >= cap - (64 << 10):
                    left_out += 1
                    continue
                z.write(orjson.dumps(rec) + b"\n")
                n += 1
            if left_out:
                z.write(orjson.dumps({"op": "truncated", "left_out": left_out}) + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    fsync_dir(d)
    _prune(d, keep=path, cap=cap)
    return n


def _prune(d: str, keep: str, cap: int) -> None:
    lists = sorted(glob.glob(os.path.join(glob.escape(d), "*.jsonl.gz")), reverse=True)
    total = 0
    for p in lists:  # newest first (the ids sort by time)
        try:
            size = os.stat(p).st_size
        except FileNotFoundError:
            continue
        total += size
        if total > cap and p != keep:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def read_items(state_root: str, run: str) -> Iterator[dict[str, Any]]:
    """A run's items; FileNotFoundError when it has none kept."""
    with gzip.open(items_path(state_root, run), "rb") as z:
        for raw in z:
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


def item(verb: str, path: bytes, details: dict[str, Any]) -> dict[str, Any]:
    """An item as kept: paths as people read them (show_path)."""
    rec: dict[str, Any] = {"op": verb, "path": show_path(path)}
    for k, v in details.items():
        rec[k] = show_path(v) if isinstance(v, bytes) else v
    return rec


# --- files not on the remote as the source has them ------------------------------------


def load_unsent(state_root: str) -> dict[str, tuple[float, bool]]:
    """path (as show_path spells it) -> (when a run first failed to send it, whether
    the remote holds no version of it at all)."""
    try:
        with open(os.path.join(state_root, "unsent.json"), "rb") as f:
            d = orjson.loads(f.read())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    if not isinstance(d, dict):
        return {}
    return {k: (float(v[0]), bool(v[1])) for k, v in d.items()
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], (int, float))}


def update_unsent(state_root: str, failed: Iterable[bytes], never: set[bytes],
                  started: float) -> dict[str, tuple[float, bool]]:
    """After a run that reached the remote: what it failed to send is unsent (since
    the first run that failed to; never: the remote holds no version of it);
    everything else is on the remote now."""
    before = load_unsent(state_root)
    now = {}
    for p in failed:
        s = show_path(p)
        now[s] = (before.get(s, (started, False))[0], p in never)
    if now != before:
        atomic_write(os.path.join(state_root, "unsent.json"),
                     orjson.dumps({k: list(v) for k, v in now.items()}))
    return now


def unsent_summary(unsent: dict[str, tuple[float, bool]], now: float | None = None) -> dict[str, Any]:
    """For summaries and `list`: how many (never sent at all: how many, which),
    the oldest's age, the first few paths (the oldest first)."""
    now = time.time() if now is None else now
    oldest = min((t for t, _ in unsent.values()), default=None)
    order = sorted(unsent, key=lambda p: (unsent[p][0], p))
    never = [p for p in order if unsent[p][1]]
    return {"files": len(unsent), "since": oldest,
            "oldest_age_s": round(now - oldest, 1) if oldest is not None else None,
            "paths": order[:LIST_CAP], "never_sent": len(never), "never_sent_paths": never[:LIST_CAP]}
