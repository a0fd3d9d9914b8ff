"""btsoot against rsync (and rclone, restic, borg where installed) on the same trees.

Run as `python benchmarks/compare.py` (`make compare`); `--help` lists the options.
Needs root (a loop-mounted ext4 image, sshd, a FUSE mount). `--scale ARGS` runs
benchmarks/scale.py instead (millions of small files; `make compare-scale`).

Trees (deterministic, generated once and cached under $BTSOOT_BENCH_DIR or
/tmp/btsoot-bench, in `compare/`):

- many:  100k files in nested folders under 10 top-level folders (~10% of the
         tree each), log-uniform sizes 200 B .. 256 KiB, 0.2% of them 256 KiB .. 4 MiB.
- large: a few 1 GiB files of random bytes.
- huge:  1M small files (100 B .. 4 KiB), only with --huge.

Every mtime the generator sets (files, folders, the day's added files) has a
nanosecond fraction (deterministic per path), as on any real disk: a remote that
keeps whole seconds (sshfs, SFTP v3) then truncates them, which whole-second
test trees would hide.

Scenarios, each run by every tool onto its own target, back to back:

- initial:   first backup into an empty target;
- no-change: the same again (best of --repeat runs);
- day:       (many, huge) 1% of files modified in place (half keep their size),
             0.2% added, 0.2% deleted, one top-level folder (~10%) renamed;
- edit-1g:   (large) 10 small in-place edits scattered through a 1 GiB file
             (same size, new mtime).

Two kinds of remote:

- local: a fresh ext4 file system on a loop device (a USB disk, say). Bytes
  written = the loop device's sectors written (/sys/block/loopN/stat), read
  after syncfs before and after each run: data, metadata and journal, the same
  accounting for every tool.
- slow (sshfs): Debian's sshd on 127.0.0.1 (a port, host key, user key and
  config of our own), mounted with sshfs; rsync and btsoot write onto the mount,
  `rsync -e ssh` to the same server is a reference row. The mount is made fresh
  for each run (a cold sshfs cache, as for a daily cron job) and unmounted
  after it. Bytes written = write_bytes - cancelled_write_bytes of the server
  side (sshd's session processes and sftp-server), read from /proc/SSHD/io of
  the listening sshd, which accumulates the counts of its reaped descendants.

Per run: wall time; "+sync", the syncfs of the target after the tool exits
(btsoot syncs the remote itself, rsync does not; the time ratio uses wall+sync,
the time until the backup is durable); CPU = user+sys of the tool's process
tree (os.wait4 rusage, which includes its reaped children); peak RSS =
ru_maxrss (the largest single process of the tree, not their sum); on the slow
remote also the link's CPU (sshfs + ssh client + sshd + sftp-server).

After every btsoot, rsync and rclone run the target is checked against the
source (every path, kind, size and mtime to the second; the content of every
changed file plus a fixed sample of others; windows of large files), so a fast
wrong result never counts: a failed check is printed as FAIL.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import ctypes
import ctypes.util
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

BASE = Path(os.environ.get("BTSOOT_BENCH_DIR", "/tmp/btsoot-bench"))
CACHE = BASE / "compare"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load1() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------
# Trees


@dataclass(frozen=True)
class TreeSpec:
    name: str
    files: int
    min_size: int
    max_size: int
    big_share: float = 0.0  # share of files drawn from big_min..big_max instead
    big_min: int = 0
    big_max: int = 0
    tops: int = 10
    large_files: int = 0  # the "large" tree: this many 1 GiB files, nothing else

    @property
    def layout(self) -> str:
        # The cache key: bump the version whenever the generator changes, so a tree
        # cached by an older generator is made again (v3: sub-second mtimes).
        return f"v3 {self}\n"


MANY = TreeSpec("many", 100_000, 200, 256 * KiB, 0.002, 256 * KiB, 4 * MiB)
HUGE = TreeSpec("huge", 1_000_000, 100, 4 * KiB)
TOP_NAMES = ["documents", "photos", "music", "movies", "projects", "mail", "archive",
             "scans", "code", "misc"]
EXTS = [".jpg", ".txt", ".pdf", ".mp3", ".odt", ".png", ".eml", ".c", ".raw", ".dat"]
OLD_MTIME = 1_600_000_000  # 2020-09: long before any scan (never "racy"), whole seconds
NS = 1_000_000_000


def large_spec(n: int) -> TreeSpec:
    return TreeSpec("large", n, GiB, GiB, large_files=n)


class Pool:
    """Random bytes to slice file contents from; every file gets a unique header."""

    def __init__(self, seed: int, size: int) -> None:
        self.data = random.Random(seed).randbytes(size)

    def content(self, rng: random.Random, size: int, tag: str) -> bytes:
        head = (tag + "\n").encode()[:size]
        rest = size - len(head)
        start = rng.randrange(len(self.data) - rest) if rest else 0
        return head + self.data[start:start + rest]


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def file_size(spec: TreeSpec, rng: random.Random) -> int:
    if spec.big_share and rng.random() < spec.big_share:
        return _log_uniform(rng, spec.big_min, spec.big_max)
    return _log_uniform(rng, spec.min_size, spec.max_size)


def tree_layout(spec: TreeSpec) -> Iterator[tuple[str, int]]:
    """(relative path, size) of every file, deterministic. Folders: top/sNN/sNN
    with a varying number of files per folder, some files higher up."""
    rng = random.Random(f"layout-{spec.name}")
    per_top = spec.files // spec.tops
    n = 0
    for t in range(spec.tops):
        top = TOP_NAMES[t % len(TOP_NAMES)] + (f"-{t // len(TOP_NAMES)}" if t >= len(TOP_NAMES) else "")
        want = per_top if t < spec.tops - 1 else spec.files - n
        made = 0
        a = 0
        while made < want:
            sub = f"{top}/{a:02d}-{rng.choice(['2019', '2020', '2021', 'old', 'new', 'misc'])}"
            # a few files directly in the second level
            for i in range(min(rng.randrange(0, 6), want - made)):
                yield f"{sub}/index{i}{rng.choice(EXTS)}", file_size(spec, rng)
                made += 1
            b = 0
            while made < want and b < 10:
                leaf = f"{sub}/{b:02d}"
                k = min(rng.randrange(20, 200), want - made)
                for i in range(k):
                    yield f"{leaf}/f{i:04d}{rng.choice(EXTS)}", file_size(spec, rng)
                made += 1 * k
                b += 1
            a += 1
        n += made


def sub_second(seconds: int, key: str) -> int:
    """An mtime in ns: `seconds` plus a fraction of 1..999,999,999 ns derived from
    key (a path), deterministic and never a whole second."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return seconds * NS + 1 + h % (NS - 1)


