"""Backing up from a snapshot of the source: a btrfs subvolume on a loop device,
snapshotted by btsoot itself (`snapshot = "btrfs"`) or by commands of the
user's (`snapshot = "command"`), night after night."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from conftest import Env, tree_state
from remotes import need

pytestmark = pytest.mark.root

HOUR_AGO = time.time_ns() - 3600 * 10**9
SNAP = ".btsoot-snapshot"


def sh(*args: str | os.PathLike) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=120).stdout


@pytest.fixture
def subvolume(tmp_path: Path) -> Iterator[Path]:
    """A btrfs subvolume `data` on a fresh loop-mounted btrfs, filled with a small tree."""
    need("mkfs.btrfs", "btrfs", "losetup")
    img, mnt = tmp_path / "btrfs.img", tmp_path / "btrfs"
    sh("truncate", "-s", "400M", img)
    sh("mkfs.btrfs", "-q", img)
    mnt.mkdir()
    dev = sh("losetup", "-f", "--show", img).strip()
    try:
        sh("mount", dev, mnt)
        try:
            sh("btrfs", "subvolume", "create", mnt / "data")
            data = mnt / "data"
            for d in ("docs", "photos"):
                (data / d).mkdir()
                for i in range(10):
                    p = data / d / f"f{i}"
                    p.write_bytes(os.urandom(30_000 + i))
                    os.utime(p, ns=(HOUR_AGO, HOUR_AGO))
            os.link(data / "docs/f0", data / "docs/f0-link")
            yield data
        finally:
            for sub in sorted(mnt.rglob(SNAP), reverse=True):
                subprocess.run(["btrfs", "subvolume", "delete", str(sub)], capture_output=True)
            sh("umount", mnt)
    finally:
        sh("losetup", "-d", dev)


def backup(env: Env, check: int = 0) -> dict:
    return json.loads(env.run("backup", "b", "--json", check=check).stdout)


def test_backups_from_btrfs_snapshots_night_after_night(env: Env, subvolume: Path,
                                                       tmp_path: Path) -> None:
    src, dst = subvolume, tmp_path / "remote"
    dst.mkdir()
    env.run("add", "b", src, dst, "--snapshot", "btrfs", check=0)
    s = backup(env)
    assert s["result"] == "ok" and not s["errors"], s
    assert not (src / SNAP).exists()  # released
    assert tree_state(dst) == tree_state(src)
    assert os.stat(dst / "docs/f0").st_ino == os.stat(dst / "docs/f0-link").st_ino

    # Each night's snapshot is another device: no guard trips, nothing is read,
    # and no line of the record changes (no new snapshot is written).
    committed = sorted((env.state / "blocks/b/snapshots").iterdir())
    for night in range(2):
        # (another subvolume takes the device number the last snapshot had, as
        # the machine's own would between two nights)
        sh("btrfs", "subvolume", "create", src.parent / f"other{night}")
        os.stat(src.parent / f"other{night}" / ".")
        s = backup(env)
        assert s["result"] == "nothing" and s["hashed_files"] == 0, s
        assert not (src / SNAP).exists()
    assert sorted((env.state / "blocks/b/snapshots").iterdir()) == committed

    # A day: an edit, a new file, a renamed folder.
    with open(src / "docs/f3", "r+b") as f:
        f.write(b"edited")
    (src / "docs/new").write_bytes(b"new")
    os.rename(src / "photos", src / "pictures")
    s = backup(env)
    assert s["result"] == "ok" and s["hashed_files"] == 2, s
    assert s["operations"].get("move-dir") == 1, s
    assert tree_state(dst) == tree_state(src)


def test_a_file_written_all_the_time_is_captured_as_of_the_snapshot(
        env: Env, subvolume: Path, tmp_path: Path) -> None:
    """A live source without a snapshot: a file written all through the run is
    never read whole ("kept changing"). From a snapshot it is backed up as it
    was at that moment."""
    src, dst = subvolume, tmp_path / "remote"
    dst.mkdir()
    log = src / "busy.log"
    log.write_bytes(b"")
    stop = threading.Event()

    def writer() -> None:
        with open(log, "ab") as f:
            while not stop.is_set():
                f.write(os.urandom(4096))
                f.flush()

    t = threading.Thread(target=writer)
    t.start()
    try:
        env.run("add", "b", src, dst, "--snapshot", "btrfs", check=0)
        s = backup(env)
    finally:
        stop.set()
        t.join()
    assert s["result"] == "ok" and not s["errors"], s
    snap = max((env.state / "blocks/b/snapshots").iterdir())
    rec = next(json.loads(line) for line in snap.read_bytes().splitlines()
               if line.startswith(b'{"path":"busy.log"'))
    copy = (dst / "busy.log").read_bytes()
    assert 0 < len(copy) == rec["size"] < log.stat().st_size  # as it was, not as it is
    assert xxhash.xxh3_128_hexdigest(copy) == rec["digest"]


def test_a_killed_runs_snapshot_is_released_by_the_next(env: Env, subvolume: Path,
                                                        tmp_path: Path) -> None:
    src, dst = subvolume, tmp_path / "remote"
    dst.mkdir()
    big = src / "big.img"
    with open(big, "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    env.run("add", "b", src, dst, "--snapshot", "btrfs", check=0)
    p = subprocess.Popen([sys.executable, "-m", "btsoot", "backup", "b"], env=env.vars(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (src / SNAP).exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (src / SNAP).exists()  # what a kill -9 leaves
    s = backup(env)
    assert s["result"] == "ok" and not s["errors"], s
    assert not (src / SNAP).exists()
    assert tree_state(dst) == tree_state(src)


def test_snapshot_commands(env: Env, subvolume: Path, tmp_path: Path) -> None:
    """Any snapshot tool, by commands (here btrfs' own, as a ZFS or LVM user would
    write theirs); the release runs before the next create as well."""
    src, dst = subvolume, tmp_path / "remote"
    dst.mkdir()
    snaps = src.parent / "snaps"
    snaps.mkdir()
    at = snaps / "nightly"
    calls = tmp_path / "calls"
    env.run("add", "b", src, dst, "--snapshot", "command", "--snapshot-path", at,
            "--snapshot-create",
            f'echo create >> {calls} && btrfs subvolume snapshot -r "$BTSOOT_SOURCE" '
            '"$BTSOOT_SNAPSHOT"',
            "--snapshot-release",
            f'echo release >> {calls} && btrfs subvolume delete "$BTSOOT_SNAPSHOT"', check=0)
    s = backup(env)
    assert s["result"] == "ok", s
    assert not at.exists() and tree_state(dst) == tree_state(src)
    # before the create, the release (failing: nothing there), and after the run
    assert calls.read_text().split() == ["release", "create", "release"]
    s = backup(env)
    assert s["result"] == "nothing" and s["hashed_files"] == 0, s


def test_a_snapshot_that_cannot_be_made_stops_the_run(env: Env, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "remote"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_bytes(b"x")
    env.run("add", "b", src, dst, "--snapshot", "btrfs", check=0)  # not a btrfs subvolume
    p = env.run("backup", "b", check=4)
    assert "snapshot" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert os.listdir(dst) == []
    env.run("add", "c", src, dst, "--snapshot", "command", check=2)  # no commands given
