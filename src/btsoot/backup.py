"""The backup pipeline: walk -> snapshot -> plan -> execute -> commit.

`backup(block)` is the library entry point; the CLI is a thin shell over it.
Guards run before anything on the remote changes. The journal makes every
step after that resumable; the snapshot describing the new state is
committed only after the remote holds that state and it has been made durable.
"""

from __future__ import annotations

import glob
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from . import adopt as adopting
from . import events, first, meta, mounts, runlog
from . import profile as profiles
from . import remote as rmt
from .adopt import Adoption
from .config import Block
from .durable import fsync_dir
from .errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    BtsootError,
    FatalIOError,
    GuardError,
    LocalStateError,
    StateError,
    UsageError,
    printable,
)
from .execute import ExecStats, Executor
from .frozen import frozen
from .history import retain
from .itemize import items
from .journal import UNKNOWN_MTIME, Journal, replay
from .limit import parse_rate
from .names import fold
from .plan import Plan, make_plan
from .remotefs import Remote
from .retention import Policy, select
from .scan import ScanStats, scan
from .snapshot import (
    DIR,
    Entry,
    Header,
    SnapshotReader,
    SnapshotWriter,
    new_id,
    sort_key,
)
from .state import BlockState, Head, Lock
from .transfer import limited, syncfs


@dataclass(slots=True)
class BackupResult:
    block: str
    result: str = "ok"  # ok | nothing | partial | dry-run
    exit_code: int = EXIT_OK
    snapshot: str | None = None
    resumed: bool = False
    adopted: bool = False  # planned from the remote's own record, not the local one
    adoption: Adoption | None = None  # an existing copy adopted (backup --adopt)
    # Why (another remote rotated in, a rollback, the local state gone); and what
    # was dropped with it (an interrupted run's journal that is not this remote's).
    notices: list[str] = field(default_factory=list)
    repaired: int = 0  # damaged files (found by verify) this run set out to re-send
    damaged: set[bytes] = field(default_factory=set)  # their paths
    run: str | None = None  # the run's id in the run log (see runlog.py)
    started: float | None = None  # when it started (seconds since the epoch)
    items: int | None = None  # how many items its kept list holds
    unsent: dict[str, Any] | None = None  # runlog.unsent_summary after the run
    plan: Plan | None = None
    scan: ScanStats | None = None
    execution: ExecStats | None = None
    remote_meta_bytes: int = 0
    attic_bytes: int | None = None  # what the attic holds after this run's pruning
    durations: dict[str, float] = field(default_factory=dict)
    # The pass before this one, when the remote had lost content below a folder that
    # had to be made again (see Executor._repair): this pass sent it back.
    earlier: BackupResult | None = None

    def _operations(self, ex: ExecStats) -> dict[str, int]:
        """The plan's operations, as they ran: a patch that had to send the whole
        file (see Executor._patch) counts as the copy it became."""
        c = self.plan.count() if self.plan else Counter()
        if ex.unpatched:
            c["patch"] -= ex.unpatched
            c["copy"] += ex.unpatched
        return {k: v for k, v in c.items() if v}

    def summary(self) -> dict[str, Any]:
        """The run's record: what `backup --json` prints, the run log keeps and the
        hooks read (per-path lists capped: see runlog.capped)."""
        return runlog.capped(self._merged())

    def _merged(self) -> dict[str, Any]:
        out = self._summary()
        if self.earlier is not None:
            first = self.earlier._merged()
            ops = Counter(first["operations"]) + Counter(out["operations"])
            out["operations"] = dict(ops)
            for k in ("bytes_sent", "bytes_remote_copied", "remote_snapshot_bytes", "hashed_files",
                      "hashed_bytes", "refetched", "repaired", "attic_files"):
                out[k] += first[k]
            for k in ("set_aside", "remade", "notices"):
                out[k] = first[k] + out[k]
            out["adopted"] = out["adopted"] or first["adopted"]
            if out["attic_bytes"] is None:
                out["attic_bytes"] = first["attic_bytes"]
            out["passes"] = first["passes"] + 1
            out["durations"]["total"] = round(first["durations"].get("total", 0.0)
                                              + out["durations"].get("total", 0.0), 3)
        return out

    def _summary(self) -> dict[str, Any]:
        s = self.scan or ScanStats()
        ex = self.execution or ExecStats()
        errors = list(s.errors) + list(ex.errors)
        return {
            "block": self.block,
            "run": self.run,
            "started": self.started,
            "result": self.result,
            "exit_code": self.exit_code,
            "snapshot": self.snapshot,
            "resumed": self.resumed,
            "adopted": self.adopted,
            "adoption": self.adoption.summary() if self.adoption else None,
            "notices": [printable(n) for n in self.notices],
            "repaired": self.repaired,
            "files": s.files,
            "bytes": s.bytes,
            "hashed_files": s.hashed_files + ex.hashed_files,
            "hashed_bytes": s.hashed_bytes + ex.hashed_bytes,
            "operations": self._operations(ex),
            "bytes_sent": ex.bytes_sent,
            "bytes_remote_copied": ex.bytes_remote_copied,
            "remote_snapshot_bytes": self.remote_meta_bytes,
            # JSON text is UTF-8: bytes that are not show as \xNN (never a lone surrogate).
            "errors": [{"path": p.decode("utf-8", "backslashreplace"), "error": w}
                       for p, w in errors],
            # Exit 3's causes apart: vanished, busy (changing), permission, remote, other.
            "causes": runlog.causes(errors),
            # Files the remote does not hold as the source has them (this run's
            # failures and earlier ones), since when: see runlog.update_unsent.
            "unsent": self.unsent,
            "items": self.items,
            "skipped": [p.decode("utf-8", "backslashreplace") for p in s.skipped],
            "vanished": s.vanished,  # gone while the walk ran: kept as last backed up, this run
            # What stood where a damaged entry had to go, kept in REMOTE/.btsoot/damaged/.
            "set_aside": [{"path": p.decode("utf-8", "backslashreplace"),
                           "to": d.decode("utf-8", "backslashreplace")} for p, d in ex.set_aside],
            # Folders found missing or replaced on the remote, made again (their content
            # sent again in a second pass), and content gone from the remote re-sent.
            "remade": sorted(p.decode("utf-8", "backslashreplace") for p in ex.lost),
            "refetched": ex.refetched,
            # Old content moved into REMOTE/.btsoot/attic/RUN/ (history kept), and
            # the attic's size once pruned (None: not pruned by this run).
            "attic_files": len(ex.attic),
            "attic_bytes": self.attic_bytes,
            "passes": 1,
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
        }


