#!/usr/bin/env python3
"""Backups over a slow link: btsoot onto an sshfs mount, rsync over ssh, and rsync
onto the same mount, all through a proxy that adds a WAN's round trip.

    sudo .venv/bin/python benchmarks/wan.py [--rtt-ms 20] [--files 2000] [--mbit M]
        [--jobs 4,32] [--baseline-src DIR] [--no-rclone] [--rsync-mount-first] [--tmp /tmp]

An sshd on 127.0.0.1 (tests/remotes.py: throwaway keys, its own config,
`internal-sftp`) serves a folder on the local disk; wanproxy.py listens in front of
it and delays every chunk by RTT/2 each way (plus one round trip when a connection
opens, the TCP handshake). Everything below reaches the sshd only through the proxy:

- btsoot, its remote a folder on an sshfs mount of the served folder made with
  `-o port=PROXYPORT` (and the IdentityFile and options of tests/remotes.py): once
  with its default number of parallel transfers (16 on a network remote), once
  for each of --jobs (`backup --jobs N`), and with --baseline-src once more as
  another checkout's src/ runs (`git worktree add /tmp/base REV`, its core built
  with `setup.py build_ext --inplace`): each onto a remote folder and state of
  its own;
- where installed, `rclone sync --transfers 8 --track-renames` over rclone's own
  SFTP client (no mount);
- `rsync -a --delete --stats -e "ssh -p PROXYPORT -i KEY ..." SRC/ root@127.0.0.1:DEST/`
  (rsync's own protocol, one ssh connection);
- `rsync -a --delete --stats SRC/ MOUNT/rsync-mount/`, onto the same kind of mount.
  Its first copy is slow (several round trips per file, one file after the other):
  unless --rsync-mount-first, its folder is filled on the server's side with
  `cp -a` (not measured), and it runs only the no-change and day scenarios.

The source is a local tree (random content, not compressible): FILES files (2,000 by
default, about 60 MiB; the size scales with FILES), mostly 1-64 KiB (log-uniform),
a few 1-4 MiB, in folders of 100-300 files, one of them (photos/2023, 300 files)
renamed on the day. Every mtime is at least an hour back. Scenarios, each run by
every tool in turn on the same source (btsoot's runs first, starting with a different
one in each scenario, so a load that changes during the run favours none; then rsync):

1. first backup, into an empty folder;
2. no change;
3. a day: 30 files edited in place (same size, 4 KiB of new bytes each), 6 added,
   6 deleted, the folder photos/2023 renamed to photos/2023-trip.

Every run gets a fresh sshfs mount (cold caches, as for a nightly job; mounting is
not timed). Per run: the tool's wall time; btsoot's `bytes_sent` or the "Total
bytes sent" of rsync's --stats; and the bytes the proxy carried each way while the
tool ran ("wire up" to the server, "wire down" back), the same measure for every
tool. After each run the destination, read on the server's side, is compared with
the source (every relative path, each file's size and SHA-256); a difference shows
as FAIL and makes the script exit 1. Every mount, the sshd, the proxy and the
scratch folder are undone at the end, even after a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import wanproxy  # noqa: E402
from scratch import run_in_scratch  # noqa: E402

from remotes import _fuse_daemon, _sshd  # noqa: E402  (the test suite's sshd and FUSE handling)

KiB, MiB = 1 << 10, 1 << 20
RENAMED = ("photos/2023", "photos/2023-trip")
OTHER = ("documents/letters", "documents/invoices", "music/jazz", "music/live", "code/src",
         "code/tests", "mail/inbox", "mail/sent", "scans", "notes", "projects/house", "projects/garden")
EDITED, ADDED, DELETED = 30, 6, 6
S1, S2, S3 = "1 first backup", "2 no change", "3 a day"
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR"]


# ----------------------------------------------------------------------------- the tree

def folders_for(files: int) -> list[tuple[str, int]]:
    """(folder, number of files): photos/2023 with 300 (fewer in a small tree), the
    rest in folders of about 200."""
    renamed = min(300, max(20, files * 15 // 100))
    rest = files - renamed
    k = max(1, min(len(OTHER), round(rest / 200)))
    out = [(RENAMED[0], renamed)]
    for i, name in enumerate(OTHER[:k]):
        out.append((name, rest // k + (1 if i < rest % k else 0)))
    return out


def old_mtime(rng: random.Random, now_ns: int) -> int:
    """An hour to 30 days back, with a nanosecond fraction."""
    return now_ns - (3600 + rng.randrange(30 * 86400)) * 10**9 - rng.randrange(10**9)


def make_tree(src: Path, files: int, rng: random.Random, now_ns: int) -> tuple[int, int]:
    """The source tree; (bytes, files of 1 MiB or more). Sizes are log-uniform 1-64 KiB;
    files drawn at random become 1-4 MiB until the tree holds 60 MiB per 2,000 files."""
    names = []
    for folder, n in folders_for(files):
        stem = folder.rsplit("/", 1)[-1]
        ext = ".jpg" if folder == RENAMED[0] else ".dat"
        names += [f"{folder}/{stem}-{i:04}{ext}" for i in range(n)]
    sizes = [int(math.exp(rng.uniform(math.log(KiB), math.log(64 * KiB)))) for _ in names]
    target = files * 60 * MiB // 2000
    big = 0
    for i in rng.sample(range(len(names)), len(names)):
        if sum(sizes) >= target:
            break
        sizes[i] = int(math.exp(rng.uniform(math.log(MiB), math.log(4 * MiB))))
        big += 1
    for name, size in zip(names, sizes, strict=True):
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
        t = old_mtime(rng, now_ns)
        os.utime(p, ns=(t, t))
    dirs_back(src, now_ns - 3600 * 10**9)
    return sum(sizes), big


def dirs_back(root: Path, t: int) -> None:
    for dp, _dns, _fns in os.walk(root, topdown=False):
        os.utime(dp, ns=(t, t))


def a_day(src: Path, rng: random.Random, now_ns: int,
          add_in: list[Path] | None = None) -> tuple[int, int]:
    """The day's changes below src; (bytes of content new or changed, files in the
    renamed folder). The added files go to the folders add_in in turn (by default
    those of the files outside the renamed folder)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    outside = [p for p in files if not p.relative_to(src).as_posix().startswith(RENAMED[0] + "/")]
    picked = rng.sample(outside, EDITED + DELETED)
    t = now_ns - 600 * 10**9  # ten minutes ago
    changed = 0
    for p in picked[:EDITED]:  # in place: same size, same inode
        size = p.stat().st_size
        n = min(size, 4 * KiB)
        with open(p, "r+b") as f:
            f.seek(rng.randrange(size - n + 1))
            f.write(rng.randbytes(n))
        os.utime(p, ns=(t + rng.randrange(10**9),) * 2)
        changed += size
    for p in picked[EDITED:]:
        p.unlink()
    folders = add_in or sorted({p.parent for p in outside})
    for i in range(ADDED):
        p = folders[i % len(folders)] / f"new-{i}.dat"
        size = rng.randrange(10_000, 200_000)
        p.write_bytes(rng.randbytes(size))
        os.utime(p, ns=(t + rng.randrange(10**9),) * 2)
        changed += size
    n_renamed = sum(1 for _ in (src / RENAMED[0]).iterdir())
    os.rename(src / RENAMED[0], src / RENAMED[1])
    return changed, n_renamed


