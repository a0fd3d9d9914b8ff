"""A file system that forgets what was not synced: the power-cut layer of the crash tests.

    python powercut.py BACKING MOUNTPOINT RECORDS

mounts BACKING at MOUNTPOINT through FUSE (in the foreground, one request at a
time). Every call passes through to BACKING, so programs see an ordinary file
system. Beside that, RECORDS keeps what a disk would still hold after a power
cut under the strict POSIX promise: a file's bytes only as of its last fsync,
a folder's names only as of its last fsync of that folder. Nothing else counts:
not close, not rename, not the order of calls (ext4 often keeps more; a backup
tool must not count on it).

After the program under test is killed and the layer unmounted, `rebuild`
makes the tree the disk would show when the power comes back:

    RECORDS/root        the inode number of BACKING's top folder
    RECORDS/dirs/INO    a folder's names as of its last fsync: {hex name: [ino, kind, mode, target]}
    RECORDS/files/INO   a file's bytes as of its last fsync

All of BACKING counts as synced when the layer is mounted. A file created after
that and never synced comes back empty, if its name survived at all.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import orjson


class Records:
    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "dirs"), exist_ok=True)
        os.makedirs(os.path.join(root, "files"), exist_ok=True)

    def _put(self, rel: str, data: bytes) -> None:
        p = os.path.join(self.root, rel)
        with open(p + ".new", "wb") as f:
            f.write(data)
        os.replace(p + ".new", p)

    def folder(self, path: bytes) -> None:
        """Record a folder's names, as they are now."""
        names: dict[str, list[Any]] = {}
        for n in os.listdir(path):
            st = os.lstat(path + b"/" + n)
            if stat.S_ISDIR(st.st_mode):
                kind, target = "d", ""
            elif stat.S_ISLNK(st.st_mode):
                kind, target = "l", os.readlink(path + b"/" + n).hex()
            else:
                kind, target = "f", ""
            names[n.hex()] = [st.st_ino, kind, stat.S_IMODE(st.st_mode), target]
        self._put(f"dirs/{os.lstat(path).st_ino}", orjson.dumps(names))

    def content(self, fd: int) -> None:
        """Record a file's bytes, as they are now (fd may be open for writing only)."""
        st = os.fstat(fd)
        rd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            chunks, off = [], 0
            while chunk := os.pread(rd, 1 << 20, off):
                chunks.append(chunk)
                off += len(chunk)
        finally:
            os.close(rd)
        self._put(f"files/{st.st_ino}", b"".join(chunks))

    def forget(self, ino: int) -> None:
        """A new file: whatever was recorded under a reused inode number is not its."""
        try:
            os.unlink(os.path.join(self.root, "files", str(ino)))
        except FileNotFoundError:
            pass

    def everything(self, top: bytes) -> None:
        self._put("root", str(os.lstat(top).st_ino).encode())
        for d, _dirs, files in os.walk(top):
            self.folder(d)
            for n in files:
                p = d + b"/" + n
                if os.path.isfile(p) and not os.path.islink(p):
                    fd = os.open(p, os.O_RDONLY)
                    try:
                        self.content(fd)
                    finally:
                        os.close(fd)


def rebuild(records: str, out: str) -> None:
    """Make at OUT the tree the disk holds after the cut (OUT must not exist)."""
    with open(os.path.join(records, "root"), "rb") as f:
        root = int(f.read())

    def folder(ino: int, to: bytes, mode: int) -> None:
        os.mkdir(to)
        try:
            with open(os.path.join(records, "dirs", str(ino)), "rb") as f:
                names = orjson.loads(f.read())
        except FileNotFoundError:
            names = {}  # made and never synced: its names are not on the disk
        for hexname, (child, kind, cmode, target) in names.items():
            p = to + b"/" + bytes.fromhex(hexname)
            if kind == "d":
                folder(child, p, cmode)
            elif kind == "l":
                os.symlink(bytes.fromhex(target), p)
            else:
                try:
                    with open(os.path.join(records, "files", str(child)), "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    data = b""
                with open(p, "wb") as f:
                    f.write(data)
                os.chmod(p, cmode)
        os.chmod(to, mode)

    folder(root, os.fsencode(out), 0o700)


def serve(backing: str, mountpoint: str, records_dir: str) -> None:
    import mfusepy as fuse

    top = os.fsencode(os.path.abspath(backing))
    records = Records(records_dir)
    records.everything(top)

    def full(path: str) -> bytes:
        return top + os.fsencode(path).rstrip(b"/") if path != "/" else top

    def call(fn: Any, *a: Any) -> Any:
        try:
            return fn(*a)
        except OSError as e:
            raise fuse.FuseOSError(e.errno or errno.EIO) from None

    class Layer(fuse.Operations):
        use_ns = True

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = call(os.lstat, full(path))
            return {k: getattr(st, k) for k in (
                "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns")} | {
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", ".."] + [os.fsdecode(n) for n in call(os.listdir, full(path))]

        def readlink(self, path: str) -> str:
            return os.fsdecode(call(os.readlink, full(path)))

        def access(self, path: str, amode: int) -> int:
            if not os.access(full(path), amode, follow_symlinks=False):
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            call(os.mkdir, full(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            call(os.rmdir, full(path))
            return 0

        def unlink(self, path: str) -> int:
            call(os.unlink, full(path))
            return 0

        def symlink(self, target: str, source: str) -> int:
            call(os.symlink, os.fsencode(source), full(target))
            return 0

        def link(self, target: str, source: str) -> int:
            call(os.link, full(source), full(target))
            return 0

        def rename(self, old: str, new: str) -> int:
            call(os.rename, full(old), full(new))
            return 0

        def chmod(self, path: str, mode: int) -> int:
            call(os.chmod, full(path), mode, follow_symlinks=False)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            call(os.chown, full(path), uid, gid, follow_symlinks=False)
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            call(os.truncate, fh if fh is not None else full(path), length)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if times is None:
                call(os.utime, full(path), None, follow_symlinks=False)
            else:
                call(os.utime, full(path), None, ns=times, follow_symlinks=False)
            return 0

        def open(self, path: str, flags: int) -> int:
            return int(call(os.open, full(path), flags & ~(os.O_CREAT | os.O_EXCL)))

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            fd = int(call(os.open, full(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode))
            records.forget(os.fstat(fd).st_ino)
            return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return bytes(call(os.pread, fh, size, offset))

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return int(call(os.pwrite, fh, data, offset))

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            records.content(fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            records.folder(full(path))
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(full(path))
            return {k: getattr(sv, k) for k in (
                "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                "f_ffree", "f_favail", "f_flag", "f_namemax")}

    fuse.FUSE(Layer(), mountpoint, foreground=True, nothreads=True, fsname="powercut",
              raw_fi=False)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3])
