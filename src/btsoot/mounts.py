"""Which file system holds a path, and what names it across remounts.

`st_dev` names a mounted file system only until it is unmounted: after a
reboot that mounts disks in another order, or a USB disk plugged into another
port, the same file system comes back under another device number. What
stays is its type and its UUID (or, where the kernel derives it from the
UUID, as ext4 and btrfs do, the `f_fsid` of statvfs). Read from
/proc/self/mountinfo, statvfs, /dev/disk/by-uuid and, as a last resort, blkid:
nothing here touches the file system's contents.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from typing import Any


def mount_of(path: str | bytes) -> tuple[str, str, str]:
    """(mount point, file system type, mount source) of the mount holding path,
    or ("", "", "") if it cannot be told."""
    return mount_info(path)[:3]


def mount_info(path: str | bytes) -> tuple[str, str, str, str]:
    """mount_of, and the file system's own options (mountinfo's super options)."""
    target = os.path.realpath(os.fsdecode(path))
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return "", "", "", ""
    best: tuple[str, str, str, str] = ("", "", "", "")
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split(" ")
        if len(parts) < 5 or not rest:
            continue
        mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4])
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            more = rest.split(" ")
            best = (mnt, more[0], more[1] if len(more) > 1 else "", more[2] if len(more) > 2 else "")
    return best


def inodes_stable(path: str | bytes) -> bool:
    """Does path's file system give a file the same inode number across mounts?

    FUSE file systems (sshfs, exfat-fuse, rclone) number inodes as they meet them
    unless the daemon passes its own (`use_ino`, which mountinfo does not show):
    after a remount every file has another number. SMB mounts with `noserverino`
    likewise. Local file systems and NFS keep theirs."""
    _, kind, _, options = mount_info(path)
    if _fuse(kind):
        return False
    return not (kind in ("cifs", "smb3") and "noserverino" in options.split(","))


def _fuse(kind: str) -> bool:
    return kind in ("fuse", "fuseblk") or kind.startswith("fuse.")


@functools.lru_cache(maxsize=16)
def _uuid(device: str) -> str:
    if not device.startswith("/dev/"):
        return ""
    try:
        real = os.path.realpath(device)
        for name in os.listdir("/dev/disk/by-uuid"):
            if os.path.realpath(os.path.join("/dev/disk/by-uuid", name)) == real:
                return name
    except OSError:
        pass
    try:
        # -p: read the device itself; blkid's cache can name what was there before.
        r = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", device],
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def identity(path: str | bytes) -> dict[str, Any]:
    """type, mount source, UUID (where it can be found) and f_fsid of path's file system."""
    _, kind, source = mount_of(path)
    fsid = 0
    # FUSE has no f_fsid (the kernel reports 0), and its statfs is a round trip to
    # the daemon: over sshfs, one across the link on every run for nothing.
    if not _fuse(kind):
        try:
            fsid = os.statvfs(path).f_fsid
        except OSError:
            pass
    return {"type": kind, "source": source, "uuid": _uuid(source), "fsid": fsid}


def same_file_system(before: dict[str, Any], now: dict[str, Any]) -> bool | None:
    """Is `now` the file system `before` describes? None when the identities cannot
    tell (no UUID, no f_fsid: then the device number has to decide)."""
    if before.get("type") != now.get("type"):
        return False
    if before.get("uuid") and now.get("uuid"):
        return bool(before["uuid"] == now["uuid"])
    if before.get("fsid") and now.get("fsid"):
        return bool(before["fsid"] == now["fsid"])
    src = before.get("source") or ""
    if src and not src.startswith("/dev/") and now.get("source"):
        # A network or FUSE file system (host:/path, //server/share): named by where
        # it comes from, which a remount keeps and another share does not.
        return bool(src == now["source"])
    return None
