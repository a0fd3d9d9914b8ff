"""Execute a plan against the remote, journalling every operation.

Operations run in plan order; consecutive transfers (copies from the source
and remote-side copies) run in parallel on `jobs` threads. A source file that
fails its before/after check is re-hashed and copied again; if it keeps
changing or cannot be read, it is reported and its path keeps what the remote
already held. Any error writing the remote stops the run (FatalIOError): the
journal lets the next run pick up from there.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from . import events, meta, scanner
from .errors import FatalIOError, SourceError
from .journal import UNKNOWN_MTIME, Journal, op_record
from .longpath import ShortPaths
from .ops import (
    ATTIC,
    DAMAGED,
    PATCH,
    STASH,
    Copy,
    Delete,
    Link,
    Mkdir,
    Move,
    Op,
    RemoteCopy,
    Retire,
    Rmdir,
    SetAttr,
    Symlink,
    Tag,
    attic_path,
)
from .paths import is_under, parent
from .plan import Plan
from .remotefs import Blocked, Remote
from .snapshot import DIR, FILE, SYMLINK, Entry
from .transfer import (
    NotTheOld,
    SourceChanged,
    _unlink_quiet,
    apply_meta,
    clone_to,
    make_symlink,
    matches,
    patch_file,
    set_attrs,
    temp_name,
    undo_meta,
    write_file,
    write_undo,
)

COPY_RETRIES = 3
# Begin records announced (written and synced) at once: one sync of the journal
# per this many puts or deletes.
ANNOUNCE = 256
_TRANSFERS, _LINKS, _DELETES, _RMDIRS, _ATTRS, _MKDIRS, _CHAINS = (
    "transfers", "links", "deletes", "rmdirs", "attrs", "mkdirs", "chains")
# Spread transfers (network remotes): at most this many run at once in one folder,
# chosen among the next LOOKAHEAD_PER_JOB * jobs transfers of the plan.
PER_FOLDER = 2
LOOKAHEAD_PER_JOB = 64
READ_AHEAD_MAX = 1 << 16


def _batch_kind(op: Op) -> str | None:
    """Runs of these are announced (see Executor._announce); other ops go one by one."""
    if isinstance(op, Link):
        return _LINKS  # after the transfers that place what they link to
    if isinstance(op, (Copy, RemoteCopy)):
        return _TRANSFERS
    if isinstance(op, (Delete, Retire)):
        return _DELETES
    if isinstance(op, Rmdir):
        return _RMDIRS  # deepest first, after the deletes that empty them (see plan.py)
    if isinstance(op, Mkdir):
        return _MKDIRS  # a folder's parent is made before it, or was there already
    if isinstance(op, SetAttr):
        return _ATTRS  # independent of one another: at the end of a plan (see plan.py)
    return None


@dataclass(frozen=True, slots=True)
class Chain:
    """Operations that run one after the other on one thread (see chains)."""

    ops: tuple[Op, ...]

    @property
    def where(self) -> bytes:
        return self.ops[0].where


def chains(retires: list[Op], transfers: list[Op]) -> list[Chain]:
    """The old versions retired to the attic and the transfers that follow them in
    a plan, as chains: each file's retirement, then its new content, one after the
    other; the rest alone. Each chain touches its own path, so on a network remote
    they run in parallel (see Spread): the retirements (renames across folders,
    which the kernel runs one at a time per file system) overlap the transfers
    instead of all coming first."""
    at = {op.where: op for op in transfers}
    out: list[Chain] = []
    for op in retires:
        then = at.pop(op.where, None) if isinstance(op, Retire) else None
        out.append(Chain((op, then) if then is not None else (op,)))
    out.extend(Chain((op,)) for op in transfers if at.get(op.where) is op)
    return out


class Spread:
    """Takes the transfers ops[i:j] out of plan order so that those running at once
    sit in different folders, at most `per_folder` in one.

    On a network file system a folder serializes the creations and renames in it
    (the kernel holds the folder's lock across each round trip), and plan order
    puts a folder's files side by side: parallel transfers in plan order wait on
    one another. Taken from many folders, they overlap. The plan is read
    `lookahead` transfers ahead, further (up to READ_AHEAD_MAX) while every
    folder seen is at its limit: a folder of thousands of files does not hold
    up the next one.

    Before an operation is taken, `announce(indexes)` gets it with the next ones
    likely to follow (up to ANNOUNCE, none twice): their begin records are made
    durable in one sync, never far ahead of what runs (recovery checks each
    announced operation on the remote).
    """

    def __init__(self, ops: Sequence[Op | Chain], i: int, j: int, lookahead: int, per_folder: int,
                 announce: Callable[[list[int]], None]) -> None:
        self.ops, self.next, self.end = ops, i, j
        self.lookahead, self.per_folder, self.announce = lookahead, per_folder, announce
        self.waiting: dict[bytes, deque[int]] = {}  # by folder, the one taken last at the end
        self.running: Counter[bytes] = Counter()
        self.pending = 0
        self.announced: set[int] = set()  # looked at, announced, not taken yet

    def _read(self, upto: int) -> None:
        while self.next < self.end and self.pending < upto:
            k = self.next
            self.waiting.setdefault(parent(self.ops[k].where), deque()).append(k)
            self.next += 1
            self.pending += 1

    def _pick(self) -> int | None:
        for folder, queue in self.waiting.items():
            if self.running[folder] < self.per_folder:
                k = queue.popleft()
                del self.waiting[folder]  # to the back: the next one comes from elsewhere
                if queue:
                    self.waiting[folder] = queue
                self.running[folder] += 1
                self.pending -= 1
                return k
        return None

    def take(self) -> int | None:
        """The next transfer to start, or None: none is left, or every folder
        waiting is at its limit (see done)."""
        self._read(self.lookahead)
        k = self._pick()
        while k is None and self.next < self.end and self.pending < READ_AHEAD_MAX:
            self._read(self.pending + self.lookahead)
            k = self._pick()
        if k is None:
            return None
        if k in self.announced:
            self.announced.discard(k)
        else:
            batch = [k]
            self._read(self.pending + ANNOUNCE)  # enough looked at to fill a batch
            queues = [iter(q) for q in self.waiting.values()]
            while queues and len(batch) < ANNOUNCE:  # a few from each folder in turn
                for q in list(queues):
                    n = next(q, None)
                    if n is None:
                        queues.remove(q)
                    elif n not in self.announced:
                        batch.append(n)
                        if len(batch) == ANNOUNCE:
                            break
            self.announce(batch)
            self.announced.update(batch[1:])
        return k

    def done(self, k: int) -> None:
        """ops[k] (taken) has finished: its folder has room again."""
        folder = parent(self.ops[k].where)
        self.running[folder] -= 1
        if not self.running[folder]:
            del self.running[folder]


def _ops_of(unit: Op | Chain) -> tuple[Op, ...]:
    return unit.ops if isinstance(unit, Chain) else (unit,)


# Folders repaired on the way to one operation before the run gives up (a remote
# that keeps changing under it).
MAX_REPAIRS = 64


@dataclass(slots=True)
class ExecStats:
    ops: int = 0
    bytes_sent: int = 0  # from the source across the link
    bytes_remote_copied: int = 0
    set_aside: list[tuple[bytes, bytes]] = field(default_factory=list)  # (path, where it went)
    unpatched: int = 0  # planned patches that became whole copies
    hashed_files: int = 0  # files hashed while sent (the scan left them unread)
    hashed_bytes: int = 0
    # path -> entry the remote now holds there instead of the planned one (None: nothing)
    failed: dict[bytes, Entry | None] = field(default_factory=dict)
    # path -> corrected entry (a file re-hashed after it changed during the copy)
    updated: dict[bytes, Entry] = field(default_factory=dict)
    errors: list[tuple[bytes, str]] = field(default_factory=list)
    # Folders made again empty (what stood there was no folder, or nothing did): what
    # the snapshot has below them and this run did not put back (`placed`) is lost.
    lost: set[bytes] = field(default_factory=set)
    placed: set[bytes] = field(default_factory=set)
    refetched: int = 0  # content gone from the remote, sent again from the source
    resent: list[bytes] = field(default_factory=list)  # the paths of those files
    # What went into the attic: (its path there, the entry it was in the mirror)
    attic: list[tuple[bytes, Entry]] = field(default_factory=list)
    # Of those, the undo records of files patched in place: what each applies to.
    undo: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    # Owners and xattrs the remote refused (its profile said it keeps them).
    misses: meta.Misses = field(default_factory=meta.Misses)
    # Entries placed with metadata the remote cannot hold at all (by kind): in the
    # snapshot only.
    unheld: Counter[str] = field(default_factory=Counter)

    def held(self, e: Entry) -> Entry | None:
        """What the remote holds at planned entry e's path after the run: e, e as its
        copy learnt it (digest, or a file that changed while sent), what stayed
        there when its transfer failed, or nothing (None)."""
        if e.path in self.failed:
            return self.failed[e.path]
        return self.updated.get(e.path, e)


class Executor:
    def __init__(
        self,
        source: str,
        remote: Remote,
        journal: Journal,
        run_id: str,
        jobs: int = 4,
        on_progress: Callable[[ExecStats], None] | None = None,
        small_inline: bool = False,
        sync_files: bool = False,
        history: bool = False,
        clones: bool = False,
        how: meta.Apply = meta.NOTHING,
        hard_links: bool = False,
        keep: meta.Keep = meta.KEEP_ALL,
        spread: bool = False,
    ) -> None:
        self.src = os.fsencode(source)
        # Every remote operation goes through it: beneath the root, never via a link.
        self.remote = remote
        self.journal = journal
        self.run_id = run_id
        self.jobs = max(1, jobs)
        self.stats = ExecStats()
        self.on_progress = on_progress
        self._stash_ready = False
        self._patch_ready = False
        self._lock = threading.Lock()  # stats are added to from every transfer thread
        self._repair_lock = threading.Lock()
        self._unstorable: set[bytes] = set()  # paths the remote refused (see _cannot_hold)
        self._aside = 0
        # Copy files under SMALL_COPY_MAX in this thread, only larger ones on the
        # pool (local disks: see remote.NETWORK_FS).
        self.small_inline = small_inline
        # A network remote: transfers, deletions, new folders and the closing
        # attribute pass from many folders at once (see Spread).
        self.spread = spread
        # Where one sync of the remote's file system does not reach the far end
        # (sshfs: the profile's sync_reaches_disk), each file written is fsynced
        # before its rename, on the transfer threads, so the syncs overlap.
        self.sync_files = sync_files
        self.short = ShortPaths()
        # Journal numbers of announced begin records, by id(op) (see _announce).
        self._announced: dict[int, int] = {}
        self._attic_dirs: set[bytes] = set()  # folders made in the attic by this run
        # The block keeps history: a file patched in place keeps an undo record of
        # the chunks the patch overwrites (transfer.write_undo).
        self.history = history
        self.clones = clones  # the remote can clone: the old version kept whole, at no cost
        # Owners and xattrs the remote keeps (its profile and the block's switches);
        # what it refuses all the same is counted, and reported once.
        self.how = how
        self.misses = self.stats.misses
        self._mine = (os.geteuid(), os.getegid())
        self.hard_links = hard_links  # the remote holds hard links (else Link copies)
        self.keep = keep  # what the block keeps (of which `how` is what the remote holds)

    def s(self, rel: bytes) -> bytes:
        """The source path of rel, likewise."""
        return self.short(self.src + b"/" + rel)

    def run(self, plan: Plan) -> ExecStats:
        ops = plan.ops
        i = 0
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="btsoot-copy") as pool:
            try:
                while i < len(ops):
                    kind = _batch_kind(ops[i])
                    j = i + 1
                    while kind is not None and j < len(ops) and _batch_kind(ops[j]) is kind:
                        j += 1
                    if (self.spread and self.jobs > 1 and kind is _DELETES and j < len(ops)
                            and _batch_kind(ops[j]) is _TRANSFERS):
                        # Old versions to the attic, then new content: per path, in order.
                        k = j + 1
                        while k < len(ops) and _batch_kind(ops[k]) is _TRANSFERS:
                            k += 1
                        units = chains(ops[i:j], ops[j:k])
                        self._spread(pool, units, 0, len(units), _CHAINS)
                        j = k
                    elif self.spread and self.jobs > 1 and kind is _MKDIRS:
                        # Level by level: the folders of one depth at once, their
                        # parents made by the level before (or there already).
                        levels: dict[int, list[Op]] = {}
                        for op in ops[i:j]:
                            levels.setdefault(op.where.count(b"/"), []).append(op)
                        for depth in sorted(levels):
                            self._spread(pool, levels[depth], 0, len(levels[depth]), kind)
                    elif self.spread and self.jobs > 1 and kind in (_TRANSFERS, _LINKS, _DELETES, _ATTRS):
                        self._spread(pool, ops, i, j, kind)
                    elif kind is _TRANSFERS or kind is _LINKS:
                        self._transfers(pool, ops, i, j)
                    else:
                        for k in range(i, j):
                            if kind in (_DELETES, _RMDIRS) and (k - i) % ANNOUNCE == 0:
                                self._announce(ops[k:min(j, k + ANNOUNCE)])
                            self._one(ops[k])
                            self._progress()
                    i = j
            except BaseException:
                # Stopped (a signal, a fatal error): what is queued never starts; what
                # runs finishes or cleans up after itself.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        self.journal.sync()
        self.short.close()
        return self.stats

    def _transfers(self, pool: ThreadPoolExecutor, ops: list[Op], i: int, j: int) -> None:
        """Run the puts ops[i:j], announced ANNOUNCE at a time."""
        # A bounded window: memory stays flat however many files are sent, and
        # after a fatal error few transfers are still queued.
        window: deque[Future] = deque()
        for k in range(i, j):
            op = ops[k]
            assert isinstance(op, (Copy, RemoteCopy))
            if (k - i) % ANNOUNCE == 0:
                self._announce(ops[k:min(j, k + ANNOUNCE)])
            if self.jobs == 1 or (self.small_inline and isinstance(op, Copy) and op.patch is None
                                  and op.entry.size < scanner.SMALL_COPY_MAX):
                self._transfer(op)
                self._progress()
                continue
            window.append(pool.submit(self._transfer, op))
            if len(window) >= self.jobs * 8:
                window.popleft().result()
                self._progress()
        while window:
            window.popleft().result()
            self._progress()

    def _spread(self, pool: ThreadPoolExecutor, ops: Sequence[Op | Chain], i: int, j: int,
                kind: str) -> None:
        """Run ops[i:j] (puts, deletes, new folders, attribute changes, or chains of
        retirements and puts) on the pool, from many folders at once (see Spread)."""
        def announce(batch: list[int]) -> None:
            if kind is not _ATTRS and kind is not _MKDIRS:
                self._announce([op for k in batch for op in _ops_of(ops[k])])

        run: Callable[[Any], None] = (self._chain if kind is _CHAINS else self._transfer
                                      if kind in (_TRANSFERS, _LINKS) else self._one)
        order = Spread(ops, i, j, self.jobs * LOOKAHEAD_PER_JOB,
                       self.jobs if kind is _ATTRS else PER_FOLDER, announce)
        running: dict[Future, int] = {}
        try:
            while True:
                while len(running) < self.jobs:
                    k = order.take()
                    if k is None:
                        break
                    running[pool.submit(run, ops[k])] = k
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    order.done(running.pop(f))
                    f.result()
                    self._progress()
        finally:
            # After an error: nothing more starts; what runs finishes (see run).
            for f in running:
                f.cancel()

    def _chain(self, chain: Chain) -> None:
        for op in chain.ops:
            if isinstance(op, (Copy, RemoteCopy)):
                self._transfer(op)
            else:
                self._one(op)

    def _announce(self, ops: list[Op]) -> None:
        """Make the begin records of the next puts or deletes durable, in one sync:
        a power cut then loses no record of an operation that happened (the
        batch's records are written before any of them runs)."""
        recs = [self._record(op) for op in ops]
        for op, i in zip(ops, self.journal.announce(recs), strict=True):
            self._announced[id(op)] = i

    def _record(self, op: Op) -> dict[str, Any]:
        """The begin record of op (of a put's first attempt: see _transfer)."""
        if isinstance(op, (Copy, RemoteCopy)):
            return op_record(op.tag, entry=op.entry, tmp=self._tmp(op, 0, 0))
        if isinstance(op, Symlink):
            return op_record(op.tag, entry=op.entry, tmp=self._symlink_tmp(op))
        if isinstance(op, Move):
            return op_record(op.tag, src=op.src, dst=op.dst, entry=op.entry)
        if isinstance(op, (Delete, Rmdir)):
            return op_record(op.tag, path=op.path)
        if isinstance(op, Retire):
            return op_record(op.tag, src=op.path, dst=self._attic_path(op), entry=op.entry)
        return op_record(op.tag, entry=op.entry)

    def _attic_path(self, op: Retire) -> bytes:
        return attic_path(self.run_id.encode(), op.entry.path, self.remote.escaped)

    def _attic_folder(self, dst: bytes) -> None:
        folder = parent(dst)
        if folder not in self._attic_dirs:
            self.remote.makedirs(folder)
            with self._lock:
                self._attic_dirs.add(folder)

    def _tmp(self, op: Copy | RemoteCopy, attempt: int, repairs: int) -> bytes:
        return temp_name(op.path, f"{self.run_id}-{id(op)}-{attempt}-{repairs}")

    def _symlink_tmp(self, op: Symlink) -> bytes:
        return temp_name(op.path, f"{self.run_id}-l")

    def _begin(self, op: Op, rec: dict[str, Any]) -> int:
        """op's announced record, once; else a new begin record."""
        i = self._announced.pop(id(op), None)
        return i if i is not None else self.journal.begin(rec, durable=op.durable)

    def _progress(self) -> None:
        self.stats.ops += 1
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def _fatal(self, e: OSError, what: str, path: bytes) -> FatalIOError:
        why = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            why = "no space left on the remote"
        return FatalIOError(f"remote: {what} {self.remote.show(path)}: {why}")

    # --- single operations ---------------------------------------------------

    def _make_writable(self, op: Op) -> bool:
        """Give the owner write access to the remote folders op changes; False if it had it.

        A read-only source folder is mirrored read-only, and then, unless btsoot
        runs as root, nothing inside it can be added, renamed or removed. The
        plan sets every such folder's attributes after all changes inside it, so
        its mode comes back; the journal records it as changed (mtime unknown),
        so after a crash the next plan sets it again.
        """
        folders = {parent(p) for p in op.paths} | ({op.src} if isinstance(op, Move) else set())
        if isinstance(op, Retire) and op.entry.kind == DIR:
            folders.add(op.path)  # (a folder moves into the attic whole: its ".." changes)
        changed = False
        for d in sorted(f for f in folders if f):
            try:
                st = self.remote.lstat(d)
            except OSError:
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode) and mode & 0o300 != 0o300:
                i = self.journal.begin(op_record(Tag.ATTR, entry=Entry(d, DIR, 0, 0,
                                                                     st.st_mode | 0o700)))
                self.remote.chmod(d, mode | 0o700)
                self.journal.done(i)
                changed = True
        return changed

    def _set_aside(self, path: bytes) -> None:
        """Move what stands at path and does not belong there (a link or file where a
        folder belongs, a folder where a file does, what someone left in a folder
        being deleted) to REMOTE/.btsoot/damaged/RUN/N: never followed, never
        deleted, reported."""
        if path == DAMAGED.partition(b"/")[0] or not path:
            raise FatalIOError(f"remote: {self.remote.show(path)} is not a folder "
                               "(replaced by a link or a file?); nothing there was touched")
        with self._lock:
            self._aside += 1
            dst = DAMAGED + b"/" + self.run_id.encode() + b"/" + str(self._aside).encode()
        self.remote.makedirs(dst.rpartition(b"/")[0])
        i = self.journal.begin(op_record(Tag.MOVE, src=path, dst=dst), durable=True)
        self.remote.rename(path, dst)
        self.journal.done(i)
        with self._lock:
            self.stats.set_aside.append((path, dst))

    def _repair(self, rel: bytes) -> None:
        """A folder on the way to an operation's path is missing or is no folder (see
        remotefs.Blocked): set aside what stands there and make the folder again.
        It is empty: what the snapshot has below it is lost (stats.lost), and the
        commit leaves out what this run did not put back."""
        with self._repair_lock:
            try:
                st: os.stat_result | None = self.remote.lstat(rel)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                return  # another thread repaired it
            if st is not None:
                self._set_aside(rel)
            i = self.journal.begin(op_record(Tag.MKDIR, entry=Entry(rel, DIR, 0, UNKNOWN_MTIME,
                                                                  stat.S_IFDIR | 0o700)))
            self.remote.mkdir(rel, 0o700)
            self.journal.done(i)
            with self._lock:
                self.stats.lost.add(rel)

    def _placed(self, path: bytes) -> None:
        """path now holds what the plan put there (tracked once something is lost)."""
        if self.stats.lost:
            with self._lock:
                self.stats.placed.add(path)

    def _cannot_hold(self, path: bytes, e: OSError, old: Entry | None = None) -> None:
        """The remote refuses this entry (a name too long once encoded, a file larger
        than it allows, a symlink where it has none): listed, exit 3; the remote
        keeps what it held there. A folder's whole subtree is left out."""
        why = os.strerror(e.errno or errno.EIO)
        with self._lock:
            self.stats.errors.append((path, f"the remote cannot hold it: {why}"))
            keep = old if old is not None and matches(self.remote, path, old) else None
            self.stats.failed[path] = keep
            self._unstorable.add(path)

    def _below_unstorable(self, path: bytes) -> bool:
        """Is path inside a folder the remote refused? Then it is left out too."""
        if not self._unstorable or path in self._unstorable:
            return False
        p = path
        while b"/" in p:
            p = p.rpartition(b"/")[0]
            if p in self._unstorable:
                with self._lock:
                    self.stats.failed[path] = None
                return True
        return False

    @events.operates
    def _one(self, op: Op) -> None:
        if self._below_unstorable(op.where):
            return
        unlocked = False
        for _ in range(MAX_REPAIRS):
            try:
                self._apply(op)
                return
            except Blocked as e:
                try:
                    self._repair(e.rel)
                except OSError as e2:
                    raise self._fatal(e2, "repair", e.rel) from None
            except OSError as e:
                if isinstance(e, PermissionError) and not unlocked and self._make_writable(op):
                    unlocked = True
                    continue
                refused = _CANNOT_HOLD | (_NO_LINKS if isinstance(op, Symlink) else set())
                if e.errno in refused and isinstance(op, (Mkdir, Symlink, Move)):
                    self._cannot_hold(op.where, e)
                    return
                where = op.src if isinstance(op, Move) else op.path
                raise self._fatal(e, type(op).__name__.lower(), where) from None
        raise FatalIOError(f"remote: {self.remote.show(op.where)}: the folders on its way keep changing")

    def _apply(self, op: Op) -> None:
        """One operation between its begin and done records (see HANDLERS)."""
        handler = HANDLERS[type(op)]
        i = self._begin(op, self._record(op))
        after = handler(self, op)
        self.journal.done(i)
        if after is not None:
            after()

    def _mkdir(self, op: Mkdir) -> None:
        try:
            self.remote.mkdir(op.path, 0o700)
        except FileExistsError:
            if not self.remote.isdir(op.path):  # a link to a folder is no folder
                self._set_aside(op.path)
                self.remote.mkdir(op.path, 0o700)
        self._placed(op.path)

    def _move(self, op: Move) -> Callable[[], None] | None:
        if op.dst.startswith(STASH + b"/") and not self._stash_ready:
            self.remote.makedirs(op.dst.rpartition(b"/")[0])
            self._stash_ready = True
        try:
            self.remote.rename(op.src, op.dst)
        except Blocked:
            raise
        except FileNotFoundError:
            # Nothing moved: recovery finds neither path changed. A stash slot:
            # its move out of the stash comes here.
            entry = op.entry
            return None if entry is None else lambda: self._content_gone(op.dst, entry)
        except OSError as e:
            if e.errno not in _IN_THE_WAY:
                raise
            self._set_aside(op.dst)  # something stands where the content goes
            self.remote.rename(op.src, op.dst)
        if op.entry is not None and op.entry.kind == FILE:
            set_attrs(self.remote, op.dst, op.entry, self.how, self.misses)
        self._placed(op.dst)
        return None

    def _symlink(self, op: Symlink) -> None:
        tmp = self._symlink_tmp(op)
        try:
            with self.remote.at(op.path) as (dfd, name):
                make_symlink(dfd, tmp.rpartition(b"/")[2], name, op.entry)
        except Blocked:
            raise
        except OSError as e:
            if e.errno not in _IN_THE_WAY:
                raise
            self._set_aside(op.path)
            with self.remote.at(op.path) as (dfd, name):
                make_symlink(dfd, tmp.rpartition(b"/")[2], name, op.entry)
        self._new_meta(op.path, op.entry)
        self._placed(op.path)

    def _delete(self, op: Delete) -> None:
        try:
            self.remote.unlink(op.path)
        except (FileNotFoundError, Blocked):
            pass
        except IsADirectoryError:  # a folder where a file was: not ours to delete
            self._set_aside(op.path)

    def _rmdir(self, op: Rmdir) -> None:
        try:
            self.remote.rmdir(op.path)
        except (FileNotFoundError, Blocked):
            pass  # gone, or a folder above it is (repaired by what goes there)
        except OSError as e:
            # Not empty: someone left something in it (.DS_Store, Thumbs.db, @eaDir,
            # .nfsXXXX); or no folder at all (a link). Kept, never a stop.
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            self._set_aside(op.path)

    def _retire(self, op: Retire) -> None:
        try:
            st = self.remote.lstat(op.path)
        except (FileNotFoundError, Blocked):
            return  # nothing there any more: as a delete that finds nothing
        want = {SYMLINK: stat.S_ISLNK, DIR: stat.S_ISDIR}.get(op.entry.kind, stat.S_ISREG)
        if not want(st.st_mode):
            # Not what the record says left (someone put a folder there): not ours
            # to keep as the old version, nor to delete.
            self._set_aside(op.path)
            return
        dst = self._attic_path(op)
        self._attic_folder(dst)
        try:
            self.remote.rename(op.path, dst)
        except FileNotFoundError:
            return  # nothing there any more: as a delete that finds nothing
        except Blocked as e:
            if is_under(e.rel, ATTIC):
                raise
            return  # a folder on its way is gone: so is what it held
        with self._lock:
            if op.entry.kind == DIR:  # what the attic lists: the files and links in it
                run = self.run_id.encode()
                self.stats.attic.extend((attic_path(run, m.path, self.remote.escaped), m)
                                        for m in op.members)
            else:
                self.stats.attic.append((dst, op.entry))

    def _set_attr(self, op: SetAttr) -> Callable[[], None] | None:
        try:
            set_attrs(self.remote, op.path, op.entry, self.how, self.misses)
        except Blocked:
            raise
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOENT) or op.entry.kind == SYMLINK:
                raise
            # A link where a file or folder belongs, or nothing there at all.
            link = e.errno == errno.ELOOP

            def after() -> None:
                if link:
                    self._set_aside(op.path)
                self._content_gone(op.path, op.entry)
            return after
        return None

    def _new_meta(self, path: bytes, e: Entry) -> None:
        """Give an entry this run just made its owner and xattrs (where the remote
        keeps them): nothing to do for one of ours without xattrs. What the remote
        cannot hold is counted (ExecStats.unheld)."""
        how, keep = self.how, self.keep
        if keep.owners and not how.owners and e.uid is not None and (e.uid, e.gid) != self._mine:
            self._unheld("owners")
        if keep.xattrs and e.xattrs:
            if not how.xattrs:
                self._unheld("extended attributes")
            elif keep.acls and not how.acls and any(
                    n.startswith(meta.ACL_PREFIX) for n, _ in e.xattrs):
                self._unheld("ACLs")
        if not (how.owners or how.xattrs):
            return
        if how.want_owner(e) in (None, self._mine) and not how.want_xattrs(e):
            return
        apply_meta(self.remote, path, e, how, self.misses)

    def _unheld(self, kind: str) -> None:
        with self._lock:
            self.stats.unheld[kind] += 1

    def _link(self, op: Link, tmp: bytes) -> bool:
        """Make op.path another name of op.src (a hard link through tmp); False
        where the remote will not (then the content is copied remote-side)."""
        try:
            with self.remote.at(op.src) as (sfd, sname), self.remote.at(op.path) as (dfd, name):
                try:
                    st = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
                except FileNotFoundError:
                    return False  # gone from the remote: the copy fetches it again
                if not stat.S_ISREG(st.st_mode) or st.st_size != op.entry.size:
                    return False
                os.link(sname, tmp, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                try:
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except BaseException:
                    _unlink_quiet(dfd, tmp)
                    raise
        except Blocked:
            raise
        except OSError as e:
            if e.errno in _NO_HARD_LINK:
                return False
            raise
        return True

    def _content_gone(self, path: bytes, e: Entry) -> None:
        """What a move (or an attribute change) should find at path is not on the
        remote: someone removed it. A file is sent again from the source, a folder
        made again (what belongs below it is lost: see _repair)."""
        with self._lock:
            self.stats.refetched += 1
            if e.kind == FILE:
                self.stats.resent.append(path)
        if e.kind == FILE:
            self._transfer(Copy(path, e, None))
        elif e.kind == SYMLINK:
            self._one(Symlink(path, e))
        else:
            self._repair(path)

    def _patch(self, op: Copy) -> bool:
        """Write only op's changed chunks into the remote file, in place. False when
        that cannot be done safely (the remote file is not the one the snapshot
        describes, or has other hard links that must keep the old content; the
        source changed): then nothing was written to it, and a full copy follows."""
        assert op.old is not None and op.patch is not None
        try:
            st = self.remote.lstat(op.path)
        except OSError:
            return False
        if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_mode & stat.S_IWUSR
                and st.st_size == op.old.size
                and self.remote.same_mtime(st.st_mtime_ns, op.old.mtime_ns)):
            return False
        undo: bytes | None = None
        try:
            if not self._patch_ready:
                self.remote.makedirs(PATCH)
                self.remote.sync_dir(PATCH.rpartition(b"/")[0])
                self._patch_ready = True
            redo = PATCH + b"/" + f"{self.run_id}-{id(op)}".encode()
            if self.history and op.old.chunks and op.entry.digest:
                undo = attic_path(self.run_id.encode(), op.old.path, self.remote.escaped)
                self._attic_folder(undo)
            i = self.journal.begin(op_record(Tag.PATCH, entry=op.entry, redo=redo, undo=undo,
                                             old=op.old if undo else None,
                                             clone=True if undo and self.clones else None),
                                   durable=True)
            kept = 0
            cloned = False
            if undo is not None:
                # The old version first, synced: a clone of the whole file where the
                # remote can (reflink), else the chunks the patch overwrites. A kill
                # after this and before the patch finished: replay decides.
                cloned = self.clones and clone_to(self.remote, op.path, undo)
                if not cloned:
                    kept = write_undo(self.remote, op.path, undo, op.old, op.entry, op.patch)
            n = patch_file(self.s(op.path), self.remote, redo, op.path, op.entry, op.patch)
        except (SourceChanged, SourceError, NotTheOld):
            if undo is not None:
                try:
                    self.remote.unlink(undo)
                except OSError:
                    pass
            return False  # (a source error: the full copy meets it again and reports it)
        except OSError as e:
            raise self._fatal(e, "patch", op.path) from None
        self.journal.done(i)
        with self._lock:
            self.stats.bytes_sent += n
            if undo is not None:
                self.stats.attic.append((undo, op.old))
                if not cloned:
                    self.stats.undo[undo] = undo_meta(op.entry, kept)
        return True

    @events.operates
    def _transfer(self, op: Copy | RemoteCopy) -> None:
        if self._below_unstorable(op.path):
            return
        if isinstance(op, Copy) and op.patch is not None:
            if self._patch(op):
                return
            with self._lock:
                self.stats.unpatched += 1
        entry = op.entry
        if isinstance(op, Link) and entry.digest is None:
            # A first backup hashes while it sends: the member this one links to
            # learnt the digest; without it (not sent), this one is sent itself.
            done = self.stats.updated.get(op.src)
            if done is not None and done.digest is not None:
                entry = replace(entry, digest=done.digest, chunks=done.chunks)
                self.stats.updated[op.path] = entry
            else:
                op = Copy(op.path, entry, op.old)
        unlocked = cleared = False
        attempt = repairs = 0
        while attempt <= COPY_RETRIES:
            tmp = self._tmp(op, attempt, repairs)
            rec = op_record(Tag.PUT, entry=entry, tmp=tmp)
            i = self._begin(op, rec) if attempt == repairs == 0 else self.journal.begin(rec)
            try:
                tmp_name = tmp.rpartition(b"/")[2]
                if isinstance(op, Link):
                    if self.hard_links and self._link(op, tmp_name):
                        self.journal.done(i, **_learnt(op.entry, entry))
                        self._placed(op.path)
                        return
                    self._unheld("hard links")
                    op = RemoteCopy(op.path, op.entry, op.src, op.old)  # once: a copy from here
                if isinstance(op, RemoteCopy):
                    try:
                        sfd = self.remote.open_file(op.src)
                    except Blocked:
                        raise
                    except OSError:
                        # The content to copy is gone from the remote (or is no file):
                        # the source has it.
                        with self._lock:
                            self.stats.refetched += 1
                            self.stats.resent.append(op.path)
                        op = Copy(op.path, op.entry, None)
                        continue
                    try:
                        with self.remote.at(op.path) as (dfd, name):
                            n, _, _ = write_file(sfd, dfd, tmp_name, name, entry, False,
                                                 self.sync_files)
                    finally:
                        os.close(sfd)
                    self._new_meta(op.path, entry)
                    with self._lock:
                        self.stats.bytes_remote_copied += n
                else:
                    with self.remote.at(op.path) as (dfd, name):
                        n, digest, chunks = write_file(self.s(op.path), dfd, tmp_name, name,
                                                       entry, True, self.sync_files)
                    with self._lock:
                        self.stats.bytes_sent += n
                    self._new_meta(op.path, entry)
                    if entry.digest is None:  # hashed while sent
                        entry = replace(entry, digest=digest,
                                        chunks=tuple(chunks) if chunks else None)
                        self.journal.done(i, digest=digest, chunks=chunks)
                        self.stats.updated[op.path] = entry
                        with self._lock:
                            self.stats.hashed_files += 1
                            self.stats.hashed_bytes += entry.size
                        self._placed(op.path)
                        return
                self.journal.done(i, **_learnt(op.entry, entry))
                if entry is not op.entry:
                    self.stats.updated[op.path] = entry
                self._placed(op.path)
                return
            except SourceChanged:
                pass
            except Blocked as e:
                repairs += 1
                if repairs > MAX_REPAIRS:
                    raise self._fatal(e, "write", op.path) from None
                try:
                    self._repair(e.rel)
                except OSError as e2:
                    raise self._fatal(e2, "repair", e.rel) from None
                continue
            except SourceError as e:
                why = ("vanished during backup" if e.errno in (errno.ENOENT, errno.ENOTDIR)
                       else os.strerror(e.errno or errno.EIO))
                self._source_failed(op, why)
                return
            except OSError as e:
                if isinstance(e, PermissionError) and not unlocked and self._make_writable(op):
                    unlocked = True
                    continue
                if e.errno in _CANNOT_HOLD:
                    self._cannot_hold(op.path, e, op.old)
                    return
                if e.errno in _IN_THE_WAY and not cleared:
                    cleared = True
                    try:
                        self._set_aside(op.path)
                    except OSError as e2:
                        raise self._fatal(e2, "set aside", op.path) from None
                    continue
                raise self._fatal(e, "write", op.path) from None
            # The source changed under us: hash it again and retry with the new state.
            attempt += 1
            r = scanner.hash_file(self.s(op.path), scanner.CHUNK_SIZE,
                                  scanner.CHUNK_THRESHOLD)
            digest, chunks, size, mtime, ino, err = r
            if err != 0:
                if err in (errno.ENOENT, errno.ENOTDIR):
                    self._source_failed(op, "vanished during backup")
                    return
                if err != scanner.CHANGED:
                    self._source_failed(op, os.strerror(err))
                    return
                continue
            entry = replace(entry, digest=digest, chunks=tuple(chunks) if chunks else None,
                            size=size, mtime_ns=mtime, ino=ino)
        self._source_failed(op, "kept changing while being copied")

    def _source_failed(self, op: Copy | RemoteCopy, why: str) -> None:
        self.stats.errors.append((op.path, why))
        # The remote keeps what it held at this path, if anything.
        keep = op.old if op.old is not None and matches(self.remote, op.path, op.old) else None
        self.stats.failed[op.path] = keep


