"""Real remote file systems for the tests, mounted and always unmounted again.

Each function takes a scratch folder on the local disk (for images, keys, the
mount point) and returns a context manager that yields a fresh empty folder
`remote` inside the mounted file system:

    with remotes.mount("exfat", tmp_path) as remote: ...

Kinds: tmpfs; ext4 and xfs (loop-mounted images); exfat (exfat-fuse on a loop
device: it needs a block device); ntfs (ntfs-3g on an image file); sshfs (a
throwaway sshd on 127.0.0.1 serving a local folder, mounted with sshfs).

Everything is undone on the way out, even after a failure: FUSE daemons and
sshd are waited for (and killed if they linger), loop devices detached, images
deleted. A missing tool, or not being root, skips the test. Every command runs
with a timeout, so a stuck mount fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

KINDS = ("tmpfs", "ext4", "xfs", "exfat", "ntfs", "sshfs")
FUSE_KINDS = ("exfat", "ntfs", "sshfs")
TIMEOUT = 60.0  # any one command (mkfs of a 320 MiB image takes about a second)
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def need(*tools: str) -> dict[str, str]:
    """The tools' full paths; skip the test if not root or one is missing."""
    if os.geteuid() != 0:
        pytest.skip("mounting file systems needs root")
    path = os.environ.get("PATH", "") + ":" + _SBIN
    found = {}
    for t in tools:
        p = shutil.which(t, path=path)
        if p is None:
            pytest.skip(f"{t} is not installed (see scripts/test.sh for the Debian packages)")
        found[t] = p
    return found


def _run(cmd: list[str | os.PathLike], timeout: float = TIMEOUT) -> str:
    """Run cmd; its stdout, or RuntimeError with its output when it fails."""
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: no answer in {timeout} s") from e
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p.stdout


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _mountpoint(work: Path, kind: str) -> Path:
    mnt = work / f"mnt-{kind}"
    mnt.mkdir(parents=True)  # new and empty: exfat-fuse refuses a non-empty mount point
    return mnt