def _set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _write_file(path: Path, data: bytes, mtime_ns: int) -> None:
    with open(path, "wb") as f:
        f.write(data)
    _set_mtime(path, mtime_ns)


def _set_dir_times(root: Path, seconds: int) -> None:
    """Every folder under root (root included) to `seconds` plus its own fraction."""
    for d, _, _ in sorted(os.walk(root), key=lambda x: -len(x[0])):
        _set_mtime(Path(d), sub_second(seconds, "dir:" + os.path.relpath(d, root)))


def ensure_tree(spec: TreeSpec) -> Path:
    tree = CACHE / spec.name
    marker = CACHE / f"{spec.name}.complete"
    if marker.exists() and marker.read_text() == spec.layout and tree.is_dir():
        return tree
    log(f"generating tree {spec.name!r} under {tree} (once; cached) ...")
    t0 = time.monotonic()
    marker.unlink(missing_ok=True)
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    if spec.large_files:
        for i in range(spec.large_files):
            rng = random.Random(f"large-{i}")
            with open(tree / f"vm-image-{i}.img", "wb") as f:
                for _ in range(GiB // (16 * MiB)):
                    f.write(rng.randbytes(16 * MiB))
            _set_mtime(tree / f"vm-image-{i}.img", sub_second(OLD_MTIME, f"vm-image-{i}.img"))
    else:
        pool = Pool(1, 64 * MiB)
        rng = random.Random(f"content-{spec.name}")
        made_dirs: set[str] = set()
        for i, (rel, size) in enumerate(tree_layout(spec)):
            d = rel.rpartition("/")[0]
            if d not in made_dirs:
                os.makedirs(tree / d, exist_ok=True)
                made_dirs.add(d)
            # the whole seconds from rng (as before), the fraction from the path
            _write_file(tree / rel, pool.content(rng, size, f"{spec.name}:{i}:{rel}"),
                        sub_second(OLD_MTIME + rng.randrange(10_000_000), rel))
    _set_dir_times(tree, OLD_MTIME)
    os.sync()
    marker.write_text(spec.layout)
    log(f"generated {spec.name!r} in {time.monotonic() - t0:.0f} s")
    return tree


def list_files(root: Path) -> list[str]:
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(d, root)
        for f in sorted(files):
            out.append(f if rel == "." else f"{rel}/{f}")
    return out


# ---------------------------------------------------------------------------
# Changes


@dataclass
class Changes:
    """What a scenario changes in the source, decided before the initial backup
    (files to be edited in place must not be hard links into the cache)."""

    modify: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    add: list[tuple[str, int]] = field(default_factory=list)
    rename: tuple[str, str] | None = None
    edit_1g: str | None = None
    content_bytes: int = 0  # new + modified content, once applied
    touched: list[str] = field(default_factory=list)  # paths (after the change) to check fully

    @property
    def own_copies(self) -> list[str]:
        return self.modify + ([self.edit_1g] if self.edit_1g else [])


def plan_changes(spec: TreeSpec, files: list[str]) -> Changes:
    rng = random.Random(f"day-{spec.name}")
    ch = Changes()
    if spec.large_files:
        ch.edit_1g = files[0]
        return ch
    n = len(files)
    picked = rng.sample(files, int(n * 0.01) + int(n * 0.002))
    ch.modify = sorted(picked[: int(n * 0.01)])
    ch.delete = sorted(picked[int(n * 0.01):])
    dirs = sorted({f.rpartition("/")[0] for f in files})
    for i in range(int(n * 0.002)):
        ch.add.append((f"{rng.choice(dirs)}/new-{i:05d}{rng.choice(EXTS)}", file_size(spec, rng)))
    top = TOP_NAMES[1]  # "photos": 10% of the tree
    ch.rename = (top, top + "-renamed")
    return ch


def prepare_source(spec: TreeSpec, cache: Path, src: Path, ch: Changes) -> None:
    """Hard-link the cached tree into src; files that will be edited in place get
    their own copy (so the cache stays pristine)."""
    if src.exists():
        shutil.rmtree(src)
    src.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(cache), str(src)], check=True)
    for rel in ch.own_copies:
        p = src / rel
        tmp = p.with_name(p.name + ".copy")
        shutil.copy2(p, tmp)
        os.replace(tmp, p)
    _set_dir_times(src, OLD_MTIME)


