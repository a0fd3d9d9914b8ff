"""The source guard and remounts: the same file system under another device number
passes; another file system, or the empty folder under a mount point, stops the run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from remotes import need

pytestmark = pytest.mark.root


def sh(*args: str | os.PathLike) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def ext4_image(path: Path, files: dict[str, bytes]) -> None:
    sh("truncate", "-s", "32M", path)
    sh("mkfs.ext4", "-q", "-F", path)
    mnt = path.with_suffix(".fill")
    mnt.mkdir()
    with mounted(path, mnt):
        for name, data in files.items():
            (mnt / name).write_bytes(data)
    mnt.rmdir()


@contextmanager
def mounted(image: Path, at: Path) -> Iterator[str]:
    """image on a loop device of its own, mounted at `at`; yields the device."""
    dev = sh("losetup", "-f", "--show", image)
    try:
        sh("mount", dev, at)
        try:
            yield dev
        finally:
            sh("umount", at)
    finally:
        sh("losetup", "-d", dev)


def test_a_remounted_source_passes_another_file_system_does_not(env, tmp_path: Path) -> None:
    need("mkfs.ext4", "losetup")
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    ext4_image(a, {"photo.jpg": b"p" * 5000, "notes.txt": b"n" * 300})
    ext4_image(b, {"photo.jpg": b"q" * 5000, "other.txt": b"o" * 10})
    src, dst, elsewhere = tmp_path / "src", tmp_path / "remote", tmp_path / "elsewhere"
    for d in (src, dst, elsewhere):
        d.mkdir()
    with mounted(a, src) as first:
        env.run("add", "b", src, dst, check=0)
        env.run("backup", "b", check=0)
        dev_before = os.stat(src).st_dev
    # Another disk takes the device the source had; the source comes back on another.
    with mounted(b, elsewhere) as taken:
        assert taken == first
        with mounted(a, src):
            assert os.stat(src).st_dev != dev_before
            r = env.run("backup", "b", check=0)
            assert "nothing" in r.stdout
        # Another file system at the source's path: stopped, nothing changed.
        (elsewhere / "x").write_bytes(b"x")
    with mounted(b, src):
        r = env.run("backup", "b", check=4)
        assert "different file system" in r.stderr
    assert (dst / "photo.jpg").read_bytes() == b"p" * 5000 and (dst / "notes.txt").exists()
    # The mount point alone (the disk not mounted): stopped as well.
    r = env.run("backup", "b", check=4)
    assert "different file system" in r.stderr or "empty" in r.stderr
    assert (dst / "notes.txt").exists()


def test_what_names_a_file_system_across_remounts() -> None:
    from btsoot.mounts import same_file_system

    ext4 = {"type": "ext4", "source": "/dev/sdb1", "uuid": "u1", "fsid": 7}
    assert same_file_system(ext4, dict(ext4, source="/dev/sdc1"))  # another port, same disk
    assert not same_file_system(ext4, dict(ext4, uuid="u2", fsid=8))  # another disk
    assert not same_file_system(ext4, dict(ext4, type="xfs"))
    # No UUID, no f_fsid (FUSE, many network mounts): where it comes from names it.
    share = {"type": "fuse.sshfs", "source": "nas:/volume1/photos", "uuid": "", "fsid": 0}
    assert same_file_system(share, dict(share))
    assert not same_file_system(share, dict(share, source="nas:/volume1/other"))
    # ... but not a device path, which another disk can take over.
    blk = {"type": "fuseblk", "source": "/dev/loop3", "uuid": "", "fsid": 0}
    assert same_file_system(blk, dict(blk)) is None
