#!/usr/bin/env python3
"""A source on an sshfs mount, unmounted and mounted again between runs (a
reboot): what btsoot and rsync read through it, measured at the sftp server.

    sudo .venv/bin/python benchmarks/source_sshfs.py [--old-rev REV | --old-src DIR]
        [--files 1500] [--mib 60] [--tmp /tmp]

A served folder on the local disk (FILES files, MIB MiB in all, sizes
log-uniform with a few larger files, 14 folders: one of 150 files, the others
about 100; random content; every mtime at least an hour back, so nothing is
"racy"), an sshd on 127.0.0.1 serving it (tests/remotes.py: throwaway keys,
its own config, `internal-sftp`), mounted with sshfs: that mount is the source.
btsoot backs up to a local folder; `rsync -a --delete MOUNT/ DEST/` copies the
same mount into a local folder of its own.

Every run gets a fresh mount (cold sshfs caches, as after a reboot); mounting
is not timed. Per run: the wall time of the tool, and the bytes the sftp
server read while it ran: the sum of `rchar` in /proc/PID/io of the sshd
session processes serving internal-sftp (file data plus the requests they
receive), read before and after the run with the mount up.

1. first backup;
2. remount, nothing changed;
3. remount after a day, done on the server's side: 30 files edited in place
   (same size), 6 added, 6 deleted, the 150-file folder renamed (rsync reads
   it again);
4. remount, `du -s MOUNT` first (not measured: anything that walks the share
   before the backup), nothing changed.

sshfs numbers inodes in the order they are first looked up after a mount: a
fresh mount walked in the same order over an unchanged tree gives the same
numbers (scenario 2); a changed tree (3) or another walk first (4) does not.

With --old-rev REV (exported with `git archive` into the scratch folder, its
compiled core built there) or --old-src DIR (a built tree's src/), that older
btsoot runs every scenario too, onto a destination and state of
its own, for contrast. A release that refuses the remounted source as "a
different file system" (before ad55bbb, when the mount's device number
changed) is noted in the table and run again with --override.

After every run the destination is compared with the served folder (every
relative path, each file's size and SHA-256); a difference prints FAIL and
makes the script exit 1. Everything (mounts, sshd, the scratch folder) is
undone at the end, even after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from remotes import sftp_server_pids, sftp_server_read, sshfs_server  # noqa: E402  (sshd + sshfs of the test suite)

sys.path.insert(0, str(ROOT / "benchmarks"))
import wan  # noqa: E402  (the same day of changes)
from scratch import run_in_scratch  # noqa: E402
from wan import ADDED, DELETED, EDITED, RENAMED  # noqa: E402

MiB = 1 << 20
OTHER_FOLDERS = ("documents/letters", "documents/invoices", "documents/manuals", "music/jazz",
                 "music/live", "code/src", "code/tests", "mail/inbox", "mail/sent", "scans",
                 "notes", "projects/house", "projects/garden")
RSYNC = "rsync -a --delete"
FIRST = ["du", "-s"]  # scenario 4: something walks the fresh mount before the backup
S1, S2, S3 = "1 first backup", "2 remount, no change", "3 remount, a day"
S4 = f"4 remount, `{' '.join(FIRST)}` first, no change"

Mounter = Callable[[Path, Path], AbstractContextManager[None]]


# ----------------------------------------------------------------------------- the tree

def make_tree(served: Path, files: int, total: int, rng: random.Random, now_ns: int) -> int:
    """The served tree; returns its bytes. Sizes are drawn log-uniform (300 B ..
    512 KiB, one file in 200 1-4 MiB) and scaled so the tree holds `total`."""
    n_renamed = 150
    per = [(files - n_renamed) // len(OTHER_FOLDERS)] * len(OTHER_FOLDERS)
    for i in range((files - n_renamed) % len(OTHER_FOLDERS)):
        per[i] += 1
    names = [f"{RENAMED[0]}/IMG_{i:04}.jpg" for i in range(n_renamed)]
    for folder, n in zip(OTHER_FOLDERS, per, strict=True):
        stem = folder.rsplit("/", 1)[-1]
        names += [f"{folder}/{stem}-{i:03}.dat" for i in range(n)]
    raw = [math.exp(rng.uniform(math.log(MiB), math.log(4 * MiB)))
           if rng.random() < 0.005 else math.exp(rng.uniform(math.log(300), math.log(512 * 1024)))
           for _ in names]
    scale = total / sum(raw)
    written = 0
    for name, r in zip(names, raw, strict=True):
        p = served / name
        p.parent.mkdir(parents=True, exist_ok=True)
        size = max(1, int(r * scale))
        p.write_bytes(rng.randbytes(size))
        # At least an hour old, up to 30 days, with a nanosecond fraction
        # (sshfs shows whole seconds).
        t = now_ns - (3600 + rng.randrange(30 * 86400)) * 10**9 - rng.randrange(10**9)
        os.utime(p, ns=(t, t))
        written += size
    set_dir_times(served, now_ns - 3600 * 10**9)
    return written


def set_dir_times(root: Path, t: int) -> None:
    for dp, _dns, _fns in os.walk(root, topdown=False):
        os.utime(dp, ns=(t, t))


def a_day(served: Path, rng: random.Random, now_ns: int) -> tuple[int, int]:
    """The day's changes (wan.py's), on the server's side; returns (content new or
    changed in bytes, files in the renamed folder)."""
    return wan.a_day(served, rng, now_ns, [served / f for f in OTHER_FOLDERS])


def listing(root: Path) -> dict[str, tuple]:
    """Every entry below root but a top-level .btsoot: ("dir",) or (size, sha256)."""
    out: dict[str, tuple] = {}
    for dp, dns, fns in os.walk(root):
        rel = os.path.relpath(dp, root)
        if rel == ".":
            dns[:] = [d for d in dns if d != ".btsoot"]
        for d in dns:
            out[os.path.normpath(os.path.join(rel, d))] = ("dir",)
        for n in fns:
            p = os.path.join(dp, n)
            with open(p, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            out[os.path.normpath(os.path.join(rel, n))] = (os.lstat(p).st_size, digest)
    return out


def same_tree(served: Path, dest: Path) -> str:
    a, b = listing(served), listing(dest)
    if a == b:
        return "ok"
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return f"FAIL ({len(diff)} differ, e.g. {diff[:3]})"


# ----------------------------------------------------------------------------- runs

@dataclass
class Row:
    scenario: str
    tool: str
    seconds: float
    read: int
    summary: dict = field(default_factory=dict)
    check: str = ""
    note: str = ""


def run(cmd: list[str], env: dict[str, str] | None = None,
        ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if p.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return p


def measured(work: Path, cmd: list[str], env: dict[str, str] | None = None,
             ok: tuple[int, ...] = (0,)) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Run cmd with the mount up: (seconds, bytes the sftp server read, the process)."""
    if not sftp_server_pids(work):
        raise SystemExit("no sftp session found for the mount")
    before = sftp_server_read(work)
    t = time.monotonic()
    p = run(cmd, env, ok)
    secs = time.monotonic() - t
    time.sleep(0.05)  # a read-ahead request still in flight
    return secs, sftp_server_read(work) - before, p