def tree_of(root: Path) -> dict[str, tuple]:
    """relative path -> ("dir",) or (size, sha256), for everything below root but a
    top-level .btsoot."""
    out: dict[str, tuple] = {}
    for dp, dns, fns in os.walk(root):
        rel = Path(dp).relative_to(root)
        if dp == str(root):
            dns[:] = [d for d in dns if d != ".btsoot"]
        for d in dns:
            out[(rel / d).as_posix()] = ("dir",)
        for n in fns:
            with open(os.path.join(dp, n), "rb") as f:
                out[(rel / n).as_posix()] = (os.fstat(f.fileno()).st_size,
                                             hashlib.file_digest(f, "sha256").hexdigest())
    return out


def compare(want: dict[str, tuple], dest: Path) -> str:
    got = tree_of(dest)
    if got == want:
        return "ok"
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    return f"FAIL ({len(bad)} differ, e.g. {bad[:3]})"


# ----------------------------------------------------------------------------- runs

def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run cmd to its end: (seconds, stdout). The child is ended if we are interrupted."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    secs = time.monotonic() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}\n{out}{err}")
    return secs, out


@dataclass
class Row:
    scenario: str
    tool: str
    seconds: float
    sent: int | None  # btsoot's bytes_sent, rsync's "Total bytes sent"
    up: int  # through the proxy, to the server
    down: int
    what: str = ""
    check: str = ""
    summary: dict = field(default_factory=dict)


