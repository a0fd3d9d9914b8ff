"""Small files written whole: a crash or a power cut leaves the old one or the new one.

The sequence is the same everywhere: write a temp file beside the target, fsync
it, rename it over the target, fsync the folder (the rename is an entry of the
folder, and without that sync a power cut may undo it). Local files here;
the remote's go through remotefs.Remote.write_atomic, which does the same
beneath the remote's root.
"""

from __future__ import annotations

import os


def fsync_dir(path: str | bytes) -> None:
    """fsync a folder: the names made, renamed or removed in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, tmp: str | None = None, mode: int = 0o600) -> None:
    """Replace path by data, durably. tmp: the temp name (default path + ".tmp"; a
    file that two processes may write at once gives each its own)."""
    tmp = tmp or path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
