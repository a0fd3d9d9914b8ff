"""The attic: what a run moves out of the mirror (a file or link deleted, a file
replaced by new content) is renamed into REMOTE/.btsoot/attic/RUN/<path>, not
lost, and listed in REMOTE/.btsoot/attic/RUN.jsonl; a run's attic expires whole
`attic_days` after the run."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import orjson
import pytest
import xxhash

from conftest import Env, assert_mirror, tree_state

ATTIC = Path(".btsoot") / "attic"


def put(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def set_attic(env: Env, days: int) -> None:
    text = env.config.read_text()
    assert "attic_days = " in text
    lines = [f"attic_days = {days}" if ln.startswith("attic_days = ") else ln
             for ln in text.splitlines()]
    env.config.write_text("\n".join(lines) + "\n")


def backup(env: Env, *args: str, extra_env: dict[str, str] | None = None) -> dict:
    r = env.run("backup", "b", "--json", *args, extra_env=extra_env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def digest(p: Path) -> str:
    return xxhash.xxh3_128(p.read_bytes()).hexdigest()


def attic_files(dst: Path) -> dict[str, dict[str, bytes]]:
    """run -> {path in the mirror: content} of what the attic holds (links: target)."""
    out: dict[str, dict[str, bytes]] = {}
    top = dst / ATTIC
    if not top.exists():
        return out
    for run in sorted(p for p in top.iterdir() if p.is_dir()):
        held: dict[str, bytes] = {}
        for p in sorted(run.rglob("*")):
            rel = str(p.relative_to(run))
            if p.is_symlink():
                held[rel] = b"-> " + os.fsencode(os.readlink(p))
            elif p.is_file():
                held[rel] = p.read_bytes()
        out[run.name] = held
    return out


def manifests(dst: Path) -> dict[str, list[dict]]:
    top = dst / ATTIC
    return {p.name[:-len(".jsonl")]: [orjson.loads(ln) for ln in p.read_bytes().splitlines()]
            for p in sorted(top.glob("*.jsonl"))} if top.exists() else {}


@pytest.fixture
def attic_block(block):
    env, src, dst = block
    set_attic(env, 30)
    return env, src, dst


def test_deleted_and_replaced_content_goes_to_the_attic_without_being_sent(attic_block) -> None:
    env, src, dst = attic_block
    old = {"keep.txt": b"stays", "edit.txt": b"old words " * 300, "gone.txt": b"deleted " * 100,
           "dir/inner.bin": os.urandom(40_000), "dir/sub/deep.txt": b"deep",
           "was-file": b"becomes a folder", "moved-away.bin": os.urandom(20_000)}
    for rel, data in old.items():
        put(src / rel, data)
    os.symlink("keep.txt", src / "link")
    first = backup(env)
    assert first["attic_files"] == 0 and not (dst / ATTIC).exists()

    put(src / "edit.txt", b"new words " * 300)
    (src / "gone.txt").unlink()
    shutil.rmtree(src / "dir")
    (src / "link").unlink()
    (src / "was-file").unlink()
    put(src / "was-file" / "now-inside", b"x")
    os.rename(src / "moved-away.bin", src / "renamed.bin")  # a move: nothing leaves
    s = backup(env, "--override")  # (more than half the files leave: the deletion guard)
    assert_mirror(src, dst)
    # Only the new content crossed the link; the old went into the attic by renames.
    assert s["bytes_sent"] == len(b"new words " * 300) + 1
    held = attic_files(dst)
    assert len(held) == 1
    run, files = next(iter(held.items()))
    assert run == s["snapshot"]
    assert files == {"edit.txt": old["edit.txt"], "gone.txt": old["gone.txt"],
                     "dir/inner.bin": old["dir/inner.bin"], "dir/sub/deep.txt": old["dir/sub/deep.txt"],
                     "was-file": old["was-file"], "link": b"-> keep.txt"}
    assert s["attic_files"] == len(files)
    listed = manifests(dst)[run]
    assert sorted(d["path"] for d in listed) == sorted(files)
    for d in listed:
        if d["type"] == "file":
            assert d["digest"] == digest(dst / ATTIC / run / d["path"]), d["path"]
            assert d["size"] == len(files[d["path"]])
    # Nothing to do the next time: the attic does not make the mirror look changed.
    assert backup(env)["result"] == "nothing"


def test_without_attic_days_nothing_is_kept(block) -> None:
    env, src, dst = block
    put(src / "a", b"one")
    put(src / "b", b"two")
    backup(env)
    put(src / "a", b"changed")
    (src / "b").unlink()
    s = backup(env)
    assert s["attic_files"] == 0 and "retire" not in s["operations"]
    assert not (dst / ATTIC).exists()
    assert_mirror(src, dst)


def test_a_runs_attic_expires_after_attic_days(attic_block) -> None:
    from test_record import faketime

    env, src, dst = attic_block
    for name in ("a", "b", "c", "d"):
        put(src / name, name.encode() * 10)
    backup(env, extra_env=faketime("2027-01-01 00:00:00"))
    (src / "a").unlink()
    r1 = backup(env, extra_env=faketime("2027-01-02 00:00:00"))["snapshot"]
    (src / "b").unlink()
    r2 = backup(env, extra_env=faketime("2027-01-20 00:00:00"))["snapshot"]
    assert sorted(attic_files(dst)) == [r1, r2]
    # 30 days after the first: not yet (a run with nothing to send tidies nothing).
    put(src / "c", b"changed")
    r3 = backup(env, extra_env=faketime("2027-01-31 23:00:00"))["snapshot"]
    assert sorted(attic_files(dst)) == [r1, r2, r3]
    # More than 30 days after r1 and r3's run... r1 goes, with its list; the others stay.
    put(src / "d", b"changed")
    r4 = backup(env, extra_env=faketime("2027-02-02 00:00:00"))["snapshot"]
    assert sorted(attic_files(dst)) == [r2, r3, r4]
    assert sorted(manifests(dst)) == [r2, r3, r4]
    assert attic_files(dst)[r2] == {"b": b"b" * 10}
    # attic_days = 0: the next run that writes removes the rest.
    set_attic(env, 0)
    put(src / "new", b"n")
    backup(env, extra_env=faketime("2027-02-03 00:00:00"))
    assert attic_files(dst) == {} and manifests(dst) == {}
    assert_mirror(src, dst)


def test_prune_removes_only_what_is_older_than_attic_days(attic_block) -> None:
    from test_record import faketime

    env, src, dst = attic_block
    set_attic(env, 2)
    for name in ("a", "b"):
        put(src / name, name.encode())
    backup(env, extra_env=faketime("2027-03-01 00:00:00"))
    (src / "a").unlink()
    r1 = backup(env, extra_env=faketime("2027-03-01 01:00:00"))["snapshot"]
    (src / "b").unlink()
    r2 = backup(env, "--override", extra_env=faketime("2027-03-02 12:00:00"))["snapshot"]
    later = faketime("2027-03-03 06:00:00")  # r1 is 2 days and 5 hours old, r2 not 1
    r = env.run("prune", "b", "--dry-run", extra_env=later)
    assert r.returncode == 0 and f"would remove the attic of 1 run(s): {r1}" in r.stdout, r.stdout
    assert sorted(attic_files(dst)) == [r1, r2]
    r = env.run("prune", "b", extra_env=later)
    assert r.returncode == 0 and f"removed the attic of 1 run(s): {r1}" in r.stdout, r.stdout
    assert sorted(attic_files(dst)) == [r2] and sorted(manifests(dst)) == [r2]
    r = env.run("prune", "b", extra_env=later)
    assert "nothing in the attic is older" in r.stdout
    assert_mirror(src, dst)


def test_a_crash_at_any_point_loses_no_old_version(attic_block, tmp_path: Path) -> None:
    """Kill a run that deletes and replaces files at events spread over it, then let
    the next run finish: the mirror is the source, and every old version that left
    the mirror is in the attic, listed with its digest, exactly once."""
    from test_reliability import assert_done, torture_run

    env, src, dst = attic_block
    # (A resumed run counts what is left to delete against what is left: over half.)
    env.config.write_text(env.config.read_text().replace('max_delete = "50%"', 'max_delete = "100%"'))
    rng = random.Random(14)
    for i in range(12):
        put(src / f"d{i % 3}" / f"f{i}", rng.randbytes(rng.choice([10, 3000, 70_000])))
    backup(env)
    before = {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}

    def change() -> None:
        for i in range(0, 12, 3):
            put(src / f"d{i % 3}" / f"f{i}", rng.randbytes(500))  # replaced
        for i in (1, 5, 7):
            (src / f"d{i % 3}" / f"f{i}").unlink()  # deleted
        shutil.rmtree(src / "d2")

    saved = tmp_path / "saved"
    change()
    for name in ("src", "remote", "state"):
        shutil.copytree(env.root / name, saved / name, symlinks=True)
    _, labels = torture_run(env, trace=tmp_path / "trace.json", args=("--jobs", "1"))
    assert any(lab.startswith("delete:") for lab in labels)
    points = sorted(set([i + 1 for i, lab in enumerate(labels) if lab.startswith("delete:")][::2]
                        + list(range(1, len(labels) + 1, max(1, len(labels) // 12)))))
    after = {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    left = {rel: data for rel, data in before.items() if after.get(rel) != data}
    assert len(left) >= 8
    for idx in points:
        for name in ("src", "remote", "state"):
            shutil.rmtree(env.root / name)
            shutil.copytree(saved / name, env.root / name, symlinks=True)
        rc, _ = torture_run(env, kill_at=idx, args=("--jobs", "1"))
        assert rc in (0, -signal.SIGKILL)
        r = env.run("backup", "b")
        assert r.returncode == 0, f"killed at {idx} ({labels[idx - 1]}): {r.stderr}"
        assert_done(env, src, dst)
        held = attic_files(dst)
        kept = [(rel, data) for files in held.values() for rel, data in files.items()]
        assert sorted(kept) == sorted(left.items()), f"killed at {idx} ({labels[idx - 1]})"
        listed = {(run, d["path"]): d["digest"] for run, ds in manifests(dst).items() for d in ds}
        assert {(run, rel) for run, files in held.items() for rel in files} == set(listed), idx
        for (run, rel), dg in listed.items():
            assert dg == digest(dst / ATTIC / run / rel), (idx, run, rel)


def test_every_snapshot_restores_exactly_from_the_mirror_and_the_attic(attic_block) -> None:
    """Five states of a tree (edits, overwrites, deletions, a folder renamed, a large
    file edited in place, a file deleted and made again with other content), a
    backup after each: every snapshot restores byte for byte, with modes and
    mtimes, through the block and from the remote alone."""
    env, src, dst = attic_block
    env.config.write_text(env.config.read_text().replace("patch_in_place = true",
                                                         "patch_in_place = false"))
    rng = random.Random(5)
    put(src / "a.txt", b"first a")
    put(src / "b.txt", b"first b")
    put(src / "dir" / "c.bin", rng.randbytes(50_000))
    put(src / "dir" / "sub" / "d.txt", b"deep")
    put(src / "big.img", rng.randbytes(17 << 20))
    os.symlink("a.txt", src / "link")
    os.chmod(src / "b.txt", 0o600)
    states = []

    def snap() -> None:
        s = backup(env, "--override")
        states.append((s["snapshot"], tree_state(src)))

    snap()
    put(src / "a.txt", b"second a, longer")
    (src / "b.txt").unlink()
    snap()
    os.rename(src / "dir", src / "dir2")
    with open(src / "big.img", "r+b") as f:
        f.seek(5 << 20)
        f.write(b"edited in place")
    snap()
    (src / "dir2" / "c.bin").unlink()
    put(src / "b.txt", b"b again, other content")
    snap()
    put(src / "a.txt", b"third a")
    os.chmod(src / "a.txt", 0o640)
    (src / "link").unlink()
    os.symlink("dir2/sub/d.txt", src / "link")
    snap()
    assert len(attic_files(dst)) == 4
    listed = json.loads(env.run("snapshots", "b", "--json", check=0).stdout)
    assert [r["id"] for r in listed] == [sid for sid, _ in states]
    assert all(r["complete"] for r in listed), listed
    assert listed[1]["attic_files"] == 2 and listed[1]["attic_bytes"] == len(b"first a") + len(b"first b")
    assert listed[0]["files"] == 5 and listed[0]["bytes"] > 17 << 20
    for i, (sid, want) in enumerate(states):
        for how, args in (("block", ("restore", "b")), ("remote", ("restore", "--from", str(dst)))):
            out = env.root / f"out-{i}-{how}"
            r = env.run(*args, "--snapshot", sid, "--to", out)
            assert r.returncode == 0, (sid, how, r.stderr)
            got = tree_state(out)
            assert got == want, (sid, how, sorted(set(got) ^ set(want)),
                                 [k for k in want if k in got and got[k] != want[k]])


def test_snapshots_says_which_restore_exactly(block) -> None:
    """Without the attic, a snapshot whose content a later run replaced or deleted
    no longer restores exactly; with it, it does (until its attic expires)."""
    env, src, dst = block
    put(src / "a", b"one")
    put(src / "b", b"two")
    backup(env)
    put(src / "c", b"added: nothing leaves")
    backup(env)
    put(src / "a", b"replaced")
    backup(env)
    rows = json.loads(env.run("snapshots", "b", "--json", check=0).stdout)
    assert [r["complete"] for r in rows] == [False, False, True]
    assert [r["attic_files"] for r in rows] == [0, 0, 0]
    set_attic(env, 30)
    (src / "b").unlink()
    backup(env)
    rows = json.loads(env.run("snapshots", "b", "--json", check=0).stdout)
    assert [r["complete"] for r in rows] == [False, False, True, True]
    assert rows[-1]["attic_files"] == 1
    out = env.run("snapshots", "b", check=0).stdout
    assert "exactly" in out and "in part" in out and "1 files" in out


def test_verify_reads_the_attic_too(attic_block) -> None:
    env, src, dst = attic_block
    for name in ("a", "b", "c"):
        put(src / name, name.encode() * 1000)
    backup(env)
    put(src / "a", b"new a")
    (src / "b").unlink()
    (src / "c").unlink()
    run = backup(env, "--override")["snapshot"]
    r = env.run("verify", "b", "--attic", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["attic"] == {"checked_files": 3, "missing": [], "corrupt": []}
    (dst / ATTIC / run / "b").write_bytes(b"B" * 1000)  # same size, other bytes
    (dst / ATTIC / run / "c").unlink()
    r = env.run("verify", "b", "--attic")
    assert r.returncode == 7, r.stderr
    at = f".btsoot/attic/{run}"
    assert f"corrupt   {at}/b (attic)" in r.stdout and f"missing   {at}/c (attic)" in r.stdout, \
        r.stdout
    assert "2 missing or corrupt (kept as they are)" in r.stdout
    # Without --attic the mirror alone is read, and it is fine; nothing is recorded
    # for the next backup, which leaves the attic as it is.
    assert env.run("verify", "b").returncode == 0
    put(src / "d", b"d")
    backup(env)
    assert (dst / ATTIC / run / "b").read_bytes() == b"B" * 1000


def test_add_takes_attic_days(env: Env, tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "r").mkdir()
    env.run("add", "b", tmp_path / "s", tmp_path / "r", "--attic-days", "14", check=0)
    assert "attic_days = 14" in env.config.read_text()
    r = env.run("add", "c", tmp_path / "s", tmp_path / "r", "--attic-days", "-3")
    assert r.returncode == 2 and "attic-days" in r.stderr


def test_attic_days_is_checked(block) -> None:
    env, src, dst = block
    for bad in ("-1", "\"30d\"", "true", "36501"):
        text = env.config.read_text().replace("attic_days = 0", f"attic_days = {bad}")
        env.config.write_text(text)
        r = env.run("backup", "b")
        assert r.returncode == 2 and "attic_days" in r.stderr, (bad, r.stderr)
        env.config.write_text(text.replace(f"attic_days = {bad}", "attic_days = 0"))
