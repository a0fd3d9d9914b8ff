"""The remote seam: every operation stays beneath the root and never follows a link."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from btsoot.remotefs import Remote


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def rig(tmp_path: Path) -> tuple[Path, Path]:
    """A remote with a folder `d`, and a victim folder outside it."""
    root, victim = tmp_path / "remote", tmp_path / "victim"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"remote")
    victim.mkdir()
    (victim / "f").write_bytes(b"victim")
    (victim / "sub").mkdir()
    return root, victim


def snapshot_of(p: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(p):
        for n in dirnames + filenames:
            q = Path(dirpath) / n
            st = q.lstat()
            data = q.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out[str(q.relative_to(p))] = (st.st_mode, st.st_mtime_ns, data)
    return out


def test_a_folder_swapped_for_a_link_stops_every_operation(rig: tuple[Path, Path]) -> None:
    root, victim = rig
    (root / "d" / "f").unlink()
    (root / "d").rmdir()
    (root / "d").symlink_to(victim)
    before = snapshot_of(victim)
    with Remote(root) as r:
        attempts = [
            lambda: r.unlink(b"d/f"),
            lambda: r.rmdir(b"d/sub"),
            lambda: r.mkdir(b"d/new"),
            lambda: r.rename(b"d/f", b"g"),
            lambda: r.rename(b"x", b"d/f"),
            lambda: r.open(b"d/f", os.O_WRONLY | os.O_TRUNC),
            lambda: r.open(b"d/new", os.O_WRONLY | os.O_CREAT),
            lambda: r.chmod(b"d/f", 0o777),
            lambda: r.utime(b"d/f", 1),
            lambda: r.symlink(b"/etc/passwd", b"d/l"),
            lambda: r.makedirs(b"d/a/b"),
            lambda: r.lstat(b"d/f"),
        ]
        (root / "x").write_bytes(b"x")
        for i, attempt in enumerate(attempts):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.ENOTDIR, (i, e.value)
        assert not r.lexists(b"d/f") and not r.isdir(b"d") and r.lexists(b"d")
        # The link itself is an entry of the remote: it can be renamed away, which
        # moves the link and never its target.
        r.rename(b"d", b"aside")
    assert (root / "aside").is_symlink()
    assert snapshot_of(victim) == before


def test_links_at_the_last_name_are_not_followed(rig: tuple[Path, Path]) -> None:
    root, victim = rig
    (root / "l").symlink_to(victim / "f")
    before = snapshot_of(victim)
    with Remote(root) as r:
        for attempt in (lambda: r.chmod(b"l", 0o777),
                        lambda: r.open(b"l", os.O_WRONLY | os.O_TRUNC),
                        lambda: r.open_file(b"l")):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.ELOOP
        r.utime(b"l", 5)  # the link's own time
        r.unlink(b"l")  # the link, not its target
    assert snapshot_of(victim) == before and not (root / "l").exists()


@pytest.mark.parametrize("bad", [b"..", b"../x", b"d/../../x", b"./d", b"d//f", b"/etc", b"d/."])
def test_paths_that_could_climb_out_are_refused(rig: tuple[Path, Path], bad: bytes) -> None:
    root, _ = rig
    with Remote(root) as r, pytest.raises(OSError) as e:
        r.lstat(bad)
    assert e.value.errno == errno.EINVAL


def test_a_fifo_on_the_remote_cannot_hang_a_read(rig: tuple[Path, Path]) -> None:
    root, _ = rig
    os.mkfifo(root / "d" / "pipe")
    with Remote(root) as r, pytest.raises(OSError) as e:
        r.open_file(b"d/pipe")
    assert e.value.errno == errno.EINVAL


def test_a_renamed_folders_old_path_is_resolved_again(rig: tuple[Path, Path]) -> None:
    root, _ = rig
    with Remote(root) as r:
        assert r.lstat(b"d/f").st_size == 6  # caches d's descriptor
        r.rename(b"d", b"e")
        r.mkdir(b"d")
        os.close(r.open(b"d/new", os.O_WRONLY | os.O_CREAT))
    assert (root / "d" / "new").exists() and not (root / "e" / "new").exists()
    # A folder removed and made again is a new folder, too.
    with Remote(root) as r:
        assert r.lexists(b"d/new")
        r.unlink(b"d/new")
        r.rmdir(b"d")
        r.mkdir(b"d")
        os.close(r.open(b"d/again", os.O_WRONLY | os.O_CREAT))
    assert (root / "d" / "again").exists()


def test_descriptors_stay_bounded_and_are_all_closed(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    before = open_fds()
    with Remote(root, limit=8) as r:
        for i in range(200):
            r.makedirs(b"a/%d/b" % i)
            os.close(r.open(b"a/%d/b/f" % i, os.O_WRONLY | os.O_CREAT))
            assert open_fds() - before <= 8 + 3
    assert open_fds() == before
    assert len(list(root.glob("a/*/b/f"))) == 200


def test_descriptors_in_use_are_never_closed_under_another_thread(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    errors: list[BaseException] = []
    with Remote(root, limit=2) as r:
        for i in range(16):
            r.makedirs(b"t%d" % i)

        def work(t: int) -> None:
            try:
                for k in range(300):
                    name = b"t%d/f%d" % (t, k)
                    with r.at(name) as (fd, leaf):
                        # Another thread's eviction must not close fd while it is used.
                        os.close(os.open(leaf, os.O_WRONLY | os.O_CREAT, dir_fd=fd))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for t in range(16):
        assert len(os.listdir(root / f"t{t}")) == 300


def test_paths_longer_than_path_max(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    deep = b"/".join([b"n" * 200] * 30)  # about 6 KB
    with Remote(root) as r:
        r.makedirs(deep)
        fd = r.open(deep + b"/f", os.O_WRONLY | os.O_CREAT)
        os.write(fd, b"deep")
        os.close(fd)
        assert r.lstat(deep + b"/f").st_size == 4
        r.chmod(deep + b"/f", 0o640)
        r.rename(deep + b"/f", b"top")
    assert (root / "top").read_bytes() == b"deep"
    assert stat.S_IMODE((root / "top").stat().st_mode) == 0o640
