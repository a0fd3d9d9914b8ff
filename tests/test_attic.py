"""The attic: what a run moves out of the mirror (a file or link deleted, a file
replaced by new content) is renamed into REMOTE/.btsoot/attic/RUN/<path>, not
lost, and listed in REMOTE/.btsoot/attic/RUN.jsonl; it stays while a snapshot
the block's retention keeps needs it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import xxhash

from conftest import Env, assert_mirror, tree_state

ATTIC = Path(".btsoot") / "attic"


def put(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def set_key(env: Env, key: str, value: str) -> None:
    """Set a key of block b in the config (TOML text: `value` as written)."""
    text = env.config.read_text()
    assert f"\n{key} = " in text
    lines = [f"{key} = {value}" if ln.startswith(f"{key} = ") else ln for ln in text.splitlines()]
    env.config.write_text("\n".join(lines) + "\n")


def set_attic(env: Env, days: int) -> None:
    set_key(env, "keep_within", f'"{days}d"')


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


def killed_and_finished(env: Env, saved: Path, points: list[int], labels: list[str]) -> Iterator[int]:
    """For each event: the saved state back, a backup killed there, then a backup
    that finishes, and the mirror checked; yields the event for more checks."""
    from test_reliability import assert_done, torture_run

    for idx in points:
        for name in ("src", "remote", "state"):
            shutil.rmtree(env.root / name)
            shutil.copytree(saved / name, env.root / name, symlinks=True)
        rc, _ = torture_run(env, kill_at=idx, args=("--jobs", "1"))
        assert rc in (0, -signal.SIGKILL)
        r = env.run("backup", "b")
        assert r.returncode == 0, f"killed at {idx} ({labels[idx - 1]}): {r.stderr}"
        assert_done(env, env.root / "src", env.root / "remote")
        yield idx


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


def test_without_history_nothing_is_kept(block) -> None:
    env, src, dst = block
    set_attic(env, 0)
    put(src / "a", b"one")
    put(src / "b", b"two")
    backup(env)
    put(src / "a", b"changed")
    (src / "b").unlink()
    s = backup(env)
    assert s["attic_files"] == 0 and "retire" not in s["operations"]
    assert not (dst / ATTIC).exists()
    assert_mirror(src, dst)


def test_the_attic_keeps_what_the_kept_snapshots_need(attic_block) -> None:
    """keep_within = 30d: a snapshot stays while it is within 30 days of the newest,
    and the attic holds exactly the content those snapshots need."""
    from test_record import faketime

    env, src, dst = attic_block
    for name in ("a", "b", "c", "d"):
        put(src / name, name.encode() * 10)
    s0 = backup(env, extra_env=faketime("2027-01-01 00:00:00"))["snapshot"]
    (src / "a").unlink()
    r1 = backup(env, extra_env=faketime("2027-01-02 00:00:00"))["snapshot"]
    (src / "b").unlink()
    r2 = backup(env, extra_env=faketime("2027-01-20 00:00:00"))["snapshot"]
    assert sorted(attic_files(dst)) == [r1, r2]
    # Within 30 days of the first snapshot: every snapshot is kept.
    put(src / "c", b"changed")
    r3 = backup(env, extra_env=faketime("2027-01-30 23:00:00"))["snapshot"]
    assert sorted(attic_files(dst)) == [r1, r2, r3]
    ids = [r["id"] for r in json.loads(env.run("snapshots", "b", "--json", check=0).stdout)]
    assert ids == [s0, r1, r2, r3]
    # Two days later s0 and r1 fall out of the window. "a" (deleted by r1) and "b"
    # (deleted by r2) were only in those two: their attic goes. r3's old "c" is in
    # r2, which is kept.
    put(src / "d", b"changed")
    r4 = backup(env, extra_env=faketime("2027-02-02 00:00:00"))["snapshot"]
    rows = json.loads(env.run("snapshots", "b", "--json", check=0).stdout)
    assert [r["id"] for r in rows] == [r2, r3, r4]
    assert [r["kept_by"] for r in rows] == [["within"], ["within"], ["newest", "last", "within"]]
    assert attic_files(dst) == {r3: {"c": b"c" * 10}, r4: {"d": b"d" * 10}}
    assert sorted(manifests(dst)) == [r3, r4]
    # The remote's own snapshot files follow: r2 restores from the remote alone.
    r = env.run("restore", "--from", str(dst), "--snapshot", r2, "--to", env.root / "out")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(env.root / "out")) == ["c", "d"]
    assert [(env.root / "out" / n).read_bytes() for n in "cd"] == [b"c" * 10, b"d" * 10]
    # No history: the next run that writes removes the rest, and keeps one snapshot.
    set_attic(env, 0)
    put(src / "new", b"n")
    backup(env, extra_env=faketime("2027-02-03 00:00:00"))
    assert attic_files(dst) == {} and manifests(dst) == {}
    assert len(json.loads(env.run("snapshots", "b", "--json", check=0).stdout)) == 1
    assert_mirror(src, dst)


def test_prune_applies_a_tightened_policy(attic_block) -> None:
    from test_record import faketime

    env, src, dst = attic_block
    for name in ("a", "b"):
        put(src / name, name.encode())
    s0 = backup(env, extra_env=faketime("2027-03-01 00:00:00"))["snapshot"]
    (src / "a").unlink()
    r1 = backup(env, extra_env=faketime("2027-03-01 13:00:00"))["snapshot"]
    (src / "b").unlink()
    r2 = backup(env, "--override", extra_env=faketime("2027-03-02 12:00:00"))["snapshot"]
    assert sorted(attic_files(dst)) == [r1, r2]
    # One day back from r2 keeps r1 and r2: s0 goes, and with it the attic of "a"
    # (only s0 had it); r1 had "b", so r2's attic stays.
    set_key(env, "keep_within", '"1d"')
    r = env.run("prune", "b", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would let go 1" in r.stdout and s0 in r.stdout, r.stdout
    assert "would remove 1 file(s)" in r.stdout and "keeps 1," in r.stdout, r.stdout
    assert sorted(attic_files(dst)) == [r1, r2]
    r = env.run("prune", "b")
    assert r.returncode == 0 and "removed 1 file(s)" in r.stdout, r.stdout
    assert attic_files(dst) == {r2: {"b": b"b"}} and sorted(manifests(dst)) == [r2]
    r = env.run("prune", "b")
    assert "let go 0" in r.stdout and "removed 0 file(s)" in r.stdout, r.stdout
    assert_mirror(src, dst)


def test_a_crash_at_any_point_loses_no_old_version(attic_block, tmp_path: Path) -> None:
    """Kill a run that deletes and replaces files at events spread over it, then let
    the next run finish: the mirror is the source, and every old version that left
    the mirror is in the attic, listed with its digest, exactly once."""
    from test_reliability import torture_run

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
    for idx in killed_and_finished(env, saved, points, labels):
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
    # big.img was patched in place: its old chunk is kept as an undo record.
    assert any("undo" in d and d["path"] == "big.img" for ds in manifests(dst).values() for d in ds)
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
        # And with nothing but Python: the remote's own restore.py, no btsoot.
        out = env.root / f"out-{i}-bare"
        p = subprocess.run(["/usr/bin/python3", "-I", "-S", str(dst / ".btsoot" / "restore.py"),
                            "--snapshot", sid, str(out)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (sid, p.stdout + p.stderr)
        assert tree_state(out) == want, (sid, "restore.py")


def test_snapshots_says_which_restore_exactly(attic_block) -> None:
    """A kept snapshot restores exactly while the content of each of its files is on
    the remote, in the mirror or the attic (by the attic's lists: the remote is not
    walked); `snapshots` checks that, and says so when it is not (here: a run's
    attic removed by hand)."""
    env, src, dst = attic_block
    put(src / "a", b"one")
    put(src / "b", b"two")
    backup(env)
    put(src / "c", b"added: nothing leaves")
    backup(env)
    put(src / "a", b"replaced")
    run = backup(env)["snapshot"]
    rows = json.loads(env.run("snapshots", "b", "--json", check=0).stdout)
    assert [r["complete"] for r in rows] == [True, True, True]
    assert [r["attic_files"] for r in rows] == [0, 0, 1]
    shutil.rmtree(dst / ATTIC / run)
    (dst / ATTIC / f"{run}.jsonl").unlink()
    rows = json.loads(env.run("snapshots", "b", "--json", check=0).stdout)
    assert [r["complete"] for r in rows] == [False, False, True]
    out = env.run("snapshots", "b", check=0).stdout
    assert "exactly" in out and "in part" in out


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


def test_add_takes_the_retention_terms(env: Env, tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "r").mkdir()
    env.run("add", "b", tmp_path / "s", tmp_path / "r", "--keep-daily", "7", "--keep-monthly", "12",
            "--keep-within", "2w", "--attic-max", "50G", check=0)
    text = env.config.read_text()
    for line in ("keep_daily = 7", "keep_monthly = 12", 'keep_within = "2w"', 'attic_max = "50G"'):
        assert line in text, text
    env.run("add", "c", tmp_path / "s", tmp_path / "r", "--attic-days", "14", check=0)
    assert 'keep_within = "14d"' in env.config.read_text()  # the older option
    for bad in (("--attic-days", "-3"), ("--keep-within", "3 days"), ("--attic-max", "lots"),
                ("--keep-daily", "-1")):
        r = env.run("add", "d", tmp_path / "s", tmp_path / "r", *bad)
        assert r.returncode == 2 and bad[0].lstrip("-") in r.stderr, (bad, r.stderr)


def test_the_retention_terms_are_checked(block) -> None:
    env, src, dst = block
    good = env.config.read_text()
    for key, bad in (("keep_within", '"3 days"'), ("keep_within", "30"), ("keep_last", "0"),
                     ("keep_daily", "-1"), ("keep_monthly", "true"), ("attic_max", '"lots"'),
                     ("attic_max", "-5")):
        set_key(env, key, bad)
        r = env.run("backup", "b")
        assert r.returncode == 2 and key in r.stderr, (key, bad, r.stderr)
        env.config.write_text(good)
    # A config written before the terms: attic_days and keep_snapshots are read as
    # keep_within and keep_last (and checked as before).
    old = good.replace('keep_within = "30d"', "attic_days = 7").replace("keep_last = 1",
                                                                        "keep_snapshots = 3")
    env.config.write_text(old)
    for bad in ("-1", "\"30d\"", "true", "36501"):
        env.config.write_text(old.replace("attic_days = 7", f"attic_days = {bad}"))
        r = env.run("backup", "b")
        assert r.returncode == 2 and "attic_days" in r.stderr, (bad, r.stderr)
    env.config.write_text(old)
    put(src / "a", b"a")
    backup(env)
    env.run("rm", "b", check=0)  # (a rewrite of the config writes the new names)


def test_diff_between_two_snapshots(attic_block) -> None:
    env, src, dst = attic_block
    put(src / "same", b"s")
    put(src / "edit", b"old")
    put(src / "gone", b"g")
    put(src / "touch", b"t")
    s0 = backup(env)["snapshot"]
    put(src / "edit", b"new content")
    (src / "gone").unlink()
    put(src / "dir" / "new", b"n")
    os.chmod(src / "touch", 0o600)
    s1 = backup(env)["snapshot"]
    r = env.run("diff", "b", "--from", s0, "--to", s1[:-3])  # (an id or a unique prefix)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "added    dir/", "added    dir/new", "changed  edit", "deleted  gone", "attrs    touch",
        f"b: {s0} -> {s1}: 2 added, 1 attrs, 1 changed, 1 deleted"]
    r = env.run("diff", "b", "--from", s1, "--json")  # --to: the newest
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    r = env.run("diff", "b", "--from", "1999")
    assert r.returncode == 2 and "no snapshot '1999'" in r.stderr, r.stderr
    r = env.run("diff", "b", "--to", s1)
    assert r.returncode == 2 and "--from" in r.stderr


MiB = 1 << 20


def test_a_file_patched_in_place_keeps_its_old_chunks(attic_block) -> None:
    """A large file edited in place three times: each patch keeps the chunks it
    overwrites (or cuts off) as an undo record, no bigger than them; every version
    restores exactly, the oldest through a chain of three records; verify --attic
    checks the records, and a damaged one is reported, never restored from."""
    env, src, dst = attic_block
    rng = random.Random(21)
    put(src / "disk.img", rng.randbytes(24 * MiB))
    versions = [(backup(env)["snapshot"], (src / "disk.img").read_bytes())]
    for k, (off, data) in enumerate([(5 * MiB, b"x" * 100), (13 * MiB - 3, b"y" * 9),
                                     (None, None)]):
        if off is None:
            os.truncate(src / "disk.img", 18 * MiB + 7)  # shrunk: the cut-off chunks kept
        else:
            with open(src / "disk.img", "r+b") as f:
                f.seek(off)
                f.write(data)
        s = backup(env)
        assert s["operations"].get("patch") == 1, s["operations"]
        undo = dst / ATTIC / s["snapshot"] / "disk.img"
        overwritten = {0: 1, 1: 1, 2: 2}[k]  # 4 MiB chunks rewritten or cut off
        assert overwritten * 4 * MiB < undo.stat().st_size < overwritten * 4 * MiB + 4096, k
        line = manifests(dst)[s["snapshot"]][0]
        assert line["undo"]["base"] == digest(src / "disk.img") and line["digest"] == \
            xxhash.xxh3_128(versions[-1][1]).hexdigest()
        versions.append((s["snapshot"], (src / "disk.img").read_bytes()))
    for k, (sid, data) in enumerate(versions):
        out = env.root / f"v{k}"
        r = env.run("restore", "--from", str(dst), "--snapshot", sid, "--to", out)
        assert r.returncode == 0, (k, r.stderr)
        assert (out / "disk.img").read_bytes() == data, k
    v = json.loads(env.run("verify", "b", "--attic", "--json", check=0).stdout)
    assert v["attic"] == {"checked_files": 3, "missing": [], "corrupt": []}, v
    # One byte of the middle record flipped: verify says so; the two versions that
    # need it are not restored (exit 7), the newer ones are.
    mid = dst / ATTIC / versions[2][0] / "disk.img"
    raw = bytearray(mid.read_bytes())
    raw[-100] ^= 0xFF
    mid.write_bytes(bytes(raw))
    r = env.run("verify", "b", "--attic")
    assert r.returncode == 7 and "undo record damaged" in r.stdout, r.stdout
    for k, (sid, data) in enumerate(versions):
        out = env.root / f"w{k}"
        r = env.run("restore", "b", "--snapshot", sid, "--to", out)
        if k < 2:
            assert r.returncode == 7 and "undo record" in r.stderr + r.stdout, (k, r.stderr)
            assert not (out / "disk.img").exists()
        else:
            assert r.returncode == 0 and (out / "disk.img").read_bytes() == data, k


@pytest.mark.slow
def test_a_kill_during_a_patch_with_history_loses_no_version(attic_block, tmp_path: Path) -> None:
    """Kill a run that patches a large file in place at each event: after the next
    run, the mirror is the source and the version before still restores exactly
    (from the undo record, or the file was not patched yet)."""
    from test_reliability import torture_run

    env, src, dst = attic_block
    rng = random.Random(8)
    put(src / "disk.img", rng.randbytes(17 * MiB))
    put(src / "small", b"s")
    first = backup(env)["snapshot"]
    old = (src / "disk.img").read_bytes()
    with open(src / "disk.img", "r+b") as f:
        f.seek(9 * MiB)
        f.write(b"edited")
    put(src / "small", b"changed")
    saved = tmp_path / "saved"
    for name in ("src", "remote", "state"):
        shutil.copytree(env.root / name, saved / name, symlinks=True)
    _, labels = torture_run(env, trace=tmp_path / "trace.json", args=("--jobs", "1"))
    assert any("patch" in lab for lab in labels), labels
    # Every third event of the patch (undo record, redo file, the write in place),
    # and some of the rest (the journal, the commit, pruning).
    patch = [i + 1 for i, lab in enumerate(labels) if lab.startswith("patch:")]
    points = sorted(set(patch[::3] + patch[-3:] + list(range(1, len(labels) + 1, 9))))
    for idx in killed_and_finished(env, saved, points, labels):
        out = env.root / f"then{idx}"
        r = env.run("restore", "b", "--snapshot", first, "--to", out)
        assert r.returncode == 0, f"killed at {idx} ({labels[idx - 1]}): {r.stderr}"
        assert (out / "disk.img").read_bytes() == old and (out / "small").read_bytes() == b"s", idx
        shutil.rmtree(out)
