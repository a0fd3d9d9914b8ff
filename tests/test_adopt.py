"""`btsoot backup --adopt`: an offsite copy made another way (rsync, cp, a disk
carried over) taken as it is, real CLI runs on real trees.

What counts is what happens on the remote: a file btsoot sends or rewrites gets
a new inode there (it is written beside and renamed into place), so "nothing
sent" is checked as "every remote file still has its inode", besides the
summary's bytes_sent.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import Env, assert_mirror, tree_state

OLD = 1_600_000_000_123_456_789  # mtimes far in the past, every nanosecond digit set
FOLDERS = ["docs", "docs/2020", "photos/rome", "photos/paris", "music", ""]


def build(src: Path, seed: str) -> int:
    """About 60 files of mixed sizes and modes; returns their total size."""
    rng = random.Random(seed)
    total = 0
    for folder in FOLDERS:
        for i in range(10):
            p = src / folder / f"f{i:02d}.dat"
            p.parent.mkdir(parents=True, exist_ok=True)
            data = rng.randbytes(rng.choice([0, 10, 3000, rng.randrange(90_000)]))
            p.write_bytes(data)
            p.chmod(rng.choice([0o644, 0o600, 0o755]))
            t = OLD + rng.randrange(10**15)
            os.utime(p, ns=(t, t))
            total += len(data)
    return total


def inodes(root: Path) -> dict[str, int]:
    """Every file of the copy (not btsoot's own folder): its inode."""
    out = {}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if p.is_file() and not p.is_symlink() and not rel.startswith(".btsoot"):
            out[rel] = p.stat().st_ino
    return out


def adopt(env: Env, *args: str, check: int = 0) -> dict:
    p = env.run("backup", "b", "--json", *args, check=check)
    return json.loads(p.stdout)


@pytest.fixture
def copied(env: Env) -> tuple[Env, Path, Path, int]:
    """A source tree and a copy of it made by `rsync -a`, and the block between them."""
    src, dst = env.root / "src", env.root / "dst"
    total = build(src, "adopt")
    subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
    env.run("add", "b", src, dst, check=0)
    return env, src, dst, total


def test_an_rsync_copy_is_adopted_without_sending_a_byte(copied) -> None:
    env, src, dst, _ = copied
    # Without --adopt a first backup refuses a folder that is not empty, and says how.
    p = env.run("backup", "b", check=4)
    assert "--adopt" in p.stderr and "Traceback" not in p.stderr
    (dst / "docs/f04.dat").chmod(0o640)  # changed on the copy since: set, not sent
    before = inodes(dst)
    dry = env.run("backup", "b", "--adopt", "--dry-run", check=0).stdout
    assert "adopted 60 files" in dry and inodes(dst) == before and not (dst / ".btsoot").exists()

    s = adopt(env, "--adopt")
    assert s["result"] == "ok" and s["bytes_sent"] == 0, s
    assert s["adoption"]["files"] == 60 and s["adoption"]["extras"] == 0, s
    assert s["operations"].get("set-attributes"), s
    assert not {"copy", "patch", "retire", "delete"} & set(s["operations"]), s
    assert inodes(dst) == before  # not one file written again
    assert_mirror(src, dst)
    # From now on a remote like any other.
    assert adopt(env)["result"] == "nothing"
    assert json.loads(env.run("verify", "b", "--json", check=0).stdout)["checked_files"] == 60
    # --adopt again (the same command after a crash, say): nothing left to adopt.
    s = adopt(env, "--adopt")
    assert s["result"] == "nothing" and s["adoption"] is None
    assert any("nothing to adopt" in n for n in s["notices"]), s


def test_a_copy_that_lost_its_times(env: Env) -> None:
    """`cp -r` keeps content, not times: by size and mtime nothing can be trusted,
    and the content is sent again (the old copies kept in the attic, a note saying
    why); --adopt=checksum reads the remote files and sends nothing."""
    src, dst = env.root / "src", env.root / "dst"
    total = build(src, "times")
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    env.run("add", "b", src, dst, check=0)
    s = adopt(env, "--adopt")
    assert s["bytes_sent"] == total and s["adoption"]["unsure"] == 60, s
    assert any("--adopt=checksum" in n for n in s["notices"]), s
    assert_mirror(src, dst)

    shutil.rmtree(dst)
    shutil.rmtree(env.state)
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    before = inodes(dst)
    s = adopt(env, "--adopt=checksum")
    assert s["bytes_sent"] == 0 and s["adoption"]["hashed_files"] == 60, s
    assert s["adoption"]["files"] == 60 and "copy" not in s["operations"], s
    assert inodes(dst) == before
    assert_mirror(src, dst)  # modes and times set, content untouched


def test_a_stale_copy_ends_as_a_mirror_and_its_renamed_folder_is_moved(copied) -> None:
    env, src, dst, _ = copied
    rng = random.Random("stale")
    edited = [src / "docs/f03.dat", src / "music/f07.dat"]
    for p in edited:
        p.write_bytes(rng.randbytes(5000))
    for i in range(2):
        (src / f"new{i}.txt").write_bytes(rng.randbytes(700))
    (src / "docs/f01.dat").unlink()
    (src / "f02.dat").unlink()
    os.rename(src / "photos/rome", src / "photos/roma")
    (dst / "left-behind.tmp").write_bytes(b"made on the remote")
    rome = {k: v for k, v in inodes(dst).items() if k.startswith("photos/rome/")}

    s = adopt(env, "--adopt")
    assert s["result"] == "ok" and s["operations"].get("move-dir") == 1, s
    assert s["bytes_sent"] == 2 * 5000 + 2 * 700, s
    assert s["adoption"]["matched_elsewhere"] == 10 and s["adoption"]["extras"] == 3, s
    now = inodes(dst)
    assert {k.replace("rome", "roma"): v for k, v in rome.items()} == {
        k: v for k, v in now.items() if k.startswith("photos/roma/")}  # moved, not sent
    assert_mirror(src, dst)  # the extra file, the deleted and the old versions: gone


def test_a_foreign_tree_trips_the_deletion_guard_and_keep_extras_leaves_it(env: Env) -> None:
    src, dst = env.root / "src", env.root / "dst"
    for i in range(40):
        p = dst / "theirs" / f"t{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(100 + i))
    for i in range(5):
        (src / "mine").mkdir(parents=True, exist_ok=True)
        (src / "mine" / f"m{i}.txt").write_bytes(b"mine %d" % i)
    env.run("add", "b", src, dst, check=0)
    theirs = tree_state(dst / "theirs")
    p = env.run("backup", "b", "--adopt", check=4)
    assert "would delete 40 of 40 files" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert tree_state(dst / "theirs") == theirs and not (dst / "mine").exists()
    # Refused, the remote is not taken for a backup: a plain run says what to do.
    assert "--adopt" in env.run("backup", "b", check=4).stderr

    ino = inodes(dst)
    s = adopt(env, "--adopt", "--keep-extras")
    assert s["result"] == "ok" and s["adoption"]["extras"] == 40, s
    assert tree_state(dst / "theirs") == theirs and inodes(dst).items() >= ino.items()
    assert tree_state(dst / "mine") == tree_state(src / "mine")
    # Later runs never touch them either.
    (src / "mine" / "m9.txt").write_bytes(b"later")
    assert adopt(env)["operations"] == {"copy": 1, "set-attributes": 1}
    assert tree_state(dst / "theirs") == theirs
    v = json.loads(env.run("verify", "b", "--json", check=None).stdout)
    assert not v["missing"] and not v["corrupt"], v


def test_a_killed_adoption_finishes_and_loses_nothing(copied, tmp_path: Path) -> None:
    """SIGKILL at points across an adoption of a stale copy (moves, copies, the
    commit); then the user runs the same command again, and the copy ends as a
    mirror. A plain run in between either finishes the journal's work or refuses
    (exit 4): never a plan that writes over files it does not know."""
    from test_reliability import assert_done, torture_run

    env, src, dst, _ = copied
    (src / "music/f01.dat").write_bytes(b"edited" * 900)
    (src / "new.txt").write_bytes(b"new")
    (src / "docs/f05.dat").unlink()
    os.rename(src / "photos/paris", src / "photos/paris-2019")
    (dst / "extra.txt").write_bytes(b"only on the remote")
    saved = tmp_path / "saved"
    for name in ("src", "dst", "state"):
        if (env.root / name).exists():
            shutil.copytree(env.root / name, saved / name, symlinks=True)
    _, labels = torture_run(env, trace=tmp_path / "trace.json", args=("--adopt", "--jobs", "1"))
    assert_done(env, src, dst)
    assert len(labels) > 20, labels
    points = sorted(set(range(1, len(labels) + 1, max(1, len(labels) // 14))) | {len(labels)})
    seen: set[int] = set()
    for idx in points:
        for name in ("src", "dst", "state"):
            shutil.rmtree(env.root / name, ignore_errors=True)
            if (saved / name).exists():
                shutil.copytree(saved / name, env.root / name, symlinks=True)
        rc, _ = torture_run(env, kill_at=idx, args=("--adopt", "--jobs", "1"))
        assert rc in (0, -signal.SIGKILL)
        plain = env.run("backup", "b")
        assert plain.returncode in (0, 4), f"killed at {idx} ({labels[idx - 1]}): {plain.stderr}"
        seen.add(plain.returncode)
        if plain.returncode == 4:
            assert "--adopt" in plain.stderr, plain.stderr
        again = env.run("backup", "b", "--adopt")
        assert again.returncode == 0, f"killed at {idx} ({labels[idx - 1]}): {again.stderr}"
        assert_done(env, src, dst)
    assert seen == {0, 4}  # killed before the journal (refused), and after (finished)


def test_a_dry_run_before_the_first_backup_changes_nothing(env: Env) -> None:
    src, dst = env.root / "src", env.root / "dst"
    (src / "d").mkdir(parents=True)
    (src / "d/a").write_bytes(b"a")
    dst.mkdir()
    env.run("add", "b", src, dst, check=0)
    out = env.run("backup", "b", "--dry-run", check=0).stdout
    assert "copy 1" in out and os.listdir(dst) == []


def test_adopt_is_for_one_block_and_keep_extras_needs_it(copied) -> None:
    env, _, dst, _ = copied
    for args, says in ((("--keep-extras",), "--keep-extras goes with --adopt"),
                       (("--adopt", "--new-remote"), "--adopt takes one block")):
        p = env.run("backup", "b", *args, check=2)
        assert says in p.stderr and "Traceback" not in p.stderr
    assert not (dst / ".btsoot").exists()


def test_a_second_disk_filled_by_rsync_joins_a_block_by_adoption(copied) -> None:
    """A block backed up for a while; a second disk of its rotation was filled with
    rsync meanwhile. Adopted, it gets its own record; the first disk, back, is
    brought up to date from its own."""
    env, src, dst, _ = copied
    shutil.rmtree(dst)
    dst.mkdir()
    adopt(env)  # the first disk: a normal first backup
    os.rename(dst, env.root / "disk1")
    subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
    before = inodes(dst)
    s = adopt(env, "--adopt")  # nothing changed in the source: still a commit there
    assert s["result"] == "ok" and s["bytes_sent"] == 0 and s["adoption"]["files"] == 60, s
    assert inodes(dst) == before and (dst / ".btsoot/block.json").is_file()
    assert s["snapshot"] in (dst / ".btsoot/block.json").read_text()
    assert_mirror(src, dst)
    assert adopt(env)["result"] == "nothing"
    (src / "docs/later.txt").write_bytes(b"written after the adoption")
    assert adopt(env)["operations"].get("copy") == 1
    os.rename(dst, env.root / "disk2")
    os.rename(env.root / "disk1", dst)
    s = adopt(env)
    assert s["operations"].get("copy") == 1, s
    assert_mirror(src, dst)


def test_a_link_on_the_copy_is_never_followed(env: Env) -> None:
    """The copy is untrusted ground: where the source has a folder, the copy holds
    a link to a folder outside it. Adopting replaces the link with the folder and
    leaves what the link points at exactly as it was."""
    src, dst, outside = env.root / "src", env.root / "dst", env.root / "outside"
    (src / "photos").mkdir(parents=True)
    (src / "photos/a.jpg").write_bytes(b"source photo")
    (src / "keep.txt").write_bytes(b"kept")
    outside.mkdir()
    (outside / "a.jpg").write_bytes(b"not the remote's")
    dst.mkdir()
    (dst / "keep.txt").write_bytes(b"kept")
    os.utime(dst / "keep.txt", ns=(os.stat(src / "keep.txt").st_mtime_ns,) * 2)
    os.symlink(outside, dst / "photos")
    before = tree_state(outside)
    env.run("add", "b", src, dst, check=0)
    s = adopt(env, "--adopt")
    assert s["result"] == "ok", s
    assert tree_state(outside) == before
    assert not (dst / "photos").is_symlink() and (dst / "photos/a.jpg").read_bytes() == b"source photo"
    assert_mirror(src, dst)
