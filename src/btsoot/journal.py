"""The journal: a write-ahead record of a run's remote operations.

Before an operation touches the remote, a "begin" record is appended; after
it completes, a "done" record. A begin record goes to the kernel (O_APPEND)
before its operation starts, so it survives kill -9; done records ride along
with the next begin record (or a sync). Records are fsynced in batches and at
the end of each phase, not per operation.

Recovery rebuilds what the remote holds: the run's base snapshot, plus every
completed operation, plus each begun-but-unfinished one that a look at its own
one or two remote paths shows did happen. Leftover temp files are removed.
Nothing else on the remote is listed or read.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from typing import Any

import orjson

from .durable import atomic_write
from .errors import LocalStateError, StateError
from .ops import ATTIC, DAMAGED, Tag, attic_path
from .paths import is_under
from .remotefs import Remote
from .snapshot import (
    DIR,
    FILE,
    Entry,
    entry_from_dict,
    entry_to_dict,
    get_bytes,
    put_bytes,
    sort_key,
)

FORMAT = "btsoot-journal"
VERSION = 1
_SYNC_EVERY_S = 2.0
# The mtime replay gives a folder whose remote attributes it cannot know.
UNKNOWN_MTIME = -1


def encode_path(d: dict[str, Any], key: str, p: bytes) -> None:
    put_bytes(d, key, p)


def decode_path(d: dict[str, Any], key: str) -> bytes:
    try:
        p = get_bytes(d, key)
    except ValueError as e:
        raise StateError(f"journal record with a bad {key!r} ({e})") from None
    if p is None:
        raise StateError(f"journal record without {key!r}")
    return p


class Journal:
    def __init__(self, path: str, run_id: str, base: str | None, committed: str | None,
                 remote_id: str | None = None) -> None:
        self.path = path
        # The header goes in under a temp name and is renamed over any previous
        # journal: a kill at any moment leaves either that journal or this one,
        # complete, never an empty or torn file.
        tmp = path + ".new"
        here = os.path.dirname(path) or "."
        if base is not None and os.path.dirname(base) and os.path.commonpath(
                [os.path.abspath(base), os.path.abspath(here)]) == os.path.abspath(here):
            # Relative to the journal's folder: the state folder may be moved or
            # restored elsewhere (BTSOOT_STATE) and the journal still finds its base.
            base = os.path.relpath(base, here)
        try:
            atomic_write(path, orjson.dumps({"format": FORMAT, "version": VERSION, "run": run_id,
                                             "base": base, "committed": committed,
                                             "remote": remote_id}) + b"\n", tmp=tmp)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            raise LocalStateError.of(e, path) from None
        self._last_sync = time.monotonic()
        self._n = 0
        self._lock = threading.Lock()  # begin() runs on every transfer thread
        self._done: list[bytes] = []  # done records not yet written

    def announce(self, recs: list[dict[str, Any]]) -> list[int]:
        """Write the begin records of operations about to run, and sync them: one
        sync for many records, each durable before its operation touches the
        remote. An announced operation that never ran is, for recovery, one that
        began and did not finish: checked on the remote, found not done. The
        executor announces runs of puts and of deletes, whose checks each look
        at their own path only, so their order within a run does not matter."""
        if not recs:
            return []
        with self._lock:
            first = self._n + 1
            self._done.extend(_begin_line(rec, first + k) for k, rec in enumerate(recs))
            self._n += len(recs)
            self._flush()
        self.sync()
        return list(range(first, first + len(recs)))

    def begin(self, rec: dict[str, Any], durable: bool = False) -> int:
        """Write a begin record (with any done records waiting) before the
        operation touches the remote; its number is for done().

        durable: synced before it returns, so even a power cut cannot lose the
        record of an operation that then happened. Moves and in-place patches
        ask for it (a move whose record is lost leaves the record pointing at a
        path that is gone, the stash's too). Puts and deletes are announced in
        synced batches instead (see announce); what still comes here without
        it (a mkdir, a link, attributes, a retried put) recovery finds from
        the remote, or the next plan does again."""
        # The number is taken under the lock and the caller gets that very number
        # (re-reading self._n later would hand it another thread's).
        with self._lock:
            self._n += 1
            i = self._n
            self._done.append(_begin_line(rec, i))
            self._flush()
        if durable:
            self.sync()
        return i

    def done(self, i: int, **found: Any) -> None:
        """Complete record i; `found` adds what the operation learned (a put that
        hashed while sending records its digest and chunks here).

        Done records wait for the next begin record (one write for both, half the
        system calls of a run of small copies) or a sync. One lost in a crash
        costs little: recovery probes an unfinished operation's paths on the
        remote, as for any other (a put's digest learned while sending is lost,
        so that file is sent again)."""
        line = orjson.dumps({"i": i, "s": "d", **found}, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            self._done.append(line)
            if len(self._done) >= 256:
                self._flush()
        if time.monotonic() - self._last_sync > _SYNC_EVERY_S:
            self.sync()

    def _flush(self) -> None:
        """Write waiting records (the caller holds the lock)."""
        if self._done:
            data = b"".join(self._done)
            self._done = []
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as e:  # not the remote's: the run stops with exit 9
                raise LocalStateError.of(e, self.path) from None

    def sync(self) -> None:
        with self._lock:
            self._flush()
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise LocalStateError.of(e, self.path) from None
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            with self._lock:
                self._flush()
            os.close(self.fd)
            self.fd = -1


def _begin_line(rec: dict[str, Any], i: int) -> bytes:
    return orjson.dumps(dict(rec, i=i, s="b"), option=orjson.OPT_APPEND_NEWLINE)


def read_journal(path: str) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bool]]]:
    """(header, [(record, completed)]) in begin order. A torn last line is ignored."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise StateError(f"{path}: cannot read journal ({e.strerror})") from None
    try:
        header = orjson.loads(lines[0])
    except (orjson.JSONDecodeError, IndexError):
        raise StateError(f"{path}: journal is corrupt (bad header); "
                         "remove it and run 'btsoot verify' before the next backup") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StateError(f"{path}: not a btsoot journal")
    if not all(isinstance(header.get(k), (str, type(None)))
               for k in ("run", "base", "committed", "remote")):
        raise StateError(f"{path}: journal is corrupt (bad header)")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise StateError(f"{path}: journal version {header.get('version')!r} is newer than "
                         "this btsoot understands; upgrade btsoot")
    recs: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    last = len(lines) - 1
    for k, line in enumerate(lines[1:], start=1):
        if not line:
            continue
        try:
            r = orjson.loads(line)
            i = int(r["i"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            if k >= last - 1:
                break  # torn tail from a crash mid-write
            raise StateError(f"{path}:{k + 1}: journal is corrupt") from None
        if r.get("s") == "d":
            done.add(i)
            if "digest" in r and isinstance(found := recs.get(i, {}).get("entry"), dict):
                found["digest"] = r["digest"]  # learned while the put ran
                if r.get("chunks") is not None:
                    found["chunks"] = r["chunks"]
        else:
            recs[i] = r
    return header, [(recs[i], i in done) for i in sorted(recs)]


def op_record(kind: str, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"t": kind}
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, Entry):
            rec[k] = entry_to_dict(v)
        elif isinstance(v, bytes):
            encode_path(rec, k, v)
        else:
            rec[k] = v
    return rec


def record_entry(rec: dict[str, Any], key: str = "entry") -> Entry | None:
    d = rec.get(key)
    return entry_from_dict(d, "journal") if d is not None else None


def _needs_entry(rec: dict[str, Any], e: Entry | None) -> Entry:
    """rec's entry (decoded by the caller), which its kind of record must have."""
    if e is None:
        raise StateError(f"journal record {rec.get('i')!r} ({rec.get('t')!r}) without its entry")
    return e


def replay(path: str, remote: Remote, base: dict[bytes, Entry],
           attic: list[tuple[bytes, Entry]] | None = None,
           undo: dict[bytes, dict[str, Any]] | None = None) -> dict[bytes, Entry]:
    """Apply a crashed run's journal to `base` (what the remote held before it).

    Completed operations are applied as recorded. An operation that began but
    did not finish is checked on the remote, on its own paths only, and
    applied if it happened; its temp file, if any, is removed. What went into
    the attic is added to `attic` as (its path there, its entry in the mirror);
    the undo records among them to `undo` (their path there: what they apply to).
    """
    from .transfer import apply_redo, matches  # late: transfer imports snapshot only

    header, recs = read_journal(path)
    model = base

    def unsettle(p: bytes) -> None:
        """Folder p's remote attributes are unknown now: creating, renaming or
        removing anything in it (a temp file too) moved its mtime, and a folder
        is created with mode 0700; the final attributes come from an "attr"
        operation at the end of a run. An impossible mtime makes the next plan
        set them again."""
        e = model.get(p)
        if e is not None and e.kind == DIR and e.mtime_ns != UNKNOWN_MTIME:
            model[p] = replace(e, mtime_ns=UNKNOWN_MTIME)

    def touch(p: bytes) -> None:
        unsettle(p.rpartition(b"/")[0])

    def exists(p: bytes) -> bool:
        return remote.lexists(p)

    for rec, completed in recs:
        t = rec.get("t")
        named = record_entry(rec)
        if named is not None and named.escaped:
            remote.escaped.add(named.path)  # stored under its escaped name
        if t == Tag.PUT:
            tmp = decode_path(rec, "tmp") if "tmp" in rec or "tmp_b64" in rec else None
            if tmp is not None and not completed:
                try:
                    remote.unlink(tmp)
                except (FileNotFoundError, NotADirectoryError):
                    pass
                except OSError as err:
                    raise StateError(f"cannot remove temp file {remote.show(tmp)}: "
                                     f"{err.strerror}") from None
            e = _needs_entry(rec, named)
            touch(e.path)
            if completed:
                model[e.path] = e
            elif matches(remote, e.path, e):
                old = model.get(e.path)
                if (old is not None and old.kind == FILE and old.size == e.size
                        and old.mtime_ns == e.mtime_ns and old.digest != e.digest):
                    # Size and mtime cannot tell the new content from the old one
                    # (rewritten with its times kept): the content is unknown, and
                    # the next plan writes the file again.
                    model[e.path] = replace(e, digest=None, chunks=None)
                else:
                    model[e.path] = e
        elif t == Tag.PATCH:
            e = _needs_entry(rec, named)
            redo = decode_path(rec, "redo")
            touch(e.path)
            if not completed and remote.lexists(redo):
                # Complete and verified: the target may be half-written, and this
                # finishes it; else it never changed (see transfer.patch_file).
                try:
                    completed = apply_redo(remote, redo, e.path)
                    remote.unlink(redo)
                except OSError as err:
                    raise StateError(f"cannot finish the update of {remote.show(e.path)} "
                                     f"from {remote.show(redo)}: {err.strerror}") from None
            patched = False
            if completed:
                model[e.path] = e
                patched = True
            elif matches(remote, e.path, e):  # finished, only the done record was lost
                patched = True  # (the file is the one the patch writes: the old is gone)
                old = model.get(e.path)
                if old is not None and old.size == e.size and old.mtime_ns == e.mtime_ns:
                    model[e.path] = replace(e, digest=None, chunks=None)  # cannot tell
                else:
                    model[e.path] = e
            if get_bytes(rec, "undo") is not None:
                _replay_undo(remote, rec, e, patched, attic, undo)
        elif t == Tag.MKDIR:
            e = _needs_entry(rec, named)
            touch(e.path)
            if completed or remote.isdir(e.path):
                model[e.path] = e
                unsettle(e.path)
        elif t == Tag.ATTR:
            e = _needs_entry(rec, named)
            if completed and e.path in model:
                model[e.path] = e
        elif t == Tag.DEL:
            p = decode_path(rec, "path")
            touch(p)
            if completed or not exists(p):
                model.pop(p, None)
        elif t == Tag.ATTIC:
            src, dst = decode_path(rec, "src"), decode_path(rec, "dst")
            e = _needs_entry(rec, named)
            touch(src)
            run = dst[len(ATTIC) + 1:].partition(b"/")[0]
            attic_path(run, e.path, remote.escaped)  # its names there, as the run stored them
            if completed or not exists(src):
                if e.kind == DIR:  # a folder left whole: what was below it went along
                    inside = [k for k in model if is_under(k, src)]
                    if attic is not None and exists(dst):
                        for k in sorted(inside, key=sort_key):
                            m = model[k]
                            if m.kind != DIR and k != src:
                                attic.append((attic_path(run, m.path, remote.escaped), m))
                    for k in inside:
                        del model[k]
                else:
                    model.pop(src, None)
                    if attic is not None and exists(dst):  # (else it found nothing to move)
                        attic.append((dst, e))
        elif t == Tag.MOVE:
            src, dst = decode_path(rec, "src"), decode_path(rec, "dst")
            touch(src)
            touch(dst)
            if completed or (not exists(src) and exists(dst)):
                final = named
                top = model.get(src)
                if top is not None and top.kind == "dir":
                    moved = [k for k in model if k == src or k.startswith(src + b"/")]
                else:
                    moved = [src] if top is not None else []
                for k in moved:
                    old = model.pop(k)
                    if dst.startswith(DAMAGED + b"/"):
                        continue  # set aside: kept on the remote, no longer part of the mirror
                    nk = dst + k[len(src):]
                    model[nk] = old.with_path(nk)
                # A file's move also sets its final attributes; if that did not happen,
                # the remote holds the moved entry as it was. A folder's move sets
                # none: it keeps the old folder's until its "attr" operation.
                if final is not None and final.kind != DIR and (
                        completed or matches(remote, dst, final)):
                    model[dst] = final
        else:
            raise StateError(f"{path}: unknown journal record {t!r}")
    return model


def _replay_undo(remote: Remote, rec: dict[str, Any], e: Entry, patched: bool,
                 attic: list[tuple[bytes, Entry]] | None,
                 undo: dict[bytes, dict[str, Any]] | None) -> None:
    """A patch that kept an undo record (transfer.write_undo): listed in the attic
    if the patch happened and the record is complete; else removed (the old
    content is still the file itself, or the record is torn)."""
    from .transfer import read_record, undo_meta

    where = decode_path(rec, "undo")
    old = record_entry(rec, "old")
    size = None
    clone = False
    try:
        fd = remote.open_file(where)
    except OSError:
        return  # never written, or removed with a patch that did not happen
    try:
        if read_record(fd) is not None:
            size = os.fstat(fd).st_size
        elif rec.get("clone") is True and old is not None and os.fstat(fd).st_size == old.size:
            size, clone = old.size, True  # a whole clone of the old version (reflink)
    finally:
        os.close(fd)
    if patched and size is not None and old is not None and attic is not None:
        attic.append((where, old))
        if undo is not None and not clone:
            undo[where] = undo_meta(e, size)
        return
    if not patched or size is None:
        try:
            remote.unlink(where)
        except OSError:
            pass
