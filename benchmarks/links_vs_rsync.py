"""Hard links backed up: btsoot beside rsync -aHAXS (and plain rsync -a).

    python3 benchmarks/links_vs_rsync.py [--groups 20] [--size-mib 8] [--small 200] [--tmp /tmp]

A source tree of GROUPS files of SIZE MiB random data, each with three names
(two in one folder, one in the next folder), and SMALL ordinary files of
100 B .. 16 KiB, all modified an hour ago, backed up by each tool into its own
folder on the same file system (a fresh folder under --tmp, removed at the end).
Exits 1 when the restore is not exact.

1. First backup: btsoot, rsync -aHAXS and rsync -a (which copies every name in
   full). For each: the time, the file bytes it sent (btsoot: bytes_sent;
   rsync: "Literal data" of --stats), the bytes the copy allocates (st_blocks of
   each inode once, the copy's whole folder: btsoot's .btsoot/ included) and
   the link count of a group member on the copy.
2. A day: a fourth name for 5 groups, one name of 5 other groups deleted, one
   group's file rewritten in place with new content (all its names change).
   Each tool runs again onto its copy (rsync with --delete). The link counts
   shown are on the copy, of a member of a grown, a shrunk and the rewritten
   group (the source has 4/2/3). btsoot keeps what a day replaces or deletes in
   its attic (keep_within = 30d, the default): there the old version of the
   rewritten file, and the deleted names as further links.
3. Restore: btsoot restore into an empty folder, then
   rsync -aHAXS -c --numeric-ids --dry-run --itemize-changes --delete SRC/ RESTORED/
   must print nothing; and every group's restored names must be one inode.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

from sparse_vs_rsync import literal, run  # (the same rsync and run helpers)

MiB = 1 << 20
FOLDERS = 4


def allocated(top: str) -> int:
    """Bytes allocated under top, each inode counted once (as du does)."""
    seen: set[int] = set()
    total = 0
    for dp, dns, fns in os.walk(top):
        for n in dns + fns:
            st = os.lstat(os.path.join(dp, n))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def nlink(path: str) -> int:
    return os.lstat(path).st_nlink


def make_tree(src: str, groups: int, size: int, small: int,
              rng: random.Random) -> list[list[str]]:
    """The tree; returns each group's names (relative to src)."""
    for k in range(FOLDERS):
        os.makedirs(os.path.join(src, f"folder{k}"))
    names = []
    for i in range(groups):
        d, other = f"folder{i % FOLDERS}", f"folder{(i + 1) % FOLDERS}"
        g = [f"{d}/big{i:02}.bin", f"{d}/big{i:02}-same-folder.bin",
             f"{other}/big{i:02}-other-folder.bin"]
        with open(os.path.join(src, g[0]), "wb") as f:
            f.write(rng.randbytes(size))
        for n in g[1:]:
            os.link(os.path.join(src, g[0]), os.path.join(src, n))
        names.append(g)
    for i in range(small):
        with open(os.path.join(src, f"folder{i % FOLDERS}", f"small{i:03}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randint(100, 16 * 1024)))
    # Written an hour ago (with a nanosecond fraction), as a real tree is: a file
    # modified within 2 s of a scan is read again by the next one (btsoot's racy
    # guard), which would charge the day for the tree having just been made.
    old = time.time_ns() - 3600 * 10**9
    for dp, dns, fns in os.walk(src, topdown=False):
        for n in fns + dns + ([""] if dp == src else []):
            t = old + rng.randrange(10**9)
            os.utime(os.path.join(dp, n), ns=(t, t))
    return names


def a_day(src: str, names: list[list[str]], size: int, rng: random.Random) -> tuple[str, str, str]:
    """5 groups get a 4th name, 5 others lose one, one is rewritten in place.
    Returns a member of a grown, a shrunk and the rewritten group."""
    for i in range(5):
        new = f"folder{(i + 2) % FOLDERS}/big{i:02}-fourth.bin"
        os.link(os.path.join(src, names[i][0]), os.path.join(src, new))
        names[i].append(new)
    for i in range(5, 10):
        os.unlink(os.path.join(src, names[i].pop(1)))
    with open(os.path.join(src, names[10][0]), "r+b") as f:  # same inode, all names
        f.write(rng.randbytes(size))
    return names[0][0], names[5][0], names[10][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--size-mib", type=int, default=8)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--tmp", default=None, help="where the scratch folder goes")
    a = ap.parse_args()
    if a.groups < 11:
        raise SystemExit("--groups: at least 11 (5 grow, 5 shrink, 1 rewritten)")
    top = tempfile.mkdtemp(prefix="linksbench-", dir=a.tmp)
    try:
        bench(a, top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def bench(a: argparse.Namespace, top: str) -> None:
    size = a.size_mib * MiB
    src = os.path.join(top, "src")
    bt, rs_h, rs_a = (os.path.join(top, n) for n in ("btsoot", "rsync-aHAXS", "rsync-a"))
    for d in (bt, rs_h, rs_a):
        os.makedirs(d)
    rng = random.Random(1)
    names = make_tree(src, a.groups, size, a.small, rng)
    env = dict(os.environ, BTSOOT_STATE=os.path.join(top, "state"),
               BTSOOT_CONFIG=os.path.join(top, "config.toml"))
    btsoot = [sys.executable, "-m", "btsoot"]
    rsyncs = (("rsync -aHAXS", ["-aHAXS"], rs_h), ("rsync -a", ["-a"], rs_a))
    run(btsoot + ["add", "b", src, bt], env)

    print(f"{a.groups} files of {a.size_mib} MiB, 3 names each, and {a.small} small files; "
          f"source allocates {allocated(src):,} B")
    print(f"{'':<16}{'time':>8}{'sent':>16}{'allocated':>16}{'links':>8}")

    def row(label: str, secs: float, sent: int, alloc: int | str, links: str) -> None:
        alloc_s = f"{alloc:,}" if isinstance(alloc, int) else alloc
        print(f"{label:<16}{secs:>7.2f}s{sent:>16,}{alloc_s:>16}{links:>8}")

    # 1. The first backup.
    print("1. first backup")
    member = names[0][0]
    out, secs = run(btsoot + ["backup", "b", "--json"], env)
    s = json.loads(out)
    first = {"btsoot": s["bytes_sent"]}
    row("btsoot", secs, s["bytes_sent"], allocated(bt), str(nlink(os.path.join(bt, member))))
    for label, flags, dst in rsyncs:
        out, secs = run(["rsync", *flags, "--delete", "--stats", src + "/", dst + "/"])
        first[label] = literal(out)
        row(label, secs, literal(out), allocated(dst), str(nlink(os.path.join(dst, member))))
    print(f"   (btsoot: {s['operations']}; hashed {s['hashed_bytes']:,} B; "
          f"its own durations: total {s['durations']['total']:.2f}s)")

    # 2. A day.
    print("2. a day: 5 groups +1 name, 5 groups -1 name, 1 group rewritten in place "
          "(links: a grown / shrunk / rewritten member; source 4/2/3)")
    grown, shrunk, rewritten = a_day(src, names, size, rng)

    def links(dst: str) -> str:
        return "/".join(str(nlink(os.path.join(dst, p))) for p in (grown, shrunk, rewritten))

    out, secs = run(btsoot + ["backup", "b", "--json"], env)
    s = json.loads(out)
    day = {"btsoot": s["bytes_sent"]}
    row("btsoot", secs, s["bytes_sent"], allocated(bt), links(bt))
    for label, flags, dst in rsyncs:
        out, secs = run(["rsync", *flags, "--delete", "--stats", src + "/", dst + "/"])
        day[label] = literal(out)
        row(label, secs, literal(out), allocated(dst), links(dst))
    print(f"   (btsoot: {s['operations']}; hashed {s['hashed_bytes']:,} B; "
          f"its own durations: total {s['durations']['total']:.2f}s; "
          f"attic: {s['attic_files']} names, {s['attic_bytes']:,} B)")
    ino = os.lstat(os.path.join(bt, shrunk)).st_ino
    mirror = sum(os.lstat(os.path.join(dp, n)).st_ino == ino
                 for dp, _, fns in os.walk(bt) for n in fns
                 if not os.path.relpath(dp, bt).startswith(".btsoot"))
    print(f"   (btsoot's shrunk member: {mirror} names in the mirror, "
          f"{nlink(os.path.join(bt, shrunk)) - mirror} in .btsoot/, its attic)")

    # 3. Restore into an empty folder, checked by rsync and by inode.
    restored = os.path.join(top, "restored")
    out, secs = run(btsoot + ["restore", "b", "--to", restored, "--json"], env)
    r = json.loads(out)
    out, _ = run(["rsync", "-aHAXS", "-c", "--numeric-ids", "--dry-run", "--itemize-changes",
                  "--delete", src + "/", restored + "/"])
    differing = [ln for ln in out.splitlines() if ln.strip()]
    intact = sum(len({os.lstat(os.path.join(restored, p)).st_ino for p in g}) == 1
                 and nlink(os.path.join(restored, g[0])) == len(g) for g in names)
    print(f"3. restore: {secs:.2f}s, {r['copied_bytes']:,} B copied, {r['hard_links']} hard links "
          f"made; rsync -c --itemize-changes: {len(differing)} differing lines; "
          f"groups one inode: {intact}/{len(names)}")
    for ln in differing[:10]:
        print(f"   {ln}")

    def verdict(what: str, d: dict[str, int]) -> str:
        bt_b, rs_b = d["btsoot"], d["rsync -aHAXS"]
        ratio = f"{bt_b / rs_b:.2f}x" if rs_b else "n/a"
        return (f"{what}: btsoot {bt_b:,} B / rsync -aHAXS {rs_b:,} B = {ratio} "
                f"(rsync -a {d['rsync -a']:,} B)")

    print(verdict("first backup", first))
    print(verdict("a day", day))
    ok = not differing and intact == len(names)
    print(f"restore: {'exact' if ok else 'NOT EXACT'} ({len(differing)} differing lines, "
          f"{intact}/{len(names)} groups one inode)")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
