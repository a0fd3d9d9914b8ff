"""Retention: which snapshots the terms keep (local days, weeks and months, across
daylight-saving changes and clock steps), and an attic that holds exactly what
the kept snapshots need, through real backups over months of synthetic time."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import xxhash

from btsoot.retention import Item, Policy, decide, parse_size, parse_within, select, within_start
from btsoot.snapshot import Entry, id_ns, new_id
from conftest import Env, assert_mirror, tree_state

TZ = "Europe/Berlin"  # summer time from the last Sunday of March to the last of October


@contextmanager
def local_zone(name: str) -> Iterator[zoneinfo.ZoneInfo]:
    try:
        zone = zoneinfo.ZoneInfo(name)
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip(f"no time zone data for {name}")
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield zone
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def sid(when: dt.datetime) -> str:
    return new_id(int(when.timestamp()) * 10**9 + when.microsecond * 1000)


def local(s: str, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    ns = id_ns(s)
    assert ns is not None
    return dt.datetime.fromtimestamp(ns / 1e9, zone)


def newest_per(ids: list[str], key, n: int) -> set[str]:
    """Independent of retention.py: the newest id of each of the n newest buckets."""
    best: dict[object, str] = {}
    for s in ids:
        k = key(s)
        if k not in best or s > best[k]:
            best[k] = s
    return {best[k] for k in sorted(best, reverse=True)[:n]}


def test_durations_and_sizes_parse_or_are_refused() -> None:
    assert parse_within("30d") == (0, 30, 0)
    assert parse_within("1y6m") == (18, 0, 0)
    assert parse_within("2w36h") == (0, 14, 36)
    assert parse_within("0") == parse_within("") == (0, 0, 0)
    for bad in ("30", "d", "3 days", "-1d", "1x", "1d2"):
        with pytest.raises(ValueError):
            parse_within(bad)
    assert parse_size("50G") == 50 << 30 and parse_size("500MiB") == 500 << 20
    assert parse_size("123456") == 123456 and parse_size(0) == 0 and parse_size("") == 0
    for bad in ("lots", "5 GB and more", "-5", "1.5G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_daily_weekly_monthly_count_local_days_across_daylight_saving() -> None:
    with local_zone(TZ) as zone:
        rng = random.Random(3)
        # Runs at 00:10, 00:40 and 23:50 local time and at random hours, from
        # January to December: the 00:10 and 23:50 runs lie on the other UTC day
        # in winter or in summer, so a UTC bucket would get days wrong.
        ids = []
        day = dt.datetime(2027, 1, 1, tzinfo=zone)
        while day.year == 2027:
            for hh, mm in ((0, 10), (0, 40), (23, 50), (rng.randrange(1, 23), rng.randrange(60))):
                if rng.random() < 0.8:
                    ids.append(sid(day.replace(hour=hh, minute=mm)))
            day = (day + dt.timedelta(days=1, hours=3)).replace(hour=0)
        ids.sort()
        pol = Policy(last=3, daily=10, weekly=6, monthly=5, yearly=2, within="0")
        kept = select(ids, pol)
        want = (set(ids[-3:])
                | newest_per(ids, lambda s: local(s, zone).date(), 10)
                | newest_per(ids, lambda s: local(s, zone).isocalendar()[:2], 6)
                | newest_per(ids, lambda s: (local(s, zone).year, local(s, zone).month), 5)
                | newest_per(ids, lambda s: local(s, zone).year, 2))
        assert set(kept) == want
        assert kept[ids[-1]][:2] == ["newest", "last"]
        monthly = [s for s, why in kept.items() if "monthly" in why]
        assert [local(s, zone).month for s in monthly] == [8, 9, 10, 11, 12]


def test_keep_within_counts_calendar_days_not_24_hour_blocks() -> None:
    with local_zone(TZ) as zone:
        # 30 days back from 10 April 12:00 (summer time) is 11 March 12:00 (winter
        # time): 719 hours, not 720.
        newest = dt.datetime(2027, 4, 10, 12, 0, tzinfo=zone)
        start = within_start(int(newest.timestamp()) * 10**9, "30d")
        assert start == int(dt.datetime(2027, 3, 11, 12, 0, tzinfo=zone).timestamp()) * 10**9
        ids = [sid(dt.datetime(2027, 3, 11, 11, 59, tzinfo=zone)),
               sid(dt.datetime(2027, 3, 11, 12, 0, tzinfo=zone)), sid(newest)]
        assert sorted(select(ids, Policy(within="30d"))) == ids[1:]
        # Months by the calendar: 31 March back one month is the last of February.
        end = dt.datetime(2027, 3, 31, 8, 0, tzinfo=zone)
        assert within_start(int(end.timestamp()) * 10**9, "1m") == \
            int(dt.datetime(2027, 2, 28, 8, 0, tzinfo=zone).timestamp()) * 10**9
        # Hours are elapsed time.
        assert within_start(10**18, "36h") == 10**18 - 36 * 3600 * 10**9


def test_clock_steps_keep_the_order_and_the_terms() -> None:
    """Ids only grow: a clock stepped back gives ids just after the newest; keep_within
    counts from the newest id, so the history stays. After a clock stepped forward
    the terms still apply to the ids: the day-counting terms keep the days before
    the step (keep_within alone would count from the future id)."""
    with local_zone(TZ) as zone:
        t0 = dt.datetime(2027, 5, 1, 3, 0, tzinfo=zone)
        ids: list[str] = []
        for k in range(20):
            ids.append(new_id(int((t0 + dt.timedelta(days=k)).timestamp()) * 10**9,
                              after=ids[-1] if ids else None))
        back = new_id(int((t0 - dt.timedelta(days=200)).timestamp()) * 10**9, after=ids[-1])
        assert back > ids[-1]
        kept = select(ids + [back], Policy(within="30d"))
        assert sorted(kept) == ids + [back]
        # Forward by a year for one run, then right again: the later ids sort after
        # it; the snapshots within 30 days of it are every one of them.
        fwd = new_id(int((t0 + dt.timedelta(days=400)).timestamp()) * 10**9, after=back)
        again = new_id(int((t0 + dt.timedelta(days=21)).timestamp()) * 10**9, after=fwd)
        assert again > fwd > back
        kept = select(ids + [back, fwd, again], Policy(within="30d", daily=7))
        # fwd and again share the future day; back shares the last day of ids.
        assert sorted(kept) == ids[-6:-1] + [back, fwd, again]
        assert kept[fwd] == ["within"] and kept[again] == ["newest", "last", "within", "daily"]


def _entry(path: str, data: bytes) -> Entry:
    return Entry(path.encode(), "file", len(data), 0, 0o100644,
                 digest=xxhash.xxh3_128(data).hexdigest())


def test_decide_keeps_exactly_what_kept_snapshots_hold() -> None:
    """Items whose run's base snapshot is gone are looked up in the kept snapshots
    (by content, as restore finds them); attic_max lets the oldest snapshots go."""
    a, b, c = _entry("a", b"A" * 100), _entry("b", b"B" * 1000), _entry("c", b"C" * 10)
    s = [new_id(10**18 + k * 86_400 * 10**9) for k in range(5)]
    snaps = {s[0]: [a, b, c], s[1]: [a, b], s[2]: [b], s[3]: [], s[4]: []}
    read: list[str] = []

    def entries_of(x: str) -> list[Entry]:
        read.append(x)
        return snaps[x]

    def items() -> list[Item]:
        return [Item(s[1], b"attic/1/c", c, s[0]), Item(s[2], b"attic/2/a", a, s[1]),
                Item(s[3], b"attic/3/b", b, s[2]), Item(s[4], b"attic/4/x", _entry("x", b"x"), None)]

    keep_all = Policy(last=5, within="0")
    d = decide(s, keep_all, items(), entries_of)
    assert [it.need for it in d.held] == [s[0], s[1], s[2]]  # by their runs' base
    assert [it.where for it in d.doomed] == [b"attic/4/x"]  # no kept snapshot has it
    assert read == s[:4]  # (looked up for x alone, whose run does not say)
    read.clear()
    # s1 and s2 go (last 1, plus s0 kept by hand through protect): "a" (moved out
    # by s2) is in s0, found by reading it; "b" likewise; "c" by its own base.
    d = decide(s, Policy(last=1, within="0"), items(), entries_of, protect=[s[0]])
    assert sorted(d.kept) == [s[0], s[4]] and d.dropped == s[1:4]
    assert {it.where: it.need for it in d.held} == {b"attic/1/c": s[0], b"attic/2/a": s[0],
                                                     b"attic/3/b": s[0]}
    assert read == [s[0]]
    # A cap of 1000 bytes: s0 (the oldest) is let go, then s1: what stays fits.
    d = decide(s, Policy(last=5, within="0", attic_max=1000), items(), entries_of)
    assert d.capped == [s[0], s[1]] and d.attic_bytes == 1000
    assert [it.where for it in d.held] == [b"attic/3/b"]


# --- the whole thing, through real backups ------------------------------------------

def _backup(env: Env, when: str) -> dict:
    from test_record import faketime

    r = env.run("backup", "b", "--json", "--override",
                extra_env={**faketime(when), "TZ": TZ})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_months_of_runs_keep_what_the_policy_names_and_restore_exactly(block) -> None:
    """Runs over four months, across the change to summer time, with the clock
    once stepped forward and once back: the kept snapshots are exactly those the terms name (worked
    out here independently, in local time); each restores byte for byte; the attic
    holds exactly the content they need that the mirror does not; and its files
    add up to what the run log says it holds."""
    env, src, dst = block
    with local_zone(TZ) as zone:
        text = env.config.read_text()
        for old, new in (('keep_within = "30d"', 'keep_within = "10d"'),
                         ("keep_weekly = 0", "keep_weekly = 3"),
                         ("keep_monthly = 0", "keep_monthly = 3"),
                         ('max_delete = "50%"', 'max_delete = "100%"')):
            assert old in text
            text = text.replace(old, new)
        env.config.write_text(text)
        rng = random.Random(9)
        names = [f"d{k % 3}/f{k}" for k in range(12)]
        for n in names:
            p = src / n
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rng.randbytes(rng.choice([1, 10, 2000, 30_000])))
        states: dict[str, dict] = {}
        when = dt.datetime(2027, 2, 1, 21, 0, tzinfo=zone)
        clock = when
        for k in range(26):
            if k:
                for n in rng.sample(names, 3):
                    p = src / n
                    if rng.random() < 0.3 and p.exists():
                        p.unlink()  # deleted (made again later, with other content)
                    else:
                        p.parent.mkdir(parents=True, exist_ok=True)
                        p.write_bytes(rng.randbytes(rng.choice([5, 900, 20_000])))
                when += dt.timedelta(days=rng.choice([1, 2, 3, 5, 9]), hours=rng.choice([0, 2, 5]))
                # The clock a month ahead for one run (later runs take ids after it
                # until the real time passes it), and once 40 days behind.
                clock = (when + dt.timedelta(days=30) if k == 7 else
                         when - dt.timedelta(days=40) if k == 13 else when)
            utc = clock.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            s = _backup(env, utc)
            assert s["snapshot"] not in states
            states[s["snapshot"]] = tree_state(src)
        ids = sorted(states)
        assert list(states) == ids  # ids only grow, whatever the clock said
        # (The clock steps happened: runs after the one ahead took ids just after it.)
        assert any(id_ns(b) - id_ns(a) < 10**9  # type: ignore[operator]
                   for a, b in zip(ids, ids[1:], strict=False))

        def key_day(x: str) -> object:
            return local(x, zone).date()

        newest = local(ids[-1], zone)
        start = (newest.replace(tzinfo=None) - dt.timedelta(days=10)).replace(tzinfo=zone)
        want = ({ids[-1]} | {x for x in ids if local(x, zone) >= start}
                | newest_per(ids, lambda x: local(x, zone).isocalendar()[:2], 3)
                | newest_per(ids, lambda x: (local(x, zone).year, local(x, zone).month), 3))
        assert key_day(ids[0]) < key_day(ids[-1])
        rows = json.loads(env.run("snapshots", "b", "--json", check=0).stdout)
        assert [r["id"] for r in rows] == sorted(want)
        assert all(r["complete"] for r in rows), rows
        assert len(want) < len(ids)  # some went
        # Every kept snapshot restores exactly, from the block and from the remote alone.
        for x in sorted(want):
            for how, args in (("block", ("restore", "b")), ("remote", ("restore", "--from", str(dst)))):
                out = env.root / f"out-{x}-{how}"
                r = env.run(*args, "--snapshot", x, "--to", out)
                assert r.returncode == 0, (x, how, r.stderr)
                assert tree_state(out) == states[x], (x, how)
        # The attic holds exactly the contents the kept snapshots have and the mirror
        # does not (by digest: restore finds content by digest).
        mirror = {v[1] for v in tree_state(dst).values() if v[0] == "file"}
        needed = {v[1] for x in want for v in states[x].values() if v[0] == "file"} - mirror
        attic = dst / ".btsoot" / "attic"
        held_files = [p for p in attic.rglob("*") if p.is_file() and p.parent != attic]
        held = {_sha(p) for p in held_files}
        assert held == needed
        runs = [json.loads(ln) for ln in (env.state / "blocks" / "b" / "runs.jsonl").read_text()
                .splitlines()]
        last = [r["attic_bytes"] for r in runs if "attic_bytes" in r][-1]
        assert last == sum(p.stat().st_size for p in held_files)
        assert_mirror(src, dst)


def _sha(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_kill_while_pruning_loses_nothing_kept(block, tmp_path: Path) -> None:
    """Tighten the terms (keep_last 6 -> 2) and kill the backup that prunes at each
    event of its pruning: after the next run the kept snapshots restore exactly and
    the attic holds exactly what they need (a kill between a file's removal and its
    list's rewrite leaves a line whose file is gone; the next prune removes it)."""
    import shutil
    import signal

    from test_reliability import torture_run

    env, src, dst = block
    text = env.config.read_text()
    env.config.write_text(text.replace('keep_within = "30d"', 'keep_within = "0"')
                          .replace("keep_last = 1", "keep_last = 6")
                          .replace('max_delete = "50%"', 'max_delete = "100%"'))
    rng = random.Random(4)
    for k in range(8):
        (src / f"f{k}").write_bytes(rng.randbytes(3000))
    states = {}
    for step in range(5):
        if step:
            (src / f"f{step}").write_bytes(rng.randbytes(2000))  # replaced
            (src / f"f{step + 3}").unlink(missing_ok=True)  # deleted
        r = env.run("backup", "b", "--json")
        assert r.returncode == 0, r.stderr
        states[json.loads(r.stdout)["snapshot"]] = tree_state(src)
    env.config.write_text(env.config.read_text().replace("keep_last = 6", "keep_last = 2"))
    (src / "new").write_bytes(b"the run that prunes")
    saved = tmp_path / "saved"
    for name in ("src", "remote", "state"):
        shutil.copytree(env.root / name, saved / name, symlinks=True)
    _, labels = torture_run(env, trace=tmp_path / "trace.json")
    points = [i + 1 for i, lab in enumerate(labels) if lab.split(":")[0] in ("attic-prune",
                                                                           "snapshot-prune")]
    assert len(points) >= 4, labels
    for idx in points[::2] + points[-1:]:
        for name in ("src", "remote", "state"):
            shutil.rmtree(env.root / name)
            shutil.copytree(saved / name, env.root / name, symlinks=True)
        rc, _ = torture_run(env, kill_at=idx)
        assert rc in (0, -signal.SIGKILL)
        (src / "later").write_bytes(b"%d" % idx)  # a run that writes, so it prunes
        r = env.run("backup", "b", "--json")
        assert r.returncode == 0, f"killed at {idx} ({labels[idx - 1]}): {r.stderr}"
        states_now = dict(states)
        rows = json.loads(env.run("snapshots", "b", "--json", check=0).stdout)
        kept = [row["id"] for row in rows]
        assert len(kept) == 2 and all(row["complete"] for row in rows), (idx, rows)
        older = [x for x in kept if x in states_now]
        for x in older:
            out = env.root / f"out-{idx}-{x}"
            r = env.run("restore", "b", "--snapshot", x, "--to", out)
            assert r.returncode == 0, (idx, r.stderr)
            assert tree_state(out) == states_now[x], (idx, x)
        mirror = {v[1] for v in tree_state(dst).values() if v[0] == "file"}
        needed = {v[1] for x in older for v in states_now[x].values() if v[0] == "file"} - mirror
        attic = dst / ".btsoot" / "attic"
        held = [p for p in attic.rglob("*") if p.is_file() and p.parent != attic] \
            if attic.exists() else []
        assert {_sha(p) for p in held} == needed, (idx, labels[idx - 1])
        listed = [json.loads(ln) for p in attic.glob("*.jsonl") for ln in p.read_text().splitlines()] \
            if attic.exists() else []
        assert len(listed) == len(held), (idx, labels[idx - 1])


def test_the_records_small_files_are_read_several_at_once() -> None:
    """Retention reads every delta's header and every attic list on each run that
    writes: over a slow link, one after the other, that grew by round trips with
    every snapshot kept. remote.read_ahead runs up to its window at once, gives
    the results in order, and raises an error where its item's result would be."""
    import threading

    from btsoot.remote import read_ahead

    running, most, lock = 0, 0, threading.Lock()
    gate = threading.Barrier(4, timeout=10)  # the first four must be running together

    def slow(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        if i < 4:
            gate.wait()
        time.sleep(0.01)
        with lock:
            running -= 1
        if i == 30:
            raise OSError(5, "unreadable")
        return i * i

    got = []
    with pytest.raises(OSError):
        for r in read_ahead(slow, range(40), window=6):
            got.append(r)
    assert got == [i * i for i in range(30)]
    assert 4 <= most <= 6