class Tool:
    label = ""
    on_mount = True  # runs on an sshfs mount made for the run
    served: Path  # the destination, on the server's side
    cmd: list[str]

    def dest(self) -> Path:
        return self.served

    def command(self) -> list[str]:
        return self.cmd

    def env(self) -> dict[str, str] | None:
        return None

    def result(self, out: str) -> tuple[int | None, str, dict]:
        raise NotImplementedError


class Btsoot(Tool):
    def __init__(self, work: Path, mnt: Path, jobs: int | None, src: Path | None = None) -> None:
        """btsoot from this checkout's src/, or from `src` (another checkout's)."""
        self.jobs = jobs
        self.name = f"btsoot-j{jobs}" if jobs else "btsoot" if src is None else "btsoot-base"
        self.label = (f"btsoot --jobs {jobs}" if jobs else "btsoot" if src is None
                      else f"btsoot {version(src.parent)}")
        self.remote = mnt / self.name
        self.served = work / "served" / self.name
        self.served.mkdir(parents=True)
        # An installed wheel has its bytecode compiled (pip does it); so does this
        # src/, or every run would pay for compiling when PYTHONDONTWRITEBYTECODE is set.
        compileall.compile_dir(str(src or ROOT / "src"), quiet=1)
        self._env = dict(os.environ, PYTHONPATH=str(src or ROOT / "src"),
                         BTSOOT_CONFIG=str(work / f"config-{self.name}.toml"),
                         BTSOOT_STATE=str(work / f"state-{self.name}"))

    def env(self) -> dict[str, str] | None:
        return self._env

    def add(self, src: Path) -> None:
        run([sys.executable, "-m", "btsoot", "add", "b", str(src), str(self.remote)], self._env)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "btsoot", "backup", "b", "--json"]
        return cmd + (["--jobs", str(self.jobs)] if self.jobs else [])

    def result(self, out: str) -> tuple[int | None, str, dict]:
        s = json.loads(out)
        s = s[0] if isinstance(s, list) else s
        if s.get("result") not in ("ok", "nothing"):
            raise SystemExit(f"{self.label}: backup {s.get('result')}: {s}")
        ops = ", ".join(f"{k} {v}" for k, v in sorted(s["operations"].items())) or "nothing"
        return s["bytes_sent"], ops, s


def rsync_stats(out: str) -> tuple[int | None, str, dict]:
    def num(key: str) -> int:
        m = re.search(rf"^{key}: ([\d,]+)", out, re.M)
        return int(m.group(1).replace(",", "")) if m else 0
    s = {k: num(k) for k in ("Total bytes sent", "Total bytes received", "Literal data",
                             "Number of regular files transferred", "Number of deleted files")}
    what = (f"{s['Number of regular files transferred']} files sent, "
            f"{s['Number of deleted files']} deleted")
    return s["Total bytes sent"], what, s


class RsyncSsh(Tool):
    label = "rsync over ssh"
    on_mount = False

    def __init__(self, work: Path, src: Path, port: int, key: Path) -> None:
        self.served = work / "served" / "rsync-ssh"
        self.served.mkdir(parents=True)
        ssh = " ".join(["ssh", "-p", str(port), "-i", str(key), *SSH_OPTS])
        self.cmd = ["rsync", "-a", "--delete", "--stats", "-e", ssh, f"{src}/",
                    f"root@127.0.0.1:{self.served}/"]

    def result(self, out: str) -> tuple[int | None, str, dict]:
        return rsync_stats(out)


class RcloneSftp(Tool):
    """rclone's own SFTP client (no mount), 8 transfers, renames tracked by hash."""
    label = "rclone sftp"
    on_mount = False

    def __init__(self, work: Path, src: Path, port: int, key: Path) -> None:
        self.served = work / "served" / "rclone"
        self.served.mkdir(parents=True)
        self.cmd = ["rclone", "sync", f"{src}/", f"wan:{self.served}", "--transfers", "8",
                    "--checkers", "8", "--track-renames", "--retries", "1", "--stats", "0",
                    "--stats-log-level", "NOTICE", "--use-json-log", "-v"]
        self._env = dict(os.environ, RCLONE_CONFIG=str(work / "rclone.conf"),
                         RCLONE_CONFIG_WAN_TYPE="sftp", RCLONE_CONFIG_WAN_HOST="127.0.0.1",
                         RCLONE_CONFIG_WAN_PORT=str(port), RCLONE_CONFIG_WAN_USER="root",
                         RCLONE_CONFIG_WAN_KEY_FILE=str(key))

    def env(self) -> dict[str, str] | None:
        return self._env

    def result(self, out: str) -> tuple[int | None, str, dict]:
        return None, "", {}