class Btsoot:
    def __init__(self, label: str, pythonpath: Path, work: Path) -> None:
        self.label = label
        self.dest = work / f"dest-{label.replace(' ', '-')}"
        self.dest.mkdir()
        self.env = dict(os.environ, PYTHONPATH=str(pythonpath),
                        BTSOOT_CONFIG=str(work / f"config-{self.dest.name}.toml"),
                        BTSOOT_STATE=str(work / f"state-{self.dest.name}"))
        self.cmd = [sys.executable, "-m", "btsoot"]

    def add(self, source: Path) -> None:
        run([*self.cmd, "add", "b", str(source), str(self.dest)], self.env)

    def backup(self, work: Path, scenario: str) -> Row:
        """A backup; one that refuses the remounted source as "a different file
        system" (releases before ad55bbb, when the mount's device number changed)
        is noted and run again with --override."""
        cmd = [*self.cmd, "backup", "b", "--json"]
        secs, read, p = measured(work, cmd, self.env, ok=(0, 4))
        note = ""
        if p.returncode == 4 and "different file system" in p.stderr:
            note = "refused: 'a different file system'; run again with --override"
            secs, read, p = measured(work, [*cmd, "--override"], self.env)
        elif p.returncode:
            raise SystemExit(f"{self.label}, {scenario}: exit {p.returncode}\n{p.stdout}{p.stderr}")
        s = json.loads(p.stdout)
        s = s[0] if isinstance(s, list) else s
        if s.get("result") not in ("ok", "nothing"):
            raise SystemExit(f"{self.label}, {scenario}: backup {s.get('result')}: {s}")
        return Row(scenario, self.label, secs, read, s, note=note)


def rsync_row(work: Path, mnt: Path, dest: Path, scenario: str) -> Row:
    secs, read, _ = measured(work, ["rsync", "-a", "--delete", f"{mnt}/", f"{dest}/"])
    return Row(scenario, RSYNC, secs, read)


def export(rev: str, dest: Path) -> Path:
    """rev's tree under dest with its compiled core built in place; its src/."""
    dest.mkdir()
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=dest, check=True,
                   capture_output=True)
    return dest / "src"


