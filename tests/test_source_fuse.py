"""A source on a FUSE mount (sshfs, exfat-fuse), unmounted and mounted again
between runs, as after a reboot: such file systems hand out new inode numbers
on every mount, which must not make btsoot read the whole tree again through
the mount. What it reads is measured where the reads happen: at the sftp
server (the bytes its processes read), and by the files the scan hashed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import Env, tree_state
from remotes import exfat_image, sftp_server_read, sshfs_server

pytestmark = pytest.mark.root

MiB = 1 << 20
HOUR_AGO = time.time_ns() - 3600 * 10**9  # no file racy: only what changed is read


def fill(root: Path) -> int:
    """40 files of 256 KiB in two folders, an hour old; their bytes. Each name is in
    both folders, with the same size: only the times tell them apart (whole
    seconds, as sshfs and exFAT keep them)."""
    n = 0
    for k, d in enumerate(("albums/2019", "albums/2020")):
        (root / d).mkdir(parents=True)
        for i in range(20):
            p = root / d / f"photo{i:02d}.jpg"
            p.write_bytes(os.urandom(256 * 1024))
            t = HOUR_AGO + (k * 100 + i) * 10**9
            os.utime(p, ns=(t, t))
            n += 256 * 1024
    (root / "notes.txt").write_bytes(b"notes\n")
    os.utime(root / "notes.txt", ns=(HOUR_AGO, HOUR_AGO))
    return n


def backup(env: Env) -> dict:
    return json.loads(env.run("backup", "b", "--json", check=0).stdout)


def test_a_remounted_sshfs_source_is_not_read_again(env: Env, tmp_path: Path) -> None:
    served, mnt, dst = tmp_path / "served", tmp_path / "src", tmp_path / "remote"
    served.mkdir()
    dst.mkdir()
    size = fill(served)
    with sshfs_server(tmp_path) as mount_at:
        with mount_at(served, mnt):
            env.run("add", "b", mnt, dst, check=0)
            s = backup(env)
            assert s["result"] == "ok" and s["files"] == 41, s
            first = sftp_server_read(tmp_path)
            said = env.run("doctor", "b", check=0).stdout
            assert "fuse.sshfs" in said and "change with each mount" in said, said
            assert first >= size  # the first backup read everything, once

        with mount_at(served, mnt):  # a reboot: every inode number is new
            before = sftp_server_read(tmp_path)
            s = backup(env)
            read = sftp_server_read(tmp_path) - before
            assert s["result"] == "nothing" and s["hashed_files"] == 0, s
            assert read < MiB, read

        # A day, on the server: one photo edited, a folder renamed.
        p = served / "albums/2020/photo03.jpg"
        with open(p, "r+b") as f:
            f.write(b"edited")
        os.rename(served / "albums/2019", served / "albums/2019-rome")
        with mount_at(served, mnt):
            before = sftp_server_read(tmp_path)
            s = backup(env)
            read = sftp_server_read(tmp_path) - before
            assert s["result"] == "ok" and s["hashed_files"] == 1, s
            assert s["operations"].get("move-dir") == 1 and s["bytes_sent"] == 256 * 1024, (
                s["operations"], s["bytes_sent"])
            assert read < 256 * 1024 * 2 + MiB, read  # the edited file, hashed and sent
            assert tree_state(dst) == tree_state(mnt)


def test_files_a_name_size_and_mtime_do_not_tell_apart_are_read(env: Env, tmp_path: Path) -> None:
    """Two files with one name, size and mtime in two folders, one folder renamed:
    which old file a new path is cannot be told without an inode, so it is read
    (never given the other's digest)."""
    served, mnt, dst = tmp_path / "served", tmp_path / "src", tmp_path / "remote"
    dst.mkdir()
    for d in ("a", "b"):
        (served / d).mkdir(parents=True)
        p = served / d / "same.bin"
        p.write_bytes(os.urandom(100_000))
        os.utime(p, ns=(HOUR_AGO, HOUR_AGO))
    with sshfs_server(tmp_path) as mount_at:
        with mount_at(served, mnt):
            env.run("add", "b", mnt, dst, check=0)
            backup(env)
        os.rename(served / "a", served / "a2")
        with mount_at(served, mnt):
            s = backup(env)
            assert s["hashed_files"] == 1, s  # a2/same.bin
            assert tree_state(dst) == tree_state(mnt)


def test_a_remounted_exfat_source_is_not_read_again(env: Env, tmp_path: Path) -> None:
    mnt, dst = tmp_path / "src", tmp_path / "remote"
    dst.mkdir()
    with exfat_image(tmp_path) as mount_at:
        with mount_at(mnt):
            fill(mnt)
            env.run("add", "b", mnt, dst, check=0)
            s = backup(env)
            assert s["result"] == "ok" and s["files"] == 41, s
        with mount_at(mnt):
            s = backup(env)
            assert s["result"] == "nothing" and s["hashed_files"] == 0, s
            with open(mnt / "albums/2020/photo03.jpg", "r+b") as f:
                f.write(b"edited")
            os.rename(mnt / "albums/2019", mnt / "albums/2019-rome")
        with mount_at(mnt):
            s = backup(env)
            assert s["result"] == "ok" and s["hashed_files"] == 1, s
            assert s["operations"].get("move-dir") == 1, s
            assert tree_state(dst) == tree_state(mnt)


def test_a_same_size_rewrite_in_the_same_second_is_caught(env: Env, tmp_path: Path) -> None:
    """sshfs keeps whole seconds: a file rewritten with its size kept in the second
    the last backup recorded looks unchanged by size and mtime. The racy rule
    re-reads it. (The second write is given that second's time explicitly: the
    test cannot make a backup start and end within one real second.)"""
    served, mnt, dst = tmp_path / "served", tmp_path / "src", tmp_path / "remote"
    served.mkdir()
    dst.mkdir()
    with sshfs_server(tmp_path) as mount_at, mount_at(served, mnt):
        (mnt / "f").write_bytes(b"a" * 100)
        # A whole second the first backup starts before or within (a few seconds
        # ahead: a loaded machine may take that long to start it).
        tick = (time.time_ns() // 10**9 + 10) * 10**9
        os.utime(mnt / "f", ns=(tick, tick))
        env.run("add", "b", mnt, dst, check=0)
        backup(env)
        (mnt / "f").write_bytes(b"b" * 100)
        os.utime(mnt / "f", ns=(tick, tick))  # the same second, as sshfs shows it
        s = backup(env)
        assert s["hashed_files"] == 1 and s["bytes_sent"] == 100, s
        assert (dst / "f").read_bytes() == b"b" * 100


def test_a_same_size_rewrite_in_the_same_tick_is_caught_on_exfat(env: Env, tmp_path: Path) -> None:
    """The same on exFAT, whose times exfat-fuse keeps to the second or coarser."""
    mnt, dst = tmp_path / "src", tmp_path / "remote"
    dst.mkdir()
    with exfat_image(tmp_path) as mount_at, mount_at(mnt):
        (mnt / "f").write_bytes(b"a" * 100)
        tick = (time.time_ns() // (2 * 10**9) + 5) * (2 * 10**9)  # a 2 s tick (FAT's), ahead
        os.utime(mnt / "f", ns=(tick, tick))
        env.run("add", "b", mnt, dst, check=0)
        backup(env)
        (mnt / "f").write_bytes(b"b" * 100)
        os.utime(mnt / "f", ns=(tick, tick))
        s = backup(env)
        assert s["hashed_files"] == 1 and s["bytes_sent"] == 100, s
        assert (dst / "f").read_bytes() == b"b" * 100