class RsyncMount(Tool):
    label = "rsync onto sshfs"

    def __init__(self, work: Path, src: Path, mnt: Path) -> None:
        self.served = work / "served" / "rsync-mount"
        self.served.mkdir(parents=True)
        self.cmd = ["rsync", "-a", "--delete", "--stats", f"{src}/", f"{mnt}/rsync-mount/"]

    def result(self, out: str) -> tuple[int | None, str, dict]:
        return rsync_stats(out)


class Bench:
    def __init__(self, a: argparse.Namespace, work: Path, undo: contextlib.ExitStack) -> None:
        self.a, self.work, self.undo = a, work, undo
        self.src, self.mnt = work / "src", work / "mnt"
        self.rows: list[Row] = []

    @contextlib.contextmanager
    def mounted(self) -> Iterator[None]:
        """A fresh sshfs mount of the served folder at self.mnt, through the proxy."""
        self.mnt.mkdir(exist_ok=True)
        opts = (f"port={self.proxy.port},IdentityFile={self.key},StrictHostKeyChecking=no,"
                "UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR")
        with contextlib.ExitStack() as undo:
            _fuse_daemon(undo, ["sshfs", "-f", f"root@127.0.0.1:{self.work / 'served'}", str(self.mnt),
                                "-o", opts], self.mnt, self.work, 60)
            yield

    def measure(self, tool: Tool, scenario: str, want: dict[str, tuple]) -> Row:
        with self.mounted() if tool.on_mount else contextlib.nullcontext():
            up, down = self.proxy.bytes_up, self.proxy.bytes_down
            secs, out = run(tool.command(), tool.env())
            time.sleep(0.1)  # the last answers still in the proxy's queue
            up, down = self.proxy.bytes_up - up, self.proxy.bytes_down - down
        sent, what, summary = tool.result(out)
        row = Row(scenario, tool.label, secs, sent, up, down, what, compare(want, tool.dest()), summary)
        self.rows.append(row)
        print(f"  {scenario:15} {tool.label:18} {secs:8.2f} s  {row.check}", flush=True)
        return row

    def go(self) -> int:
        a = self.a
        self.src.mkdir()
        rng = random.Random(20261201)
        total, big = make_tree(self.src, a.files, rng, time.time_ns())
        sizes = ", ".join(f"{f} {n}" for f, n in folders_for(a.files))
        print(f"source: {a.files:,} files, {total:,} B ({total / MiB:.1f} MiB), {big} of them 1-4 MiB; "
              f"folders: {sizes}")
        (self.work / "served").mkdir()
        self.port, self.key = self.undo.enter_context(_sshd(self.work))
        self.proxy = self.undo.enter_context(wanproxy.running(self.port, a.rtt_ms / 2, a.mbit))
        c = wanproxy.check(a.rtt_ms / 2, a.mbit, mib=64)
        print(wanproxy.describe_check(c, a.rtt_ms / 2, a.mbit))
        ssh_true, _ = run(["ssh", "-p", str(self.proxy.port), "-i", str(self.key), *SSH_OPTS,
                           "root@127.0.0.1", "true"])
        print(f"`ssh ... true` through the proxy: {ssh_true:.3f} s (connection, key exchange, "
              f"login, one command)", flush=True)

        bts = [Btsoot(self.work, self.mnt, None)] + [Btsoot(self.work, self.mnt, j) for j in a.jobs]
        if a.baseline_src:
            bts.append(Btsoot(self.work, self.mnt, None, a.baseline_src))
        rs_ssh = RsyncSsh(self.work, self.src, self.proxy.port, self.key)
        rs_mnt = RsyncMount(self.work, self.src, self.mnt)
        with self.mounted():
            for b in bts:
                b.add(self.src)
        others: list[Tool] = [rs_ssh]
        if shutil.which("rclone") and not a.no_rclone:
            others.append(RcloneSftp(self.work, self.src, self.proxy.port, self.key))

        def order(n: int) -> list[Tool]:
            """The btsoot runs of scenario n start with a different one each time (4, 16,
            32; then 16, 32, 4; ...): a load that rises or falls does not favour one."""
            k = n % len(bts)
            return [*bts[k:], *bts[:k], *others]

        want = tree_of(self.src)
        for t in order(0):
            self.measure(t, S1, want)
        if a.rsync_mount_first:
            self.measure(rs_mnt, S1, want)
        else:  # filled on the server's side, not measured
            subprocess.run(["cp", "-a", f"{self.src}/.", str(rs_mnt.served)], check=True)
        others.append(rs_mnt)
        for t in order(1):
            self.measure(t, S2, want)
        changed, n_renamed = a_day(self.src, rng, time.time_ns())
        want = tree_of(self.src)
        for t in order(2):
            self.measure(t, S3, want)

        print()
        print(f"the day: {EDITED} files edited in place, {ADDED} added ({changed:,} B of content new or "
              f"changed), {DELETED} deleted, {RENAMED[0]} ({n_renamed} files) renamed to {RENAMED[1]}")
        if not a.rsync_mount_first:
            print("rsync onto sshfs: its first copy made on the server's side (cp -a), not measured")
        print()
        self.table()
        print()
        self.verdicts()
        return 1 if any(r.check != "ok" for r in self.rows) else 0

    def table(self) -> None:
        head = ("scenario", "tool", "seconds", "sent (tool's count)", "wire up", "wire down", "what",
                "check")
        t = [head] + [(r.scenario, r.tool, f"{r.seconds:.2f}", "-" if r.sent is None else f"{r.sent:,}",
                       f"{r.up:,}", f"{r.down:,}", r.what, r.check) for r in self.rows]
        w = [max(len(x[i]) for x in t) for i in range(len(head))]
        for x in t:
            print("  ".join(c.rjust(w[i]) if i in (2, 3, 4, 5) else c.ljust(w[i])
                            for i, c in enumerate(x)).rstrip())

    def verdicts(self) -> None:
        for s in (S1, S2, S3):
            rows = {r.tool: r for r in self.rows if r.scenario == s}
            base = rows["btsoot"]
            parts = [f"btsoot {base.seconds:.1f} s"]
            for r in rows.values():
                if r.tool.startswith("btsoot") and r is not base:
                    parts.append(f"{r.tool} {r.seconds:.1f} s (btsoot takes {base.seconds / r.seconds:.2f}x)")
            for name in ("rsync over ssh", "rclone sftp", "rsync onto sshfs"):
                if name in rows:
                    r = rows[name]
                    parts.append(f"{name} {r.seconds:.1f} s (btsoot takes {base.seconds / r.seconds:.1f}x)")
            print(f"{s}: " + "; ".join(parts))


