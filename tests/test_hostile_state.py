"""Hostile state read from the remote: refused fast with exit 8 (or 4), never a hang."""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from conftest import assert_mirror, tree_state


def _snapshots(dst: Path) -> list[Path]:
    return sorted((dst / ".btsoot" / "snapshots").glob("*.jsonl.gz"))


def _rewrite(path: Path, edit) -> None:
    lines = gzip.decompress(path.read_bytes()).splitlines()
    path.write_bytes(gzip.compress(b"\n".join(edit(lines)) + b"\n"))


def test_a_delta_based_on_itself_is_refused_not_followed_forever(block) -> None:
    env, src, dst = block
    (src / "a").write_bytes(b"a")
    env.run("backup", "b", check=0)
    (src / "b").write_bytes(b"b")
    env.run("backup", "b", check=0)
    delta = [p for p in _snapshots(dst) if ".delta." in p.name][-1]
    sid = delta.name.split(".")[0]

    def loop(lines: list[bytes]) -> list[bytes]:
        h = orjson.loads(lines[0])
        h["base"] = sid
        return [orjson.dumps(h), *lines[1:]]

    _rewrite(delta, loop)
    for p in _snapshots(dst):
        if ".full" in p.name:
            p.unlink()  # (and its copy) only the looping delta is left to resolve
    r = env.run("restore", "--from", dst, "--to", env.root / "out", timeout=30)
    assert r.returncode == 8, (r.returncode, r.stderr)
    assert "loops" in r.stderr or "broken" in r.stderr, r.stderr


def test_impossible_numbers_in_a_snapshot_are_refused(block) -> None:
    env, src, dst = block
    (src / "a").write_bytes(b"a")
    env.run("backup", "b", check=0)
    fulls = [p for p in _snapshots(dst) if ".full" in p.name]  # the snapshot and its copy
    assert len(fulls) == 2
    for field, value in (("mtime", 1e30), ("mtime", -1e30), ("mtime", 1 << 63), ("mode", 4294967295),
                         ("size", -5)):
        def bad(lines: list[bytes], field: str = field, value: object = value) -> list[bytes]:
            out = [lines[0]]
            for line in lines[1:]:
                d = orjson.loads(line)
                if isinstance(d, dict) and d.get("path") == "a":
                    d[field] = value
                out.append(orjson.dumps(d))
            return out

        saved = fulls[0].read_bytes()
        for full in fulls:
            _rewrite(full, bad)
        r = env.run("restore", "--from", dst, "--to", env.root / f"out-{field}", timeout=30)
        assert r.returncode == 8, (field, value, r.returncode, r.stderr)
        assert "internal error" not in r.stderr
        for full in fulls:
            full.write_bytes(saved)


def test_restore_from_a_folder_that_is_no_backup_is_a_guard(env, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = env.run("restore", "--from", tmp_path / "empty", "--to", tmp_path / "out")
    assert r.returncode == 4 and "holds no btsoot backup" in r.stderr, r.stderr


# --- the local state folder unusable: its own exit code, never a bug's ----------

def _files(src: Path, n: int, size: int = 100) -> None:
    for i in range(n):
        (src / f"f{i:04d}").write_bytes(bytes([i % 251]) * size)


def test_a_state_folder_below_a_file_is_exit_9(block, tmp_path: Path) -> None:
    env, src, dst = block
    _files(src, 3)
    (tmp_path / "plain").write_bytes(b"x")
    bad = dataclasses.replace(env, state=tmp_path / "plain" / "state")
    for args in (("backup", "b"), ("list",), ("verify", "b"), ("backup", "--all")):
        p = bad.run(*args, check=9)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "local state" in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert os.listdir(dst) == []


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "statefs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_state_disk_is_exit_9_and_the_next_run_completes(block, small_tmpfs: Path) -> None:
    env, src, dst = block
    _files(src, 40)
    env.run("backup", "b", check=0)
    # The state moves to a small disk, nearly full: the scan's record of 3,000
    # new files cannot be written there.
    shutil.copytree(env.state, small_tmpfs / "state")
    env = dataclasses.replace(env, state=small_tmpfs / "state")
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    for i in range(3000):
        (src / f"new{i:05d}").write_bytes(b"n")
    p = env.run("backup", "b", check=9)
    assert "local state" in p.stderr and "No space left" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    filler.unlink()
    env.run("backup", "b", check=0)
    assert_mirror(src, dst)


def test_a_read_only_state_folder_is_exit_9(block, small_tmpfs: Path) -> None:
    env, src, dst = block
    _files(src, 3)
    env.run("backup", "b", check=0)
    shutil.copytree(env.state, small_tmpfs / "state")
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    env = dataclasses.replace(env, state=small_tmpfs / "state")
    (src / "more").write_bytes(b"m")
    before = tree_state(dst, ignore_top=())
    p = env.run("backup", "b", check=9)
    assert "Read-only file system" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert tree_state(dst, ignore_top=()) == before


# --- which side an I/O error came from is known where the call is made ------

def _deep(root: Path, levels: int = 20) -> list[bytes]:
    """Folders 251 bytes long, `levels` deep below root (a path beyond PATH_MAX)."""
    names = [b"%02d" % i + b"d" * 248 for i in range(levels)]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in names:
            os.mkdir(n, dir_fd=fd)
            nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        for leaf, size in ((b"small", 100), (b"large", 3 << 20)):
            f = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, os.urandom(size))
            os.close(f)
    finally:
        os.close(fd)
    return names


def _unlink_deep(root: Path, names: list[bytes], leaf: bytes) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in names:
            nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.unlink(leaf, dir_fd=fd)
    finally:
        os.close(fd)


def test_a_source_file_vanishing_beyond_path_max_is_the_sources_error(
        block, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files deleted between the scan and their copy, at a path longer than
    PATH_MAX (read through /proc/self/fd, so its error names no source path): a
    source error (listed, exit 3), not a fatal remote error; the rest committed."""
    from btsoot.backup import backup
    from btsoot.config import Config

    env, src, dst = block
    (src / "top").write_bytes(b"stays")
    names = _deep(src)
    monkeypatch.setenv("BTSOOT_CONFIG", str(env.config))
    monkeypatch.setenv("BTSOOT_STATE", str(env.state))
    blk = Config.load().get("b")

    def progress(what: str, value: object) -> None:
        if (what, value) == ("phase", "transfer"):  # planned, nothing sent yet
            _unlink_deep(src, names, b"small")
            _unlink_deep(src, names, b"large")

    res = backup(blk, jobs=1, progress=progress)
    assert res.exit_code == 3, res.summary()
    errors = res.summary()["errors"]
    assert len(errors) == 2 and all("vanished" in str(e) for e in errors), errors
    assert (dst / "top").read_bytes() == b"stays"
    # The next run finds them gone and is clean.
    assert env.run("backup", "b", check=0)
    env.run("verify", "b", check=0)
