"""btsoot against rsync at many small files: peak memory per file, and time.

    python3 benchmarks/scale.py [--sizes 250k,1M,3M] [--out FILE]   (`make compare-scale`)

Needs root (it drops the page cache). `compare.py` measures 100k files of real
sizes; this asks how btsoot grows with the number of files: whether its peak
RSS stays flat (the project's target: at most 150 MiB for any command, under 20
bytes more per file) and how its time compares with rsync's and with a bare
`find` of the tree as the number of files grows.

Trees: for each size N, N files of 0-2 KiB (random content with a unique first
line) in folders of 100, under ten top folders of 10% each:
`a000/b00000/f0000000`. Sizes, contents and mtimes (with a nanosecond
fraction) are a function of the file's number, so the tree is deterministic.
Made once, by one process per core, and cached under $BTSOOT_BENCH_DIR or
/tmp/btsoot-bench, in `scale/N`. The cached tree is the source of the runs
itself (a hard-link copy would give every file a second link, which btsoot
tracks); the day's changes are undone afterwards from the same function, and
a tree whose run was interrupted is made again.

Scenarios, for each size, btsoot (a block with a remote folder on the same
disk, fresh state) and `rsync -a --delete SRC/ DST/` (its own target) back to
back:

- initial:         the first backup into an empty target (the source read once
                   before each tool: its page cache warm);
- no-change warm:  nothing changed, page cache warm (each tool run once, then
                   measured);
- no-change cold:  the same after `sync; echo 3 > /proc/sys/vm/drop_caches`
                   before each tool's run;
- day:             1% of the files edited in place (half keep their size, half
                   grow), 0.2% added, 0.2% deleted, one top folder (10% of the
                   tree) renamed; applied once, then each tool (the source read
                   once before each).

`find SRC -printf '%p %s %T@\\n' > /dev/null`, warm and cold, is the reference
for the no-change rows: the least any tool that looks at every file can do.

Per run: time = wall time plus a syncfs of the target after the tool exits
(btsoot syncs its remote itself, rsync does not: the time until the backup is
durable, as in compare.py); CPU = user+sys and peak RSS = ru_maxrss of the
tool's process tree (compare.run_measured). After each btsoot and rsync run the
target is compared with the source: every path, kind, file size and mtime to
the second (btsoot's `.btsoot` folder left out), and the content of every file
the day touched plus 300 others. Also btsoot's local state and the remote's
`.btsoot` record, in bytes per file, after the first backup and after the day.

At the end: the slope of btsoot's peak RSS per file between the smallest and
the largest size, for each scenario, and each of the project's targets as met
or missed. Timings are reported, never asserted (exit 1 only when a check
failed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (run_measured, freeze_btsoot, the btsoot and rsync tools, machine)

BASE = compare.BASE / "scale"
NS = compare.NS
MiB = compare.MiB
TOPS = 10  # top folders, 10% of the files each (the day renames one)
PER_FOLDER = 100
MAX_SIZE = 2048
OLD = compare.OLD_MTIME  # 2020-09, whole seconds: never "racy" for any scan
LAYOUT = "scale v1\n"  # the cache key: bump it when the generator changes
M64 = (1 << 64) - 1

# The project's targets (its issue on scale), printed beside the results.
RSS_MAX_MIB = 150
SLOPE_MAX = 20  # bytes per file
INITIAL_MAX = 1.0  # x rsync
NOCHANGE_FIND_MAX = 1.3  # x find -printf
NOCHANGE_RSYNC_MAX = 0.6  # x rsync
DAY_MAX = 0.5  # x rsync

SCENARIOS = ("initial", "no-change warm", "no-change cold", "day")


def log(msg: str) -> None:
    compare.log(msg)


def parse_size(text: str) -> int:
    """'100k' -> 100000, '1M' -> 1000000, '1.5M', '5000'."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def label(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit}"
    return str(n)