def _now_ns() -> int:
    """The mtime of an in-place edit: now, in ns (the kernel's own stamp is coarse,
    a multiple of the timer tick, and can fall on a whole second)."""
    t = time.time_ns()
    return t + 1 if t % NS == 0 else t


def apply_changes(spec: TreeSpec, src: Path, ch: Changes) -> None:
    rng = random.Random(f"apply-{spec.name}")
    total = 0
    touched = []
    if ch.edit_1g:
        p = src / ch.edit_1g
        size = p.stat().st_size
        with open(p, "r+b") as f:
            for k in range(10):
                f.seek(int((k + rng.random()) * size / 10) - 200)
                f.write(rng.randbytes(100))
        _set_mtime(p, _now_ns())
        total += size
        touched.append(ch.edit_1g)
    pool = Pool(2, 16 * MiB)
    for i, rel in enumerate(ch.modify):
        p = src / rel
        size = p.stat().st_size
        with open(p, "r+b") as f:
            if i % 2 == 0:  # same size: overwrite a few bytes
                f.seek(rng.randrange(max(1, size - 64)))
                f.write(rng.randbytes(min(64, size)))
            else:  # grows: append
                f.seek(0, os.SEEK_END)
                f.write(rng.randbytes(rng.randrange(KiB, 16 * KiB)))
        _set_mtime(p, _now_ns())
        total += p.stat().st_size
        touched.append(rel)
    for rel in ch.delete:
        (src / rel).unlink()
    for rel, size in ch.add:
        _write_file(src / rel, pool.content(rng, size, f"added:{rel}"),
                    sub_second(int(time.time()) - 3600, "added:" + rel))
        total += size
        touched.append(rel)
    if ch.rename:
        a, b = ch.rename
        os.rename(src / a, src / b)
        touched = [b + t[len(a):] if t.startswith(a + "/") else t for t in touched]
    ch.content_bytes = total
    ch.touched = touched


