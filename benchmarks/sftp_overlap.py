#!/usr/bin/env python3
"""How fast can a native SFTP client put files across a slow link, and how far does
keeping many requests in flight take it? The measurement behind btsoot's SSH remote.

    sudo .venv/bin/python benchmarks/sftp_overlap.py [--rtt-ms 20] [--mbit M]
        [--files 2000] [--in-flight 1,16,64,256] [--big-mib 64]

Needs asyncssh (`pip install asyncssh`), root (the sshd of tests/remotes.py) and
benchmarks/wanproxy.py in front of that sshd at RTT/2 each way. One SSH connection,
one SFTP session; for each --in-flight value N, FILES files of 8 KiB go to a fresh
folder on the server, spread over 20 folders, N files at a time, each the way
btsoot writes a file: open a temporary name (created, with its mode), write, set
mtime, fsync (fsync@openssh.com), close, rename onto the final name
(posix-rename@openssh.com). Each file's requests follow one another; the
overlap is between files. Then one file of --big-mib MiB, written with 64
writes of 256 KiB in flight, against the link's rate when --mbit is set.

Every file is then read on the server's side and compared (size, content, mode,
mtime): a wrong one fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import wanproxy  # noqa: E402

from remotes import _sshd  # noqa: E402

SMALL = 8192
FOLDERS = 20
MTIME_NS = 1_600_000_000 * 10**9


async def put_one(sftp, asyncssh, folder: str, name: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    tmp = f"{folder}/.tmp-{name}"
    f = await sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=0o640))
    try:
        await f.write(data, 0)
        await f.utime(ns=(MTIME_NS, MTIME_NS))
        await f.fsync()
    finally:
        await f.close()
    await sftp.posix_rename(tmp, f"{folder}/{name}")


async def small_files(sftp, asyncssh, base: str, files: int, in_flight: int,  # type: ignore[no-untyped-def]
                      data: bytes) -> float:
    await sftp.mkdir(base)
    await asyncio.gather(*(sftp.mkdir(f"{base}/d{k:02}") for k in range(FOLDERS)))
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await put_one(sftp, asyncssh, f"{base}/d{i % FOLDERS:02}", f"f{i:05}", data)

    t = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(files)))
    return time.monotonic() - t


async def big_file(sftp, asyncssh, path: str, data: bytes) -> float:  # type: ignore[no-untyped-def]
    block = 256 * 1024
    gate = asyncio.Semaphore(64)
    t = time.monotonic()
    f = await sftp.open(path, "wb", asyncssh.SFTPAttrs(permissions=0o600))

    async def one(off: int) -> None:
        async with gate:
            await f.write(data[off:off + block], off)

    try:
        await asyncio.gather(*(one(off) for off in range(0, len(data), block)))
        await f.fsync()
    finally:
        await f.close()
    return time.monotonic() - t


def check_small(folder: Path, files: int, data: bytes) -> list[str]:
    bad = []
    for i in range(files):
        p = folder / f"d{i % FOLDERS:02}" / f"f{i:05}"
        try:
            st = p.stat()
            ok = (p.read_bytes() == data and st.st_mtime_ns == MTIME_NS and st.st_mode & 0o777 == 0o640)
        except OSError:
            ok = False
        if not ok:
            bad.append(str(p))
    return bad


async def main_async(a: argparse.Namespace, work: Path, port: int, key: Path) -> int:
    import asyncssh

    served = work / "served"
    served.mkdir()
    data = os.urandom(SMALL)
    rows = []
    failed = False
    async with asyncssh.connect("127.0.0.1", port, username="root", client_keys=[str(key)],
                                known_hosts=None) as conn:
        async with conn.start_sftp_client() as sftp:
            for n in a.in_flight:
                files = min(a.files, max(50, n * 20)) if n < 16 else a.files
                secs = await small_files(sftp, asyncssh, f"{served}/n{n}", files, n, data)
                bad = check_small(served / f"n{n}", files, data)
                failed |= bool(bad)
                rows.append((f"{files} files of 8 KiB, {n} at a time", secs,
                             f"{secs / files * 1000:.1f} ms a file, {files / secs:.0f} files/s",
                             "ok" if not bad else f"FAIL ({len(bad)}: {bad[:2]})"))
                print(f"  {rows[-1][0]:40} {secs:8.2f} s  {rows[-1][2]}  {rows[-1][3]}", flush=True)
            big = os.urandom(a.big_mib << 20)
            secs = await big_file(sftp, asyncssh, f"{served}/big", big)
            ok = (served / "big").read_bytes() == big
            failed |= not ok
            rate = len(big) / secs / 1e6
            of_link = f", {rate / (a.mbit / 8) * 100:.0f}% of the link" if a.mbit else ""
            rows.append((f"one file of {a.big_mib} MiB", secs, f"{rate:.1f} MB/s{of_link}",
                         "ok" if ok else "FAIL"))
            print(f"  {rows[-1][0]:40} {secs:8.2f} s  {rows[-1][2]}  {rows[-1][3]}", flush=True)
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--mbit", type=float, default=None, help="also a rate limit, Mbit/s each way")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--in-flight", default="1,16,64,256")
    ap.add_argument("--big-mib", type=int, default=64)
    a = ap.parse_args()
    a.in_flight = [int(x) for x in a.in_flight.split(",") if x.strip()]
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        raise SystemExit("needs asyncssh: pip install asyncssh") from None
    if os.geteuid() != 0:
        raise SystemExit("needs root (sshd)")
    print(f"round trip {a.rtt_ms:g} ms{f', {a.mbit:g} Mbit/s each way' if a.mbit else ''}; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sftp-overlap-"))
    try:
        with contextlib.ExitStack() as undo:
            port, key = undo.enter_context(_sshd(work))
            proxy = undo.enter_context(wanproxy.running(port, a.rtt_ms / 2, a.mbit))
            return asyncio.run(main_async(a, work, proxy.port, key))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