def _pids_with_arg(arg: str) -> list[int]:
    """Processes whose command line has arg as one argument (a daemonized FUSE server)."""
    out = []
    want = os.fsencode(arg)
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if want in args:
                out.append(int(d))
    return out


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    ppid = int(f.read().rpartition(b")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(d))
    return out


@contextlib.contextmanager
def traced_server(work: Path, calls: str, log: Path) -> Iterator[None]:
    """strace -e trace=CALLS of the SFTP sessions of `sshfs(work)`'s sshd into log,
    attached before the body runs and detached after it (the server's own system
    calls: what reached it across the link)."""
    need("strace")
    pids = sftp_server_pids(work)
    assert pids, "no sftp session found"
    tracer = subprocess.Popen(["strace", "-f", "-e", f"trace={calls}", "-o", str(log)]
                              + [a for pid in pids for a in ("-p", str(pid))],
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached
        yield
        time.sleep(0.3)  # the last requests (a close) reach the server
    finally:
        tracer.terminate()
        tracer.wait(10)


def sftp_server_pids(work: Path) -> list[int]:
    """The processes serving the SFTP sessions of the sshd that `sshfs(work)` runs."""
    cfg = str(work / "ssh" / "sshd_config").encode()
    out: list[int] = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if cfg not in f.read():
                    continue
        except OSError:
            continue
        todo = _children(int(d))
        while todo:
            pid = todo.pop()
            todo += _children(pid)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"internal-sftp" in f.read():
                        out.append(pid)
            except OSError:
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


def _end_pids(pids: list[int], grace: float = 10.0) -> None:
    """Wait for the processes (ours: a FUSE daemon after its unmount) to exit; kill
    any that linger past grace."""
    with contextlib.suppress(RuntimeError):
        _wait(lambda: not any(_alive(p) for p in pids), grace, f"processes {pids} to exit")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [p for p in pids if _alive(p)]
        if not left:
            return
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        with contextlib.suppress(RuntimeError):
            _wait(lambda left=left: not any(_alive(p) for p in left), 5, f"processes {left} to die")


def _end_proc(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Wait for a child to exit (after its unmount); terminate, then kill, if it does not."""
    for step in (None, proc.terminate, proc.kill):
        if step is not None:
            step()
        try:
            proc.wait(grace if step is None else 5)
            return
        except subprocess.TimeoutExpired:
            continue


def _unmount(mnt: Path, fuse: bool) -> None:
    """Unmount mnt, retrying while it is busy (a process of the test may still be
    closing files); lazily as a last resort, so nothing stays mounted."""
    if not os.path.ismount(mnt):
        return
    cmd = ["fusermount3", "-u", mnt] if fuse else ["umount", mnt]
    err: Exception | None = None
    for _ in range(25):
        try:
            _run(cmd, timeout=30)
            return
        except RuntimeError as e:
            err = e
            if not os.path.ismount(mnt):
                return
            time.sleep(0.2)
    with contextlib.suppress(RuntimeError):
        _run(["fusermount3", "-uz", mnt] if fuse else ["umount", "-l", mnt], timeout=30)
    raise RuntimeError(f"{mnt} was busy; unmounted lazily: {err}")


def sftp_server_read(work: Path) -> int:
    """Bytes the sftp server of `sshfs_server(work)` has read so far: `rchar` of its
    session processes (the file data they read, and the requests they receive)."""
    total = 0
    for pid in sftp_server_pids(work):
        try:
            with open(f"/proc/{pid}/io") as f:
                total += int(next(ln for ln in f if ln.startswith("rchar:")).split()[1])
        except (OSError, StopIteration, ValueError):
            pass
    return total


def _fresh_remote(mnt: Path) -> Path:
    remote = mnt / "remote"
    remote.mkdir()
    return remote


def _image(work: Path, kind: str, size_mib: int) -> Path:
    img = work / f"{kind}.img"
    with open(img, "wb") as f:
        f.truncate(size_mib << 20)  # sparse
    return img


@contextlib.contextmanager
def tmpfs(work: Path) -> Iterator[Path]:
    need("mount", "umount")
    mnt = _mountpoint(work, "tmpfs")
    with contextlib.ExitStack() as undo:
        _run(["mount", "-t", "tmpfs", "-o", "size=256m", "btsoot-test", mnt])
        undo.callback(_unmount, mnt, False)
        yield _fresh_remote(mnt)


@contextlib.contextmanager
def _loop_mounted(work: Path, kind: str, size_mib: int, mkfs: list[str]) -> Iterator[Path]:
    """A file system made in an image file and mounted through a loop device
    (`mount -o loop` detaches it again at the unmount)."""
    need(mkfs[0], "mount", "umount")
    mnt = _mountpoint(work, kind)
    img = _image(work, kind, size_mib)
    with contextlib.ExitStack() as undo:
        undo.callback(img.unlink, missing_ok=True)
        _run([*mkfs, img])
        _run(["mount", "-o", "loop", img, mnt])
        undo.callback(_unmount, mnt, False)
        yield _fresh_remote(mnt)


def ext4(work: Path) -> AbstractContextManager[Path]:
    return _loop_mounted(work, "ext4", 96, ["mkfs.ext4", "-q", "-F", "-m", "0"])


def xfs(work: Path) -> AbstractContextManager[Path]:
    # mkfs.xfs refuses a file system under 300 MiB.
    return _loop_mounted(work, "xfs", 320, ["mkfs.xfs", "-q", "-f"])


def _detach(dev: str) -> None:
    """Detach a loop device, and wait until it is free (the kernel lets it go when its
    last user, the FUSE daemon, has closed it)."""
    with contextlib.suppress(RuntimeError):
        _run(["losetup", "-d", dev], timeout=30)
    backing = Path("/sys/block") / os.path.basename(dev) / "loop" / "backing_file"
    _wait(lambda: not backing.exists(), 15, f"{dev} to be detached")


@contextlib.contextmanager
def exfat(work: Path) -> Iterator[Path]:
    need("mkfs.exfat", "mount.exfat-fuse", "losetup", "fusermount3")
    mnt = _mountpoint(work, "exfat")
    img = _image(work, "exfat", 96)
    with contextlib.ExitStack() as undo:
        undo.callback(img.unlink, missing_ok=True)
        _run(["mkfs.exfat", img])
        # exfat-fuse refuses an image file ("Block device required").
        dev = _run(["losetup", "-f", "--show", img]).strip()
        undo.callback(_detach, dev)
        _run(["mount.exfat-fuse", dev, mnt])  # returns once mounted; the daemon stays
        daemons = _pids_with_arg(str(mnt))
        undo.callback(_end_pids, daemons)
        undo.callback(_unmount, mnt, True)
        if not os.path.ismount(mnt):
            raise RuntimeError(f"mount.exfat-fuse {dev} {mnt}: not mounted")
        yield _fresh_remote(mnt)


def _fuse_daemon(undo: contextlib.ExitStack, cmd: list[str], mnt: Path, work: Path,
                 timeout: float) -> None:
    """Start a FUSE file system in the foreground as our child (cmd[0]), wait until
    mnt is mounted; unmounting and ending it go on `undo`."""
    log = work / f"{cmd[0]}.log"
    with open(log, "wb") as f:  # the child holds its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    undo.callback(_end_proc, proc)
    undo.callback(_unmount, mnt, True)
    _wait(lambda: os.path.ismount(mnt) or proc.poll() is not None, timeout, f"{cmd[0]} to mount {mnt}")
    if not os.path.ismount(mnt):
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def ntfs(work: Path) -> Iterator[Path]:
    need("mkfs.ntfs", "ntfs-3g", "fusermount3")
    mnt = _mountpoint(work, "ntfs")
    img = _image(work, "ntfs", 96)
    with contextlib.ExitStack() as undo:
        undo.callback(img.unlink, missing_ok=True)
        _run(["mkfs.ntfs", "-F", "-f", "-q", img])
        _fuse_daemon(undo, ["ntfs-3g", "-o", "no_detach", str(img), str(mnt)], mnt, work, 20)
        yield _fresh_remote(mnt)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _sshd(work: Path) -> Iterator[tuple[int, Path]]:
    """Debian's sshd on 127.0.0.1 on a free port, with throwaway keys and its own
    config (root may log in with the user key only); yields (port, user key)."""
    tools = need("sshd", "ssh-keygen")
    d = work / "ssh"
    d.mkdir()
    for k in ("host_key", "user_key"):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "btsoot-test", "-f", d / k])
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder
    log = d / "sshd.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([tools["sshd"], "-D", "-e", "-f", str(cfg)],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    try:
        _wait(lambda: _listening(port) or proc.poll() is not None, 20, f"sshd on port {port}")
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        yield port, d / "user_key"
    finally:
        sessions = _children(proc.pid)  # none once sshfs has gone, normally
        _end_proc(proc, grace=0)  # -D: sshd is our child
        _end_pids(sessions, grace=5)


@contextlib.contextmanager
def sshfs(work: Path) -> Iterator[Path]:
    served = work / "served"
    served.mkdir(parents=True)
    mnt = _mountpoint(work, "sshfs")
    with sshfs_server(work) as mount_at, mount_at(served, mnt):
        yield _fresh_remote(mnt)


@contextlib.contextmanager
def sshfs_server(work: Path) -> Iterator[Callable[[Path, Path], AbstractContextManager[None]]]:
    """An sshd on 127.0.0.1 for sshfs mounts: yields mount_at(served, at), a context
    manager that mounts the server's folder `served` at `at` (again and again: a
    remount, as after a reboot)."""
    need("sshfs", "fusermount3")
    with _sshd(work) as (port, key):
        opts = (f"port={port},IdentityFile={key},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
                "BatchMode=yes,LogLevel=ERROR")

        @contextlib.contextmanager
        def mount_at(served: Path, at: Path) -> Iterator[None]:
            at.mkdir(parents=True, exist_ok=True)
            with contextlib.ExitStack() as undo:
                _fuse_daemon(undo, ["sshfs", "-f", f"root@127.0.0.1:{served}", str(at), "-o", opts],
                             at, work, 30)
                yield

        yield mount_at


@contextlib.contextmanager
def exfat_image(work: Path) -> Iterator[Callable[[Path], AbstractContextManager[None]]]:
    """An exFAT image: yields mount_at(at), a context manager that mounts it at `at`
    (again and again)."""
    need("mkfs.exfat", "mount.exfat-fuse", "losetup", "fusermount3")
    img = _image(work, "exfat", 96)
    try:
        _run(["mkfs.exfat", img])

        @contextlib.contextmanager
        def mount_at(at: Path) -> Iterator[None]:
            at.mkdir(parents=True, exist_ok=True)
            with contextlib.ExitStack() as undo:
                dev = _run(["losetup", "-f", "--show", img]).strip()
                undo.callback(_detach, dev)
                _run(["mount.exfat-fuse", dev, at])
                daemons = _pids_with_arg(str(at))
                undo.callback(_end_pids, daemons)
                undo.callback(_unmount, at, True)
                if not os.path.ismount(at):
                    raise RuntimeError(f"mount.exfat-fuse {dev} {at}: not mounted")
                yield

        yield mount_at
    finally:
        img.unlink(missing_ok=True)


_MOUNTERS: dict[str, Callable[[Path], AbstractContextManager[Path]]] = {
    "tmpfs": tmpfs, "ext4": ext4, "xfs": xfs, "exfat": exfat, "ntfs": ntfs, "sshfs": sshfs}


def mount(kind: str, work: Path) -> AbstractContextManager[Path]:
    """A context manager: a fresh empty folder on a mounted file system of this kind."""
    return _MOUNTERS[kind](work)
