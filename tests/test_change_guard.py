"""The mass-change guard: a run that would modify or delete far more files than
the block's recent runs did stops before changing anything (exit 4)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from btsoot.backup import MASS_FLOOR, mass_change_guard
from btsoot.errors import GuardError
from btsoot.plan import Plan
from conftest import Env, assert_mirror

YEAR_AGO = time.time() - 365 * 86400


def plan_of(modified: int, deleted: int = 0, stale: int = 0) -> Plan:
    return Plan(modified_files=modified, deleted_files=deleted, stale_changes=stale)


def history(*weights: int) -> list[dict]:
    return [{"result": "ok", "change_weight": w} for w in weights]


def test_the_guard_measures_against_the_blocks_own_runs() -> None:
    quiet = history(*([0] * 20 + [3, 5, 2, 4]))
    mass_change_guard(plan_of(MASS_FLOOR), quiet)  # never below the floor
    try:
        mass_change_guard(plan_of(150, 20, 100), quiet)
    except GuardError as e:
        msg = str(e)
        assert "170 files (150 modified, 20 deleted)" in msg and "100 of them unchanged" in msg
        assert "--override" in msg
    else:
        raise AssertionError("270 weighted changes against a usual of 4 passed")
    # A block that changes a lot every night: the same run is ordinary there.
    busy = history(*([900, 1100, 1000, 950] * 6))
    mass_change_guard(plan_of(1500, 200, 300), busy)
    # Too little history (a new block): only the deletion guard applies.
    mass_change_guard(plan_of(10_000), history(0, 0, 0, 0))
    # Failed runs and records from before the guard do not count.
    mixed = [{"result": "failed", "change_weight": 0}] * 10 + [{"result": "ok"}] * 10
    mass_change_guard(plan_of(10_000), mixed)


def put(p: Path, data: bytes, old: bool = False) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if old:
        os.utime(p, (YEAR_AGO, YEAR_AGO))


def test_a_month_of_ordinary_days_passes_and_a_ransomware_day_stops(block) -> None:
    env, src, dst = block
    for i in range(2800):
        put(src / "photos" / f"p{i // 100}" / f"img{i}.jpg", b"photo %d" % i, old=True)
    for i in range(200):
        put(src / "docs" / f"doc{i}.txt", b"document %d" % i, old=True)
    assert env.run("backup", "b").returncode == 0
    for day in range(30):
        for k in range(3):
            put(src / "docs" / f"doc{(day * 3 + k) % 200}.txt", b"edited on day %d" % day)
        put(src / "photos" / "new" / f"day{day}.jpg", b"new photo %d" % day)
        (src / "photos" / f"p{day % 28}" / f"img{day % 28 * 100 + day}.jpg").unlink()
        r = env.run("backup", "b")
        assert r.returncode == 0, (day, r.stderr)
    # Ransomware rewrites 150 documents (5% of the files) in place.
    remote_before = {p: p.read_bytes() for p in (dst / "docs").iterdir()}
    for i in range(50, 200):
        put(src / "docs" / f"doc{i}.txt", b"ENCRYPTED" + os.urandom(16))
    r = env.run("backup", "b", "--json")
    assert r.returncode == 4, r.stderr
    assert "150 files (150 modified, 0 deleted)" in r.stderr, r.stderr
    assert "unchanged for over 180 days" in r.stderr
    assert {p: p.read_bytes() for p in (dst / "docs").iterdir()} == remote_before
    # Deliberately: --override, and the run after it measures against a history
    # that now holds this run.
    r = env.run("backup", "b", "--override", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["operations"]["copy"] == 150
    assert_mirror(src, dst)


def test_the_guard_can_be_turned_off(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    text = env.config.read_text()
    assert "change_guard = true" in text
    env.config.write_text(text.replace("change_guard = true", "change_guard = false"))
    for i in range(300):
        put(src / f"f{i}", b"v1")
    for _ in range(6):
        assert env.run("backup", "b").returncode == 0
    for i in range(300):
        put(src / f"f{i}", b"v2")
    assert env.run("backup", "b").returncode == 0
    assert_mirror(src, dst)