Progress = Callable[[str, Any], None]


class _Read:
    """A snapshot file's entries, read afresh at each call (None: none)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def __call__(self) -> Iterator[Entry]:
        if self.path is None:
            return
        with SnapshotReader(self.path) as r:
            yield from r

    def with_digests(self, digests: set[str]) -> Iterator[Entry]:
        """The entries whose digest is one of these (SnapshotReader.with_digests)."""
        if self.path is None:
            return
        with SnapshotReader(self.path) as r:
            yield from r.with_digests(digests)


def check_source(block: Block, previous: Header | None, override: bool,
                 previous_empty: bool = False) -> None:
    src = block.source
    if not os.path.exists(src):
        raise GuardError(f"source {src} does not exist (is the disk mounted?)")
    if not os.path.isdir(src):
        raise GuardError(f"source {src} is not a folder")
    try:
        empty = not os.listdir(src)
    except OSError as e:
        raise GuardError(f"source {src} cannot be read: {e.strerror}") from None
    if override or previous is None:
        return
    moved = bool(previous.source_dev) and os.stat(src).st_dev != previous.source_dev
    if moved and previous.source_fs is not None:
        # Another device number: the same file system remounted (a reboot, another
        # USB port) passes; another one, or the empty folder under a mount point, not.
        moved = not mounts.same_file_system(previous.source_fs, mounts.identity(src))
    if moved:
        raise GuardError(
            f"source {src} is on a different file system than at the last backup "
            "(an unmounted disk?); use --override if this is intended"
        )
    if empty and not previous_empty:
        raise GuardError(
            f"source {src} is empty but the last backup was not (an unmounted disk?); "
            "use --override to empty the backup"
        )


def backup(
    block: Block,
    *,
    dry_run: bool = False,
    checksum: bool = False,
    override: bool = False,
    jobs: int | None = None,
    progress: Progress | None = None,
    new_remote: bool = False,
    adopt: Adoption | None = None,
    bwlimit: int | None = None,
) -> BackupResult:
    """bwlimit: bytes per second sent to the remote (None: the block's setting).
    new_remote: the remote is an empty folder joining the block's remotes (a
    second disk of a rotation); its first backup goes there like any first one.
    adopt: the remote holds a copy made otherwise, taken as it is (see adopt.py)."""
    block.check()
    st = BlockState(block.state)
    st.ensure()
    with Lock(st.lock, f"block {block.name!r}"):
        started = time.time()
        run = st.new_run_id()
        st.remove_temps()
        if not os.path.exists(st.journal):
            st.remove_bases()  # a run killed after its commit left them; nothing names them
        try:
            res = _backup(block, st, dry_run, checksum, override, jobs, progress, new_remote, adopt,
                          bwlimit)
            if res.execution is not None and res.execution.lost:
                # Folders of the remote were made again, empty: the plan against the
                # snapshot just committed sends what they held.
                again = _backup(block, st, dry_run, checksum, override, jobs, progress,
                                bwlimit=bwlimit)
                again.earlier = res
                res = again
        except BtsootError as e:
            if not dry_run:
                _log_failure(st, {"block": block.name, "run": run, "started": started,
                                  "result": "failed", "exit_code": e.exit_code, "error": e.message})
            raise
        except KeyboardInterrupt as e:
            if not dry_run:
                signum = getattr(e, "signum", signal.SIGINT)
                _log_failure(st, {"block": block.name, "run": run, "started": started,
                                  "result": "interrupted", "exit_code": 128 + signum,
                                  "error": signal.Signals(signum).name})
            raise
        if not dry_run:
            res.run, res.started = run, started
            _keep(st, res)
            st.log_run(dict(res.summary(),
                            change_weight=change_weight(res.plan) if res.plan else 0))
        return res


def _keep(st: BlockState, res: BackupResult) -> None:
    """Keep what the run did (its item list) and what it could not send. The
    remote is committed by now: a state folder that cannot take these costs a
    notice, not the run."""
    failed: list[bytes] = []
    never: set[bytes] = set()  # of those, the paths the remote holds no version of
    for r in (res.earlier, res):
        if r is not None:
            if r is res and r.scan:  # (a second pass scans again: its scan says it all)
                failed += [p for p, _ in r.scan.errors]
                never |= r.scan.never
            if r.execution:
                failed += [p for p, _ in r.execution.errors]
                never |= {p for p, kept in r.execution.failed.items() if kept is None}
    try:
        res.unsent = runlog.unsent_summary(
            runlog.update_unsent(st.root, failed, never, res.started or 0.0))
        res.items = runlog.write_items(st.root, res.run or "run", _items(res))
    except OSError as e:
        res.notices.append(f"the run's item list could not be kept: {e.strerror}")


def _items(res: BackupResult) -> Iterator[dict[str, Any]]:
    """Everything the run (and its first pass, if it took two) did, then what it
    failed to back up."""
    for r in (res.earlier, res):
        if r is None:
            continue
        ex = r.execution or ExecStats()
        if r.plan is not None:
            for verb, path, d in items(r.plan):
                if path in ex.failed:
                    continue  # not done: its failure is listed below
                if verb in ("copy", "update", "patch") and _within(path, r.damaged):
                    verb = "resend"
                yield runlog.item(verb, path, d)
        for path in ex.resent:
            yield runlog.item("resend", path, {"why": "gone from the remote"})
        for path, why in (r.scan.errors if r.scan and r is res else []) + ex.errors:
            yield runlog.item("failed", path, {"error": why, "cause": runlog.cause(why)})


# --- the mass-change guard ------------------------------------------------------------
#
# A fixed share never fires on a photo archive (well under 1% changes a night)
# and ransomware that encrypts only the documents (5% of the files) passes a
# deletion limit of 50%. So a run is measured against the block's own recent
# runs: it stops (exit 4, before anything changes) when it would modify or
# delete many times the usual number of files, and more than a floor. Files
# unchanged for a long time count twice: people edit what they edited lately;
# ransomware and a wrong sync tool touch everything alike.

MASS_HISTORY = 30  # runs looked back on
MASS_MIN_RUNS = 5  # no guard before this many runs of history
MASS_FACTOR = 10
MASS_FLOOR = 100  # never stops a run that changes fewer files than this
STALE_DAYS = 180


def change_weight(plan: Plan) -> int:
    """Files a run modifies or deletes, the long-unchanged ones twice."""
    return plan.modified_files + plan.deleted_files + plan.stale_changes


def remote_meta(block: Block, prof: profiles.Profile) -> meta.Apply:
    """The owners and xattrs the remote gets: what the block keeps and the remote
    can hold (the snapshot records them either way)."""
    return meta.Apply(owners=block.owners and prof.owners,
                      xattrs=block.xattrs and prof.xattrs,
                      acls=block.acls and prof.acls)


def mass_change_guard(plan: Plan, runs: list[dict[str, Any]]) -> None:
    """GuardError if plan changes far more than the recent runs (newest first) did."""
    weights = sorted(r["change_weight"] for r in runs
                     if r.get("result") in ("ok", "nothing", "partial")
                     and type(r.get("change_weight")) is int and r["change_weight"] >= 0)
    if len(weights) < MASS_MIN_RUNS:
        return
    usual = weights[(len(weights) - 1) * 9 // 10]  # 9 runs of 10 changed at most this
    weight = change_weight(plan)
    if weight <= max(MASS_FLOOR, MASS_FACTOR * usual):
        return
    n = plan.modified_files + plan.deleted_files
    times = f"{weight / usual:.0f}x" if usual else "far more than"
    raise GuardError(
        f"backup would modify or delete {n:,} files ({plan.modified_files:,} modified, "
        f"{plan.deleted_files:,} deleted), {times} this block's usual (at most {usual:,} on 9 of "
        f"its last {len(weights)} runs); {plan.stale_changes:,} of them unchanged for over "
        f"{STALE_DAYS} days; nothing was changed: use --override if this is intended")


def _log_failure(st: BlockState, record: dict) -> None:
    """Log a failed run; the error that ended it is what the user must see, even
    when the state folder cannot take the log line either."""
    try:
        st.log_run(record)
    except LocalStateError:
        pass


def _backup(block: Block, st: BlockState, dry_run: bool, checksum: bool, override: bool,
            jobs: int | None, progress: Progress | None, new_remote: bool = False,
            adopt: Adoption | None = None, bwlimit: int | None = None) -> BackupResult:
    res = BackupResult(block.name)
    t0 = time.monotonic()
    head = st.load_head()
    committed = st.head_path(head.head) if head.head else None
    if committed and not os.path.exists(committed):
        raise StateError(f"{committed}: committed snapshot is missing")
    prev_header, prev_empty = None, True
    if committed:
        with SnapshotReader(committed) as r:
            prev_header = r.header
            prev_empty = next(r.raw(), None) is None
    check_source(block, prev_header, override, prev_empty)
    ident = rmt.check_remote(block.remote, block.name,
                             head.head is not None and not (new_remote or adopt), adopt is not None)
    if new_remote and ident is not None:
        raise UsageError(f"remote {block.remote} holds a btsoot backup already: "
                         "--new-remote is for an empty folder joining the block")
    if adopt and ident is not None and ident.get("snapshot") is not None:
        # Adopted already (the same command run again, after a crash that came
        # after the commit) or backed up into by btsoot: a run like any other.
        res.notices.append("the remote holds this block's backup already: nothing to adopt")
        adopt = None
    try:
        remote = Remote(block.remote)
    except OSError as e:
        raise FatalIOError(f"remote {block.remote}: {e.strerror}") from None
    with remote, frozen(block, res.notices) as view:
        return _run(block, st, res, head, committed, remote, dry_run, checksum, override, jobs,
                    progress, t0, ident, new_remote, view, adopt, bwlimit)


def _run(block: Block, st: BlockState, res: BackupResult, head: Head, committed: str | None,
         remote: Remote, dry_run: bool, checksum: bool, override: bool, jobs: int | None,
         progress: Progress | None, t0: float, found: dict[str, Any] | None,
         new_remote: bool = False, view: str | None = None,
         adopt: Adoption | None = None, bwlimit: int | None = None) -> BackupResult:
    """view: where the source is read (a snapshot of it: see frozen.py)."""
    view = view or block.source
    run_id = ""  # set once the remote's record is read: ids never go back in time

    # What the remote can hold (probed at the first run and when the remote's file
    # system changes): how names are stored, whether case folds. Recovery needs it
    # too: the journal names paths as the source has them.
    stored = None
    if dry_run:
        stored = profiles.load(remote)
        prof = stored or profiles.Profile()
    else:
        try:
            if head.head is None or new_remote or adopt:
                # The first run writes the remote's identity and snapshot folder even
                # when there is nothing to copy (an empty source): its commit writes there.
                rmt.init_remote(remote, block.name)
        except OSError as e:
            raise FatalIOError(f"remote {block.remote}: cannot initialise: {e.strerror}") from None
    # block.json as check_remote read it; a first run's, written just now, read back.
    ident = found if found is not None else (rmt.read_ident(remote) or {})
    if not dry_run:
        try:
            prof = profiles.ensure(remote, st, ident.get("remote_id"))
        except OSError as e:
            raise FatalIOError(f"remote {block.remote}: cannot initialise: {e.strerror}") from None
    # The id is also the time people read; "newest" must not depend on the clock:
    # after a step back, ids go on from the newest one known (see snapshot.new_id).
    run_id = new_id(after=max(filter(None, (head.head, ident.get("snapshot"))), default=None))
    codec = prof.codec()
    remote.encode, remote.escape = codec.encode, codec.escape
    remote.mtime_step = prof.mtime_granularity_ns
    escaped_before = _escaped_in(committed) if prof.case_insensitive else set()
    remote.escaped = set(escaped_before)

    # Does the local record describe this remote as it is? (See state.Head.)
    base = committed
    base_id = head.head  # the snapshot base is (None: a view rebuilt from a journal)
    interrupted = os.path.exists(st.journal)  # a killed run: the remote gets tidied
    journal_ok = interrupted and (dry_run or _journal_is_for(st, ident, res))
    why = rmt.record_differs(head, ident) if committed else None
    if why is not None and not adopt:
        res.notices.append(why + "; planned from the remote's own record")
        if os.path.exists(st.journal) and not dry_run:
            _drop_journal(st)  # about a state of the remote that is not this one
        journal_ok = False
    if journal_ok:
        # A crashed run left a journal: rebuild what the remote holds now.
        res.resumed = True
        base = _recover(st, committed, remote, run_id)
        base_id = None
    elif why is not None or committed is None:
        # The remote's own record: another disk rotated in, a rollback, or the local
        # state gone (a reinstalled machine). Its newest snapshot and no other: if
        # it is damaged, an older one would be a wrong view of the remote (exit 8).
        # No snapshot at all: it holds nothing of ours (a new disk of the rotation).
        newest = rmt.newest(block.remote)
        if newest is not None:
            _, entries = rmt.stream(block.remote, newest)
            base = _write_base(st, entries, run_id)
        else:
            base = None
            if not adopt:
                _refuse_foreign(remote)
        base_id = newest
        res.adopted = (newest is not None or why is not None) and not adopt
        head.remote_head = None  # this remote gets a full snapshot, not a delta
    # Files `btsoot verify` found damaged: forget them in the base, so the plan re-sends them.
    damaged = st.load_damaged()
    if damaged and base is not None:
        base = _write_base(st, (e for e in _Read(base)() if not _within(e.path, damaged)), run_id)
    res.repaired, res.damaged = len(damaged), damaged
    res.durations["prepare"] = time.monotonic() - t0

    # A first backup into an empty remote needs no plan in memory: it streams.
    streaming = base is None and not dry_run and adopt is None
    t = time.monotonic()
    if progress:
        progress("phase", "scan")
    prev_reader = SnapshotReader(committed) if committed else None
    try:
        sres = scan(
            block=block.name,
            source=block.source,
            out_path=st.scan,
            snap_id=run_id,
            previous=prev_reader,
            exclude=block.exclude,
            one_file_system=block.one_file_system,
            checksum=checksum,
            # A first backup into an empty remote: no content there to move or copy
            # from, so new files are hashed while they are sent, not read twice.
            hash_new=base is not None or dry_run or adopt is not None,
            on_progress=(lambda s: progress("scan", s)) if progress else None,
            keep=block.keep(),
            stable_inodes=mounts.inodes_stable(block.source),
            read_from=view if view != block.source else None,
            collect_diff=not streaming,
        )
    finally:
        if prev_reader:
            prev_reader.close()
    res.scan = sres.stats
    res.durations["scan"] = time.monotonic() - t
    if any(p == b"" for p, _ in sres.stats.errors):
        raise GuardError(f"source {block.source} cannot be listed; nothing was changed")
    if adopt and not res.resumed:
        # The remote as it is, listed once, is what this run plans against.
        if progress:
            progress("phase", "adopt")
        t = time.monotonic()
        if dry_run and stored is None:
            remote.mtime_step = max(remote.mtime_step, 10**9)  # not probed: whole seconds
        found_there = adopting.walk_remote(remote, prof.codec().active or prof.case_insensitive)
        base = _write_base(st, adopting.view(remote, found_there, st.scan, adopt,
                                             jobs or block.jobs), run_id)
        res.adoption = adopt
        if adopt.unsure:
            res.notices.append(
                f"{adopt.unsure} files on the remote have their source file's size but another "
                "mtime (a copy that did not keep times?): sent again; --adopt=checksum compares "
                "their content instead")
        res.durations["adopt"] = time.monotonic() - t
    diff = sres.diff if base == committed else None
    if prof.case_insensitive:
        if base != committed:  # recovered: the view of the remote is another file
            escaped_before = _escaped_in(base)
        marked = _mark_case_twins(st, base, escaped_before, sres)
        if marked:
            diff = None  # the scan's own diff does not know the marks
        remote.escaped |= marked | escaped_before

    t = time.monotonic()
    if progress:
        progress("phase", "plan")
    # Old content goes to the attic, not away; but what an adoption replaces or
    # removes was in no snapshot, and retention would let it go at the run's end.
    history = Policy.of(block).history and not adopt
    how = remote_meta(block, prof)
    if streaming:
        # Planned as it runs (first.py): nothing to delete or modify, nothing to guard.
        plan = Plan(copy_bytes=sres.stats.bytes)
    else:
        plan = make_plan(_Read(base), _Read(st.scan), run_id=run_id, diff=diff,
                         patch=block.patch_in_place, fold=fold if prof.case_insensitive else None,
                         attic=history,
                         stale_before=sres.header.scan_started_ns - STALE_DAYS * 86_400 * 10**9,
                         links=block.hard_links, held=(how.owners, how.xattrs))
    res.plan = plan
    if progress:
        progress("plan_bytes", plan.copy_bytes)
    res.durations["plan"] = time.monotonic() - t
    limit = block.delete_limit(plan.old_files)
    if plan.deleted_files > limit and not override and plan.old_files:
        raise GuardError(
            f"backup would delete {plan.deleted_files} of {plan.old_files} files on the remote, "
            f"more than the block's limit ({block.max_delete}); use --override if this is intended"
        )
    if block.change_guard and not override:
        mass_change_guard(plan, st.recent_runs(MASS_HISTORY))
    if dry_run:
        os.unlink(st.scan)  # a dry run leaves the state as it found it
        for p in glob.glob(glob.escape(st.base_path(run_id, 0)[:-7]) + "*.jsonl"):
            os.unlink(p)
        res.result = "dry-run"
        return res

    ex = ExecStats()
    _check_space(block.remote, plan.copy_bytes)
    if streaming or not plan.empty or res.resumed:
        t = time.monotonic()
        if progress:
            progress("phase", "transfer")
        journal = Journal(st.journal, run_id, base, head.head, ident.get("remote_id"))
        st.remove_bases(keep=base)
        try:
            network = rmt.is_network(block.remote)
            with limited(bwlimit if bwlimit is not None else parse_rate(block.bwlimit)):
                executor = Executor(view, remote, journal, run_id,
                                    jobs or block.jobs or rmt.default_jobs(network),
                                    (lambda s: progress("transfer", s)) if progress else None,
                                    small_inline=not network, spread=network,
                                    sync_files=not prof.sync_reaches_disk,
                                    history=history, clones=prof.clones, how=how,
                                    hard_links=prof.hard_links, keep=block.keep())
                if streaming:
                    # The scan's snapshot becomes what the remote holds, chunk by chunk.
                    w = SnapshotWriter(st.scan, sres.header)
                    try:
                        ex, stream = first.send(st.scan, executor, w, block.hard_links)
                    except BaseException:
                        w.abort()
                        raise
                    w.commit()
                    plan = res.plan = first.plan_of(stream, st.snapshot_path(run_id), block.hard_links)
                else:
                    ex = executor.run(plan)
            res.notices.extend(f"remote: {line}" for line in ex.misses.lines())
            if ex.unheld:
                kinds = ", ".join(f"{k} ({n})" for k, n in sorted(ex.unheld.items()))
                res.notices.append(f"the remote cannot hold {kinds}: they are kept in the "
                                   "snapshot, and a restore gives them back")
            if ex.attic:
                _record_attic(block, remote, ex.attic, base_id, ex.undo)
            _cleanup_meta(remote)
            try:
                syncfs(block.remote)
            except OSError as e:
                raise FatalIOError(f"remote {block.remote}: cannot sync: {e.strerror}") from None
        finally:
            journal.close()
        res.durations["transfer"] = time.monotonic() - t
    res.execution = ex

    t = time.monotonic()
    if progress:
        progress("phase", "commit")
    unchanged = plan.empty and not res.resumed and not res.adopted and not res.adoption
    if unchanged and not sres.rewritten and not sres.stats.hashed_files and head.head:
        # Nothing differs in any field: the committed snapshot still says it all.
        os.unlink(st.scan)
        res.snapshot = head.head
        if interrupted:
            res.attic_bytes = _tidy(block, remote, st, head, True)
    else:
        res.snapshot, res.remote_meta_bytes, res.attic_bytes = _commit(
            block, remote, st, sres.header, committed, head, ex, unchanged, ident, interrupted,
            applied=streaming)
    res.durations["commit"] = time.monotonic() - t
    if sres.stats.errors or ex.errors:
        res.result, res.exit_code = "partial", EXIT_PARTIAL
    elif plan.empty and not res.resumed and not res.adoption:
        res.result = "nothing"
    res.durations["total"] = time.monotonic() - t0
    return res


def _refuse_foreign(remote: Remote) -> None:
    """A remote with no snapshot of ours that holds something besides .btsoot/
    (an adoption killed before it sent anything, or files put there since the
    first run began): a plan that does not know them would write over them."""
    try:
        names = [n for n in remote.listdir(b"") if n != rmt.META.encode()]
    except OSError as e:
        raise FatalIOError(f"remote {remote.show(b'')}: {e.strerror}") from None
    if names:
        raise GuardError(f"remote {remote.show(b'')} holds files but no btsoot snapshot: "
                         "to take them as they are, run backup --adopt; else give an empty folder")


def _check_space(remote: str, need: int) -> None:
    """Stop before a run that cannot fit: the bytes to send must be free on the
    remote (a replaced file's old version stays until its new one is complete).
    A file system that reports no sizes at all (some FUSE mounts) is not judged."""
    if not need:
        return
    try:
        sv = os.statvfs(remote)
    except OSError:
        return
    free = sv.f_bavail * sv.f_frsize
    if sv.f_blocks and free < need:
        raise FatalIOError(f"remote {remote}: no space left on the remote for this run: it sends "
                           f"{_mib(need)}, {_mib(free)} are free; nothing was changed")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _journal_is_for(st: BlockState, ident: dict[str, Any], res: BackupResult) -> bool:
    """Is the interrupted run's journal about this remote, and not yet committed?"""
    from .journal import read_journal

    header, _ = read_journal(st.journal)
    rid = header.get("remote")
    if rid is not None and rid != ident.get("remote_id"):
        res.notices.append("an interrupted run's journal belongs to another remote: dropped "
                           "(that remote is planned from its own record when it is back)")
        _drop_journal(st)
        return False
    if header.get("run") is not None and header.get("run") == ident.get("snapshot"):
        # It committed on the remote; only the local record was not saved. The
        # remote's record says what it holds (planned from it, below).
        res.notices.append("the interrupted run had committed on the remote")
        _drop_journal(st)
        return False
    return True


def _drop_journal(st: BlockState) -> None:
    for p in (st.journal, st.scan):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    st.remove_bases()


@events.in_phase("recover")
def _recover(st: BlockState, committed: str | None, remote: Remote, run_id: str) -> str:
    from .journal import read_journal

    header, _ = read_journal(st.journal)
    base_path = header.get("base") or committed
    if base_path and not os.path.isabs(base_path):
        base_path = os.path.join(st.root, base_path)  # see Journal: relative to its folder
    model: dict[bytes, Entry] = {}
    if base_path:
        if not os.path.exists(base_path):
            raise StateError(f"{st.journal}: its base snapshot {base_path} is missing")
        with SnapshotReader(base_path) as r:
            model = {e.path: e for e in r}
    attic: list[tuple[bytes, Entry]] = []
    undo: dict[bytes, dict[str, Any]] = {}
    try:
        model = replay(st.journal, remote, model, attic, undo)
        if attic:  # listed now: the journal that knows of them goes when this run starts
            rmt.record_attic(remote, attic, prev=header.get("committed"), undo=undo)
    except OSError as e:
        raise FatalIOError(f"remote: cannot finish the interrupted run at "
                           f"{os.fsdecode(e.filename or remote.root)}: {e.strerror}") from None
    return _write_base(st, (model[k] for k in sorted(model, key=sort_key)), run_id)


def _escaped_in(path: str | None) -> set[bytes]:
    """The paths a snapshot records as stored under their escaped name."""
    out: set[bytes] = set()
    if path is None:
        return out
    with SnapshotReader(path) as r:
        for p, obj, line in r.raw():
            if b'"esc":true' in line and obj.get("esc") is True:
                out.add(p)
    return out


def _mark_case_twins(st: BlockState, base: str | None, before: set[bytes],
                     sres: Any) -> set[bytes]:
    """On a remote that folds case, two names of one folder that differ only in case
    would be one file there. One of them keeps its name (the one the remote already
    holds under it, else the first in order); the others are stored escaped
    (names.Codec.escape), and a name stored escaped stays so while it exists, so
    its place on the remote never moves (`before`: the paths base marks). Marks
    them in this run's snapshot; returns the paths marked."""
    groups: dict[tuple[bytes, bytes], list[bytes]] = {}
    stack: list[bytes] = [b""]
    names: dict[bytes, dict[bytes, bytes]] = {b"": {}}
    with SnapshotReader(st.scan) as r:
        for e in r:
            par = e.path.rpartition(b"/")[0]
            while len(stack) > 1 and stack[-1] != par:
                names.pop(stack.pop(), None)
            key = fold(e.path.rpartition(b"/")[2])
            seen = names.setdefault(par, {})
            if key in seen:
                groups.setdefault((par, key), [seen[key]]).append(e.path)
            else:
                seen[key] = e.path
            if e.kind == DIR:
                stack.append(e.path)
                names[e.path] = {}
    if not groups and not before:
        return set()
    members = {p for g in groups.values() for p in g}
    in_base = {e.path for e in _Read(base)() if e.path in members} if base else set()
    escaped = set(before)
    for g in groups.values():
        plain = [p for p in g if p not in before]
        keep = next((p for p in plain if p in in_base), plain[0] if plain else None)
        escaped.update(p for p in g if p != keep)
    out = st.scan + ".twins"
    marked: set[bytes] = set()
    w = SnapshotWriter(out, sres.header)
    try:
        with SnapshotReader(st.scan) as r:
            for e in r:
                if e.path in escaped:
                    marked.add(e.path)
                    e = replace(e, escaped=True)
                w.write(e)
    except BaseException:
        w.abort()
        raise
    w.commit()
    os.replace(out, st.scan)
    sres.rewritten = True
    return marked


def _within(path: bytes, paths: set[bytes]) -> bool:
    """Is path, or a folder above it, in paths?"""
    while True:
        if path in paths:
            return True
        i = path.rfind(b"/")
        if i < 0:
            return False
        path = path[:i]


def _write_base(st: BlockState, entries: Iterable[Entry], run_id: str) -> str:
    """Write the view of the remote that this run plans against, under a new name.

    Never over the file a pending journal names as its base: until this run's
    journal replaces that one, a crash must find both exactly as they were.
    """
    n = 1
    while os.path.exists(st.base_path(run_id, n)):
        n += 1
    out = st.base_path(run_id, n)
    w = SnapshotWriter(out, Header(block="", source="", id="base", created_ns=time.time_ns(),
                                   scan_started_ns=0))
    try:
        w.write_all(entries)
    except BaseException:
        w.abort()
        raise
    w.commit()
    return out


@events.in_phase("cleanup")
def _cleanup_meta(remote: Remote) -> None:
    """Remove the run's emptied stash folders, and the folder of patch redo files
    (empty once every patch finished: a redo file is removed right after its target
    is durable)."""
    try:
        remote.rmdir(rmt.meta_rel("patch"))
    except OSError:
        pass
    stash = rmt.meta_rel("stash")
    try:
        runs = remote.listdir(stash)
    except OSError:  # none made (or not a folder: left alone)
        return
    for r in runs:
        try:
            remote.rmdir(stash + b"/" + r)
        except OSError:
            pass


@events.in_phase("commit")
def _commit(block: Block, remote: Remote, st: BlockState, header: Header, committed: str | None,
            head: Head, ex: ExecStats, unchanged: bool,
            ident: dict[str, Any], tidy: bool, applied: bool = False) -> tuple[str, int, int | None]:
    """Write the snapshot of what the remote now holds; then point head at it.

    Usually that is the scan itself, renamed into place; entries whose transfer
    failed (or whose file changed and was re-hashed) are patched first, unless
    that was done as they were sent (applied: a streamed first backup).
    """
    snap_id = header.id
    out = st.snapshot_path(snap_id)
    if ex.lost or ((ex.failed or ex.updated) and not applied):
        w = SnapshotWriter(out, header)
        try:
            with SnapshotReader(st.scan) as r:
                for e in r:
                    if e.path in ex.failed:
                        keep = ex.held(e)
                        if keep is not None:
                            w.write(keep)
                        continue
                    if ex.lost and _within(e.path, ex.lost):
                        if e.path in ex.lost:
                            # Made again empty, mode 0700: the next plan sets its attributes.
                            if e.kind == DIR:
                                w.write(replace(e, mtime_ns=UNKNOWN_MTIME))
                            continue
                        if not _within(e.path, ex.placed):
                            continue  # not on the remote any more: the next pass sends it
                    w.write(ex.updated.get(e.path, e))
                w.names = r.names
        except BaseException:
            w.abort()
            raise
        w.commit()
    else:
        with open(st.scan, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(st.scan, out)
        fsync_dir(st.snapshots)
    hdr = header
    meta_bytes = 0
    if not unchanged or head.remote_head is None:
        full = (
            head.remote_head is None
            or committed is None
            or head.deltas >= rmt.MAX_DELTAS
            or head.delta_bytes > head.full_bytes // 2
        )
        try:
            if full:
                meta_bytes = rmt.write_full(remote, hdr, out)
                rmt.write_guide(remote)
                head.full_bytes, head.deltas, head.delta_bytes = meta_bytes, 0, 0
            else:
                assert head.remote_head is not None and committed is not None
                meta_bytes, _ = rmt.write_delta(remote, hdr, head.remote_head,
                                                committed, out)
                head.deltas += 1
                head.delta_bytes += meta_bytes
            # The remote's record is complete: block.json names it, one generation on.
            rid = ident.get("remote_id") or rmt.new_remote_id()
            gen = ident.get("generation", 0) + 1
            rmt.write_ident(remote, {"format": "btsoot-remote", "version": 1, "block": block.name,
                                     "created_ns": ident.get("created_ns", time.time_ns()),
                                     "remote_id": rid, "generation": gen, "snapshot": snap_id})
        except OSError as e:
            raise FatalIOError(f"remote {block.remote}: cannot write snapshot: {e.strerror}") from None
        head.remote_head = snap_id
        head.remote_id, head.generation = rid, gen
        head.remotes[rid] = {"generation": gen, "snapshot": snap_id, "updated_ns": time.time_ns(),
                             "path": block.remote}
    head.head = snap_id
    st.save_head(head)
    # The remote is tidied while the journal is still there: a run killed before
    # this point leaves a journal, and the run that finds one tidies (see backup()).
    attic = _tidy(block, remote, st, head, bool(meta_bytes) or tidy)
    # The journal goes before the base views: a journal whose base is gone stops
    # every later run (exit 8), and a kill between the two must not leave one.
    for p in (st.journal, st.scan, st.damaged):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    # ... durably: a power cut must not bring back the name of a journal whose
    # inode a later file of this run (a back-delta, an item list) took over.
    fsync_dir(st.root)
    st.remove_bases()
    _compact(st, snap_id)
    return snap_id, meta_bytes, attic


@events.in_phase("compact")
def _compact(st: BlockState, head: str) -> None:
    """The snapshot the head replaced becomes a back-delta of it (backsnap.py).
    The backup is committed by now: where that cannot be done (a full state
    disk, a damaged older snapshot), the plain file stays and the next run tries
    again."""
    try:
        st.compact(head)
    except (LocalStateError, StateError, OSError):
        pass


def _tidy(block: Block, remote: Remote, st: BlockState, head: Head, on_remote: bool) -> int | None:
    """Apply the block's retention (history.retain): with on_remote, on the remote
    too (its snapshots, the attic, and the temp files of snapshots a killed run
    was writing there); else only to the local snapshots. Returns the bytes the
    attic keeps (None when the remote was not pruned)."""
    assert head.head is not None
    protect = {i for i in (head.head, head.remote_head) if i}
    if not on_remote:
        st.keep_only(set(select(st.committed_ids(), Policy.of(block))) | protect)
        return None
    try:
        return retain(block, remote, st, protect).attic_bytes
    except OSError:
        return None  # tried again by the next run that writes


def _record_attic(block: Block, remote: Remote, items: list[tuple[bytes, Entry]],
                  prev: str | None, undo: dict[bytes, dict[str, Any]]) -> None:
    try:
        rmt.record_attic(remote, items, merge=False, prev=prev, undo=undo)
    except OSError as e:
        raise FatalIOError(f"remote {block.remote}: cannot list what went into the attic: "
                           f"{e.strerror}") from None
