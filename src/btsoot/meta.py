"""Metadata beyond mode and mtime: owners, extended attributes (POSIX ACLs are
the `system.posix_acl_*` ones) and the names of owner ids.

The scan records them in the snapshot whatever the remote can hold; the
backup applies what the remote's profile says it keeps; a restore applies
them from the snapshot. Where they cannot be set (not root, a file system
without xattrs), nothing fails file by file: the misses are counted and
reported once (`Misses`).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .snapshot import SYMLINK, Entry, Names

Xattrs = tuple[tuple[bytes, bytes], ...]

ACL_PREFIX = b"system.posix_acl_"
_GONE = {errno.ENOENT, errno.ENOTDIR}


@dataclass(slots=True, frozen=True)
class Keep:
    """What metadata a block records and applies (its per-block switches)."""

    owners: bool = True
    xattrs: bool = True
    acls: bool = True
    hard_links: bool = True

    def wanted(self, name: bytes) -> bool:
        return self.xattrs and (self.acls or not name.startswith(ACL_PREFIX))


KEEP_ALL = Keep()


def read_xattrs(path: bytes, keep: Keep) -> Xattrs | None:
    """The extended attributes of path (not followed if a link), sorted by name:
    () where the file system keeps none; None if path is gone."""
    if not keep.xattrs:
        return ()
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in _GONE:
            return None
        return ()  # none kept here, or not readable: recorded as none
    out = []
    for n in names:
        name = os.fsencode(n)
        if not keep.wanted(name):
            continue
        try:
            out.append((name, os.getxattr(path, n, follow_symlinks=False)))
        except OSError as e:
            if e.errno in _GONE:
                return None
            # (ENODATA: removed between the two calls)
    out.sort()
    return tuple(out)


def fd_xattrs(fd: int) -> Xattrs:
    """The extended attributes of an open file or folder, sorted."""
    try:
        names = os.listxattr(fd)
    except OSError:
        return ()
    out = []
    for n in names:
        try:
            out.append((os.fsencode(n), os.getxattr(fd, n)))
        except OSError:
            pass
    out.sort()
    return tuple(out)


# --- names ---------------------------------------------------------------------

_lock = threading.Lock()
_known: dict[tuple[str, object], object] = {}  # (what, key) -> answer (None: none)


def _cached(what: str, key: object, look: Callable[[Any], Any]) -> Any:
    """look(key), asked once per process (the user database may be slow: LDAP)."""
    with _lock:
        if (what, key) not in _known:
            try:
                _known[(what, key)] = look(key)
            except (KeyError, OverflowError):
                _known[(what, key)] = None
        return _known[(what, key)]


def user_name(uid: int) -> str | None:
    return _cached("user", uid, lambda u: pwd.getpwuid(u).pw_name)


def group_name(gid: int) -> str | None:
    return _cached("group", gid, lambda g: grp.getgrgid(g).gr_name)


def names_of(uids: set[int], gids: set[int]) -> Names:
    """The names this machine gives these ids (ids without a name left out)."""
    users = {u: n for u in uids if (n := user_name(u)) is not None}
    groups = {g: n for g in gids if (n := group_name(g)) is not None}
    return users, groups


def _local_uid(name: str) -> int | None:
    return _cached("uid", name, lambda n: pwd.getpwnam(n).pw_uid)


def _local_gid(name: str) -> int | None:
    return _cached("gid", name, lambda n: grp.getgrnam(n).gr_gid)


def same_ids(uid: int, gid: int) -> tuple[int, int]:
    return uid, gid


def id_mapper(names: Names, numeric: bool) -> Callable[[int, int], tuple[int, int]]:
    """(uid, gid) recorded -> (uid, gid) to give here: by the recorded name where
    this machine knows it (as rsync does), else the number; numeric: the numbers."""
    if numeric:
        return same_ids
    users, groups = names

    def mapped(u: int, g: int) -> tuple[int, int]:
        un, gn = users.get(u), groups.get(g)
        lu = _local_uid(un) if un is not None else None
        lg = _local_gid(gn) if gn is not None else None
        return (u if lu is None else lu), (g if lg is None else lg)

    return mapped


# --- applying --------------------------------------------------------------------


@dataclass(slots=True)
class Misses:
    """Metadata that could not be applied, counted by kind, with one example each."""

    counts: dict[str, int] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, e: OSError) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1
            self.why.setdefault(what, e.strerror or str(e))

    def lines(self) -> list[str]:
        return [f"{n} {what} not applied ({self.why[what]})"
                for what, n in sorted(self.counts.items())]

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclass(slots=True, frozen=True)
class Apply:
    """What to give a file beyond mode and mtime, and how owner ids map."""

    owners: bool
    xattrs: bool
    acls: bool
    ids: Callable[[int, int], tuple[int, int]] = same_ids

    def want_owner(self, e: Entry) -> tuple[int, int] | None:
        if not self.owners or e.uid is None or e.gid is None:
            return None
        return self.ids(e.uid, e.gid)

    def want_xattrs(self, e: Entry) -> Xattrs | None:
        """e's recorded xattrs to give (None: leave what is there alone)."""
        if not self.xattrs or e.xattrs is None:
            return None
        if self.acls:
            return e.xattrs
        return tuple(x for x in e.xattrs if not x[0].startswith(ACL_PREFIX))

    def keeps(self, name: bytes) -> bool:
        return self.xattrs and (self.acls or not name.startswith(ACL_PREFIX))


NOTHING = Apply(False, False, False)


def differs(fd: int, st: os.stat_result, e: Entry, how: Apply) -> bool:
    """Does the open file's owner or xattrs differ from what how gives it?"""
    owner = how.want_owner(e)
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        return True
    want = how.want_xattrs(e)
    if want is None:
        return False
    have = tuple(x for x in fd_xattrs(fd) if how.keeps(x[0]))
    return have != want


def apply_fd(fd: int, st: os.stat_result, e: Entry, how: Apply, misses: Misses) -> None:
    """Give an open file or folder e's owner and xattrs (before its mode: a chown
    clears set-id bits, and an ACL sets the group bits). Failures are counted."""
    owner = how.want_owner(e)
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        try:
            os.fchown(fd, *owner)
            if e.mode & 0o6000:  # cleared by the chown
                os.fchmod(fd, e.mode & 0o7777)
        except OSError as err:
            misses.add("owners", err)
    want = how.want_xattrs(e)
    if want is None:
        return
    have = dict(x for x in fd_xattrs(fd) if how.keeps(x[0]))
    wanted = dict(want)
    for name in have:
        if name not in wanted:
            try:
                os.removexattr(fd, name)
            except OSError as err:
                misses.add(_kind(name), err)
    for name, value in want:
        if have.get(name) != value:
            try:
                os.setxattr(fd, name, value)
            except OSError as err:
                misses.add(_kind(name), err)


def apply_link_owner(dir_fd: int, name: bytes, e: Entry, how: Apply, misses: Misses) -> None:
    """A symlink's owner (links keep no user xattrs; their mode means nothing)."""
    owner = how.want_owner(e)
    if owner is None or e.kind != SYMLINK:
        return
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_uid, st.st_gid) != owner:
            os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as err:
        misses.add("owners", err)


def _kind(name: bytes) -> str:
    return "ACLs" if name.startswith(ACL_PREFIX) else "extended attributes"
