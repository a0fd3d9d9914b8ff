"""Which snapshots a block keeps, and what in the attic they need.

The terms are the ones restic and borg users know. A snapshot's time is its id
(UTC to the microsecond; ids only grow, so a clock stepped back never reorders
them), read in the machine's local time for days, weeks, months and years:

- keep_last N: the N newest snapshots;
- keep_daily / keep_weekly / keep_monthly / keep_yearly N: for each of the N
  newest days (ISO weeks, months, years) that have a snapshot, its newest one;
- keep_within DURATION ("30d", "2w", "6m", "1y", "36h", "1y6m"): every snapshot
  taken within DURATION before the newest one (months and years by the calendar,
  days by the local date, so a daylight-saving change moves nothing);
- attic_max SIZE ("50G"): the oldest kept snapshots are let go, one at a time,
  until what the attic holds for the rest fits (the newest is always kept).

The newest snapshot is always kept. The attic keeps exactly the content that a
kept snapshot needs: an item that run R moved out of the mirror is needed by a
kept snapshot older than R that holds the same content (restore finds content
by digest). Which snapshot that is comes from the item's list line ("prev": the
snapshot the run planned from, which holds every item it moved out) or, when
that one is not kept, from reading the kept snapshots themselves.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as _dt
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .snapshot import FILE, SYMLINK, Entry, id_ns

_WITHIN = re.compile(r"(\d{1,6})([ymwdh])")
_SIZE = re.compile(r"(\d{1,15})\s*([kmgt]?)(i?b)?", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
DEFAULT_WITHIN = "30d"
RULES = ("newest", "last", "within", "daily", "weekly", "monthly", "yearly")


def parse_within(s: str) -> tuple[int, int, int]:
    """"1y6m", "30d", "2w", "36h" -> (months, days, hours); "" or "0" -> nothing."""
    s = s.strip().lower()
    if s in ("", "0"):
        return (0, 0, 0)
    pos, months, days, hours = 0, 0, 0, 0
    for m in _WITHIN.finditer(s):
        if m.start() != pos:
            break
        n, unit = int(m.group(1)), m.group(2)
        if unit == "y":
            months += 12 * n
        elif unit == "m":
            months += n
        elif unit == "w":
            days += 7 * n
        elif unit == "d":
            days += n
        else:
            hours += n
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"{s!r} is not a duration like 30d, 2w, 6m, 1y or 36h")
    return months, days, hours


def parse_size(v: str | int) -> int:
    """50G, 500MiB, 1t, 123456 -> bytes (binary units); 0 or "" -> no cap."""
    if type(v) is int:
        if v < 0:
            raise ValueError("a size cannot be negative")
        return v
    s = str(v).strip()
    if s == "":
        return 0
    m = _SIZE.fullmatch(s)
    if m is None:
        raise ValueError(f"{s!r} is not a size like 50G, 500M or 123456")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


@dataclass(frozen=True, slots=True)
class Policy:
    last: int = 1
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: str = DEFAULT_WITHIN
    attic_max: int = 0  # bytes; 0: no cap

    @classmethod
    def of(cls, block: Any) -> Policy:
        return cls(block.keep_last, block.keep_daily, block.keep_weekly, block.keep_monthly,
                   block.keep_yearly, block.keep_within, parse_size(block.attic_max))

    @property
    def history(self) -> bool:
        """Can a snapshot other than the newest be kept? (If not, a run deletes
        what it replaces instead of moving it into the attic.)"""
        return (self.last > 1 or self.daily > 0 or self.weekly > 0 or self.monthly > 0
                or self.yearly > 0 or parse_within(self.within) != (0, 0, 0))

    def describe(self) -> str:
        terms = [f"keep_{k} = {getattr(self, k)}" for k in
                 ("last", "daily", "weekly", "monthly", "yearly") if getattr(self, k)]
        if parse_within(self.within) != (0, 0, 0):
            terms.append(f"keep_within = {self.within!r}")
        if self.attic_max:
            terms.append(f"attic_max = {self.attic_max}")
        return ", ".join(terms)


def _local(snap_id: str) -> _dt.datetime | None:
    ns = id_ns(snap_id)
    return None if ns is None else _dt.datetime.fromtimestamp(ns / 1e9)


def within_start(newest_ns: int, within: str) -> int:
    """The earliest time (ns) keep_within keeps, counted back from newest_ns: months
    and days on the local calendar (same clock time), hours as elapsed time."""
    months, days, hours = parse_within(within)
    t = _dt.datetime.fromtimestamp(newest_ns // 10**9)
    if months:
        y, m = divmod(t.year * 12 + t.month - 1 - months, 12)
        if y < 1:
            return -(1 << 63)
        t = t.replace(year=y, month=m + 1, day=min(t.day, calendar.monthrange(y, m + 1)[1]))
    if days:
        try:
            t = t - _dt.timedelta(days=days)
        except OverflowError:
            return -(1 << 63)
    base = int(time.mktime(t.timetuple())) * 10**9 + newest_ns % 10**9
    return base - hours * 3600 * 10**9


def select(ids: Iterable[str], policy: Policy) -> dict[str, list[str]]:
    """The snapshots policy keeps, each with the rules that keep it (RULES order).
    An id that is not a time (not one of new_id's) is kept: nothing is dropped on
    a guess."""
    ids = sorted(ids)
    if not ids:
        return {}
    keep: dict[str, list[str]] = {}

    def add(sid: str, rule: str) -> None:
        keep.setdefault(sid, []).append(rule)

    add(ids[-1], "newest")
    newest_first = ids[::-1]
    for sid in newest_first[:policy.last]:
        add(sid, "last")
    local = {sid: _local(sid) for sid in ids}
    for sid, t in local.items():
        if t is None:
            add(sid, "unknown time")
    newest_ns = id_ns(ids[-1])
    if newest_ns is not None and parse_within(policy.within) != (0, 0, 0):
        start = within_start(newest_ns, policy.within)
        for sid in ids:
            ns = id_ns(sid)
            if ns is not None and ns >= start:
                add(sid, "within")
    buckets: tuple[tuple[str, int, Callable[[_dt.datetime], object]], ...] = (
        ("daily", policy.daily, lambda t: t.date()),
        ("weekly", policy.weekly, lambda t: t.isocalendar()[:2]),
        ("monthly", policy.monthly, lambda t: (t.year, t.month)),
        ("yearly", policy.yearly, lambda t: t.year),
    )
    for rule, n, key in buckets:
        seen: list[object] = []
        for sid in newest_first:
            t = local[sid]
            if t is None or n <= 0:
                continue
            k = key(t)
            if k in seen:
                continue
            if len(seen) == n:
                break
            seen.append(k)
            add(sid, rule)
    return {sid: keep[sid] for sid in ids if sid in keep}


# --- what the attic holds, and who needs it --------------------------------------

@dataclass(slots=True)
class Item:
    """One thing in the attic: run R moved it out of the mirror."""

    run: str
    where: bytes  # its path on the remote (under the attic)
    entry: Entry  # what it was in the mirror
    prev: str | None  # the snapshot that run planned from (it holds the item)
    # An undo record of a file patched in place: {"base": the digest of the content
    # it applies to, "base_size", "bytes": its own size}; None: the content itself.
    undo: dict[str, Any] | None = None
    need: str | None = None  # the newest kept snapshot that needs it

    @property
    def size(self) -> int:
        """The bytes it takes in the attic."""
        return self.entry.size if self.undo is None else int(self.undo["bytes"])


def content_key(e: Entry) -> tuple[Any, ...] | None:
    if e.kind == FILE:
        return (FILE, e.digest, e.size)
    if e.kind == SYMLINK:
        return (SYMLINK, e.target)
    return None


@dataclass
class Decision:
    kept: dict[str, list[str]]  # kept snapshot -> the rules that keep it
    dropped: list[str]  # snapshots let go
    doomed: list[Item] = field(default_factory=list)  # attic items no kept snapshot needs
    held: list[Item] = field(default_factory=list)  # attic items kept
    capped: list[str] = field(default_factory=list)  # snapshots let go for attic_max

    @property
    def attic_bytes(self) -> int:
        return sum(it.size for it in self.held)

    @property
    def doomed_bytes(self) -> int:
        return sum(it.size for it in self.doomed)


def decide(ids: list[str], policy: Policy, items: list[Item],
           entries_of: Callable[[str], Iterable[Entry]], protect: Iterable[str] = ()) -> Decision:
    """Which snapshots stay (policy, then attic_max), and which attic items they
    need. entries_of(id) reads a kept snapshot (only when an item's own run does
    not say). protect: ids kept whatever the policy says (the remote's head)."""
    ids = sorted(ids)
    protect = set(protect)
    kept = select(ids, policy)
    for sid in protect:
        if sid in ids:
            kept.setdefault(sid, []).append("newest")
    order = sorted(kept)
    keptset = set(order)
    todo: list[Item] = []
    for it in items:
        older = bisect.bisect_left(order, it.run)
        if older == 0:
            it.need = None  # no kept snapshot is older than the run that moved it
        elif it.prev is not None and it.prev in keptset and it.prev < it.run:
            it.need = it.prev  # the newest snapshot before the run: it holds the item
        else:
            todo.append(it)
    if todo:
        want = {content_key(it.entry) for it in todo} - {None}
        holders: dict[tuple[Any, ...], list[str]] = {}
        last = max(it.run for it in todo)
        for sid in order:
            if sid >= last:
                break
            for e in entries_of(sid):
                k = content_key(e)
                if k in want:
                    hs = holders.setdefault(k, [])  # type: ignore[arg-type]
                    if not hs or hs[-1] != sid:
                        hs.append(sid)
        for it in todo:
            k = content_key(it.entry)
            hs = [s for s in holders.get(k, []) if s < it.run] if k is not None else []
            it.need = hs[-1] if hs else None
    _bases(items)
    capped: list[str] = []
    if policy.attic_max:
        total = sum(it.size for it in items if it.need is not None)
        by_need: dict[str, int] = {}
        for it in items:
            if it.need is not None:
                by_need[it.need] = by_need.get(it.need, 0) + it.size
        for sid in order[:-1]:
            if total <= policy.attic_max:
                break
            if sid in protect:
                continue
            total -= by_need.get(sid, 0)
            capped.append(sid)
            del kept[sid]
        gone = set(capped)
        for it in items:
            if it.need in gone:
                it.need = None
        _bases(items)
    return Decision(kept=kept, dropped=[i for i in ids if i not in kept],
                    doomed=[it for it in items if it.need is None],
                    held=[it for it in items if it.need is not None], capped=capped)


def _bases(items: list[Item]) -> None:
    """An undo record rebuilds its content from the content it applies to: while
    the record is needed, so is an item that holds that base (itself perhaps an
    undo record), until as late as the record is."""
    by_key: dict[tuple[Any, ...] | None, list[Item]] = {}
    for it in items:
        by_key.setdefault(content_key(it.entry), []).append(it)
    todo = [it for it in items if it.undo is not None and it.need is not None]
    while todo:
        it = todo.pop()
        for base in by_key.get((FILE, it.undo["base"], it.undo["base_size"]), []):  # type: ignore[index]
            assert it.need is not None
            if base.need is None or base.need < it.need:
                base.need = it.need
                if base.undo is not None:
                    todo.append(base)
