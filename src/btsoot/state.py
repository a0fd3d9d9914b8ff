"""A block's local state: committed snapshots, the head pointer, run log, journal.

    STATE/blocks/NAME/
        state.json            head id, the remote's newest snapshot id, delta chain size
        snapshots/ID.jsonl    the head: the newest committed snapshot (it describes the remote)
        snapshots/ID.back.jsonl.gz  an older committed snapshot, as what differs from
                              the next newer one (see backsnap.py)
        journal.jsonl         present only while a run is in progress or crashed
        base-RUN-N.jsonl      a run's view of the remote when it is not the head snapshot
                              (recovered after a crash, or without verify's damaged files)
        scan.jsonl            the running scan (uncommitted)
        runs.jsonl            one record per run: its summary (see runlog.py)
        items/RUN.jsonl.gz    what each run did, item by item (`btsoot log NAME RUN`)
        unsent.json           files not on the remote as the source has them, since when
        damaged.jsonl         paths `btsoot verify` found damaged (re-sent next run)
        profile.json          a copy of the remote's profile (see profile.py), with its remote_id
        verify.json           the slice `verify --next K/N` reads next
        lock
"""

from __future__ import annotations

import fcntl
import functools
import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import orjson

from . import backsnap
from .durable import atomic_write
from .errors import LocalStateError, LockedError, StateError, printable
from .snapshot import Entry

_F = TypeVar("_F", bound=Callable[..., Any])


