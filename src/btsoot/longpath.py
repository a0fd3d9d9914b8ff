"""Paths longer than the kernel accepts (PATH_MAX, 4096 bytes).

A tree may hold paths longer than any single system call takes. Rather than
thread directory file descriptors through every operation, a long path is
shortened: its parent folder is opened component by component (O_PATH, never
following symlinks) and the path becomes `/proc/self/fd/N/NAME`, which the
kernel resolves through the open descriptor. Short paths pass through as they
are, at the cost of one length check.

Descriptors are cached per folder; `forget()` drops them after anything that
may rename or remove folders, since a descriptor follows its folder wherever
it moves.
"""

from __future__ import annotations

import os
import threading

LIMIT = 3072  # well under PATH_MAX, leaving room for the /proc prefix and a name


class ShortPaths:
    def __init__(self) -> None:
        self._fds: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def __call__(self, path: bytes) -> bytes:
        if len(path) < LIMIT:
            return path
        parent, _, name = path.rpartition(b"/")
        with self._lock:
            fd = self._dir(parent)
        return b"/proc/self/fd/%d/%s" % (fd, name)

    def _dir(self, path: bytes) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        if len(path) < LIMIT:
            fd = os.open(path, flags)
        else:
            parent, _, name = path.rpartition(b"/")
            fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=self._dir(parent))
        self._fds[path] = fd
        return fd

    def forget(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    close = forget