def warm(src: Path) -> None:
    """Read every file once (page cache hot for every contender alike)."""
    def read_all(paths: list[str]) -> None:
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.read(MiB):
                    pass
    paths = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs]
    ts = [threading.Thread(target=read_all, args=(paths[i::2],)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


# ---------------------------------------------------------------------------
# Correctness


def _index(root: Path, skip_top: set[str]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel == ".":
            dirs[:] = [x for x in dirs if x not in skip_top]
            files = [x for x in files if x not in skip_top]
        for name in dirs + files:
            p = os.path.join(d, name)
            r = name if rel == "." else f"{rel}/{name}"
            st = os.lstat(p)
            if os.path.islink(p):
                out[r] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[r] = ("d",)
            else:
                # to the second (SFTP v3 keeps whole seconds; sshfs truncates):
                # from st_mtime_ns, as a float st_mtime can round x.9999999 up
                out[r] = ("f", st.st_size, st.st_mtime_ns // NS)
    return out


def _same_bytes(a: Path, b: Path, size: int, rng: random.Random) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if size <= 16 * MiB:
            return fa.read() == fb.read()
        offs = [0, size - MiB] + [rng.randrange(size - MiB) for _ in range(8)]
        offs += [int(k * size / 10) - MiB // 2 for k in range(1, 10)]  # around the edits
        for off in offs:
            fa.seek(off)
            fb.seek(off)
            if fa.read(MiB) != fb.read(MiB):
                return False
    return True


def check_mirror(src: Path, dst: Path, must: list[str], sample: int = 300,
                 skip_top: frozenset[str] = frozenset({".btsoot"})) -> str:
    """'ok' or the first few differences."""
    a, b = _index(src, set()), _index(dst, set(skip_top))
    problems = []
    for p in sorted(set(a) | set(b)):
        if a.get(p) != b.get(p):
            problems.append(f"{p}: source {a.get(p)} target {b.get(p)}")
            if len(problems) >= 3:
                break
    if not problems:
        rng = random.Random(len(a))
        files = sorted(p for p, v in a.items() if v[0] == "f")
        for p in list(must) + rng.sample(files, min(sample, len(files))):
            if not _same_bytes(src / p, dst / p, a[p][1], rng):
                problems.append(f"{p}: content differs")
                break
    return "ok" if not problems else "FAIL " + "; ".join(problems)


# ---------------------------------------------------------------------------
# Measuring


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def syncfs(path: Path) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _libc.syncfs(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


@dataclass
class Run:
    tree: str
    scenario: str
    tool: str
    mode: str
    wall: float = 0.0
    sync: float = 0.0
    cpu: float = 0.0
    rss_kib: int = 0
    written: int = 0
    link_cpu: float | None = None
    payload: int | None = None  # slow remote: file bytes written through SFTP
    check: str = "-"
    rc: int = 0
    load: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def durable(self) -> float:
        return self.wall + self.sync


GNU_TIME = "/usr/bin/time"


def run_measured(cmd: list[str], env: dict[str, str] | None, cwd: Path | None, out: Path,
                 timeout: float = 3600) -> tuple[int, float, float, int, str]:
    """Run cmd; returns (exit code, wall s, cpu s, maxrss KiB, stdout).

    CPU and peak RSS come from wait4() of the tool's process (its reaped children
    included). GNU time does the fork, so the tool's ru_maxrss starts from a small
    process: a child forked straight from this (large) runner would inherit the
    runner's RSS as its high-water mark at exec.
    """
    tfile = Path(str(out) + ".time")
    wrapped = [GNU_TIME, "-q", "-f", "%U %S %M", "-o", str(tfile), *cmd] if os.path.exists(GNU_TIME) else cmd
    with open(out, "wb") as fo, open(str(out) + ".err", "wb") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(wrapped, env=env, cwd=cwd, stdout=fo, stderr=fe, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss
    if wrapped is not cmd:
        with contextlib.suppress(OSError, ValueError):
            u, s_, m = tfile.read_text().split()[-3:]
            cpu, rss = float(u) + float(s_), int(m)
    return p.returncode, wall, cpu, rss, Path(out).read_text(errors="replace")


class LoopTarget:
    """A fresh ext4 file system in a sparse image on a loop device."""

    def __init__(self, work: Path, size: int, inodes: int) -> None:
        self.img = work / "remote.img"
        self.mnt = work / "remote"
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.img, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(inodes),
                        "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.img)], check=True)
        subprocess.run(["mount", "-o", "loop", str(self.img), str(self.mnt)], check=True)
        dev = subprocess.run(["findmnt", "-no", "SOURCE", str(self.mnt)], check=True,
                             capture_output=True, text=True).stdout.strip()
        self.stat = Path("/sys/block") / os.path.basename(dev) / "stat"
        self.dev = dev

    def sectors_written(self) -> int:
        syncfs(self.mnt)
        return int(self.stat.read_text().split()[6]) * 512

    def close(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", str(self.mnt)], check=False)
        self.img.unlink(missing_ok=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(d))
    return out


class SshServer:
    """Debian's sshd on 127.0.0.1 with throwaway keys, serving `served` over SFTP."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "ssh"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.served = work / "served"
        self.served.mkdir(exist_ok=True)
        for k in ("host_key", "user_key"):
            (self.dir / k).unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / k)],
                           check=True)
        shutil.copy(self.dir / "user_key.pub", self.dir / "authorized_keys")
        self.port = free_port()
        # sftp-server logs every close with the bytes written through that handle
        # (-l INFO): the file payload. sshd drops a subsystem's stderr, so a wrapper
        # sends it to a file on tmpfs (tmpfs writes do not count as write_bytes).
        self.sftp_log = Path(f"/dev/shm/btsoot-compare-sftp-{self.port}.log")
        wrapper = self.dir / "sftp-server.sh"
        wrapper.write_text(f"#!/bin/sh\nexec /usr/lib/openssh/sftp-server -e -l INFO 2>>{self.sftp_log}\n")
        wrapper.chmod(0o755)
        cfg = self.dir / "sshd_config"
        cfg.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host_key'}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"Subsystem sftp {wrapper}\nLogLevel ERROR\n")
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)],
                                     stderr=open(self.dir / "sshd.log", "wb"))
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("sshd did not start (see " + str(self.dir / "sshd.log") + ")")
        self.ssh_opts = ["-i", str(self.dir / "user_key"), "-p", str(self.port), "-o",
                         "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]

    def quiesce(self) -> None:
        """Wait until every session has ended and been reaped by the listener."""
        for _ in range(400):
            if not _children(self.proc.pid):
                return
            time.sleep(0.025)
        raise RuntimeError("sshd sessions did not end")

    def written(self) -> tuple[int, float]:
        """(bytes written to storage, CPU s) by the server side so far (reaped sessions)."""
        self.quiesce()
        io = dict(line.split(": ") for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines())
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        tick = os.sysconf("SC_CLK_TCK")
        cpu = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        return int(io["write_bytes"]) - int(io["cancelled_write_bytes"]), cpu

    def payload(self) -> int:
        """File bytes written through SFTP since the last call (sftp-server's close lines)."""
        total = 0
        with contextlib.suppress(FileNotFoundError), open(self.sftp_log, "rb") as f:
            for line in f:
                i = line.rfind(b" written ")
                if i >= 0 and b"close " in line:
                    with contextlib.suppress(ValueError, IndexError):
                        total += int(line[i + 9:].split()[0])
        self.sftp_log.unlink(missing_ok=True)
        return total

    def close(self) -> None:
        self.sftp_log.unlink(missing_ok=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SshfsMount:
    """sshfs in the foreground as our child, so its CPU (and its ssh's) is measurable."""

    def __init__(self, server: SshServer, mnt: Path, remote: Path) -> None:
        self.mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)
        d = server.dir
        opts = (f"IdentityFile={d / 'user_key'},StrictHostKeyChecking=no,"
                f"UserKnownHostsFile=/dev/null,port={server.port},LogLevel=ERROR,BatchMode=yes")
        self.log = d / f"sshfs-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(["sshfs", "-f", f"root@127.0.0.1:{remote}", str(mnt),
                                      "-o", opts], stderr=open(self.log, "wb"))
        for _ in range(400):
            if os.path.ismount(mnt):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.025)
        raise RuntimeError(f"sshfs did not mount (see {self.log})")

    def close(self) -> float:
        """Unmount; returns the CPU s of sshfs and its ssh client."""
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False)
        try:
            _, _, ru = os.wait4(self.proc.pid, 0)
        except ChildProcessError:
            return 0.0
        self.proc.returncode = 0
        self.log.unlink(missing_ok=True)
        return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------------------
# Tools


FROZEN: Path | None = None  # a copy of the btsoot package taken at the start of the run


def freeze_btsoot(work: Path) -> str:
    """Copy the btsoot package (with its compiled core) into work, so the whole run
    measures one version even while the source tree is being edited; describe it.

    The package is this checkout's src/btsoot when its compiled core is built
    (`make dev`), else whatever `import btsoot` finds."""
    global FROZEN
    pkg = Path(__file__).resolve().parent.parent / "src" / "btsoot"
    if not list(pkg.glob("_fastscan*.so")):
        import btsoot

        pkg = Path(btsoot.__file__).resolve().parent
    FROZEN = work / "btsoot-frozen"
    shutil.copytree(pkg, FROZEN / "btsoot", ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    # An installed wheel has its bytecode compiled (pip does it); so does the copy,
    # or every run would pay for compiling when PYTHONDONTWRITEBYTECODE is set.
    compileall.compile_dir(str(FROZEN / "btsoot"), quiet=1)
    desc = f"{pkg} (copied at start)"
    git = subprocess.run(["git", "-C", str(pkg), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    if git.returncode == 0:
        desc += f", git {git.stdout.strip()}"
    return desc


def btsoot_cmd() -> list[str]:
    if FROZEN is not None:
        return [sys.executable, "-m", "btsoot"]
    exe = Path(sys.executable).parent / "btsoot"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "btsoot"]


def btsoot_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    if FROZEN is not None:
        env["PYTHONPATH"] = str(FROZEN)
    return env


class Tool:
    name = "?"
    mirror = True  # the target is a plain copy of the source (checked)

    def __init__(self, work: Path, src: Path, dst: Path) -> None:
        self.work, self.src, self.dst = work, src, dst
        self.n = 0

    def setup(self) -> None:
        self.dst.mkdir(parents=True, exist_ok=True)

    def cmd(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def parse(self, out: str) -> dict:
        return {}


class Btsoot(Tool):
    name = "btsoot"

    def setup(self) -> None:
        super().setup()
        self.state = self.work / "btsoot-state"
        for d in (self.state,):
            shutil.rmtree(d, ignore_errors=True)
        subprocess.run(btsoot_cmd() + ["add", "bench", str(self.src), str(self.dst)], env=self.env(),
                       check=True, stdout=subprocess.DEVNULL)

    def env(self) -> dict[str, str]:
        return btsoot_env(BTSOOT_CONFIG=str(self.work / "btsoot-config.toml"),
                          BTSOOT_STATE=str(self.work / "btsoot-state"))

    def cmd(self) -> list[str]:
        return btsoot_cmd() + ["backup", "bench", "--json"]

    def parse(self, out: str) -> dict:
        try:
            s = json.loads(out)
        except ValueError:
            return {}
        return {k: s.get(k) for k in ("result", "bytes_sent", "remote_snapshot_bytes",
                                      "hashed_files", "operations", "durations")}


class Rsync(Tool):
    name = "rsync"

    def cmd(self) -> list[str]:
        return ["rsync", "-a", "--delete", f"{self.src}/", f"{self.dst}/"]


class RsyncSsh(Tool):
    name = "rsync -e ssh"

    def __init__(self, work: Path, src: Path, dst: Path, server: SshServer) -> None:
        super().__init__(work, src, dst)
        self.server = server

    def cmd(self) -> list[str]:
        return ["rsync", "-a", "--delete", "-e", "ssh " + " ".join(self.server.ssh_opts),
                f"{self.src}/", f"root@127.0.0.1:{self.dst}/"]


class Rclone(Tool):
    name = "rclone sync"

    def cmd(self) -> list[str]:
        return ["rclone", "sync", str(self.src), str(self.dst), "--config", "/dev/null", "-q"]


class Restic(Tool):
    name = "restic backup"
    mirror = False

    def env(self) -> dict[str, str]:
        return dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(self.work / "restic-cache"),
                    RESTIC_REPOSITORY=str(self.dst))

    def setup(self) -> None:
        subprocess.run(["restic", "init", "-q"], env=self.env(), check=True, stdout=subprocess.DEVNULL)

    def cmd(self) -> list[str]:
        return ["restic", "backup", "-q", str(self.src)]


class Borg(Tool):
    name = "borg create"
    mirror = False

    def env(self) -> dict[str, str]:
        return dict(os.environ, BORG_BASE_DIR=str(self.work / "borg-base"),
                    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")

    def setup(self) -> None:
        subprocess.run(["borg", "init", "-e", "none", str(self.dst)], env=self.env(), check=True)

    def cmd(self) -> list[str]:
        self.n += 1
        return ["borg", "create", f"{self.dst}::run{self.n}", str(self.src)]


OPTIONAL = {"rclone sync": ("rclone", Rclone), "restic backup": ("restic", Restic),
            "borg create": ("borg", Borg)}


# ---------------------------------------------------------------------------
# The runner


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> None:
        self.args, self.work, self.stack = args, work, stack
        self.runs: list[Run] = []
        self.extra_rows: list[dict] = []
        self.notes: list[str] = []
        self.server: SshServer | None = None

    def record(self, r: Run) -> Run:
        self.runs.append(r)
        log(f"{r.mode:5} {r.tree:5} {r.scenario:9} {r.tool:13} wall {r.wall:7.2f} s  +sync "
            f"{r.sync:5.2f}  cpu {r.cpu:7.2f}  rss {r.rss_kib / 1024:6.0f} MiB  written "
            f"{human(r.written):>9}  {r.check}  load {r.load:.2f}")
        return r

    # -- local ----------------------------------------------------------------

    def scenarios(self, spec: TreeSpec, src: Path, ch: Changes, mode: str,
                  repeat: int) -> Iterator[tuple[str, int, bool]]:
        """(scenario, repetition, last repetition?) in order; the day's changes (or
        the 1 GiB edits) are applied to src before their scenario."""
        for sc in ["initial", "no-change", "edit-1g" if spec.large_files else "day"]:
            if sc in ("day", "edit-1g"):
                apply_changes(spec, src, ch)
                self.extra_rows.append({"mode": mode, "tree": spec.name, "scenario": sc,
                                        "content_bytes": ch.content_bytes})
            reps = repeat if sc == "no-change" else 1
            for rep in range(reps):
                yield sc, rep, rep == reps - 1

    def local(self, spec: TreeSpec, cache: Path, tools: list[str]) -> None:
        work = self.work / f"local-{spec.name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        src = work / "src"
        ch = plan_changes(spec, list_files(cache))
        log(f"local/{spec.name}: preparing the source (hard links into the cache)")
        prepare_source(spec, cache, src, ch)
        # allocated bytes (a 100-byte file takes a 4 KiB block), folders included
        size = sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, ds, fs in os.walk(src)
                   for f in fs + ds)
        n_tools = len(tools) + 1
        target = LoopTarget(work, int(size * 1.3 * n_tools) + 4 * GiB,
                            int((spec.files + spec.files // 20) * 1.6 * n_tools) + 100_000)
        self.stack.callback(target.close)
        insts: list[Tool] = []
        for name in tools:
            dst = target.mnt / name.split()[0]
            tw = work / ("t-" + name.split()[0])
            tw.mkdir()
            cls = {"btsoot": Btsoot, "rsync": Rsync}.get(name) or OPTIONAL[name][1]
            t = cls(tw, src, dst)
            t.setup()
            insts.append(t)
        for sc, rep, last in self.scenarios(spec, src, ch, "local", self.args.repeat):
            for t in insts:
                if sc == "initial":
                    warm(src)
                # Writeback still pending from setting up (mkfs, cp -al, the
                # previous tool) must not be charged to whichever tool runs next.
                os.sync()
                before = target.sectors_written()
                r = Run(spec.name, sc, t.name, "local", load=load1())
                out = work / f"out-{t.name.split()[0]}-{sc}-{rep}"
                r.rc, r.wall, r.cpu, r.rss_kib, stdout = run_measured(t.cmd(), t.env(), None, out)
                r.sync = syncfs(target.mnt)
                r.written = target.sectors_written() - before
                r.extra = t.parse(stdout)
                if r.rc != 0:
                    r.check = f"FAIL exit {r.rc}: " + Path(str(out) + ".err").read_text()[-300:]
                elif t.mirror and last:
                    r.check = check_mirror(src, t.dst, ch.touched if sc != "initial" else [])
                self.record(r)
            if sc == "no-change" and spec.name != "large":
                self.find_row(spec, src, rep)
        log(f"local/{spec.name}: removing the targets and the source")
        target.close()
        shutil.rmtree(work, ignore_errors=True)

    def find_row(self, spec: TreeSpec, src: Path, rep: int) -> None:
        r = Run(spec.name, "no-change", "find -printf", "local", load=load1())
        r.rc, r.wall, r.cpu, r.rss_kib, _ = run_measured(
            ["find", str(src), "-printf", "%s %T@ %p\\n"], None, None, self.work / "out-find")
        self.record(r)

    # -- slow -----------------------------------------------------------------

    def slow(self, spec: TreeSpec, cache: Path) -> None:
        if self.server is None:
            self.server = SshServer(self.work)
            self.stack.callback(self.server.close)
        server = self.server
        work = self.work / f"slow-{spec.name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        src = work / "src"
        ch = plan_changes(spec, list_files(cache))
        log(f"slow/{spec.name}: preparing the source")
        prepare_source(spec, cache, src, ch)
        mnt = work / "mnt"
        served = server.served / spec.name
        shutil.rmtree(served, ignore_errors=True)
        served.mkdir(parents=True)
        self.stack.callback(lambda: os.path.ismount(mnt) and subprocess.run(
            ["fusermount3", "-u", "-q", str(mnt)], check=False))
        insts: list[tuple[Tool, Path, bool]] = []  # (tool, server-side target, via the mount)
        for name in ("btsoot", "rsync"):
            tw = work / ("t-" + name)
            tw.mkdir()
            (served / name).mkdir()
            t = (Btsoot if name == "btsoot" else Rsync)(tw, src, mnt / name)
            insts.append((t, served / name, True))
        if not self.args.no_rsync_ssh:
            (served / "rsync-ssh").mkdir()
            tw = work / "t-rsync-ssh"
            tw.mkdir()
            insts.append((RsyncSsh(tw, src, served / "rsync-ssh", server), served / "rsync-ssh", False))
        m = SshfsMount(server, mnt, served)
        insts[0][0].setup()  # btsoot add (checks that the remote exists)
        m.close()
        for sc, rep, last in self.scenarios(spec, src, ch, "slow", self.args.slow_repeat):
            for t, server_dst, via_mount in insts:
                if sc == "initial":
                    warm(src)
                os.sync()  # (as for the local remote)
                before, cpu0 = server.written()
                server.payload()
                mount = SshfsMount(server, mnt, served) if via_mount else None
                r = Run(spec.name, sc, t.name + (" (sshfs)" if via_mount else ""), "slow",
                        load=load1())
                out = work / f"out-{t.name.split()[0]}-{sc}-{rep}"
                try:
                    r.rc, r.wall, r.cpu, r.rss_kib, stdout = run_measured(t.cmd(), t.env(), None, out)
                    if mount is not None:
                        r.sync = syncfs(mnt)
                finally:
                    link = mount.close() if mount is not None else 0.0
                after, cpu1 = server.written()
                if mount is not None:
                    r.payload = server.payload()
                r.written = after - before
                r.link_cpu = link + (cpu1 - cpu0)
                r.extra = t.parse(stdout)
                if r.rc != 0:
                    r.check = f"FAIL exit {r.rc}: " + Path(str(out) + ".err").read_text()[-300:]
                elif last:
                    r.check = check_mirror(src, server_dst, ch.touched if sc != "initial" else [])
                self.record(r)
        log(f"slow/{spec.name}: removing the targets and the source")
        shutil.rmtree(served, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------
# Report


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.durable)


def group_check(runs: list[Run]) -> str:
    """A scenario's check result over its repeated runs (the last one is checked)."""
    checks = [r.check for r in runs]
    fail = next((c for c in checks if c.startswith("FAIL")), None)
    return fail or ("ok" if "ok" in checks else "-")


def ratio(a: float, b: float) -> str:
    if b <= 0:
        return "-" if a <= 0 else "inf"
    return f"{a / b:.2f}"


def table(bench: Bench) -> tuple[str, dict]:
    """The printed table (best run per tool and scenario) and the scoreboard inputs."""
    groups: dict[tuple[str, str, str], dict[str, list[Run]]] = {}
    for r in bench.runs:
        groups.setdefault((r.mode, r.tree, r.scenario), {}).setdefault(r.tool, []).append(r)
    head = ("remote", "tree", "scenario", "tool", "wall s", "+sync", "cpu s", "rss MiB", "written",
            "payload", "link cpu", "time x", "cpu x", "rss x", "bytes x", "check", "load")
    rows = [head]
    picked: dict[tuple[str, str, str, str], Run] = {}
    for (mode, tree, sc), tools in groups.items():
        ref_name = "rsync (sshfs)" if mode == "slow" else "rsync"
        ref = best(tools[ref_name]) if ref_name in tools else None
        for tool, runs in tools.items():
            r = dataclasses.replace(best(runs), check=group_check(runs))
            picked[(mode, tree, sc, tool)] = r
            n = f" (best of {len(runs)})" if len(runs) > 1 else ""
            cmp_ = ref is not None and tool != "find -printf"
            rows.append((mode, tree, sc + n, tool, f"{r.wall:.2f}", f"{r.sync:.2f}", f"{r.cpu:.2f}",
                         f"{r.rss_kib / 1024:.0f}", human(r.written) if tool != "find -printf" else "-",
                         human(r.payload) if r.payload is not None else "-",
                         f"{r.link_cpu:.2f}" if r.link_cpu is not None else "-",
                         ratio(r.durable, ref.durable) if cmp_ else "-",
                         ratio(r.cpu, ref.cpu) if cmp_ else "-",
                         ratio(r.rss_kib, ref.rss_kib) if cmp_ else "-",
                         ratio(r.written, ref.written) if cmp_ and tool != "find -printf" else "-",
                         r.check.split(":")[0] if r.check.startswith("FAIL") else r.check,
                         f"{r.load:.2f}"))
        for x in bench.extra_rows:
            if (x["mode"], x["tree"], x["scenario"]) == (mode, tree, sc):
                rows.append((mode, tree, sc, "new+modified content", "-", "-", "-", "-",
                             human(x["content_bytes"]), "-", "-", "-", "-", "-", "-", "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    return "\n".join(lines), picked


def bt_name(mode: str) -> str:
    return "btsoot (sshfs)" if mode == "slow" else "btsoot"


def scoreboard(bench: Bench, picked: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for the project's stated targets."""
    out: list[tuple[str, str, bool | None]] = []
    for (mode, tree, sc, tool), r in sorted(picked.items()):
        if tool != bt_name(mode):
            continue
        ref = picked.get((mode, tree, sc, "rsync (sshfs)" if mode == "slow" else "rsync"))
        if ref is None:
            continue
        x = r.durable / ref.durable
        ok_check = r.check == "ok"
        if sc == "initial":
            out.append((f"{mode} {tree} {sc}: btsoot within 1.2x of rsync's time",
                        f"{x:.2f}x", x <= 1.2 and ok_check))
        else:
            out.append((f"{mode} {tree} {sc}: btsoot faster than rsync", f"{x:.2f}x",
                        x < 1.0 and ok_check))
        if mode == "slow" and sc == "no-change" and tree != "large":
            out.append((f"slow {tree} no-change: >= 10x faster than rsync onto the mount",
                        f"{ref.durable / r.durable:.1f}x faster", ref.durable / r.durable >= 10))
    for (mode, tree, sc, tool), r in sorted(picked.items()):
        if tool == "find -printf":
            b = picked.get((mode, tree, sc, bt_name(mode)))
            if b:
                x = b.durable / r.wall
                out.append((f"{tree} no-change: btsoot <= 2x the time of find -printf", f"{x:.2f}x",
                            x <= 2.0))
    for x in bench.extra_rows:
        if x["scenario"] != "day":
            continue
        b = picked.get((x["mode"], x["tree"], "day", bt_name(x["mode"])))
        if not b:
            continue
        c = x["content_bytes"]
        if b.payload is not None:
            q = b.payload / c
            out.append((f"{x['mode']} {x['tree']} day: bytes sent to the remote (SFTP file payload, "
                        "snapshot included) <= 1.1x new+modified content",
                        f"{q:.2f}x ({human(b.payload)} / {human(c)})", q <= 1.1))
        q = b.written / c
        out.append((f"{x['mode']} {x['tree']} day: bytes the remote's storage wrote (file system "
                    "metadata and journal included) <= 1.1x new+modified content",
                    f"{q:.2f}x ({human(b.written)} / {human(c)})", q <= 1.1))
    return out


def machine(frozen: str) -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB

    def ver(cmd: list[str], key: str = "") -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
        except OSError:
            return "not installed"
        lines = [x.strip() for x in (p.stdout + p.stderr).splitlines() if x.strip() and key in x]
        return next((x for x in lines if "ersion" in x or x.startswith(("OpenSSH", "rclone", "restic",
                                                                         "borg", "btsoot"))),
                    lines[0] if lines else "?")

    la = os.getloadavg()
    bt_version = subprocess.run(btsoot_cmd() + ["--version"], env=btsoot_env(), capture_output=True,
                                text=True).stdout.strip()
    return "\n".join([
        f"date:     {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine:  {cpu}, {os.cpu_count()} cores, {mem:.1f} GiB RAM, "
        f"kernel {platform.release()}, Python {platform.python_version()}",
        f"load:     {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1, 5, 15 min)",
        f"btsoot:   {bt_version}, {frozen}",
        f"rsync:    {ver(['rsync', '--version'])}",
        f"rclone:   {ver(['rclone', '--version'])}",
        f"restic:   {ver(['restic', 'version'])}",
        f"borg:     {ver(['borg', '--version'])}",
        f"sshfs:    {ver(['sshfs', '--version'], 'SSHFS')}, {ver(['ssh', '-V'])}",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--huge", action="store_true", help="also the 1M-file tree (local remote only)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--slow", action="store_true", help="only the slow remote (sshfs)")
    g.add_argument("--local", action="store_true", help="only the local remote (loop ext4)")
    ap.add_argument("--trees", default="many,large", help="many,large,huge (default many,large)")
    ap.add_argument("--large-files", type=int, default=3, help="1 GiB files in 'large' (default 3)")
    ap.add_argument("--many-files", type=int, default=MANY.files, help=argparse.SUPPRESS)  # smoke tests
    ap.add_argument("--tools", default="btsoot,rsync,rclone,restic,borg",
                    help="local remote contenders (default: all; missing ones are skipped)")
    ap.add_argument("--repeat", type=int, default=3, help="no-change runs per tool, local (best counts)")
    ap.add_argument("--slow-repeat", type=int, default=2, help="no-change runs per tool, slow remote")
    ap.add_argument("--no-rsync-ssh", action="store_true", help="skip the rsync -e ssh reference row")
    ap.add_argument("--work", type=Path, default=BASE / "compare-work", help="scratch space")
    ap.add_argument("--json", type=Path, help="also write every run as JSON here")
    ap.add_argument("--no-freeze", action="store_true",
                    help="run the installed btsoot as is (default: a copy taken at the start)")
    ap.add_argument("--scale", nargs=argparse.REMAINDER, metavar="ARG",
                    help="run benchmarks/scale.py instead (many small files: memory per file, time); "
                    "the arguments after it are scale.py's (--scale --help)")
    args = ap.parse_args()
    if args.scale is not None:
        import scale  # (imports this module: no side effects at import)

        return scale.main(args.scale)
    if os.geteuid() != 0:
        sys.exit("compare.py needs root (loop mounts, sshd, FUSE)")

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, stop)
    t_start = time.monotonic()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    frozen = "installed console script" if args.no_freeze else freeze_btsoot(args.work)
    print(machine(frozen), flush=True)
    names = {"btsoot": "btsoot", "rsync": "rsync", "rclone": "rclone sync", "restic": "restic backup",
             "borg": "borg create"}
    tools = []
    skipped = []
    for t in args.tools.split(","):
        full = names[t.strip()]
        exe = OPTIONAL[full][0] if full in OPTIONAL else full
        if shutil.which(exe) or full == "btsoot":
            tools.append(full)
        else:
            skipped.append(f"{full}: not installed, skipped (apt-get install -y {t.strip()}"
                           f"{'backup' if t.strip() == 'borg' else ''})")
    for s in skipped:
        print("note:     " + s)
    specs = []
    for t in args.trees.split(","):
        if t.strip() == "many":
            specs.append(MANY if args.many_files == MANY.files else
                         dataclasses.replace(MANY, name=f"many{args.many_files}", files=args.many_files))
        elif t.strip() == "large":
            specs.append(large_spec(args.large_files))
        elif t.strip() == "huge":
            args.huge = True
        else:
            sys.exit(f"unknown tree {t!r}: many, large, huge")
    if args.huge:
        specs.append(HUGE)
    CACHE.mkdir(parents=True, exist_ok=True)
    caches = {s.name: ensure_tree(s) for s in specs}
    bench = None
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, args.work, True)
        bench = Bench(args, args.work, stack)
        try:
            if not args.slow:
                for s in specs:
                    bench.local(s, caches[s.name], tools if s.name != "huge" else ["btsoot", "rsync"])
            if not args.local:
                for s in specs:
                    if s.name != "huge":
                        bench.slow(s, caches[s.name])
        except KeyboardInterrupt:
            log("interrupted: cleaning up")
            raise
    text, picked = table(bench)
    print()
    print(text)
    print()
    print("scoreboard (btsoot's targets):")
    for what, val, ok in scoreboard(bench, picked):
        print(f"  {'PASS' if ok else 'FAIL'}  {what}: {val}")
    fails = [r for r in bench.runs if r.check.startswith("FAIL")]
    for r in fails:
        print(f"check failed: {r.mode} {r.tree} {r.scenario} {r.tool}: {r.check}")
    print(f"\ntotal time {time.monotonic() - t_start:.0f} s; load at the end "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in bench.runs] + bench.extra_rows, indent=1))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
