"""What btsoot keeps on the remote itself, in `REMOTE/.btsoot/`.

- `block.json`: which block this remote holds (a guard against backing up into
  the wrong folder, or an unmounted share's empty mount point).
- `snapshots/ID.full.jsonl.gz`: a whole snapshot, gzip-compressed.
- `snapshots/ID.delta.jsonl.gz`: the changes from snapshot `base` to ID
  ("put" an entry, "del" a path). Deltas keep what a daily run writes to the
  link small; a full snapshot is written again when the chain grows long.

So the remote describes itself: a restore on a fresh machine needs only it.
Inode and device numbers are machine-local and are not stored here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import IO, Any, TypeVar

import orjson

from . import events
from .errors import FatalIOError, GuardError, StateError
from .mounts import mount_of
from .paths import is_under
from .remotefs import Blocked, Remote
from .snapshot import (
    Entry,
    Header,
    Names,
    SnapshotReader,
    SnapshotWriter,
    entry_from_dict,
    entry_to_dict,
    get_bytes,
    id_ns,
    open_regular,
    put_bytes,
    read_names,
    sort_key,
)
from .state import Head

META = ".btsoot"
MAX_DELTAS = 20
IDENT_VERSION = 1  # of block.json


# File systems where each operation waits on a network round trip: every
# transfer runs in parallel there, many at once and from many folders (see
# execute.Spread): a file costs several round trips one after the other (create,
# write, mode and time, sync, rename), and only overlap hides them. On local disks small files are copied one
# after another (parallel Python threads only contend for the interpreter, while
# the page cache and writeback already overlap the I/O) and only large files,
# where hashing and copying bytes dominate, use the pool.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs",
              "davfs", "lustre", "gpfs"}
NETWORK_JOBS = 16
LOCAL_JOBS = 2


def fs_type(path: str) -> str:
    """The file system type of the mount holding path, or "" if it cannot be told."""
    return mount_of(path)[1]


def is_network(remote: str) -> bool:
    kind = fs_type(remote)
    return kind in NETWORK_FS or kind.startswith("fuse")  # sshfs, rclone mount, ...


def default_jobs(network: bool) -> int:
    """Parallel transfers for a remote, by is_network() (see NETWORK_FS)."""
    return NETWORK_JOBS if network else LOCAL_JOBS


def meta(remote: str, *parts: str) -> str:
    return os.path.join(remote, META, *parts)


def meta_rel(*parts: str) -> bytes:
    """A path in the remote's own folder, relative to the remote (for `Remote`)."""
    return os.fsencode("/".join((META, *parts)))


def read_block_id(remote: str) -> dict[str, Any] | None:
    """REMOTE/.btsoot/block.json, checked (StateError if damaged); None if absent."""
    where = meta(remote, "block.json")
    try:
        # Only a regular file, never through a link: a fifo there must not hang the run.
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"{where}: unreadable ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError(f"{where}: not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            d = orjson.loads(f.read(1 << 20))
    except (OSError, orjson.JSONDecodeError) as e:
        raise StateError(f"{where}: unreadable ({e})") from None
    finally:
        os.close(fd)
    return _valid_ident(d, where)


def _valid_ident(d: Any, where: str) -> dict[str, Any]:
    if isinstance(d, dict) and (d.get("format") != "btsoot-remote"
                                or type(d.get("version")) is not int or d["version"] < 1):
        raise StateError(f"{where}: not a btsoot remote's block.json (format, version)")
    if isinstance(d, dict) and d["version"] > IDENT_VERSION:
        raise StateError(f"{where}: version {d['version']} is newer than this btsoot "
                         "understands; upgrade btsoot")
    ok = (isinstance(d, dict) and isinstance(d.get("block"), str)
          and isinstance(d.get("remote_id", ""), str)
          and isinstance(d.get("snapshot", ""), (str, type(None)))
          and (type(d.get("generation", 0)) is int and 0 <= d.get("generation", 0) < 1 << 62))
    if not ok:
        raise StateError(f"{where}: damaged (fields of the wrong type)")
    return d