def _local(fn: _F) -> _F:
    """An OSError of this method is the state folder's (exit 9), never the remote's
    or the source's."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            raise LocalStateError.of(e) from None

    return wrapper  # type: ignore[return-value]


@dataclass(slots=True)
class Head:
    head: str | None = None  # newest committed snapshot id
    remote_head: str | None = None  # newest snapshot the remote holds
    deltas: int = 0  # remote deltas since the last full snapshot
    delta_bytes: int = 0
    full_bytes: int = 0
    # Which remote the record describes and how many records it has committed there:
    # REMOTE/.btsoot/block.json carries the same two. When they differ (another disk
    # rotated in, the remote rolled back), the run plans from the remote's own record.
    remote_id: str | None = None
    generation: int = 0
    # Every remote this block was backed up to: id -> {"generation", "snapshot",
    # "updated_ns", "path"} (for `btsoot list`).
    remotes: dict[str, dict[str, Any]] = field(default_factory=dict)


RUNS_CAP = 16 << 20  # bytes of run log kept (about 10,000 runs)


class BlockState:
    def __init__(self, root: str) -> None:
        self.root = root
        self.snapshots = os.path.join(root, "snapshots")
        self.journal = os.path.join(root, "journal.jsonl")
        self.base_prefix = os.path.join(root, "base-")
        self.scan = os.path.join(root, "scan.jsonl")
        self.runs = os.path.join(root, "runs.jsonl")
        self.damaged = os.path.join(root, "damaged.jsonl")
        self.lock = os.path.join(root, "lock")
        self.profile = os.path.join(root, "profile.json")
        self.verify_cursor = os.path.join(root, "verify.json")
        self._head_path = os.path.join(root, "state.json")

    @_local
    def ensure(self) -> None:
        os.makedirs(self.snapshots, exist_ok=True)

    @_local
    def remove_temps(self) -> None:
        """Remove temp files a killed run left (snapshots, the scan, the recovered
        view, state.json and a run's item list being written). Only under the
        block's lock: no other run can be writing them."""
        for d in (self.root, self.snapshots, os.path.join(self.root, "items")):
            for p in glob.glob(os.path.join(glob.escape(d), "*.tmp")) + glob.glob(
                    os.path.join(glob.escape(d), "*.tmp.*")):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    def size(self) -> int:
        """Bytes the block's state folder holds (snapshots, logs, item lists)."""
        total = 0
        for d, _, files in os.walk(self.root):
            for n in files:
                try:
                    total += os.lstat(os.path.join(d, n)).st_size
                except OSError:
                    pass
        return total

    def base_path(self, run_id: str, n: int) -> str:
        return f"{self.base_prefix}{run_id}-{n}.jsonl"

    @_local
    def remove_bases(self, keep: str | None = None) -> None:
        """Remove base views no journal refers to any more."""
        for p in glob.glob(glob.escape(self.base_prefix) + "*.jsonl"):
            if p != keep:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    def snapshot_path(self, snap_id: str) -> str:
        return os.path.join(self.snapshots, f"{snap_id}.jsonl")

    def load_head(self) -> Head:
        try:
            with open(self._head_path, "rb") as f:
                d = orjson.loads(f.read())
            h = Head(**d)
        except FileNotFoundError:
            return Head()
        except (OSError, orjson.JSONDecodeError, TypeError) as e:
            raise StateError(f"{self._head_path}: corrupt block state ({e})") from None
        ids_ok = all(isinstance(v, (str, type(None))) for v in (h.head, h.remote_head, h.remote_id))
        nums = (h.deltas, h.delta_bytes, h.full_bytes, h.generation)
        remotes_ok = isinstance(h.remotes, dict) and all(
            isinstance(v, dict) for v in h.remotes.values())
        if not ids_ok or not all(type(v) is int and v >= 0 for v in nums) or not remotes_ok:
            raise StateError(f"{self._head_path}: corrupt block state (bad field types)")
        return h

    @_local
    def save_head(self, h: Head) -> None:
        atomic_write(self._head_path, orjson.dumps(asdict(h)))

    def load_profile(self) -> bytes | None:
        """The copy of the remote's profile (None if absent or unreadable: the
        remote's own is read then)."""
        try:
            with open(self.profile, "rb") as f:
                return f.read(1 << 16)
        except OSError:
            return None

    @_local
    def save_profile(self, data: bytes) -> None:
        atomic_write(self.profile, data)

    def load_verify_cursor(self) -> dict[str, Any]:
        """Where `verify --next` goes on ({} if never run, or unreadable: slice 1)."""
        try:
            with open(self.verify_cursor, "rb") as f:
                d = orjson.loads(f.read(1 << 12))
        except (OSError, orjson.JSONDecodeError):
            return {}
        return d if isinstance(d, dict) else {}

    @_local
    def save_verify_cursor(self, d: dict[str, Any]) -> None:
        atomic_write(self.verify_cursor, orjson.dumps(d))

    @_local
    def committed_ids(self) -> list[str]:
        return sorted(backsnap.ids(self.snapshots))

    @_local
    def keep_only(self, keep: set[str]) -> None:
        """Remove the committed snapshots not in keep (retention decided); one an
        older kept snapshot leans on is folded into that one first."""
        backsnap.remove(self.snapshots, set(self.committed_ids()) - keep)

    @_local
    def compact(self, head: str | None) -> int:
        """Keep every committed snapshot but the head (and the newest) as a
        back-delta of the next newer one (see backsnap.py)."""
        return backsnap.compact(self.snapshots, head)

    @_local
    def head_path(self, snap_id: str) -> str:
        """The head's plain file. A head kept only as a back-delta (state.json put
        back to an older snapshot) is written out plain first, beside it."""
        path = self.snapshot_path(snap_id)
        if not os.path.exists(path) and os.path.exists(backsnap.back_path(self.snapshots, snap_id)):
            backsnap.write_plain(self.snapshots, snap_id)
        return path

    def entries(self, snap_id: str) -> Iterator[Entry]:
        """A committed snapshot's entries, whichever way it is kept."""
        return backsnap.entries(self.snapshots, snap_id)

    def resolved(self, snap_id: str) -> backsnap.Resolved:
        return backsnap.Resolved(self.snapshots, snap_id)

    def load_damaged(self) -> set[bytes]:
        """Paths `btsoot verify` found missing or corrupt on the remote."""
        from .snapshot import get_bytes

        try:
            with open(self.damaged, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return set()
        out: set[bytes] = set()
        for line in lines:
            try:
                p = get_bytes(orjson.loads(line), "path")
            except (orjson.JSONDecodeError, AttributeError, ValueError):
                raise StateError(f"{self.damaged}: corrupt list of damaged files") from None
            if p is not None:
                out.add(p)
        return out

    @_local
    def save_damaged(self, paths: set[bytes]) -> None:
        """Remember damaged paths (merged with those already known)."""
        from .snapshot import put_bytes

        paths = paths | self.load_damaged()
        lines = []
        for p in sorted(paths):
            d: dict[str, Any] = {}
            put_bytes(d, "path", p)
            lines.append(orjson.dumps(d) + b"\n")
        atomic_write(self.damaged, b"".join(lines))

    @_local
    def log_run(self, record: dict[str, Any]) -> None:
        # A message may name a path that is not UTF-8 (os.fsdecode's surrogates, which
        # JSON cannot hold): such bytes are written as \xNN, like every other output.
        clean = {k: printable(v) if isinstance(v, str) else v for k, v in record.items()}
        with open(self.runs, "ab") as f:
            f.write(orjson.dumps(clean) + b"\n")
            size = f.tell()
        if size > RUNS_CAP:
            # Keep the newest half (whole records): a block backed up every hour for
            # years must not carry every record it ever wrote.
            with open(self.runs, "rb") as f:
                f.seek(size - RUNS_CAP // 2)
                f.readline()
                atomic_write(self.runs, f.read(), mode=0o644)

    @_local
    def last_run(self) -> dict[str, Any] | None:
        runs = self.recent_runs(1)
        return runs[0] if runs else None

    def new_run_id(self) -> str:
        """An id for a run starting now, after the last logged one's (see snapshot.new_id)."""
        from .snapshot import id_ns, new_id

        last = (self.last_run() or {}).get("run")
        return new_id(after=last if isinstance(last, str) and id_ns(last) is not None else None)

    @_local
    def recent_runs(self, n: int) -> list[dict[str, Any]]:
        """The last n records of the run log, newest first (damaged lines skipped)."""
        out: list[dict[str, Any]] = []
        for rec in self.runs_backwards():
            out.append(rec)
            if len(out) == n:
                break
        return out

    def runs_backwards(self) -> Iterator[dict[str, Any]]:
        """The run log's records, newest first, read backwards a block at a time
        (a caller that stops early reads no more than it needs)."""
        try:
            f = open(self.runs, "rb")
        except FileNotFoundError:
            return
        except OSError as e:
            raise LocalStateError.of(e) from None
        with f:
            end = f.seek(0, os.SEEK_END)
            tail = b""
            while end > 0:
                start = max(0, end - (1 << 16))
                f.seek(start)
                lines = (f.read(end - start) + tail).split(b"\n")
                # The first piece may be the end of a line that starts further back.
                tail = lines.pop(0) if start > 0 else b""
                for line in reversed(lines):
                    rec = _record(line)
                    if rec is not None:
                        yield rec
                end = start


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


class Lock:
    """One run per block: an exclusive flock on the block's lock file.

    The kernel drops the lock when the process dies, even by SIGKILL, so a
    crashed run never leaves a stale lock behind.
    """

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        self.fd = -1

    def __enter__(self) -> Lock:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LocalStateError.of(e, self.path) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise LockedError(f"{self.what} is locked by another btsoot run") from None
        try:  # who holds it, for a person looking (a full state disk does not stop the run here)
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