def version(root: Path = ROOT) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + ("-dirty" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt-ms", type=float, default=20.0, help="the round trip the proxy adds")
    ap.add_argument("--mbit", type=float, default=None, help="also a rate limit, Mbit/s each way")
    ap.add_argument("--files", type=int, default=2000, help="files in the tree (60 MiB per 2,000)")
    ap.add_argument("--jobs", default="", help="btsoot --jobs values besides the default, e.g. 4,32")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="also btsoot from this src/ folder (another checkout's, its core built)")
    ap.add_argument("--no-rclone", action="store_true", help="skip rclone even where installed")
    ap.add_argument("--rsync-mount-first", action="store_true",
                    help="also time rsync's first copy onto the sshfs mount (slow)")
    ap.add_argument("--tmp", default=None, help="where the scratch folder goes")
    a = ap.parse_args()
    a.jobs = [int(j) for j in a.jobs.split(",") if j.strip()]
    if os.geteuid() != 0:
        raise SystemExit("needs root (sshd, FUSE)")
    for tool in ("sshd", "ssh-keygen", "ssh", "sshfs", "fusermount3", "rsync"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            raise SystemExit(f"{tool} is not installed (Debian: openssh-server sshfs fuse3 rsync)")
    if a.files < 100:
        raise SystemExit("--files: at least 100")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; btsoot {version()} "
          f"(this checkout's src/); round trip {a.rtt_ms:g} ms"
          f"{f', {a.mbit:g} Mbit/s each way' if a.mbit else ''}; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores", flush=True)
    def go(work: Path) -> int:
        with contextlib.ExitStack() as undo:
            return Bench(a, work, undo).go()

    return run_in_scratch("wan-bench-", a.tmp, go)

if __name__ == "__main__":
    sys.exit(main())