def _learnt(planned: Entry, entry: Entry) -> dict[str, Any]:
    """What a put learnt that its begin record lacks: the digest (see Journal.done)."""
    if planned.digest is not None or entry.digest is None:
        return {}
    return {"digest": entry.digest, "chunks": list(entry.chunks) if entry.chunks else None}


# A rename onto a path that holds a folder (or a folder blocking a file's parent).
_IN_THE_WAY = {errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR}
# What a remote says of an entry it cannot hold: a name too long (once encoded) or
# that it refuses, a file larger than it allows.
_CANNOT_HOLD = {errno.ENAMETOOLONG, errno.EFBIG, errno.EILSEQ, errno.EINVAL}
# ... of a hard link, where it has none or no more (exFAT; a full link count).
_NO_HARD_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS}
# ... and of a symlink, where it has none (exFAT, FAT).
_NO_LINKS = {errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM}



# The operations other than puts, each between its begin and done records (see
# Executor._apply); puts go through Executor._transfer. A handler may return
# what to do once its done record is written.
HANDLERS: dict[type, Callable[[Executor, Any], Callable[[], None] | None]] = {
    Mkdir: Executor._mkdir, Move: Executor._move, Symlink: Executor._symlink,
    Delete: Executor._delete, Rmdir: Executor._rmdir, SetAttr: Executor._set_attr,
    Retire: Executor._retire,
}
