"""Backing up from a snapshot of the source's file system.

A live NAS changes while it is read: a VM image or a database written all the
time never holds still long enough to be copied, and a tree read over an hour
mixes states. A read-only snapshot taken just before the scan fixes all of it:
the run reads the snapshot, and releases it afterwards.

- `snapshot = "btrfs"`: the source must be a btrfs subvolume; the snapshot is
  made read-only inside it, at SOURCE/.btsoot-snapshot (a nested subvolume:
  never part of a snapshot of the source, and left out of the scan).
- `snapshot = "command"`: `snapshot_create` makes a snapshot at
  `snapshot_path` (ZFS, LVM, anything), `snapshot_release` drops it. Both run
  through the shell with BTSOOT_SOURCE and BTSOOT_SNAPSHOT set.

A run that was killed leaves its snapshot behind: every run releases what is
there before it makes a new one (for commands: runs the release first, and
does not mind it failing).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from .config import Block
from .errors import GuardError

SNAP_NAME = ".btsoot-snapshot"
TIMEOUT = 600  # seconds a snapshot command may take


@contextmanager
def frozen(block: Block, notes: list[str]) -> Iterator[str]:
    """The folder to read the source from for one run: the source itself, or a
    snapshot of it made now and released when the run ends (a release that fails
    is a note: the next run releases it before its own)."""
    if not block.snapshot:
        yield block.source
        return
    if block.snapshot == "btrfs":
        path = os.path.join(block.source, SNAP_NAME)
        _btrfs_release(path)
        _run(["btrfs", "subvolume", "snapshot", "-r", block.source, path], "make", block)
        release = lambda: _btrfs_release(path)  # noqa: E731
    else:
        path = block.snapshot_path
        env = dict(os.environ, BTSOOT_SOURCE=block.source, BTSOOT_SNAPSHOT=path)
        _shell(block.snapshot_release, env, block, must=False)
        _shell(block.snapshot_create, env, block, must=True)
        release = lambda: _shell(block.snapshot_release, env, block, must=True)  # noqa: E731
    try:
        if not os.path.isdir(path):
            raise GuardError(f"snapshot of {block.source}: {path} is not a folder after it was made")
        yield path
    finally:
        try:
            release()
        except GuardError as e:
            notes.append(e.message)


def _btrfs_release(path: str) -> None:
    if os.path.lexists(path):
        try:
            subprocess.run(["btrfs", "subvolume", "delete", path], check=True,
                           capture_output=True, timeout=TIMEOUT)
        except (OSError, subprocess.SubprocessError) as e:
            raise GuardError(f"cannot release the snapshot {path}: {_why(e)}") from None


def _run(argv: list[str], what: str, block: Block) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        raise GuardError(f"cannot {what} a snapshot of {block.source} ({block.snapshot}): "
                         f"{_why(e)}") from None


def _shell(cmd: str, env: dict[str, str], block: Block, must: bool) -> None:
    if not cmd:
        return
    try:
        subprocess.run(cmd, shell=True, check=True, capture_output=True, env=env,
                       timeout=TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        if must:
            raise GuardError(f"snapshot command for {block.source} failed: {cmd!r}: "
                             f"{_why(e)}") from None


def _why(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        out = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        return out[-1] if out else f"exit status {e.returncode}"
    if isinstance(e, subprocess.TimeoutExpired):
        return f"no answer in {TIMEOUT} s"
    return str(e)