def version(pythonpath: Path) -> str:
    """The commit of the tree holding pythonpath, "-dirty" if files under it differ."""
    try:
        rev = subprocess.run(["git", "-C", str(pythonpath), "log", "-1", "--format=%h"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(pythonpath), "status", "--porcelain", "."],
                               capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError:
        return "?"
    return rev + ("-dirty" if dirty else "")


# ----------------------------------------------------------------------------- main

def bench(a: argparse.Namespace, work: Path) -> int:
    served, mnt = work / "served", work / "src"
    served.mkdir()
    rng = random.Random(20261130)
    now = time.time_ns()
    total = make_tree(served, a.files, a.mib * MiB, rng, now)
    print(f"served tree: {a.files:,} files, {total:,} B ({total / MiB:.1f} MiB), "
          f"{1 + len(OTHER_FOLDERS)} folders")

    new = Btsoot("btsoot", ROOT / "src", work)
    old = None
    if a.old_rev:
        t = time.monotonic()
        old_src = export(a.old_rev, work / "old")
        print(f"old btsoot: {a.old_rev} exported and built in {time.monotonic() - t:.1f} s")
        old = Btsoot(f"btsoot {a.old_rev}", old_src, work)
    elif a.old_src:
        old = Btsoot(f"btsoot {version(Path(a.old_src))}", Path(a.old_src), work)
    rs_dest = work / "dest-rsync"
    rs_dest.mkdir()

    rows: list[Row] = []
    tools: list[tuple[Btsoot | None, Path]] = [(new, new.dest), (None, rs_dest)]
    if old:
        tools.append((old, old.dest))
    with sshfs_server(work) as mount_at:
        with mount_at(served, mnt):
            for bt, _ in tools:
                if bt:
                    bt.add(mnt)

        def scenario(name: str, first: list[str] | None = None) -> None:
            """Each tool on a mount of its own, after `first` (not measured) if given."""
            for bt, dest in tools:
                with mount_at(served, mnt):
                    if first:
                        run([*first, str(mnt)])
                    row = bt.backup(work, name) if bt else rsync_row(work, mnt, rs_dest, name)
                row.check = same_tree(served, dest)
                rows.append(row)

        scenario(S1)
        scenario(S2)
        changed, n_renamed = a_day(served, rng, time.time_ns())
        scenario(S3)
        scenario(S4, FIRST)

    print(f"the day: {EDITED} files edited in place, {ADDED} added ({changed:,} B of content new or "
          f"changed), {DELETED} deleted, {RENAMED[0]} ({n_renamed} files) renamed to {RENAMED[1]}")
    print()
    head = ("scenario", "tool", "seconds", "MB read at server", "bytes_sent", "hashed_files", "check",
            "note")
    table = [head] + [
        (r.scenario, r.tool, f"{r.seconds:.2f}", f"{r.read / 1e6:.3f}",
         f"{r.summary['bytes_sent']:,}" if r.summary else "-",
         f"{r.summary['hashed_files']:,}" if r.summary else "-", r.check, r.note) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(head))]
    for t in table:
        print("  ".join(c.rjust(w) if i in (2, 3, 4, 5) else c.ljust(w)
                        for i, (c, w) in enumerate(zip(t, widths, strict=True))).rstrip())
    print()
    for s in (S1, S2, S3, S4):
        bt = next(r for r in rows if r.scenario == s and r.tool == "btsoot")
        rs = next(r for r in rows if r.scenario == s and r.tool == RSYNC)
        ratio = f"{bt.read / rs.read:.3f}x" if rs.read else "-"
        line = (f"{s}: btsoot read {bt.read:,} B at the server, rsync {rs.read:,} B: {ratio}; "
                f"time {bt.seconds:.2f} s vs {rs.seconds:.2f} s")
        prev = next((r for r in rows if r.scenario == s and old and r.tool == old.label), None)
        if prev:
            line += f"; {prev.tool}: {prev.read:,} B, {prev.summary['hashed_files']:,} files hashed"
        print(line)
    return 1 if any(r.check != "ok" for r in rows) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1500)
    ap.add_argument("--mib", type=int, default=60, help="the tree's total size")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--old-rev", help="also run this git revision of btsoot (built in the scratch folder)")
    g.add_argument("--old-src", help="also run the btsoot under this src/ folder (its core built)")
    ap.add_argument("--tmp", default=None, help="where the scratch folder goes")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (sshd, FUSE)")
    for tool in ("sshd", "ssh-keygen", "sshfs", "fusermount3", "rsync"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            raise SystemExit(f"{tool} is not installed (Debian: openssh-server sshfs fuse3 rsync)")
    if a.files < 150 + len(OTHER_FOLDERS) * 10:
        raise SystemExit("--files: at least 280")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"btsoot {version(ROOT / 'src')} (this checkout's src/); "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return run_in_scratch("sshfs-source-bench-", a.tmp, lambda work: bench(a, work))

if __name__ == "__main__":
    sys.exit(main())