# ---------------------------------------------------------------------------
# Trees: every file a function of its number


def mix(x: int) -> int:
    """splitmix64: a well-spread 64-bit hash of x (sizes, offsets, mtimes)."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


POOL = random.Random(1).randbytes(4 * MiB)  # contents are slices of this


def rel_dir(folder: int, n: int) -> str:
    """Folder number -> 'aTTT/bFFFFF' (folders spread evenly over the tops)."""
    folders = -(-n // PER_FOLDER)
    return f"a{folder * TOPS // folders:03d}/b{folder:05d}"


def rel_file(i: int, n: int) -> str:
    return f"{rel_dir(i // PER_FOLDER, n)}/f{i:07d}"


def content(i: int) -> tuple[bytes, int]:
    """File i's bytes and mtime in ns (a fraction of 1..NS-1 ns: never whole)."""
    h = mix(i)
    size = h % (MAX_SIZE + 1)
    head = f"{i}\n".encode()[:size]
    off = (h >> 12) % (len(POOL) - MAX_SIZE)
    g = mix(h)
    return head + POOL[off:off + size - len(head)], (OLD + g % 10_000_000) * NS + 1 + (g >> 24) % (NS - 1)


def write_file(path: str, i: int, flags: int = os.O_CREAT | os.O_EXCL) -> None:
    data, mtime = content(i)
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        os.write(fd, data)
        os.utime(fd, ns=(mtime, mtime))
    finally:
        os.close(fd)


def _make_folders(job: tuple[str, int, int, int]) -> int:
    """Worker: folders first..last-1 of the tree at root, with their files."""
    root, n, first, last = job
    for folder in range(first, last):
        d = f"{root}/{rel_dir(folder, n)}"
        os.makedirs(d, exist_ok=True)
        for i in range(folder * PER_FOLDER, min(n, (folder + 1) * PER_FOLDER)):
            write_file(f"{d}/f{i:07d}", i)
    return last - first


def set_dir_times(root: Path, rels: set[str]) -> None:
    """Folders (relative; '' is the root) to their own deterministic mtimes."""
    for rel in rels:
        t = compare.sub_second(OLD, "dir:" + rel)
        os.utime(root / rel if rel else root, ns=(t, t))


