"""What each run did, kept (runlog.py): the run log's records, each run's item list,
`btsoot log`, and the files not yet on the remote. Real CLI runs on real trees."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import orjson
import pytest
import tomli_w
import tomllib

from btsoot import runlog
from btsoot.state import BlockState
from conftest import Env
from test_backup import backup, put


def configure(env: Env, **keys: object) -> None:
    cfg = tomllib.loads(env.config.read_text())
    cfg["blocks"]["b"].update(keys)
    env.config.write_text(tomli_w.dumps(cfg))


def items(env: Env, run: str = "last") -> list[dict]:
    p = env.run("log", "b", run, "--json", check=0)
    return [json.loads(line) for line in p.stdout.splitlines()]


def test_each_run_keeps_what_it_did(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    configure(env, keep_within="0")  # no attic: a deletion is a deletion
    for i in range(3):
        put(src / f"album/t{i}.flac", bytes([i]) * (1000 + i))
    put(src / "doc.txt", b"v1")
    put(src / "old.txt", b"going")
    first = backup(env)
    got = {(i["op"], i["path"]) for i in items(env)}
    assert {("copy", "album/t0.flac"), ("copy", "doc.txt"), ("mkdir", "album")} <= got

    os.rename(src / "album", src / "album-2020")
    put(src / "doc.txt", b"version two")
    os.unlink(src / "old.txt")
    put(src / "new.txt", b"fresh")
    s = backup(env)
    it = items(env)
    by_op = {}
    for i in it:
        by_op.setdefault(i["op"], []).append(i)
    assert by_op["move-dir"] == [{"op": "move-dir", "path": "album-2020", "from": "album"}]
    assert by_op["update"] == [{"op": "update", "path": "doc.txt", "bytes": 11, "size": 11}]
    assert [i["path"] for i in by_op["copy"]] == ["new.txt"]
    assert [i["path"] for i in by_op["delete"]] == ["old.txt"]
    assert s["items"] == len(it)

    # The run log's record is the summary `backup --json` printed.
    recs = [json.loads(x) for x in env.run("log", "b", "--json", check=0).stdout.splitlines()]
    assert [r["run"] for r in recs] == [first["run"], s["run"]]
    logged = dict(recs[-1])
    assert logged.pop("change_weight") == 2  # (for the mass-change guard) doc.txt, old.txt
    assert logged == {k: v for k, v in s.items() if k != "hooks"}

    # Listed, and one run picked by a start of its id.
    table = env.run("log", "b", check=0).stdout
    assert first["run"] in table and s["run"] in table
    text = env.run("log", "b", first["run"][:-3], check=0).stdout
    assert text.splitlines()[0].startswith(f"run {first['run']};")
    assert "copy      album/t1.flac  (1001 bytes)" in text
    # `list` says how much the local state takes.
    listed = json.loads(env.run("list", "--json", check=0).stdout)[0]
    on_disk = sum(f.stat().st_size for f in (env.state / "blocks" / "b").rglob("*") if f.is_file())
    assert listed["state_bytes"] == on_disk > 0
    assert "B/file)" in env.run("list", check=0).stdout
    p = env.run("log", "b", "19990101", check=2)
    assert "no run '19990101'" in p.stderr and "Traceback" not in p.stderr
    p = env.run("log", "b", first["run"][:4], check=2)
    assert "names 2 runs" in p.stderr


def test_resent_items_and_a_failed_run(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "a/one", b"1" * 300)
    put(src / "a/two", b"2" * 300)
    backup(env)
    with open(dst / "a/one", "r+b") as f:  # the remote's copy rots
        f.write(b"X")
    env.run("verify", "b", check=7)
    s = backup(env)
    assert s["repaired"] == 1
    # (and its folder's times set again: writing into it changed them)
    assert [(i["op"], i["path"]) for i in items(env)] == [("resend", "a/one"), ("attrs", "a")]
    assert (dst / "a/one").read_bytes() == b"1" * 300

    # A run that stops (the source is gone): logged as failed, with no item list.
    os.rename(src, src.with_name("away"))
    env.run("backup", "b", check=4)
    last = json.loads(env.run("log", "b", "--json", "-n", "1", check=0).stdout)
    assert last["result"] == "failed" and last["exit_code"] == 4 and "does not exist" in last["error"]
    text = env.run("log", "b", "last", check=0).stdout
    assert "failed; exit 4" in text and "no item list kept" in text
    env.run("log", "b", "last", "--json", check=2)


def test_item_lists_are_capped(tmp_path: Path) -> None:
    root = str(tmp_path)
    rows = [{"op": "copy", "path": f"d/{os.urandom(8).hex()}", "bytes": 1} for _ in range(40_000)]
    cap = 800_000  # (about 11 bytes an item here: one list fits, two do not)
    n = runlog.write_items(root, "20260101T000000.000000Z", iter(rows), cap=cap)
    assert n == 40_000
    assert list(runlog.read_items(root, "20260101T000000.000000Z")) == rows
    # A second run's list: both do not fit, the older one goes.
    n2 = runlog.write_items(root, "20260102T000000.000000Z", iter(rows[::-1]), cap=cap)
    assert n2 == 40_000
    kept = sorted(os.listdir(runlog.items_dir(root)))
    assert kept == ["20260102T000000.000000Z.jsonl.gz"]
    # One run larger than the cap: cut, the last line counts what was left out.
    n3 = runlog.write_items(root, "20260103T000000.000000Z", iter(rows * 3), cap=cap)
    back = list(runlog.read_items(root, "20260103T000000.000000Z"))
    assert 0 < n3 < 120_000 and back[:-1] == (rows * 3)[:n3]
    assert back[-1] == {"op": "truncated", "left_out": 120_000 - n3}
    assert os.path.getsize(runlog.items_path(root, "20260103T000000.000000Z")) <= cap
    assert sorted(os.listdir(runlog.items_dir(root))) == ["20260103T000000.000000Z.jsonl.gz"]
    with gzip.open(runlog.items_path(root, "20260103T000000.000000Z")) as z:
        assert z.readline().startswith(b'{"op":"copy"')


def test_record_lists_are_capped_and_causes_counted() -> None:
    errors = [(f"f{i}".encode(), why) for i, why in enumerate(
        ["No such file or directory", "vanished during backup", "Permission denied",
         "Operation not permitted", "changed while being read", "kept changing while being copied",
         "the remote cannot hold it: File name too long", "Input/output error"])]
    assert runlog.causes(errors) == {"vanished": 2, "busy": 2, "permission": 2, "remote": 1,
                                     "other": 1}
    rec = runlog.capped({"errors": list(range(250)), "skipped": [1], "remade": []})
    assert rec["errors"] == list(range(100)) and rec["counts"] == {"errors": 250, "skipped": 1,
                                                                   "remade": 0}


def test_run_log_read_backwards(tmp_path: Path) -> None:
    """Records of any size, a torn last line and garbage lines: the newest n whole
    records, newest first."""
    st = BlockState(str(tmp_path))
    for i in range(3000):
        st.log_run({"i": i, "pad": "x" * (i * 37 % 5000)})
    with open(st.runs, "ab") as f:
        f.write(b"not json\n" + orjson.dumps({"i": 3000}) + b"\n" + b'{"i": 30')  # torn: killed mid-write
    got = st.recent_runs(2500)
    assert [r["i"] for r in got] == list(range(3000, 500, -1))
    assert [r["i"] for r in st.recent_runs(10**6)] == list(range(3000, -1, -1))
    assert st.recent_runs(1) == [{"i": 3000}]


def test_run_log_keeps_its_newest_half_past_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from btsoot import state

    monkeypatch.setattr(state, "RUNS_CAP", 100_000)
    st = BlockState(str(tmp_path))
    for i in range(2000):
        st.log_run({"i": i, "pad": "x" * 100})
        assert os.path.getsize(st.runs) <= 100_000 + 200
    kept = [r["i"] for r in st.recent_runs(10**6)]
    assert kept[0] == 1999 and kept == list(range(1999, 1999 - len(kept), -1)) and len(kept) > 300
    with open(st.runs, "rb") as f:
        assert all(orjson.loads(line)["pad"] for line in f)  # whole records only


def test_unsent_since_the_first_failure(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert runlog.update_unsent(root, [b"a", b"b"], {b"a"}, 100.0) == {"a": (100.0, True),
                                                                      "b": (100.0, False)}
    assert runlog.update_unsent(root, [b"b", b"c\xff"], {b"c\xff"}, 200.0) == {
        "b": (100.0, False), "c\\xff": (200.0, True)}
    s = runlog.unsent_summary(runlog.load_unsent(root), now=400.0)
    assert s == {"files": 2, "since": 100.0, "oldest_age_s": 300.0, "paths": ["b", "c\\xff"],
                 "never_sent": 1, "never_sent_paths": ["c\\xff"]}
    assert runlog.update_unsent(root, [], set(), 300.0) == {}
    assert runlog.unsent_summary({}, now=1.0)["files"] == 0


@pytest.mark.parametrize("count", [1, 3])
def test_log_lists_the_last_runs(block: tuple[Env, Path, Path], count: int) -> None:
    env, src, _ = block
    runs = []
    for i in range(4):
        put(src / f"f{i}", b"x" * i)
        runs.append(backup(env)["run"])
    assert runs == sorted(runs) and len(set(runs)) == 4
    recs = [json.loads(x) for x in env.run("log", "b", "--json", "-n", str(count)).stdout.splitlines()]
    assert [r["run"] for r in recs] == runs[-count:]


def test_an_item_list_a_killed_run_was_writing_is_removed(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    put(src / "a", b"1")
    backup(env)
    items_dir = env.state / "blocks" / "b" / "items"
    torn = items_dir / "20260101T000000.000000Z.jsonl.gz.tmp"
    torn.write_bytes(b"\x1f\x8b")  # (killed while writing it, after its run committed)
    put(src / "b", b"2")
    s = backup(env)
    assert not torn.exists() and s["items"] == 1  # (copy b)