def read_ident(remote: Remote) -> dict[str, Any] | None:
    """block.json read through the remote seam (never through a link)."""
    try:
        fd = remote.open_file(meta_rel("block.json"))
    except FileNotFoundError:
        return None
    except Blocked as e:
        if e.errno == errno.ENOENT:
            return None  # no .btsoot/ yet (a dry run before the first backup)
        raise StateError(f"{remote.show(meta_rel('block.json'))}: unreadable ({e.strerror})") from None
    except OSError as e:
        raise StateError(f"{remote.show(meta_rel('block.json'))}: unreadable ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(1 << 20)
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise StateError(f"{remote.show(meta_rel('block.json'))}: unreadable ({e})") from None
    return _valid_ident(d, remote.show(meta_rel("block.json")))


def write_ident(remote: Remote, ident: dict[str, Any]) -> None:
    """Replace block.json atomically and durably: a crash leaves the old or the new."""
    remote.write_atomic(meta_rel("block.json"), orjson.dumps(ident))


def new_remote_id() -> str:
    """Tells two remotes of one block apart (rotated disks): random, made once."""
    return secrets.token_hex(8)


def record_differs(head: Head, ident: dict[str, Any]) -> str | None:
    """Why the local record (state.json) does not describe this remote as its
    block.json does, or None if it does: then a run plans from the remote's own
    record, and restore and verify read it."""
    rid, gen = ident.get("remote_id"), ident.get("generation")
    if rid is None and head.remote_id is None:
        return None  # both written before generations were recorded: nothing to compare
    if rid != head.remote_id:
        known = head.remotes.get(rid or "")
        return ("this remote is not the one the last backup went to (a rotated disk?); "
                + (f"it was last updated by the backup of {known.get('snapshot')}" if known
                   else "it is new to this machine's record"))
    if gen == head.generation:
        return None
    if gen is not None and gen < head.generation:
        return (f"the remote's record is older than the local one (generation {gen}, "
                f"local {head.generation}): rolled back or restored from a copy?")
    return (f"the remote was updated since the local record was made (generation {gen}, "
            f"local {head.generation})")


def check_remote(remote: str, block: str, has_committed: bool,
                 adopt: bool = False) -> dict[str, Any] | None:
    """Refuse a remote that is missing, foreign, or (on a first run) not empty
    unless adopt; returns its block.json (None on a first run), read once for the
    whole run."""
    if not os.path.isdir(remote):
        raise GuardError(f"remote {remote} does not exist or is not a folder (is the share mounted?)")
    ident = read_block_id(remote)
    if has_committed:
        if ident is None:
            raise GuardError(
                f"remote {remote} has no {META}/block.json: it does not look like this block's "
                "backup (is the share mounted?); nothing was changed"
            )
    if ident is not None and ident.get("block") != block:
        raise GuardError(f"remote {remote} holds block {ident.get('block')!r}, not {block!r}")
    if not has_committed and ident is None and not adopt:
        try:
            names = [n for n in os.listdir(remote) if n != META]
        except OSError as e:
            raise FatalIOError(f"remote {remote}: {e.strerror}") from None
        if names:
            raise GuardError(
                f"remote {remote} is not empty and holds no btsoot backup: refusing to mix "
                "trees on a first backup; give an empty folder, or --adopt to take a copy "
                "made another way as it is"
            )
    return ident


@events.in_phase("init")
def init_remote(remote: Remote, block: str) -> None:
    remote.makedirs(meta_rel("snapshots"))
    if read_ident(remote) is None:
        write_ident(remote, {"format": "btsoot-remote", "version": 1, "block": block,
                             "created_ns": time.time_ns(), "remote_id": new_remote_id(),
                             "generation": 0, "snapshot": None})


def _strip(e: Entry) -> Entry:
    """An entry as the remote records it: without the source's inode and device
    numbers (kept only as the identity of a hard-link group) and ctime."""
    if e.link_key is not None:
        return replace(e, ctime_ns=0) if e.ctime_ns else e
    return replace(e, ino=0, dev=0, ctime_ns=0) if e.ino or e.dev or e.ctime_ns else e


COPY_SUFFIX = ".full-copy.jsonl.gz"


@events.in_phase("snapshot-write")
def write_full(remote: Remote, header: Header, snapshot: str) -> int:
    """Write a full snapshot of the local snapshot file `snapshot` (its entries as
    the remote records them: see _strip_obj; its owner names), twice:
    ID.full.jsonl.gz and its copy ID.full-copy.jsonl.gz.

    The remote's record is the one place where what a restore needs is kept
    (encoded names, modes, targets): one damaged file there must not cost the
    backup. Deltas are small and each only one step; a damaged one leaves the
    snapshots before it readable. Returns the bytes of one copy.
    Both are written in one pass over the entries, each line decoded, encoded
    and compressed once (the same bytes go to both files); both are whole
    before the first is renamed into place, and the first before the second."""
    rels = [meta_rel("snapshots", name)
            for name in (f"{header.id}.full.jsonl.gz", f"{header.id}{COPY_SUFFIX}")]
    hdr = replace(header, kind="full", base=None)
    with contextlib.ExitStack() as held:
        first, second = (os.fsdecode(held.enter_context(remote.path(rel))) for rel in rels)
        w = SnapshotWriter(first, hdr, compress=True, local=False, copy=second)
        try:
            with SnapshotReader(snapshot) as r:
                for _, obj, _ in r.raw():
                    w.write_record(_strip_obj(obj))
                w.names = r.names
        except BaseException:
            w.abort()
            raise
        w.commit()
    return remote.lstat(rels[1]).st_size


# Beside the snapshots, for a person with only the disk: how to read them, and a
# restore with the Python standard library alone (written with each full snapshot).
GUIDE = (("standalone_restore.py", "restore.py"), ("remote_format.txt", "FORMAT.txt"))


def write_guide(remote: Remote) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for src, name in GUIDE:
        with open(os.path.join(here, src), "rb") as f:
            data = f.read()
        remote.write_atomic(meta_rel(name), data)


def _strip_obj(d: dict[str, Any]) -> dict[str, Any]:
    drop = ("ctime",) if "nlink" in d else ("ino", "dev", "ctime")
    return {k: v for k, v in d.items() if k not in drop}


@events.in_phase("snapshot-write")
def write_delta(remote: Remote, header: Header, base_id: str,
                old_path: str, new_path: str) -> tuple[int, int]:
    """Write the delta between two local snapshot files; returns (bytes, records).

    Compares the lines as read (an entry the scan passed through unchanged is
    the very same line) and decodes nothing twice: a day's delta of a large
    tree costs one read of each snapshot.
    """
    rel = meta_rel("snapshots", f"{header.id}.delta.jsonl.gz")
    with remote.path(rel) as path:
        return _write_delta(os.fsdecode(path), header, base_id, old_path, new_path)


def _write_delta(path: str, header: Header, base_id: str,
                 old_path: str, new_path: str) -> tuple[int, int]:
    w = SnapshotWriter(path, replace(header, kind="delta", base=base_id), compress=True,
                       local=False)
    try:
        with SnapshotReader(old_path) as ro, SnapshotReader(new_path) as rn:
            # Lines are decoded only where they differ: most of a day's are the same.
            oi, ni = ro.lines(), rn.lines()
            o, n = next(oi, None), next(ni, None)
            while o is not None or n is not None:
                if n is None or (o is not None and o[0] != n[0]
                                 and sort_key(o[0]) < sort_key(n[0])):
                    rec: dict[str, Any] = {"op": "del"}
                    put_bytes(rec, "path", o[0])  # type: ignore[index]
                    w.write_record(rec)
                    o = next(oi, None)
                elif o is None or o[0] != n[0]:
                    w.write_record({"op": "put", "entry": _strip_obj(rn.decode(n[1]))})
                    n = next(ni, None)
                else:
                    if o[1] != n[1]:
                        new = _strip_obj(rn.decode(n[1]))
                        if _strip_obj(ro.decode(o[1])) != new:
                            w.write_record({"op": "put", "entry": new})
                    o, n = next(oi, None), next(ni, None)
        w.names = rn.names
    except BaseException:
        w.abort()
        raise
    records = w.count
    w.commit()
    return os.path.getsize(path), records


def list_snapshots(remote: str) -> dict[str, tuple[str, str]]:
    """id -> (kind, file path) of every snapshot the remote holds."""
    d = meta(remote, "snapshots")
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise FatalIOError(f"{d}: {e.strerror}") from None
    out: dict[str, tuple[str, str]] = {}
    for n in names:
        for kind in ("full", "delta"):
            suffix = f".{kind}.jsonl.gz"
            if n.endswith(suffix):
                out[n[: -len(suffix)]] = (kind, os.path.join(d, n))
    for n in names:  # a full snapshot whose first file is gone: its copy stands in
        if n.endswith(COPY_SUFFIX) and n[: -len(COPY_SUFFIX)] not in out:
            sid = n[: -len(COPY_SUFFIX)]
            out[sid] = ("full", os.path.join(d, sid + ".full.jsonl.gz"))
    return out


_T = TypeVar("_T")
_R = TypeVar("_R")
# The record's small files read at once (delta headers, attic lists): over a slow
# link one after the other, each costs its own round trips, and a block keeps dozens.
READ_AHEAD = 16


def read_ahead(fn: Callable[[_T], _R], items: Iterable[_T], window: int = READ_AHEAD) -> Iterator[_R]:
    """fn(item) for each item, in order, with up to `window` of them running at
    once (and no more results than that held). An exception is raised where its
    item's result would have been."""
    with ThreadPoolExecutor(window) as pool:
        todo: deque[Future[_R]] = deque()
        for it in items:
            todo.append(pool.submit(fn, it))
            if len(todo) >= window:
                yield todo.popleft().result()
        while todo:
            yield todo.popleft().result()


def _base_of(path: str) -> str | None | StateError:
    try:
        with SnapshotReader(path) as r:
            return r.header.base
    except StateError as e:
        return e


def chain(remote: str, snap_id: str | None = None,
          snaps: dict[str, tuple[str, str]] | None = None,
          bases: dict[str, str | None] | None = None) -> list[str]:
    """File paths from the full snapshot up to snap_id (default: newest resolvable).
    snaps: list_snapshots(remote), when the caller has it; bases: each delta file's
    base as read so far, filled in here (the chains of many snapshots share files:
    over a slow link each header read costs round trips)."""
    snaps = list_snapshots(remote) if snaps is None else snaps
    bases = {} if bases is None else bases
    if not snaps:
        raise StateError(f"{remote}: no btsoot snapshots in {META}/snapshots")
    if snap_id:
        candidates = [snap_id]
    else:
        # The newest is the one block.json names (the last commit), whatever the
        # clock said when each was made; then by id, newest first.
        candidates = sorted(snaps, reverse=True)
        named = _named_snapshot(remote)
        if named in snaps:
            candidates.remove(named)
            candidates.insert(0, named)
    last_err: StateError | None = None
    for cand in candidates:
        if cand not in snaps:
            raise StateError(f"{remote}: no snapshot {cand!r}")
        files: list[str] = []
        cur: str | None = cand
        seen: set[str] = set()
        try:
            while cur is not None:
                if cur not in snaps:
                    raise StateError(f"{remote}: snapshot chain broken at {cur!r}")
                if cur in seen:  # a delta based on itself, or on a later one: never ends
                    raise StateError(f"{remote}: snapshot chain of {cand!r} loops at {cur!r}")
                seen.add(cur)
                kind, path = snaps[cur]
                files.append(path)
                if kind == "full":
                    cur = None
                else:
                    if path not in bases:
                        with SnapshotReader(path) as r:
                            bases[path] = r.header.base
                    cur = bases[path]
                    if cur is None:
                        raise StateError(f"{path}: delta without base")
            return files[::-1]
        except StateError as e:
            last_err = e
    assert last_err is not None
    raise last_err


def _named_snapshot(remote: str) -> str | None:
    try:
        ident = read_block_id(remote)
    except StateError:
        return None  # damaged: the snapshots themselves still say which is newest
    return ident.get("snapshot") if ident else None


def newest(remote: str) -> str | None:
    """The remote's newest snapshot id: the one block.json names, else the largest id."""
    snaps = list_snapshots(remote)
    named = _named_snapshot(remote)
    if named in snaps:
        return named
    return max(snaps) if snaps else None


def load(remote: str, snap_id: str | None = None) -> tuple[Header, list[Entry]]:
    """Resolve a snapshot from the remote's chain into a sorted entry list (every
    entry in memory: for small records and tests; see stream for the rest)."""
    header, entries = stream(remote, snap_id)
    return header, list(entries)


def stream(remote: str, snap_id: str | None = None, names: list[Names] | None = None,
           ) -> tuple[Header, Iterator[Entry]]:
    """Resolve a snapshot from the remote's chain: its header, and its entries in
    snapshot order, read as they are needed. In memory: what the chain's deltas
    change (later deltas over earlier ones), never the whole snapshot. names:
    gets the snapshot's owner names once the entries are read through."""
    files = chain(remote, snap_id)
    start = max(i for i, p in enumerate(files) if _is_full(p))
    changes: dict[bytes, Entry | None] = {}  # path -> its entry now (None: deleted)
    header: Header | None = None
    last: Names | None = None
    for path in files[start + 1:]:
        with SnapshotReader(path) as r:
            header = r.header
            for rec in r.records():
                if rec.get("op") == "del":
                    p = get_bytes(rec, "path")
                    if p is None:
                        raise StateError(f"{path}: bad delta record")
                    changes[p] = None
                elif rec.get("op") == "put":
                    e = entry_from_dict(rec.get("entry"), path)
                    changes[e.path] = e
                else:
                    raise StateError(f"{path}: bad delta record")
            last = r.names
    full = files[start]
    first = _full_header(full)
    order = sorted(changes, key=sort_key)
    if names is not None and last is not None:
        names.append(last)
    return header or first, _apply(full, order, changes,
                                   names if names is not None and last is None else None)


def newest_resolvable(remote: str) -> str:
    """The id of the snapshot stream(remote) resolves (the newest whose chain reads)."""
    with SnapshotReader(chain(remote)[-1]) as r:
        return r.header.id


def _is_full(path: str) -> bool:
    if path.endswith(".full.jsonl.gz"):
        return True
    with SnapshotReader(path) as r:
        return r.header.kind == "full"


def _full_header(path: str) -> Header:
    """A full snapshot's header, from its copy where the first is damaged or missing."""
    try:
        with SnapshotReader(path) as r:
            return r.header
    except StateError:
        copy = path[: -len(".full.jsonl.gz")] + COPY_SUFFIX
        if not os.path.exists(copy):
            raise
        with SnapshotReader(copy) as r:
            return r.header


def _full_entries(path: str, names: list[Names] | None = None) -> Iterator[Entry]:
    """A full snapshot's entries, read through; where the first file is damaged
    (found before anything is yielded: it is read to its end first), its copy.

    The remote's file is read once: its bytes go to a local temp file as they
    arrive, which is checked and then read again (over a slow link, reading the
    remote's file twice would double what a restore --from pulls across)."""
    copy = path[: -len(".full.jsonl.gz")] + COPY_SUFFIX
    with tempfile.TemporaryDirectory(prefix="btsoot-full-") as tmp:
        local = os.path.join(tmp, "full.jsonl.gz")
        try:
            _fetch(path, local)
            _check_whole(local, path)
            use = path
        except StateError:
            if not path.endswith(".full.jsonl.gz") or not os.path.exists(copy):
                raise
            _fetch(copy, local)
            use = copy
        with SnapshotReader(local, shown=use) as r:
            yield from r
            if names is not None:
                names.append(r.names)


def _fetch(path: str, local: str) -> None:
    """Copy a remote record file to local (never through a link, only a regular
    file); StateError when it cannot be read."""
    try:
        with open_regular(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except OSError as e:
        raise StateError(f"{path}: cannot read snapshot ({e.strerror})") from None


def _check_whole(local: str, shown: str) -> None:
    with SnapshotReader(local, shown=shown) as r:
        for _ in r.raw():
            pass


def _apply(full: str, order: list[bytes], changes: dict[bytes, Entry | None],
           names: list[Names] | None = None) -> Iterator[Entry]:
    """The full snapshot's entries with the changes merged in, in order (names:
    gets the full snapshot's owner names at its end)."""
    keys = iter(order)
    k = next(keys, None)
    kk = sort_key(k) if k is not None else None
    for e in _full_entries(full, names):
        ek = sort_key(e.path)
        while k is not None and kk is not None and kk < ek:
            new = changes[k]
            if new is not None:
                yield new
            k = next(keys, None)
            kk = sort_key(k) if k is not None else None
        if k is not None and k == e.path:
            new = changes[k]
            if new is not None:
                yield new
            k = next(keys, None)
            kk = sort_key(k) if k is not None else None
            continue
        yield e
    while k is not None:
        new = changes[k]
        if new is not None:
            yield new
        k = next(keys, None)


def names(remote: str, snap_id: str | None = None) -> Names:
    """The owner names recorded with a remote snapshot (in its file's trailer)."""
    try:
        return read_names(chain(remote, snap_id)[-1])
    except StateError:
        return {}, {}


@events.in_phase("snapshot-prune")
def prune(remote: Remote, keep_ids: set[str]) -> None:
    """Remove remote snapshot files that no kept snapshot's chain needs."""
    root = os.fsdecode(remote.root)
    snaps = list_snapshots(root)
    needed: set[str] = set()
    # Every delta's base, read at once (one that cannot be read: chain() meets it
    # again, and gives up on that snapshot as before).
    deltas = [p for kind, p in snaps.values() if kind == "delta"]
    bases = {p: b for p, b in zip(deltas, read_ahead(_base_of, deltas), strict=True)
             if not isinstance(b, StateError)}
    for sid in keep_ids:
        if sid in snaps:
            try:
                needed.update(os.path.basename(p) for p in chain(root, sid, snaps, bases))
            except StateError:
                continue
    if not needed:
        return
    removed = False
    d = meta_rel("snapshots")
    # Temp files of snapshots a killed run was writing (only the run holding the
    # block's lock writes here, and that is this one).
    names = [os.fsdecode(n) for n in remote.listdir(d)]
    doomed = [n for n in names if ".jsonl.gz.tmp." in n]
    doomed += [os.path.basename(p) for _, p in snaps.values() if os.path.basename(p) not in needed]
    doomed += [n for n in names if n.endswith(COPY_SUFFIX)
               and n[: -len(COPY_SUFFIX)] + ".full.jsonl.gz" not in needed]
    for n in doomed:
        try:
            remote.unlink(d + b"/" + os.fsencode(n))
            removed = True
        except OSError:
            pass
    if removed:
        remote.sync_dir(d)


# --- the attic ---------------------------------------------------------------------
#
# ATTIC/RUN/<path>: what run RUN moved out of the mirror (a file or link deleted,
# a file replaced by new content, a folder deleted whole; the old version of a file
# patched in place, as a clone or an undo record), under its path in the mirror;
# ATTIC/RUN.jsonl lists it, one entry per line as in a snapshot (its path in the
# mirror, size, mtime, mode, digest; "prev", and "undo" for an undo record). An
# item stays while a snapshot the retention keeps needs it (retention.py).


def record_attic(remote: Remote, items: list[tuple[bytes, Entry]], merge: bool = True,
                 prev: str | None = None, undo: dict[bytes, dict[str, Any]] | None = None) -> None:
    """Add items (their path in the attic, their entry in the mirror) to the lists
    of the runs that moved them, ATTIC/RUN.jsonl, durably (a recovered run adds
    what a crashed one moved to that run's list). merge=False: the lists do not
    exist yet (a run writing its own, once), nothing is read first. prev: the
    snapshot the run planned from (it holds every item; see retention.py). undo:
    the items (by their path there) that are undo records of a file patched in
    place, with what the record applies to (transfer.write_undo)."""
    from .ops import ATTIC

    by_run: dict[bytes, list[tuple[Entry, dict[str, Any] | None]]] = {}
    for dst, e in items:
        run = dst[len(ATTIC) + 1:].partition(b"/")[0]
        by_run.setdefault(run, []).append((_strip(e), (undo or {}).get(dst)))
    for run, entries in sorted(by_run.items()):
        rel = ATTIC + b"/" + run + b".jsonl"
        # (A damaged line is dropped: the entries it held are listed again below.)
        lines = (_list_lines(remote, rel) or {}) if merge else {}
        for e, u in entries:
            d = entry_to_dict(e)
            if prev is not None:
                d["prev"] = prev
            if u is not None:
                d["undo"] = u
            lines[e.path] = orjson.dumps(d) + b"\n"
        remote.write_atomic(rel, b"".join(lines[p] for p in sorted(lines, key=sort_key)))


def _list_lines(remote: Remote, rel: bytes) -> dict[bytes, bytes] | None:
    """An attic list's lines by the mirror path they name (damaged lines left out);
    None if the list cannot be opened (none yet)."""
    try:
        fd = remote.open_file(rel)
    except OSError:
        return None
    lines: dict[bytes, bytes] = {}
    with os.fdopen(fd, "rb") as f:
        for line in f:
            try:
                p = get_bytes(orjson.loads(line), "path")
            except (orjson.JSONDecodeError, ValueError):
                continue
            if p is not None:
                lines[p] = line if line.endswith(b"\n") else line + b"\n"
    return lines


def attic_runs(remote: Remote) -> list[str]:
    """The runs that have content in the attic (or a list of it), oldest first."""
    from .ops import ATTIC

    try:
        names = remote.listdir(ATTIC)
    except OSError:  # none (remotefs.Blocked when the folder is missing), or unreadable
        return []
    runs = {os.fsdecode(n[:-6] if n.endswith(b".jsonl") else n) for n in names
            if not n.endswith(b".tmp")}
    return sorted(r for r in runs if id_ns(r) is not None)


@events.in_phase("attic-prune")
def prune_attic(remote: Remote, whole: dict[str, set[bytes]], parts: dict[str, set[bytes]]) -> None:
    """Remove what no kept snapshot needs (retention.decide says what): the runs
    in `whole` entirely (the listed paths given, the folders they leave empty, the
    list), and of each run in `parts` the listed paths given (the files first,
    then the list without them: a kill in between leaves list lines whose file is
    gone, which the next prune removes again, never a file no list knows of).
    Only what a list names is removed: anything else found in a run's folder (what
    someone left in a folder that moved there whole) is set aside in
    .btsoot/damaged, never deleted. Only the attic's own folders are listed, never
    the mirror; nothing is followed through a link."""
    from .ops import ATTIC, DAMAGED

    changed = False
    for run, paths in sorted(whole.items()):
        _unlink_listed(remote, run, paths)
        top = run.encode()
        with remote.dir(ATTIC) as afd:
            fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=afd)
        try:
            stray = not _remove_empty_at(fd, top)
        finally:
            os.close(fd)
        remote.forget(ATTIC + b"/" + top)
        if stray:
            aside = DAMAGED + b"/attic-" + top
            remote.makedirs(DAMAGED)
            try:
                remote.rename(ATTIC + b"/" + top, aside)
            except FileExistsError:
                pass  # (set aside before, and again something: kept where it is)
        try:
            remote.unlink(ATTIC + b"/" + top + b".jsonl")
        except (FileNotFoundError, Blocked):
            pass
        changed = True
    for run, paths in sorted(parts.items()):
        _unlink_listed(remote, run, paths)
        rel = ATTIC + b"/" + run.encode() + b".jsonl"
        lines = _list_lines(remote, rel)
        if lines is None:
            continue
        remote.write_atomic(rel, b"".join(line for p, line in sorted(
            lines.items(), key=lambda kv: sort_key(kv[0])) if p not in paths))
        changed = True
    if changed:
        remote.sync_dir(ATTIC)


def _unlink_listed(remote: Remote, run: str, paths: set[bytes]) -> None:
    """Remove the attic files of run that its list names at these mirror paths,
    and the folders that leaves empty."""
    from .ops import ATTIC, attic_path

    top = ATTIC + b"/" + run.encode()
    folders: set[bytes] = set()
    for p in sorted(paths, key=sort_key):
        where = attic_path(run.encode(), p, remote.escaped)
        try:
            remote.unlink(where)
        except (FileNotFoundError, Blocked):
            pass
        except IsADirectoryError:  # a folder where the list has a file: not ours to judge
            continue
        q = where.rpartition(b"/")[0]
        while q != top and is_under(q, top):
            folders.add(q)
            q = q.rpartition(b"/")[0]
    for q in sorted(folders, key=lambda x: x.count(b"/"), reverse=True):
        try:
            remote.rmdir(q)  # emptied by this prune; one still holding something stays
        except OSError:
            pass


def _remove_empty_at(dfd: int, name: bytes) -> bool:
    """Remove folder name in dfd if it holds nothing but empty folders (by the
    names as stored, never through a link); True if it is gone."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        return False
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        empty = all([_remove_empty_at(fd, os.fsencode(n)) for n in os.listdir(fd)])
    finally:
        os.close(fd)
    if empty:
        try:
            os.rmdir(name, dir_fd=dfd)
        except OSError:
            return False
    return empty


def attic_contents(remote: Remote) -> Iterator[tuple[bytes, Entry, dict[str, Any] | None]]:
    """What the attic holds, by its lists: (its path there, its entry in the mirror,
    None or, for an undo record, what it applies to), the newest run first (a
    content kept twice is found at its latest copy)."""
    for _, where, e, _prev, undo in attic_lists(remote):
        yield where, e, undo


def attic_lists(remote: Remote, runs: list[str] | None = None,
                ) -> Iterator[tuple[str, bytes, Entry, str | None, dict[str, Any] | None]]:
    """Every line of the attic's lists: (run, its path there, its entry in the
    mirror, the snapshot the run planned from if the line says, and for an undo
    record {"base": digest, "base_size": n, "bytes": its size}), the newest run
    first. A list (or line) that cannot be read is skipped: its content is not
    offered, never guessed. runs: attic_runs(remote), when the caller has them."""
    from .ops import ATTIC, attic_path

    def read(run: str) -> list[bytes] | IO[bytes] | None:
        """A small list's lines (read ahead, with others at once), a large one open."""
        try:
            fd = remote.open_file(ATTIC + b"/" + run.encode() + b".jsonl")
        except OSError:
            return None
        f = os.fdopen(fd, "rb")
        if os.fstat(fd).st_size > SMALL_LIST:
            return f
        with f:
            return f.readlines()

    order = list(reversed(attic_runs(remote) if runs is None else runs))
    for run, lines in zip(order, read_ahead(read, order), strict=True):
        if lines is None:
            continue
        with lines if not isinstance(lines, list) else contextlib.nullcontext():
            for line in lines:
                try:
                    d = orjson.loads(line)
                    e = entry_from_dict(d, "attic list")
                except (orjson.JSONDecodeError, ValueError, StateError):
                    continue
                prev, undo = d.get("prev"), _undo_meta(d.get("undo"))
                if d.get("undo") is not None and undo is None:
                    continue  # a damaged undo line: not offered
                yield (run, attic_path(run.encode(), e.path, remote.escaped), e,
                       prev if isinstance(prev, str) else None, undo)


SMALL_LIST = 1 << 20  # an attic list read whole, ahead of its turn (see attic_lists)


def _undo_meta(u: Any) -> dict[str, Any] | None:
    if not isinstance(u, dict):
        return None
    base, size, n = u.get("base"), u.get("base_size"), u.get("bytes")
    if not isinstance(base, str) or type(size) is not int or type(n) is not int or size < 0 or n < 0:
        return None
    return {"base": base, "base_size": size, "bytes": n}