def all_dirs(n: int) -> set[str]:
    folders = -(-n // PER_FOLDER)
    out = {""} | {rel_dir(f, n) for f in range(folders)}
    return out | {d.partition("/")[0] for d in out if d}


def marker(n: int) -> Path:
    return BASE / f"{n}.complete"


def ensure_tree(n: int) -> Path:
    """The cached tree of n files, made now if missing or left changed."""
    tree = BASE / str(n)
    if marker(n).exists() and marker(n).read_text() == LAYOUT and tree.is_dir():
        log(f"tree {label(n)}: cached at {tree}")
        return tree
    log(f"tree {label(n)}: generating {n:,} files under {tree} ...")
    t0 = time.monotonic()
    marker(n).unlink(missing_ok=True)
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    folders = -(-n // PER_FOLDER)
    step = max(1, folders // 64)  # small jobs, so both cores stay busy to the end
    jobs = [(str(tree), n, f, min(folders, f + step)) for f in range(0, folders, step)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 2) as pool:
        for _ in pool.imap_unordered(_make_folders, jobs):
            pass
    set_dir_times(tree, all_dirs(n))  # after the files: creating them moved these
    os.sync()
    marker(n).write_text(LAYOUT)
    gen = time.monotonic() - t0
    log(f"tree {label(n)}: generated in {gen:.1f} s ({n / gen:,.0f} files/s, sync included)")
    return tree


# ---------------------------------------------------------------------------
# The day's changes, and undoing them


@dataclass
class Day:
    n: int
    modify: list[int] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)
    add: list[tuple[int, str]] = field(default_factory=list)  # (content number, path)
    top: str = "a001"  # renamed to top + "-renamed"

    @classmethod
    def plan(cls, n: int) -> Day:
        rng = random.Random(f"scale-day-{n}")
        picked = rng.sample(range(n), n // 100 + n // 500)
        d = cls(n, sorted(picked[:n // 100]), sorted(picked[n // 100:]))
        folders = -(-n // PER_FOLDER)
        for k in range(n // 500):
            d.add.append((n + k, f"{rel_dir(rng.randrange(folders), n)}/n{k:07d}"))
        return d

    def renamed(self, rel: str) -> str:
        return self.top + "-renamed" + rel[len(self.top):] if rel.partition("/")[0] == self.top else rel

    def touched(self) -> list[str]:
        """Paths (after the day) whose content changed: checked in full."""
        return [self.renamed(rel_file(i, self.n)) for i in self.modify] + [self.renamed(p)
                                                                          for _, p in self.add]

    def apply(self, src: Path) -> None:
        rng = random.Random(f"scale-apply-{self.n}")
        for k, i in enumerate(self.modify):
            p = src / rel_file(i, self.n)
            size = p.stat().st_size
            with open(p, "r+b") as f:
                if k % 2 == 0 and size:  # same size: a few bytes overwritten
                    f.seek(rng.randrange(max(1, size - 64)))
                    f.write(rng.randbytes(min(64, size)))
                else:  # grows
                    f.seek(0, os.SEEK_END)
                    f.write(rng.randbytes(rng.randrange(1, 1025)))
            t = compare._now_ns()
            os.utime(p, ns=(t, t))
        for i in self.delete:
            (src / rel_file(i, self.n)).unlink()
        hour_ago = (int(time.time()) - 3600) * NS
        for c, rel in self.add:
            write_file(str(src / rel), c)
            t = hour_ago + 1 + mix(c) % (NS - 1)
            os.utime(src / rel, ns=(t, t))
        os.rename(src / self.top, src / (self.top + "-renamed"))

    def undo(self, src: Path) -> None:
        """Back to the generated tree: renamed back, added files gone, edited and
        deleted files written again, the folders' mtimes reset."""
        os.rename(src / (self.top + "-renamed"), src / self.top)
        for _, rel in self.add:
            (src / rel).unlink()
        for i in self.modify:
            write_file(str(src / rel_file(i, self.n)), i, os.O_TRUNC)
        for i in self.delete:
            write_file(str(src / rel_file(i, self.n)), i)
        dirs = {"", self.top} | {rel.rpartition("/")[0] for _, rel in self.add}
        set_dir_times(src, dirs | {rel_dir(i // PER_FOLDER, self.n) for i in self.delete})


# ---------------------------------------------------------------------------
# Checks and helpers


def listing(root: Path, out: Path) -> None:
    """Every entry below root, sorted, one `path TAB kind [TAB size TAB mtime]` line
    (btsoot's `.btsoot` left out; a folder's size and mtime are not compared)."""
    find = ("find . -path ./.btsoot -prune -o -type d -printf '%P\\td\\n' "
            "-o -printf '%P\\t%y\\t%s\\t%T@\\n'")
    with open(out, "wb") as fo:
        subprocess.run(["bash", "-o", "pipefail", "-c", find + " | LC_ALL=C sort"], cwd=root, stdout=fo,
                       check=True)


def _entries(path: Path) -> Iterator[tuple[str, tuple[str, ...]]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            p, *rest = line.rstrip("\n").split("\t")
            if len(rest) == 3:
                rest[2] = rest[2].partition(".")[0]  # mtime to the second
            yield p, tuple(rest)


def check_mirror(src_listing: Path, src: Path, dst: Path, scratch: Path, must: list[str],
                 sample: list[str]) -> str:
    """'ok' or the first differences: the listings merged by path (both sorted
    bytewise, and a path's TAB sorts before any character of a longer path),
    then the content of `must` and `sample`."""
    listing(dst, scratch)
    problems: list[str] = []
    a, b = _entries(src_listing), _entries(scratch)
    x, y = next(a, None), next(b, None)
    while (x or y) and len(problems) < 3:
        if y is None or (x is not None and x[0] < y[0]):
            problems.append(f"{x[0]}: missing on the target")
            x = next(a, None)
        elif x is None or y[0] < x[0]:
            problems.append(f"{y[0]}: only on the target")
            y = next(b, None)
        else:
            if x[1] != y[1]:
                problems.append(f"{x[0]}: source {x[1]} target {y[1]}")
            x, y = next(a, None), next(b, None)
    if not problems:
        for rel in must + sample:
            if (src / rel).read_bytes() != (dst / rel).read_bytes():
                problems.append(f"{rel}: content differs")
                break
    return "ok" if not problems else "FAIL " + "; ".join(problems)


def warm(src: Path) -> None:
    """Read every file of the source once (the same page cache for every tool)."""
    subprocess.run(["sh", "-c", 'find "$1" -type f -exec cat {} + > /dev/null', "sh", str(src)],
                   check=True)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def du(path: Path) -> int:
    if not path.exists():
        return 0
    return int(subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True,
                              text=True).stdout.split()[0])


# ---------------------------------------------------------------------------
# Running


@dataclass
class Run:
    files: int
    scenario: str
    tool: str
    wall: float = 0.0
    sync: float = 0.0
    cpu: float = 0.0
    rss_kib: int = 0
    check: str = "-"
    load: float = 0.0

    @property
    def time(self) -> float:
        return self.wall + self.sync


class Scale:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.runs: list[Run] = []
        self.state: dict[int, dict[str, int]] = {}  # files -> {what: bytes}
        self.gen: dict[int, str] = {}  # files -> how the tree was had

    def measure(self, n: int, scenario: str, tool: compare.Tool | None, src: Path,
                record: bool = True) -> Run:
        """One run of tool (None: find -printf), timed; recorded unless a warm-up."""
        name = tool.name if tool else "find"
        os.sync()  # writeback left by the previous step is no tool's cost
        if scenario == "no-change cold":
            drop_caches()
        r = Run(n, scenario, name, load=compare.load1())
        out = self.work / f"out-{name}"
        if tool is None:
            cmd = ["sh", "-c", 'exec find "$1" -printf "%p %s %T@\\n" > /dev/null', "sh", str(src)]
            rc, r.wall, r.cpu, r.rss_kib, _ = compare.run_measured(cmd, None, None, out)
        else:
            rc, r.wall, r.cpu, r.rss_kib, _ = compare.run_measured(tool.cmd(), tool.env(), None, out)
            r.sync = compare.syncfs(tool.dst)
        if rc != 0:
            r.check = f"FAIL exit {rc}: " + Path(str(out) + ".err").read_text(errors="replace")[-300:]
        if record:
            self.runs.append(r)
            log(f"{label(n):>5} {scenario:14} {name:6} time {r.time:8.2f} s (sync {r.sync:5.2f})  "
                f"cpu {r.cpu:8.2f} s  rss {r.rss_kib / 1024:6.1f} MiB  load {r.load:.2f}")
        return r

    def size(self, n: int) -> None:
        had = marker(n).exists()
        t0 = time.monotonic()
        src = ensure_tree(n)
        self.gen[n] = "cached" if had else f"generated in {time.monotonic() - t0:.0f} s"
        work = self.work / str(n)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        bt = compare.Btsoot(work / "t-btsoot", src, work / "remote-btsoot")
        rs = compare.Rsync(work / "t-rsync", src, work / "remote-rsync")
        for t in (bt, rs):
            t.work.mkdir()
            t.setup()
        day = Day.plan(n)
        rng = random.Random(n)
        sample_ids = rng.sample(range(n), min(300, n))
        src_listing = work / "source.list"
        listing(src, src_listing)
        must: list[str] = []
        sample = [rel_file(i, n) for i in sample_ids]
        state = self.state.setdefault(n, {})
        try:
            for sc in SCENARIOS:
                if sc == "day":
                    marker(n).unlink()  # the cached tree is changed until undone
                    day.apply(src)
                    listing(src, src_listing)
                    must = day.touched()
                    gone = set(day.delete)
                    sample = [day.renamed(rel_file(i, n)) for i in sample_ids if i not in gone]
                for tool in (bt, rs):
                    if sc in ("initial", "day"):
                        warm(src)
                    if sc == "no-change warm":
                        self.measure(n, sc, tool, src, record=False)
                    r = self.measure(n, sc, tool, src)
                    if r.check == "-":
                        r.check = check_mirror(src_listing, src, tool.dst, work / "target.list", must, sample)
                        if r.check != "ok":
                            log(f"{label(n)} {sc} {tool.name}: {r.check}")
                if sc.startswith("no-change"):
                    if sc == "no-change warm":
                        self.measure(n, sc, None, src, record=False)
                    self.measure(n, sc, None, src)
                if sc in ("initial", "day"):
                    state[f"state {sc}"] = du(bt.state)
                    state[f"remote {sc}"] = du(bt.dst / ".btsoot")
            day.undo(src)
            marker(n).write_text(LAYOUT)
        finally:
            log(f"tree {label(n)}: removing the targets")
            shutil.rmtree(work, ignore_errors=True)
        if self.args.drop_trees:
            shutil.rmtree(src)
            marker(n).unlink()


# ---------------------------------------------------------------------------
# Report


def md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *rows])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def report(s: Scale, sizes: list[int]) -> tuple[str, list[tuple[str, str, bool]]]:
    """The Markdown tables, and (target, measured, met) for each target."""
    by = {(r.files, r.scenario, r.tool): r for r in s.runs}
    rows = []
    for n in sizes:
        for sc in SCENARIOS:
            b, r, f = by.get((n, sc, "btsoot")), by.get((n, sc, "rsync")), by.get((n, sc, "find"))
            if b is None or r is None:
                continue
            checks = {b.check.split(":")[0], r.check.split(":")[0]}
            rows.append([f"{n:,}", sc, f"{b.time:.2f}", f"{r.time:.2f}", f"{f.wall:.2f}" if f else "-",
                         ratio(b.time, r.time), ratio(b.time, f.wall) if f else "-",
                         f"{b.cpu:.2f}", f"{r.cpu:.2f}", f"{f.cpu:.2f}" if f else "-",
                         f"{b.rss_kib / 1024:.1f}", f"{r.rss_kib / 1024:.1f}",
                         f"{f.rss_kib / 1024:.1f}" if f else "-",
                         "ok" if checks == {"ok"} else " ".join(sorted(checks - {"ok"})),
                         f"{b.load:.2f}"])
    out = [md_table(["files", "scenario", "btsoot s", "rsync s", "find s", "btsoot/rsync", "btsoot/find",
                     "btsoot cpu s", "rsync cpu s", "find cpu s", "btsoot RSS MiB", "rsync RSS MiB",
                     "find RSS MiB", "check", "load"], rows)]
    st = []
    for n in sizes:
        v = s.state.get(n, {})
        st.append([f"{n:,}", s.gen.get(n, "-")] + [f"{v[k]:,} B ({v[k] / n:.1f} B/file)" if k in v else "-"
                                                    for k in ("state initial", "state day", "remote initial",
                                                              "remote day")])
    out.append(md_table(["files", "tree", "local state after initial", "after day",
                         "remote .btsoot after initial", "after day"], st))
    targets: list[tuple[str, str, bool]] = []
    lo, hi = min(sizes), max(sizes)
    sl = []
    for sc in SCENARIOS:
        a, b = by.get((lo, sc, "btsoot")), by.get((hi, sc, "btsoot"))
        if a is None or b is None or hi == lo:
            continue
        slope = (b.rss_kib - a.rss_kib) * 1024 / (hi - lo)
        sl.append([sc, f"{a.rss_kib / 1024:.1f}", f"{b.rss_kib / 1024:.1f}", f"{slope:.1f}",
                   "met" if slope < SLOPE_MAX else "missed"])
        targets.append((f"{sc}: btsoot's peak RSS slope < {SLOPE_MAX} B/file", f"{slope:.1f} B/file",
                        slope < SLOPE_MAX))
    if sl:
        out.append(md_table(["scenario", f"btsoot RSS MiB at {lo:,}", f"at {hi:,}", "slope B/file",
                             f"< {SLOPE_MAX} B/file"], sl))
    for n in sizes:
        for sc in SCENARIOS:
            b, r, f = by.get((n, sc, "btsoot")), by.get((n, sc, "rsync")), by.get((n, sc, "find"))
            if b is None or r is None:
                continue
            ok = b.check == "ok"
            what = f"{label(n)} {sc}:"
            targets.append((f"{what} btsoot peak RSS <= {RSS_MAX_MIB} MiB", f"{b.rss_kib / 1024:.1f} MiB",
                            b.rss_kib <= RSS_MAX_MIB * 1024))
            x = b.time / r.time
            limit = {"initial": INITIAL_MAX, "day": DAY_MAX}.get(sc, NOCHANGE_RSYNC_MAX)
            targets.append((f"{what} btsoot <= {limit}x rsync", f"{x:.2f}x", ok and x <= limit))
            if f is not None:
                y = b.time / f.wall
                targets.append((f"{what} btsoot <= {NOCHANGE_FIND_MAX}x find -printf", f"{y:.2f}x",
                                ok and y <= NOCHANGE_FIND_MAX))
    return "\n\n".join(out), targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scale.py", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="250k,1M,3M",
                    help="files per tree, e.g. 100k,400k (default 250k,1M,3M)")
    ap.add_argument("--out", type=Path, help="the Markdown report (default: BENCH_DIR/scale/report-DATE.md)")
    ap.add_argument("--json", type=Path, help="also write every run as JSON here")
    ap.add_argument("--drop-trees", action="store_true", help="remove each cached tree after its runs")
    ap.add_argument("--no-freeze", action="store_true",
                    help="run the installed btsoot as is (default: a copy taken at the start)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("scale.py needs root (it drops the page cache)")
    sizes = sorted({parse_size(x) for x in args.sizes.split(",") if x.strip()})
    if not sizes or sizes[0] < 1000:
        sys.exit("--sizes: at least 1000 files each (100k, 1M, ...)")
    command = shlex.join([sys.executable, *sys.argv])
    t_start = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc)
    work = BASE / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    frozen = "installed console script" if args.no_freeze else compare.freeze_btsoot(work)
    head = [x for x in compare.machine(frozen).splitlines() if x.startswith(("date", "machine", "load",
                                                                            "btsoot", "rsync"))]
    print("\n".join(head), flush=True)
    s = Scale(args, work)
    try:
        for n in sizes:
            s.size(n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tables, targets = report(s, sizes)
    la = os.getloadavg()
    total = time.monotonic() - t_start
    text = "\n".join([
        "# btsoot at scale", "", "    " + command, "", "```", *head,
        f"end:      {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, total {total:.0f} s, "
        f"load {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}", "```", "",
        "Times are wall + syncfs of the target; find is the reference for no-change.", "", tables, "",
        "Targets:", "", *[f"- {'met' if ok else 'MISSED'}: {what}: {val}" for what, val, ok in targets], ""])
    out = args.out or BASE / f"report-{started:%Y%m%d-%H%M%S}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(text)
    print(f"written to {out}")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "runs": [asdict(r) for r in s.runs],
                                         "state": s.state}, indent=1))
    return 1 if any(r.check.startswith("FAIL") for r in s.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
