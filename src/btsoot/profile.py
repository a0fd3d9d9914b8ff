"""What a remote's file system can hold, found by small experiments and kept on it.

A USB disk with exFAT folds case, rejects `:` and names that are not UTF-8,
keeps whole seconds and has no symlinks; sshfs keeps whole seconds; an SMB
share drops trailing dots. btsoot writes by name into such a folder, so it
must know. The profile is probed once, inside `REMOTE/.btsoot/probe/` (a
few dozen small operations), stored in `REMOTE/.btsoot/profile.json`, and
probed again when the remote's identity changes (another file system type,
mount source, or file system id: a swapped disk, a remount elsewhere), which
each run checks without touching the remote, or when the stored profile lacks a
property this version knows (written by an older one). `btsoot doctor NAME` probes and
prints it.

The block's local state keeps a copy, tagged with the remote's id (block.json's
`remote_id`): while the id and the identity match, a run reads the copy and not
the remote's, two round trips fewer across a slow link on every run. The copy is
what the remote's said when it was read or probed; the remote's stays the one a
restore from the remote alone reads.

What follows from it: names are encoded (see names.py), case twins are stored
apart (one under an escaped name) instead of one overwriting the other, and a
remote file's mtime is compared at the granularity it keeps.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from . import mounts
from .names import Codec
from .ops import DAMAGED
from .remotefs import Remote
from .transfer import clone_fd

FORMAT = "btsoot-profile"
VERSION = 1
PROBE = b".btsoot/probe"
PROFILE = b".btsoot/profile.json"
# Characters some remote file systems (exFAT, FAT, NTFS in Windows mode, SMB) refuse.
CANDIDATES = b'"*:<>?\\|' + bytes(range(1, 32)) + b"\x7f"
_T = 1_600_000_001_123_456_789  # an mtime with every digit significant
# An access ACL with a named user (one the mode bits alone cannot say), in the
# kernel's xattr form: version 2, then (tag, permissions, id) per entry, sorted.
_ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in (
    (0x01, 6, 0xFFFFFFFF), (0x02, 4, 4242), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
    (0x20, 4, 0xFFFFFFFF)))


@dataclass(slots=True)
class Profile:
    identity: dict[str, Any] = field(default_factory=dict)
    probed_ns: int = 0
    case_insensitive: bool = False
    forbidden: str = ""  # characters refused in names
    utf8_only: bool = False  # names that are not UTF-8 refused
    no_trailing: str = ""  # characters a name may not end with (stripped or refused)
    name_max: int = 255
    mtime_granularity_ns: int = 1
    symlinks: bool = True
    hard_links: bool = True  # links can be made and link counts are reported
    modes: bool = True  # permission bits are kept
    owners: bool = False  # a file's owner and group can be set (root, a local disk)
    xattrs: bool = False  # extended attributes (user.*) are kept
    acls: bool = False  # POSIX ACLs (system.posix_acl_*) are kept
    sync_reaches_disk: bool = True  # syncfs makes writes durable at the far end
    clones: bool = False  # a file can be cloned (reflink: btrfs, xfs), sharing its blocks

    def codec(self) -> Codec:
        return Codec(frozenset(self.forbidden.encode("latin-1")), self.utf8_only,
                     frozenset(self.no_trailing.encode("latin-1")))

    def to_json(self) -> bytes:
        return orjson.dumps({"format": FORMAT, "version": VERSION, **asdict(self)},
                            option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Profile | None:
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            return None
        p = cls()
        for k, default in asdict(cls()).items():
            if k not in d:
                return None  # probed by an older btsoot: probed again, once
            v = d[k]
            if type(v) is not type(default):
                return None
            setattr(p, k, v)
        if not all(c in CANDIDATES.decode("latin-1") for c in p.forbidden) or (
                not set(p.no_trailing) <= {".", " "}) or p.mtime_granularity_ns < 1:
            return None
        return p


def load(remote: Remote) -> Profile | None:
    try:
        fd = remote.open_file(PROFILE)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return Profile.from_json(f.read(1 << 16))


def save(remote: Remote, p: Profile) -> None:
    remote.write_atomic(PROFILE, p.to_json())


class Copy(Protocol):
    """Where a block keeps its copy of the profile (state.BlockState)."""

    def load_profile(self) -> bytes | None: ...

    def save_profile(self, data: bytes) -> None: ...


def ensure(remote: Remote, copy: Copy | None = None, remote_id: str | None = None) -> Profile:
    """The remote's profile: the stored one while the remote is the same file
    system, else probed (and stored) again. copy: the block's copy of it, used
    while it names remote_id (the remote's block.json) and the same identity."""
    ident = mounts.identity(remote.root)
    if copy is not None and remote_id:
        data = copy.load_profile()
        p = Profile.from_json(data) if data else None
        if p is not None and p.identity == ident and _tag(data) == remote_id:
            return p
    p = _ensure(remote, ident)
    if copy is not None and remote_id:
        keep_copy(copy, remote_id, p)
    return p


def keep_copy(copy: Copy, remote_id: str, p: Profile) -> None:
    copy.save_profile(orjson.dumps({**orjson.loads(p.to_json()), "remote_id": remote_id},
                                   option=orjson.OPT_INDENT_2))


def _tag(data: bytes | None) -> object:
    d = orjson.loads(data) if data else None
    return d.get("remote_id") if isinstance(d, dict) else None


def _ensure(remote: Remote, ident: dict[str, Any]) -> Profile:
    p = load(remote)
    if p is not None and p.identity == ident:
        return p
    p = probe(remote)
    try:
        st = remote.lstat(PROFILE)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # Something else stands where the profile goes (a folder, a fifo): set
        # aside like anything in btsoot's way, never deleted.
        aside = DAMAGED + b"/profile.json-" + str(time.time_ns()).encode()
        remote.makedirs(DAMAGED)
        remote.rename(PROFILE, aside)
    save(remote, p)
    return p


def probe(remote: Remote) -> Profile:
    """Find out by experiment, in REMOTE/.btsoot/probe/, what the remote holds."""
    p = Profile(identity=mounts.identity(remote.root), probed_ns=time.time_ns())
    _clear(remote)
    remote.makedirs(PROBE)
    try:
        _probe(remote, p)
    finally:
        _clear(remote)
    return p


def _clear(remote: Remote) -> None:
    try:
        names = remote.listdir(PROBE)
    except OSError:
        return
    for n in names:
        rel = PROBE + b"/" + n
        try:
            if remote.isdir(rel):
                remote.rmdir(rel)
            else:
                remote.unlink(rel)
        except OSError:
            pass
    try:
        remote.rmdir(PROBE)
    except OSError:
        pass


def _make(remote: Remote, name: bytes) -> bool:
    """Create file PROBE/name; True if the remote lists it back byte for byte."""
    try:
        os.close(remote.open(PROBE + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except OSError:
        return False
    try:
        return name in remote.listdir(PROBE)
    finally:
        for n in remote.listdir(PROBE):
            remote.unlink(PROBE + b"/" + n)


def _probe(remote: Remote, p: Profile) -> None:
    # Characters: one name with all of them first; one by one only if it fails.
    if not _make(remote, b"x" + CANDIDATES + b"x"):
        p.forbidden = "".join(chr(c) for c in CANDIDATES
                              if not _make(remote, b"x" + bytes((c,)) + b"x"))
    p.utf8_only = not _make(remote, b"x\xff\xfex")
    p.no_trailing = "".join(c for c in ". " if not _make(remote, b"t" + c.encode()))
    try:
        p.name_max = os.statvfs(remote.root).f_namemax or 255
    except OSError:
        pass

    f = PROBE + b"/Ab"
    fd = remote.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.close(fd)
    p.case_insensitive = remote.lexists(PROBE + b"/aB")

    remote.utime(f, _T)
    got = remote.lstat(f).st_mtime_ns
    for g in (1, 100, 1_000, 1_000_000, 10_000_000, 1_000_000_000, 2_000_000_000):
        if abs(got - _T) < g:
            p.mtime_granularity_ns = g
            break
    else:
        p.mtime_granularity_ns = 2_000_000_000

    try:
        remote.chmod(f, 0o640)
        p.modes = stat.S_IMODE(remote.lstat(f).st_mode) == 0o640
        remote.chmod(f, 0o600)
        p.modes = p.modes and stat.S_IMODE(remote.lstat(f).st_mode) == 0o600
    except OSError:
        p.modes = False

    try:
        remote.symlink(b"target", PROBE + b"/l")
        p.symlinks = remote.readlink(PROBE + b"/l") == b"target"
    except OSError:
        p.symlinks = False

    try:
        with remote.at(f) as (dfd, name), remote.at(PROBE + b"/h") as (dfd2, name2):
            os.link(name, name2, src_dir_fd=dfd, dst_dir_fd=dfd2, follow_symlinks=False)
        p.hard_links = remote.lstat(f).st_nlink == 2
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        p.hard_links = False
    try:
        with remote.at(f) as (dfd, name):
            os.chown(name, 4242, 4243, dir_fd=dfd, follow_symlinks=False)
        st = remote.lstat(f)
        p.owners = (st.st_uid, st.st_gid) == (4242, 4243)
    except OSError:
        p.owners = False
    try:
        fd = remote.open(f, os.O_RDONLY)
        try:
            os.setxattr(fd, "user.btsoot-probe", b"1")
            p.xattrs = os.getxattr(fd, "user.btsoot-probe") == b"1"
        finally:
            os.close(fd)
    except OSError:
        p.xattrs = False
    try:
        fd = remote.open(f, os.O_RDONLY)
        try:
            os.setxattr(fd, "system.posix_acl_access", _ACL)
            p.acls = os.getxattr(fd, "system.posix_acl_access") == _ACL
        finally:
            os.close(fd)
    except OSError:
        p.acls = False
    try:
        src = remote.open(f, os.O_RDWR)
        try:
            os.write(src, b"c" * 4096)
            dst = remote.open(PROBE + b"/c", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                p.clones = clone_fd(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    except OSError:
        p.clones = False
    # A per-file fsync reaches an sshfs server; syncfs on the mount does not.
    p.sync_reaches_disk = not p.identity.get("type", "").startswith("fuse")


def describe(p: Profile) -> list[tuple[str, str]]:
    """The profile as (what, value) lines for a person."""
    ident = p.identity
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in p.forbidden)
    gran = p.mtime_granularity_ns
    return [
        ("file system", f"{ident.get('type') or '?'} ({ident.get('source') or '?'})"),
        ("case", "insensitive: names differing only in case are one file"
         if p.case_insensitive else "sensitive"),
        ("characters refused", shown or "none"),
        ("names not UTF-8", "refused" if p.utf8_only else "kept"),
        ("trailing dot or space", "refused" if p.no_trailing else "kept"),
        ("longest name", f"{p.name_max} bytes"),
        ("timestamps", "nanoseconds" if gran == 1 else f"{gran / 1e9:g} s" if gran >= 10**9
         else f"{gran} ns"),
        ("symlinks", "yes" if p.symlinks else "no"),
        ("hard links", "yes" if p.hard_links else "no"),
        ("permission bits", "kept" if p.modes else "not kept"),
        ("owners", "kept" if p.owners else "not kept"),
        ("extended attributes", "kept" if p.xattrs else "not kept"),
        ("ACLs", "kept" if p.acls else "not kept"),
        ("clones (reflink)", "yes: old versions of files updated in place cost no space"
         if p.clones else "no"),
        ("sync", "reaches the disk" if p.sync_reaches_disk else
         "may not reach the server's disk (a FUSE mount)"),
        ("names encoded", "yes (see docs/design.md)" if p.codec().active else "no"),
    ]
