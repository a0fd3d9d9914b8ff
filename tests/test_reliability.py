"""Reliability: crashes, full disks, hostile names and racing writers lose nothing.

Every test here drives btsoot the way a user's cron job does (the real CLI in a
real process, or the library's `backup()`), does something hostile to it, and
then checks the promises of docs/design.md from the outside: the remote is an
exact mirror (`assert_mirror`, which uses only os and hashlib), the committed
snapshot's digests match the remote's bytes (hashed here with xxhash), no temp
file or stash content is left behind, and the exit code is the documented one.

BTSOOT_STRESS=1 (`make stress`) runs many more kill points and examples.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import xxhash

import torture
from btsoot.state import BlockState
from conftest import Env, assert_mirror, tree_state

STRESS = os.environ.get("BTSOOT_STRESS") == "1"
SEED = int(os.environ.get("BTSOOT_SEED", "20261127"))
TORTURE = Path(__file__).with_name("torture.py")
TEMP_RE = re.compile(rb"\.btsoot-tmp-\d{8}T\d{6}\.\d{6}Z-")  # btsoot's temp names


# --- shared checks -------------------------------------------------------------

def state_dir(env: Env, name: str = "b") -> Path:
    return env.state / "blocks" / name


def head_id(env: Env, name: str = "b") -> str | None:
    p = state_dir(env, name) / "state.json"
    if not p.exists():
        return None
    return orjson.loads(p.read_bytes()).get("head")


def committed_entries(env: Env, name: str = "b") -> list:
    from btsoot.snapshot import SnapshotReader

    h = head_id(env, name)
    if h is None:
        return []
    with SnapshotReader(str(state_dir(env, name) / "snapshots" / f"{h}.jsonl")) as r:
        return list(r)


def snapshot_entries(path: Path) -> list:
    from btsoot.snapshot import SnapshotReader

    with SnapshotReader(str(path)) as r:
        return list(r)


def xxh(path: bytes) -> str | None:
    """XXH3-128 of a regular file (not following links), None if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        h = xxhash.xxh3_128()
        while buf := os.read(fd, 1 << 20):
            h.update(buf)
        return h.hexdigest()
    finally:
        os.close(fd)


def assert_committed_matches_remote(env: Env, dst: Path, name: str = "b") -> None:
    """Every file the committed snapshot lists is on the remote with that digest;
    every link with that target."""
    root = os.fsencode(dst)
    bad = []
    for e in committed_entries(env, name):
        full = root + b"/" + e.path
        if e.kind == "file":
            d = xxh(full)
            if d != e.digest:
                bad.append((e.path, e.digest, d))
        elif e.kind == "symlink":
            try:
                t = os.readlink(full)
            except OSError:
                t = None
            if t != e.target:
                bad.append((e.path, e.target, t))
        elif not os.path.isdir(full) or os.path.islink(full):
            bad.append((e.path, "dir", None))
    assert not bad, f"committed snapshot claims what the remote does not hold: {bad[:5]}"


def assert_clean(env: Env, dst: Path, name: str = "b") -> None:
    """No temp files, no stash content, no leftover run state."""
    left = []
    for top, dirs, files in os.walk(os.fsencode(dst)):
        for n in dirs + files:
            if TEMP_RE.match(n):
                left.append(os.path.join(top, n))
    stash = dst / ".btsoot" / "stash"
    if stash.exists():
        left += [str(p) for p in stash.rglob("*")]
    snaps = dst / ".btsoot" / "snapshots"
    if snaps.exists():
        left += [str(p) for p in snaps.iterdir()
                 if not (p.name.endswith(".full.jsonl.gz") or p.name.endswith(".delta.jsonl.gz")
                         # the second copy of a full snapshot, beside its first
                         or (p.name.endswith(".full-copy.jsonl.gz") and p.with_name(
                             p.name.replace(".full-copy.", ".full.")).exists()))]
    st = state_dir(env, name)
    for n in ("journal.jsonl", "scan.jsonl"):
        if (st / n).exists():
            left.append(str(st / n))
    left += [str(p) for p in st.glob("base*.jsonl")]  # recovered views of the remote
    left += [str(p) for p in st.rglob("*.tmp*")] + [str(p) for p in st.rglob("*.new")]
    assert not left, f"left behind: {left[:10]}"


def assert_done(env: Env, src: Path, dst: Path, name: str = "b") -> None:
    assert_mirror(src, dst)
    assert_committed_matches_remote(env, dst, name)
    assert_clean(env, dst, name)


def lib_backup(env: Env, name: str = "b", **kw):
    """One backup through the library, in this process."""
    from btsoot.backup import backup
    from btsoot.config import Config

    os.environ["BTSOOT_STATE"] = str(env.state)
    return backup(Config.load(str(env.config)).get(name), **kw)


def make_env(root: Path, name: str = "b") -> tuple[Env, Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    env = Env(root, root / "config.toml", root / "state")
    src, dst = root / "src", root / "remote"
    src.mkdir()
    dst.mkdir()
    env.run("add", name, src, dst, check=0)
    return env, src, dst


def write(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def data(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


# --- crash torture --------------------------------------------------------------

def step_initial(src: Path, rng: random.Random) -> None:
    for d in range(5):
        for s in range(2):
            base = src / f"d{d}" / f"s{s}"
            base.mkdir(parents=True)
            for f in range(4):
                write(base / f"f{f}.bin", data(rng, rng.choice([0, 1, 100, 5000, 70000])))
    write(src / "big.bin", data(rng, 3 << 20))
    write(src / "dup1", b"same content" * 100)
    write(src / "d0" / "dup2", b"same content" * 100)
    (src / "empty-dir").mkdir()
    write(src / "empty-file", b"")
    os.symlink("d0/s0/f0.bin", src / "link-rel")
    os.symlink("/nonexistent/target", src / "link-dangling")


def step_edits(src: Path, rng: random.Random) -> None:
    # Same size and mtime, different bytes (a tool that preserves times).
    p = src / "d2" / "s0" / "f1.bin"
    st = p.stat()
    p.write_bytes(data(rng, st.st_size))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    files = sorted(p for p in src.glob("d*/s*/*.bin") if p != src / "d2" / "s0" / "f1.bin")
    rng.shuffle(files)
    for p in files[:5]:
        with open(p, "ab") as f:
            f.write(data(rng, 1000))
    for p in files[5:8]:
        p.write_bytes(data(rng, rng.randint(0, 20000)))  # rewritten
    for p in files[8:12]:
        p.unlink()
    for i in range(5):
        write(src / f"d{i}" / f"new{i}", data(rng, 3000 + i))
    os.chmod(src / "d1" / "s1", 0o750)


def step_rename(src: Path, rng: random.Random) -> None:
    os.rename(src / "d1", src / "renamed")
    for p in sorted((src / "renamed").rglob("*.bin"))[:2]:
        with open(p, "ab") as f:
            f.write(b"edit inside a renamed folder")
    write(src / "renamed" / "added-inside", data(rng, 4000))
    os.rename(src / "d3" / "s0", src / "d4" / "moved-s0")
    os.rename(src / "big.bin", src / "d2" / "big-moved.bin")


def step_swaps(src: Path, rng: random.Random) -> None:
    a, b = src / "d0" / "s0", src / "d0" / "s1"
    os.rename(a, src / "tmp-swap")
    os.rename(b, a)
    os.rename(src / "tmp-swap", b)
    fa, fb = src / "dup1", src / "empty-file"
    os.rename(fa, src / "tmp-swap")
    os.rename(fb, fa)
    os.rename(src / "tmp-swap", fb)
    # a chain: x -> y -> z
    d = src / "d2" / "s1"
    names = sorted(p.name for p in d.iterdir())
    if len(names) >= 3:
        os.rename(d / names[2], d / "z-last")
        os.rename(d / names[1], d / names[2])
        os.rename(d / names[0], d / names[1])


def step_kinds(src: Path, rng: random.Random) -> None:
    # file -> folder, folder -> file, link -> file, file -> link
    p = src / "dup1"
    if p.exists() or p.is_symlink():
        p.unlink()
    write(src / "dup1" / "inner", b"was a file, now a folder")
    shutil.rmtree(src / "d4")
    write(src / "d4", data(rng, 12345))
    os.unlink(src / "link-rel")
    write(src / "link-rel", b"was a link")
    q = src / "d0" / "dup2"
    if q.exists():
        q.unlink()
    os.symlink("../dup1/inner", q)


def step_mixed(src: Path, rng: random.Random) -> None:
    shutil.rmtree(src / "d2")
    for i in range(3):
        write(src / "copies" / f"c{i}", (src / "link-rel").read_bytes())
    os.rename(src / "empty-dir", src / "renamed" / "empty-dir-moved")
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    for p in rng.sample(files, 3):
        with open(p, "ab") as f:
            f.write(b"+")


STEPS = [step_initial, step_edits, step_rename, step_swaps, step_kinds, step_mixed]
PHASES = ("scan", "mkdir", "copy", "move", "stash", "delete", "attr", "commit", "snapshot-write",
          "compact")


def build(root: Path, seed: int, upto: int) -> tuple[Env, Path, Path]:
    """A block whose backups of steps 0..upto-1 are committed, with step `upto` applied."""
    env, src, dst = make_env(root)
    rng = random.Random(seed)
    for k in range(upto + 1):
        STEPS[k](src, rng)
        if k < upto:
            assert lib_backup(env).exit_code == 0
    return env, src, dst


def torture_run(env: Env, kill_at: int = 0, trace: Path | None = None, slow: float = 0.0,
                kill_after: float | None = None, args: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """Run `btsoot backup b` under the harness. Returns (exit status, event labels).

    kill_at: SIGKILL at that event (from inside); kill_after: SIGKILL from outside
    that many seconds after the backup started.
    """
    # A first backup streams in chunks (first.py): small ones here, so kills land
    # between them too.
    p, r = torture.start(dict(env.vars(), TORTURE_FIRST_CHUNK="7"), ("backup", "b", *args), kill_at,
                         slow, str(trace) if trace is not None else None)
    try:
        if kill_after is not None:
            if os.read(r, 1) == b"R":
                time.sleep(kill_after)
                p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=120)
    finally:
        os.close(r)
        if p.poll() is None:
            p.kill()
            p.wait()
    labels: list[str] = []
    if trace is not None and trace.exists():
        t = orjson.loads(trace.read_bytes())
        labels = [f"{a}:{b}" for a, b in zip(t["events"], t["kinds"], strict=True)]
    if p.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"torture run exited {p.returncode}:\n{err.decode(errors='replace')}")
    return p.returncode, labels


class History:
    """The journals of the runs since the last commit (each run truncates the
    journal when it starts, so the tests keep what they saw)."""

    def __init__(self) -> None:
        self.runs: dict[str, list[dict]] = {}
        self.snaps: dict[str, list[bytes]] = {}  # each committed snapshot's lines, as first seen

    def observe(self, env: Env) -> None:
        head = head_id(env)
        plain = state_dir(env) / "snapshots" / f"{head}.jsonl"
        if head is not None and head not in self.snaps and plain.exists():
            self.snaps[head] = plain.read_bytes().splitlines(keepends=True)[1:-1]
        j = state_dir(env) / "journal.jsonl"
        if j.exists():
            try:
                header, recs = torture.read_journal_records(str(j))
            except orjson.JSONDecodeError:
                header, recs = None, []  # killed while writing the header line
            if header is not None:
                self.runs[header["run"]] = recs
        for run in list(self.runs):
            if head is not None and run <= head:
                del self.runs[run]  # committed: its operations are in the head

    def records(self) -> list[dict]:
        return [r for run in sorted(self.runs) for r in self.runs[run]]


def assert_interrupted_ok(env: Env, dst: Path, hist: History) -> None:
    """While a run is interrupted, nothing the remote held is lost.

    The invariant (docs/design.md, "Crash safety"): every file the last committed
    snapshot lists is on the remote, byte-exact, at its path or at a path the
    journals of the uncommitted runs since then moved it to (the stash, a folder
    move, a rename); the only exception is content those journals say was
    leaving: deleted, or replaced at one of its places by a put or a rename. A
    run's recovered view (base-RUN-N.jsonl) must be as true as the committed
    snapshot: the one the journal names, given that journal's records; one a later
    run recovered (killed before its journal replaced this one) as it stands.
    """
    hist.observe(env)
    root = os.fsencode(dst)
    # Every committed snapshot still reads, whichever way it is kept (backsnap.py),
    # as the very lines it had when it was the head.
    bs = BlockState(str(state_dir(env)))
    for sid in bs.committed_ids():
        if sid in hist.snaps:
            got = [line for _, line in bs.resolved(sid).lines()]
            assert got == hist.snaps[sid], f"snapshot {sid} reads otherwise than committed"

    def check(entries: list, records: list[dict], what: str) -> None:
        lost = []
        for e in entries:
            if e.kind != "file" or e.digest is None:  # None: recovery knows the content is unknown
                continue
            places, leaving = torture.explain(e.path, records)
            if leaving:
                continue
            if not any(xxh(root + b"/" + p) == e.digest for p in places):
                lost.append(e.path)
        assert not lost, (f"{what}: files lost from the remote while interrupted: {lost[:5]} "
                          f"(journal records: {len(records)})")

    check(committed_entries(env), hist.records(), "committed snapshot")
    st = state_dir(env)
    j = st / "journal.jsonl"
    if not j.exists():
        return
    try:
        header, recs = torture.read_journal_records(str(j))
    except orjson.JSONDecodeError:
        return
    head = head_id(env)
    if head is not None and header["run"] <= head:
        return  # a committed run's journal, about to be removed
    named = header.get("base")
    if named and not os.path.isabs(named):
        named = str(st / named)  # the journal names its base relative to its folder
    for base in sorted(st.glob("base-*.jsonl")):
        if str(base) == named:
            records = recs
        elif base.name[len("base-"):].rpartition("-")[0] > header["run"]:
            records = []
        else:
            continue  # an older run's view, about to be removed
        check(snapshot_entries(base), records, f"recovered view ({base.name})")


def test_crash_torture(tmp_path: Path) -> None:
    """SIGKILL at random moments across every phase, then rerun to completion."""
    rng = random.Random(SEED)
    kills = 120 if STRESS else 32
    counts: dict[int, list[str]] = {}
    killed_in: dict[str, int] = {}
    n = 0
    case = 0
    while n < kills or (missing := [p for p in PHASES if p not in killed_in]) and case < kills * 2:
        case += 1
        step = rng.randrange(len(STEPS))
        if step not in counts:  # measure an uninterrupted run of this step
            env, src, dst = build(tmp_path / f"count{step}", SEED + step, step)
            t0 = time.monotonic()
            _, counts[step] = torture_run(env, trace=tmp_path / f"trace{step}.json")
            counts[-1 - step] = [str(time.monotonic() - t0)]
            assert_done(env, src, dst)
        labels = counts[step]
        # Adaptive: aim at a phase not yet hit, else anywhere in the run.
        phases = [lab.partition(":")[0] for lab in labels]
        want = [p for p in PHASES if p not in killed_in and p in phases]
        if want and n >= kills // 2:
            ph = rng.choice(want)
            idx = rng.choice([i for i, lab in enumerate(phases) if lab == ph]) + 1
        else:
            idx = rng.randint(1, len(labels))
        root = tmp_path / f"k{case}"
        env, src, dst = build(root, SEED + step, step)
        hist = History()
        hist.observe(env)
        assert_interrupted_ok(env, dst, hist)
        trace = root / "kill-trace.json"
        chain = 0
        while True:
            if rng.random() < 0.25:  # from outside, after a random delay (slowed run)
                t_run = float(counts[-1 - step][0])
                rc, _ = torture_run(env, slow=0.002, kill_after=rng.uniform(0, t_run + 0.002 * len(labels)))
            else:
                rc, _ = torture_run(env, kill_at=idx)
                if rc == -signal.SIGKILL and idx <= len(labels) and chain == 0:
                    ph = labels[idx - 1].partition(":")[0]
                    killed_in[ph] = killed_in.get(ph, 0) + 1
            n += rc == -signal.SIGKILL
            try:
                assert_interrupted_ok(env, dst, hist)
            except AssertionError as e:
                raise AssertionError(f"case {case} (step {step}, kill at {idx}, chain {chain}, "
                                     f"exit {rc}): {e}") from None
            chain += 1
            if rc == 0 or chain >= 3 or rng.random() < 0.6:
                break
            idx = rng.randint(1, max(1, len(labels)))  # kill the resumed run too
        r = env.run("backup", "b")
        assert r.returncode == 0, f"case {case} (step {step}, kill at {idx}): {r.stderr}"
        assert_done(env, src, dst)
        # and once more: nothing left to do
        r = env.run("backup", "b", "--json", check=0)
        assert orjson.loads(r.stdout)["operations"] == {}, f"case {case}: not idempotent"
        shutil.rmtree(root, ignore_errors=True)
        del trace
    missing = [p for p in PHASES if p not in killed_in]
    assert not missing, f"kill points never hit phases {missing}; hit: {killed_in}"


def kill_from_saved(env: Env, saved: Path, idx: int, args: tuple[str, ...], dst: Path) -> None:
    """Put the saved setup back, run with a SIGKILL before event idx, and check that
    nothing the remote held was lost while the run is interrupted."""
    for name in ("src", "remote", "state"):
        shutil.rmtree(env.root / name)
        shutil.copytree(saved / name, env.root / name, symlinks=True)
    hist = History()
    hist.observe(env)
    rc, _ = torture_run(env, kill_at=idx, args=args)
    assert rc == -signal.SIGKILL
    assert_interrupted_ok(env, dst, hist)


def test_crash_at_every_point_of_a_same_size_same_mtime_update(block) -> None:
    """Kill before every system call of a run that replaces content whose size and
    mtime did not change (a tool that preserves times; found with --checksum).

    Recovery must not take the old file, which has the planned size and mtime,
    for the new one: the committed digest would then not match the remote.
    """
    env, src, dst = block
    write(src / "a" / "f", b"1" * 5000)
    write(src / "g", b"other")
    env.run("backup", "b", check=0)
    st = (src / "a" / "f").stat()

    def change() -> None:
        (src / "a" / "f").write_bytes(b"2" * 5000)
        os.utime(src / "a" / "f", ns=(st.st_atime_ns, st.st_mtime_ns))

    change()
    # Measure on a copy of the whole setup (the paths stay those of the block).
    saved = env.root / "saved"
    shutil.copytree(env.root, saved, symlinks=True, ignore=shutil.ignore_patterns("saved"))
    _, labels = torture_run(env, trace=env.root / "t.json", args=("--checksum",))
    assert_done(env, src, dst)
    points = [i + 1 for i, lab in enumerate(labels) if lab.partition(":")[0] == "copy"]
    assert points
    for idx in points:
        kill_from_saved(env, saved, idx, ("--checksum",), dst)
        env.run("backup", "b", "--checksum", check=0)
        assert_done(env, src, dst)


def _finishable(target: Path, redo_dir: Path, want: str, tmp: Path) -> bool:
    """Does a redo file bring target's current content to digest `want`?"""
    from btsoot.remotefs import Remote
    from btsoot.transfer import apply_redo

    def rel(p: Path) -> bytes:
        return os.fsencode(p)[1:]  # below the file system root

    for redo in sorted(redo_dir.glob("*")) if redo_dir.is_dir() else []:
        shutil.copyfile(target, tmp)
        with Remote("/") as root:
            ok = apply_redo(root, rel(redo), rel(tmp))
        if ok and xxh(os.fsencode(tmp)) == want:
            return True
    return False


def test_crash_at_every_point_of_an_in_place_patch(block) -> None:
    """Kill before every system call of a run that patches two large files in place
    (changed chunks only): one grown, one rewritten with its size and mtime kept.

    While interrupted, each file holds its old content, its new content, or
    content that a complete redo file on the remote finishes to the new one;
    the next run always ends with an exact mirror and no redo files left.
    """
    env, src, dst = block
    # One transfer thread: kill points are numbered by the event order of a traced
    # run, which two patches running side by side would not repeat.
    ARGS = ("--checksum", "--jobs", "1")
    rng = random.Random(11)
    mib = 1 << 20
    write(src / "a" / "grown", rng.randbytes(17 * mib))
    write(src / "kept", rng.randbytes(18 * mib))
    write(src / "small", b"small")
    env.run("backup", "b", check=0)
    old = {n: xxh(os.fsencode(dst / n)) for n in ("a/grown", "kept")}
    with open(src / "a" / "grown", "r+b") as f:
        f.seek(5 * mib + 7)
        f.write(b"edit")
        f.seek(0, 2)
        f.write(b"more")
    st = (src / "kept").stat()
    with open(src / "kept", "r+b") as f:
        f.seek(13 * mib)
        f.write(b"EDIT")
    os.utime(src / "kept", ns=(st.st_atime_ns, st.st_mtime_ns))
    new = {n: xxh(os.fsencode(src / n)) for n in ("a/grown", "kept")}
    saved = env.root / "saved"
    shutil.copytree(env.root, saved, symlinks=True, ignore=shutil.ignore_patterns("saved"))
    _, labels = torture_run(env, trace=env.root / "t.json", args=ARGS)
    assert_done(env, src, dst)
    assert sum(lab == "patch:pwrite" for lab in labels) >= 2  # both went in place
    points = [i + 1 for i, lab in enumerate(labels) if lab.partition(":")[0] == "patch"]
    mixed = 0  # kills that left a file half-written (the redo file's case)
    for idx in points:
        kill_from_saved(env, saved, idx, ARGS, dst)
        for n in old:
            d = xxh(os.fsencode(dst / n))
            if d not in (old[n], new[n]):
                assert _finishable(dst / n, dst / ".btsoot" / "patch", new[n], env.root / "probe"), (
                    idx, labels[idx - 1], n)
                mixed += 1
        env.run("backup", "b", *ARGS, check=0)
        assert_done(env, src, dst)
        assert not (dst / ".btsoot" / "patch").exists()
    assert mixed


def test_parallel_puts_each_complete_their_own_journal_record(tmp_path: Path) -> None:
    """Two transfer threads begin puts; one finishes, the other is killed mid-copy.

    Journal.begin used to re-read its counter after writing the record (a write
    releases the GIL): a thread could get the number of a put another thread began
    meanwhile, and its done() then completed that put. Recovery trusted the
    unfinished put as done (its final file absent from the remote, its temp file
    left there) and let the finished one go unrecorded (found by the crash
    torture: `missing=[d2/s0/f0.bin] extra=[d2/s0/.btsoot-tmp-...]`).
    """
    from btsoot.journal import Journal, op_record, read_journal, replay
    from btsoot.remotefs import Remote
    from btsoot.snapshot import FILE, Entry

    remote = tmp_path / "remote"
    remote.mkdir()
    ja = tmp_path / "journal.jsonl"
    j = Journal(str(ja), "RUN", None, None)
    a = Entry(b"a", FILE, 3, 1_000_000_000, 0o644, digest="0" * 32)
    b = Entry(b"b", FILE, 3, 1_000_000_000, 0o644, digest="1" * 32)
    real_flush = j._flush
    a_writing = threading.Event()

    def flush() -> None:  # a's begin record is slow to write (the write releases the GIL)
        if not a_writing.is_set() and any(b'"path":"a"' in r for r in j._done):
            a_writing.set()
            time.sleep(0.2)
        real_flush()

    j._flush = flush  # type: ignore[method-assign]
    got: dict[str, int] = {}

    def put_a() -> None:
        got["a"] = j.begin(op_record("put", entry=a, tmp=b".btsoot-tmp-RUN-a-0"))

    t = threading.Thread(target=put_a)
    t.start()
    assert a_writing.wait(10)
    got["b"] = j.begin(op_record("put", entry=b, tmp=b".btsoot-tmp-RUN-b-0"))
    t.join()
    assert got["a"] != got["b"]
    # a completes; b is killed with its temp written, before its rename.
    (remote / "a").write_bytes(b"aaa")
    os.utime(remote / "a", ns=(a.mtime_ns, a.mtime_ns))
    j.done(got["a"])
    (remote / ".btsoot-tmp-RUN-b-0").write_bytes(b"bb")
    j.close()
    _, recs = read_journal(str(ja))
    assert {torture.get_path(r["entry"], "path"): c for r, c in recs} == {b"a": True, b"b": False}
    with Remote(remote) as r:
        model = replay(str(ja), r, {})
    assert set(model) == {b"a"}
    assert sorted(os.listdir(remote)) == ["a"]  # b's temp file removed


def test_crash_at_every_point_of_a_resumed_runs_commit(block) -> None:
    """Kill a run mid-copy, then kill its resumed run before each event of its commit.

    The resumed run plans against a recovered view (base-RUN-N.jsonl) that its
    journal names. Its commit removed the views before the journal: a kill
    between the two left a journal whose base was gone, and every later backup
    stopped with exit 8 ("its base snapshot ... is missing").
    """
    env, src, dst = block
    for i in range(6):
        write(src / f"d{i % 2}" / f"f{i}", bytes([i]) * (1000 + i))
    env.run("backup", "b", check=0)
    for i in range(6):
        write(src / f"d{i % 2}" / f"f{i}", bytes([i + 1]) * (2000 + i))

    def save(to: Path) -> None:
        for name in ("src", "remote", "state"):
            shutil.copytree(env.root / name, to / name, symlinks=True)

    def restore(saved: Path) -> None:
        for name in ("src", "remote", "state"):
            shutil.rmtree(env.root / name)
            shutil.copytree(saved / name, env.root / name, symlinks=True)

    save(env.root / "saved0")
    _, labels = torture_run(env, trace=env.root / "t.json", args=("--jobs", "1"))
    copies = [i + 1 for i, lab in enumerate(labels) if lab.partition(":")[0] == "copy"]
    restore(env.root / "saved0")
    rc, _ = torture_run(env, kill_at=copies[len(copies) // 2], args=("--jobs", "1"))
    assert rc == -signal.SIGKILL
    saved = env.root / "saved1"
    save(saved)
    _, labels = torture_run(env, trace=env.root / "t2.json", args=("--jobs", "1"))
    assert_done(env, src, dst)
    points = [i + 1 for i, lab in enumerate(labels) if lab.partition(":")[0] == "commit"]
    assert points
    for idx in points:
        restore(saved)
        rc, _ = torture_run(env, kill_at=idx, args=("--jobs", "1"))
        assert rc == -signal.SIGKILL
        r = env.run("backup", "b")
        assert r.returncode == 0, f"killed at commit event {idx}: {r.stderr}"
        assert_done(env, src, dst)


def test_the_harness_sees_every_phase_and_operation(block) -> None:
    """The crash tests aim at phases and operations that btsoot announces itself
    (btsoot.events): a refactor that drops an announcement shows here, not as
    crash tests that quietly stop reaching a phase. (Planning touches nothing:
    no event falls in it.)"""
    env, src, dst = block
    for i in range(4):
        write(src / "d" / f"f{i}", bytes([i]) * 5000)
    write(src / "gone", b"x")
    env.run("backup", "b", check=0)
    os.rename(src / "d", src / "moved")
    (src / "gone").unlink()
    write(src / "moved" / "f0", b"changed")
    write(src / "new", b"new")
    os.symlink("new", src / "link")
    _, labels = torture_run(env, trace=env.root / "t.json", args=("--jobs", "1"))
    seen = {lab.partition(":")[0] for lab in labels}
    kinds = {lab.partition(":")[2] for lab in labels}
    want = {"scan", "copy", "move", "delete", "attr", "symlink", "cleanup", "commit",
            "snapshot-write"}
    assert want <= seen, sorted(want - seen)
    assert {"flush", "write", "fsync", "rename"} <= kinds, sorted(kinds)
    assert_done(env, src, dst)


@pytest.mark.slow
def test_snapshot_temp_of_a_killed_writer_is_removed_whatever_the_next_kill(block) -> None:
    """A run killed while writing the second copy of a full snapshot leaves its temp
    file on the remote. The run after it removes it, wherever that run is killed in
    turn (it once was removed only by a run that wrote a snapshot: one killed after
    saving its head left the temp file for every run that had nothing to send)."""
    env, src, dst = block
    for i in range(6):
        write(src / f"d{i % 2}" / f"f{i}", bytes([i]) * (1000 + i))

    def save(to: Path) -> None:
        to.mkdir()
        for name in ("src", "remote", "state"):
            if (env.root / name).exists():
                shutil.copytree(env.root / name, to / name, symlinks=True)

    def restore(saved: Path) -> None:
        for name in ("src", "remote", "state"):
            shutil.rmtree(env.root / name, ignore_errors=True)
            if (saved / name).exists():
                shutil.copytree(saved / name, env.root / name, symlinks=True)

    snaps = dst / ".btsoot" / "snapshots"
    save(env.root / "saved0")
    # A first backup writes a full snapshot; its second copy last: kill before its rename.
    _, labels = torture_run(env, trace=env.root / "t.json", args=("--jobs", "1"))
    renames = [i + 1 for i, lab in enumerate(labels) if lab == "snapshot-write:replace"]
    assert len(renames) == 2, labels
    restore(env.root / "saved0")
    rc, _ = torture_run(env, kill_at=renames[-1], args=("--jobs", "1"))
    assert rc == -signal.SIGKILL
    temps = [p.name for p in snaps.iterdir() if ".tmp." in p.name]
    assert temps and all(".full-copy.jsonl.gz.tmp." in n for n in temps), temps
    saved = env.root / "saved1"
    save(saved)
    _, labels = torture_run(env, trace=env.root / "t2.json", args=("--jobs", "1"))
    assert_done(env, src, dst)
    points = [i + 1 for i, lab in enumerate(labels)
              if lab.partition(":")[0] in ("commit", "snapshot-write", "snapshot-prune")]
    assert points
    for idx in points:
        restore(saved)
        rc, _ = torture_run(env, kill_at=idx, args=("--jobs", "1"))
        assert rc == -signal.SIGKILL
        for _ in range(2):  # a run that finishes what was left, then one with nothing to do
            r = env.run("backup", "b")
            assert r.returncode == 0, f"killed at event {idx} ({labels[idx - 1]}): {r.stderr}"
        assert_done(env, src, dst)


# --- restore / verify round trip -------------------------------------------------

def restore_available(env: Env) -> bool:
    return env.run("restore", "--help").returncode == 0


def assert_round_trip(env: Env, src: Path, dst: Path, name: str = "b") -> None:
    """Restore the block elsewhere, from the local state and from the remote alone;
    both give the source back byte-exact; verify finds nothing wrong."""
    if not restore_available(env):
        return  # restore/verify not in this build yet: backup is checked fully
    want = tree_state(src)
    for i, args in enumerate((("restore", name), ("restore", "--from", dst))):
        to = env.root / f"restored-{i}"
        if to.exists():
            shutil.rmtree(to)
        env.run(*args, "--to", to, "--override", check=0)
        got = tree_state(to)
        assert got == want, (
            f"{' '.join(map(str, args))}: restored tree differs: "
            f"missing={sorted(set(want) - set(got))[:5]} extra={sorted(set(got) - set(want))[:5]} "
            f"differ={[k for k in want if k in got and want[k] != got[k]][:5]}")
        shutil.rmtree(to)
    env.run("verify", name, check=0)


# --- hostile names ----------------------------------------------------------------

HOSTILE = [
    b"\xff\xfe latin-1 \xe9t\xe9",  # not UTF-8
    b"new\nline",
    b"carriage\rreturn",
    b"back\\slash",
    b"quotes ' \" `",
    b"-leading-dash",
    b"--help",
    b" spaces at both ends ",
    b"n" * 255,
    "\u00e9".encode() * 127 + b"x",  # 255 bytes, multibyte
    "caf\u00e9".encode(),  # NFC
    "cafe\u0301".encode(),  # NFD: the same name to a human, another to the kernel
    b"Readme",
    b"README",
    b"readme",
    b"tab\there",
    b"*?[glob]",
    b".btsoot-tmp-not-really",  # looks like one of btsoot's own temp names
]


def make_hostile(root: Path, rng: random.Random) -> None:
    r = os.fsencode(root)
    for i, n in enumerate(HOSTILE):
        with open(r + b"/" + n, "wb") as f:
            f.write(n + rng.randbytes(i * 100))
    d = r + b"/dir \xfe\n" + HOSTILE[8][:200]
    os.mkdir(d)
    for n in HOSTILE[:8]:
        with open(d + b"/" + n, "wb") as f:
            f.write(b"inside " + n)
    os.symlink(b"target \xff\n" + HOSTILE[2], r + b"/link \xfe")


def test_hostile_names_back_up_and_restore_byte_exact(block) -> None:
    env, src, dst = block
    rng = random.Random(SEED)
    make_hostile(src, rng)
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)
    # Rename, swap and edit among hostile names: moves must find them again.
    s = os.fsencode(src)
    os.rename(s + b"/dir \xfe\n" + HOSTILE[8][:200], s + b"/-moved \r dir \xff")
    os.rename(s + b"/" + HOSTILE[10], s + b"/tmp")
    os.rename(s + b"/" + HOSTILE[11], s + b"/" + HOSTILE[10])
    os.rename(s + b"/tmp", s + b"/" + HOSTILE[11])
    with open(s + b"/" + HOSTILE[0], "ab") as f:
        f.write(b"more")
    r = env.run("backup", "b", "--json", check=0)
    ops = orjson.loads(r.stdout)["operations"]
    assert ops.get("move-dir") == 1 and "copy" in ops, ops
    assert_done(env, src, dst)
    assert_round_trip(env, src, dst)


# --- file kinds -------------------------------------------------------------------

def test_file_kinds(block) -> None:
    env, src, dst = block
    write(src / "empty", b"")
    (src / "empty-dir" / "nested-empty").mkdir(parents=True)
    write(src / "t" / "target", b"target content")
    os.symlink("t/target", src / "rel-link")
    os.symlink(str(src / "t" / "target"), src / "abs-link")
    os.symlink("nowhere/at/all", src / "dangling")
    os.symlink("loop-b", src / "loop-a")
    os.symlink("loop-a", src / "loop-b")
    os.symlink(".", src / "t" / "self")
    os.symlink("t", src / "dir-link")  # a link to a folder: stored as a link, not walked
    write(src / "hard1", b"hard linked content" * 1000)
    os.link(src / "hard1", src / "t" / "hard2")
    with open(src / "sparse", "wb") as f:
        f.seek(50 << 20)
        f.write(b"end")
        f.seek(10 << 20)
        f.write(b"middle")
    os.mkfifo(src / "fifo")
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "socket"))
    try:
        os.mknod(src / "null-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        r = env.run("backup", "b", check=0)
    finally:
        sock.close()
    for n in ("fifo", "socket", "null-dev"):
        assert f"skipped {n}" in r.stderr, r.stderr
        assert not os.path.lexists(dst / n)
    assert_done(env, src, dst)
    for n in ("rel-link", "abs-link", "dangling", "loop-a", "t/self", "dir-link"):
        assert os.readlink(dst / n) == os.readlink(src / n)
    assert not (dst / "dir-link").is_dir() or (dst / "dir-link").is_symlink()
    assert (dst / "sparse").stat().st_size == (50 << 20) + 3
    # Change a hard link's content through the other name; relink; retarget links.
    with open(src / "t" / "hard2", "ab") as f:
        f.write(b"appended via the other name")
    os.unlink(src / "dangling")
    os.symlink("t/target", src / "dangling")
    os.unlink(src / "loop-b")
    write(src / "loop-b", b"a file now")
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)
    assert_round_trip(env, src, dst)


# --- full disk --------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a small tmpfs "
                                "as the remote / runs btsoot as another user")


@pytest.fixture
def small_remote(tmp_path: Path):
    dst = tmp_path / "remote"
    dst.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=4096", "btsoot-full", dst],
                   check=True)
    try:
        yield dst
    finally:
        subprocess.run(["umount", "-l", dst], check=False)


@needs_root
def test_full_disk(env: Env, small_remote: Path) -> None:
    src, dst = env.root / "src", small_remote
    src.mkdir()
    env.run("add", "b", src, dst, check=0)
    rng = random.Random(SEED)
    for i in range(4):
        write(src / "small" / f"f{i}", rng.randbytes(200_000))
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)
    first = tree_state(dst, ignore_top=())
    # Edits (in place) and adds that do not fit: 3 x 3 MiB on an 8 MiB disk.
    for i in range(3):
        write(src / "big" / f"b{i}", rng.randbytes(3 << 20))
    with open(src / "small" / "f0", "ab") as f:
        f.write(b"edited")
    os.rename(src / "small" / "f1", src / "small" / "f1-renamed")
    head, hist = head_id(env), History()
    r = env.run("backup", "b")
    assert r.returncode == 6, (r.returncode, r.stderr)
    assert "no space left" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # Stopped before the first write: it could not fit (free space checked first).
    assert "nothing was changed" in r.stderr and tree_state(dst, ignore_top=()) == first
    # Nothing committed; what the committed snapshot lists is there or journalled.
    assert head_id(env) == head
    assert_interrupted_ok(env, dst, hist)
    # Runs that keep failing do not make it worse, and do not leave temp files piling up.
    r = env.run("backup", "b")
    assert r.returncode == 6, r.stderr
    assert head_id(env) == head
    assert_interrupted_ok(env, dst, hist)
    assert not [p for p in dst.rglob("*") if TEMP_RE.match(os.fsencode(p.name))]
    # Free space by deleting source content: the next run completes and mirrors.
    shutil.rmtree(src / "big")
    write(src / "big" / "b0", rng.randbytes(1 << 20))
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)
    assert tree_state(dst, ignore_top=()) != first
    # Fill it again, then make the disk bigger: resumes and mirrors.
    for i in range(4):
        write(src / "more" / f"m{i}", rng.randbytes(2 << 20))
    head, hist = head_id(env), History()
    r = env.run("backup", "b")
    assert r.returncode == 6, r.stderr
    assert head_id(env) == head
    assert_interrupted_ok(env, dst, hist)
    subprocess.run(["mount", "-o", "remount,size=64m", dst], check=True)
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)


@needs_root
def test_running_out_of_inodes_mid_run(env: Env, small_remote: Path) -> None:
    """The bytes to send fit (the free-space check passes) but the remote runs out of
    room while files are written (inodes, and a block per tiny file): exit 6,
    nothing committed, resumable once there is room."""
    src, dst = env.root / "src", small_remote
    src.mkdir()
    env.run("add", "b", src, dst, check=0)
    write(src / "first", b"1")
    env.run("backup", "b", check=0)
    head, hist = head_id(env), History()
    for d in range(50):
        for i in range(100):  # 5000 files > the 4096 inodes of the remote
            write(src / f"d{d}" / f"f{i}", b"x")
    r = env.run("backup", "b")
    assert r.returncode == 6, (r.returncode, r.stderr)
    assert "no space left" in r.stderr and "Traceback" not in r.stderr
    assert head_id(env) == head
    assert_interrupted_ok(env, dst, hist)
    subprocess.run(["mount", "-o", "remount,size=64m,nr_inodes=20000", dst], check=True)
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)


@needs_root
def test_full_disk_while_writing_the_remote_snapshot(env: Env, small_remote: Path) -> None:
    """The data fits but the snapshot written to the remote afterwards does not."""
    src, dst = env.root / "src", small_remote
    src.mkdir()
    env.run("add", "b", src, dst, check=0)
    env.run("backup", "b", check=0)
    # Many small files: their data fits in the inode-less space, the snapshot does not.
    free = os.statvfs(dst)
    avail = free.f_bavail * free.f_frsize
    rng = random.Random(SEED)
    write(src / "filler", rng.randbytes(avail - (16 << 10)))
    for i in range(400):  # empty files cost no space; their names in the snapshot do
        write(src / "names" / (f"{i:04d}-" + rng.randbytes(100).hex()), b"")
    head, hist = head_id(env), History()
    r = env.run("backup", "b")
    assert r.returncode == 6, (r.returncode, r.stderr)
    assert "cannot write snapshot" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert head_id(env) == head
    assert_interrupted_ok(env, dst, hist)
    subprocess.run(["mount", "-o", "remount,size=64m", dst], check=True)
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)
    assert_round_trip(env, src, dst)


# --- read errors at the source ------------------------------------------------------

def _drop_dac() -> None:
    """In the child: give up root's power to read what the file modes forbid
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so btsoot meets permission errors
    exactly like an unprivileged user. (Running it as uid 65534 would be the same
    test, but the interpreter under /root is not reachable for that user.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@needs_root
def test_unreadable_files_and_folders(block) -> None:
    env, src, dst = block
    write(src / "a" / "f1", b"old content of f1")
    write(src / "a" / "f2", b"f2")
    write(src / "secret" / "s1", b"s1")
    write(src / "secret" / "sub" / "s2", b"s2")
    write(src / "top", b"top v1")
    env.run("backup", "b", check=0)
    before = committed_entries(env)
    (src / "a" / "f1").write_bytes(b"new content, unreadable")
    os.chmod(src / "a" / "f1", 0)
    write(src / "secret" / "s3-new", b"unseen")
    os.chmod(src / "secret", 0)
    write(src / "new-unreadable", b"n")
    os.chmod(src / "new-unreadable", 0)
    write(src / "top", b"top v2")  # a readable change still goes through
    try:
        r = env.run("backup", "b", preexec_fn=_drop_dac)
        assert r.returncode == 3, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr
        for p in ("a/f1", "secret", "new-unreadable"):
            assert f"cannot back up {p}:" in r.stderr, r.stderr
        # Nothing deleted, the old content kept, the readable change sent.
        assert (dst / "a" / "f1").read_bytes() == b"old content of f1"
        assert (dst / "secret" / "sub" / "s2").read_bytes() == b"s2"
        assert (dst / "secret" / "s1").read_bytes() == b"s1"
        assert not (dst / "new-unreadable").exists()
        assert (dst / "top").read_bytes() == b"top v2"
        assert_committed_matches_remote(env, dst)
        after = {e.path: e for e in committed_entries(env)}
        for e in before:
            if e.path != b"top":
                assert e.path in after, e.path
        assert after[b"a/f1"].digest == next(e for e in before if e.path == b"a/f1").digest
        # Unreadable the next time too: same result, nothing lost.
        r = env.run("backup", "b", preexec_fn=_drop_dac)
        assert r.returncode == 3, r.stderr
        assert_committed_matches_remote(env, dst)
        assert (dst / "secret" / "s1").exists()
    finally:
        for p in ("a/f1", "new-unreadable"):
            os.chmod(src / p, 0o644)
        os.chmod(src / "secret", 0o755)
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)


# --- racing writers --------------------------------------------------------------------

class Hammer(threading.Thread):
    """Appends, truncates, rewrites in place (times kept), replaces by rename (size
    and times kept), deletes and recreates files under `root` until stopped."""

    def __init__(self, root: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.count = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
                self.count += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def step(self) -> None:
        rng = self.rng
        p = self.root / f"h{rng.randrange(8)}"
        what = rng.randrange(6)
        try:
            st = p.stat()
        except FileNotFoundError:
            write(p, rng.randbytes(rng.randint(0, 3 << 20)))
            return
        if what == 0:
            with open(p, "ab") as f:
                f.write(rng.randbytes(rng.randint(1, 100_000)))
        elif what == 1:
            os.truncate(p, rng.randint(0, st.st_size))
        elif what == 2:  # same size, same mtime, other bytes
            with open(p, "r+b") as f:
                f.seek(rng.randint(0, max(0, st.st_size - 1)))
                f.write(rng.randbytes(min(4096, st.st_size)))
            os.truncate(p, st.st_size)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif what == 3:  # atomic replace, size and times kept (cp -p, rsync -t)
            tmp = p.with_name(p.name + ".new")
            tmp.write_bytes(rng.randbytes(st.st_size))
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            os.replace(tmp, p)
        elif what == 4:
            p.unlink()
        else:
            time.sleep(0.001)


def test_racing_writers(block) -> None:
    """Whatever the writers do, a committed digest is the digest of the remote's bytes."""
    env, src, dst = block
    # The writers delete files too, in a 9-file tree: more than half can be gone at
    # one backup, which the deletion guard rightly stops (exit 4). The guard is not
    # under test here.
    env.run("rm", "b", check=0)
    env.run("add", "b", src, dst, "--max-delete", "100%", check=0)
    rng = random.Random(SEED)
    for i in range(8):
        write(src / "hot" / f"h{i}", rng.randbytes(rng.randint(1 << 20, 3 << 20)))
    write(src / "cold" / "c", b"quiet")
    env.run("backup", "b", check=0)
    hammer = Hammer(src / "hot", SEED)
    hammer.start()
    try:
        for _ in range(12 if STRESS else 6):
            r = env.run("backup", "b", "--checksum" if rng.random() < 0.3 else "--jobs=2")
            assert r.returncode in (0, 3), r.stderr
            assert "Traceback" not in r.stderr
            assert_committed_matches_remote(env, dst)
    finally:
        hammer.stop.set()
        hammer.join()
    assert hammer.error is None, hammer.error
    assert hammer.count > 20, hammer.count
    for p in (src / "hot").glob("*.new"):
        p.unlink()
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)


# --- hostile state --------------------------------------------------------------------

def _corrupt_cases(env: Env, dst: Path) -> dict:
    """name -> (file, how to damage its bytes)."""
    st = state_dir(env)
    snap = st / "snapshots" / f"{head_id(env)}.jsonl"
    remote_snaps = sorted((dst / ".btsoot" / "snapshots").iterdir())

    def line_replace(i: int, new: bytes):
        def f(b: bytes) -> bytes:
            lines = b.split(b"\n")
            lines[i] = new
            return b"\n".join(lines)
        return f

    def header_version(b: bytes) -> bytes:
        lines = b.split(b"\n")
        h = orjson.loads(lines[0])
        h["version"] = 99
        lines[0] = orjson.dumps(h)
        return b"\n".join(lines)

    return {
        "snapshot truncated": (snap, lambda b: b[: len(b) // 2]),
        "snapshot cut at a line end": (snap, lambda b: b"\n".join(b.split(b"\n")[:3]) + b"\n"),
        "snapshot garbage line": (snap, line_replace(2, b"\x00\xffgarbage{")),
        "snapshot wrong types": (snap, line_replace(2, b'{"path": 5, "type": "file"}')),
        "snapshot not an object": (snap, line_replace(2, b"[1, 2, 3]")),
        "snapshot bad base64": (snap, line_replace(2, b'{"path_b64": "!!", "type": "file", '
                                                   b'"mtime": 1, "mode": 1}')),
        "snapshot future version": (snap, header_version),
        "snapshot empty": (snap, lambda b: b""),
        "state.json garbage": (st / "state.json", lambda b: b"{not json"),
        "state.json wrong types": (st / "state.json", lambda b: b'{"head": 5, "deltas": "x"}'),
        "state.json a list": (st / "state.json", lambda b: b"[]"),
        "remote snapshot corrupt (state lost)": (remote_snaps[-1], lambda b: b[:40] + b"garbage"),
        "remote snapshot future version (state lost)": (
            remote_snaps[-1], lambda b: __import__("gzip").compress(header_version(
                __import__("gzip").decompress(b)))),
    }


def _journal_cases() -> dict:
    def recs(f):
        def g(b: bytes) -> bytes:
            lines = b.rstrip(b"\n").split(b"\n")
            return b"\n".join(f(lines)) + b"\n"
        return g

    def header(**kw):
        def f(lines):
            h = orjson.loads(lines[0])
            h.update(kw)
            return [orjson.dumps(h)] + lines[1:]
        return f

    return {
        "journal future version": recs(header(version=99)),
        "journal not a journal": recs(header(format="something else")),
        "journal header torn": lambda b: b[:10],
        "journal corrupt middle line": recs(lambda ls: ls[:2] + [b"{garbage"] + ls[2:]),
        "journal record without entry": recs(lambda ls: ls[:2] + [b'{"t": "put", "i": 999, "s": "b"}']
                                             + ls[2:]),
        "journal record with bad path": recs(lambda ls: ls[:2] + [
            b'{"t": "del", "path_b64": "!!", "i": 998, "s": "b"}'] + ls[2:]),
        "journal unknown record": recs(lambda ls: ls[:2] + [b'{"t": "zap", "i": 997, "s": "b"}']
                                       + ls[2:]),
        "journal base missing": recs(header(base="/nonexistent/base.jsonl")),
    }


def _assert_state_error(env: Env, dst: Path, what: str) -> None:
    before = tree_state(dst, ignore_top=())
    r = env.run("backup", "b")
    assert r.returncode == 8, f"{what}: exit {r.returncode}\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("btsoot: error: "), f"{what}: {r.stderr}"
    assert "Traceback" not in r.stderr
    assert tree_state(dst, ignore_top=()) == before, f"{what}: the remote was changed"


def test_hostile_state(block) -> None:
    env, src, dst = block
    rng = random.Random(SEED)
    for i in range(6):
        write(src / "d" / f"f{i}", rng.randbytes(1000 + i))
    env.run("backup", "b", check=0)
    write(src / "d" / "f9", b"second run")
    env.run("backup", "b", check=0)  # a delta on the remote too
    write(src / "d" / "f10", b"pending change")
    st = state_dir(env)
    for what, (path, damage) in _corrupt_cases(env, dst).items():
        saved = path.read_bytes()
        moved = None
        if "state lost" in what:
            moved = env.root / "state-aside"
            os.rename(env.state, moved)
        path.write_bytes(damage(saved))
        try:
            _assert_state_error(env, dst, what)
        finally:
            path.write_bytes(saved)
            if moved is not None:
                shutil.rmtree(env.state, ignore_errors=True)
                os.rename(moved, env.state)
    # Journals: make a real one by killing a run in its transfers.
    _, labels = torture_run(env, kill_at=0, trace=env.root / "t.json")
    env.run("backup", "b", check=0)
    write(src / "d" / "f11", rng.randbytes(5000))
    (src / "d" / "f0").unlink()
    os.rename(src / "d" / "f1", src / "d" / "f1-renamed")
    _, labels = torture_run(env, trace=env.root / "t2.json")  # measure
    # Put the same change back and kill it before its last remote operation.
    env.run("backup", "b", check=0)
    write(src / "d" / "f12", rng.randbytes(5000))
    (src / "d" / "f2").unlink()
    os.rename(src / "d" / "f3", src / "d" / "f3-renamed")
    idx = max(i for i, lab in enumerate(labels) if lab.split(":")[0] in ("copy", "move", "delete"))
    rc, _ = torture_run(env, kill_at=idx + 1)
    assert rc == -signal.SIGKILL and (st / "journal.jsonl").exists()
    journal = (st / "journal.jsonl").read_bytes()
    for what, damage in _journal_cases().items():
        (st / "journal.jsonl").write_bytes(damage(journal))
        try:
            _assert_state_error(env, dst, what)
        finally:
            (st / "journal.jsonl").write_bytes(journal)
    env.run("backup", "b", check=0)
    assert_done(env, src, dst)


def test_fuzzed_state_never_crashes(block, capsys) -> None:
    """Random damage to the committed snapshot and to a journal: a clean error (8)
    or a run that copes; never an internal error, never a traceback."""
    from btsoot.cli import main as cli_main

    env, src, dst = block
    rng = random.Random(SEED)
    for i in range(5):
        write(src / f"f{i}", rng.randbytes(300))
    env.run("backup", "b", check=0)
    write(src / "new", b"x")
    st = state_dir(env)
    snap = st / "snapshots" / f"{head_id(env)}.jsonl"
    good = snap.read_bytes()

    def damage(b: bytes) -> bytes:
        b = bytearray(b)
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(4)
            i = rng.randrange(len(b))
            if k == 0:
                b[i] = rng.randrange(256)
            elif k == 1:
                del b[i:]
            elif k == 2:
                b[i:i] = rng.choice([b"\n", b'"', b"{", b"}", b"null", b"-1", b'"x"', b"\\"])
            else:
                del b[i:i + rng.randint(1, 20)]
            if not b:
                break
        return bytes(b)

    for n in range(60 if STRESS else 25):
        snap.write_bytes(damage(good))
        before = tree_state(dst, ignore_top=())
        with pytest.raises(SystemExit) as ex:
            cli_main(["backup", "b", "--dry-run"] if n % 2 else ["backup", "b", "--override"])
        err = capsys.readouterr().err
        code = ex.value.code
        assert code in (0, 8), f"damage #{n}: exit {code}: {err}"
        assert "Traceback" not in err
        if code == 8:
            assert tree_state(dst, ignore_top=()) == before
            snap.write_bytes(good)
        else:
            # Accepted (damage in a field that still parses): restore a sane state.
            shutil.rmtree(st)
            shutil.rmtree(dst)
            dst.mkdir()
            env.run("backup", "b", check=0)
            snap = st / "snapshots" / f"{head_id(env)}.jsonl"
            good = snap.read_bytes()
    snap.write_bytes(good)


# --- concurrency -----------------------------------------------------------------------

def test_two_runs_of_one_block_and_two_blocks_at_once(block) -> None:
    env, src, dst = block
    rng = random.Random(SEED)
    for i in range(30):
        write(src / f"f{i}", rng.randbytes(20_000))
    # A slowed run holds the lock while a second one tries.
    e = env.vars()
    e["PYTHONPATH"] = str(Path(__file__).parent) + os.pathsep + e.get("PYTHONPATH", "")
    e["TORTURE_SLOW"] = "0.01"
    r, w = os.pipe()
    e["TORTURE_READY_FD"] = str(w)
    p = subprocess.Popen([sys.executable, str(TORTURE), "backup", "b"], env=e, pass_fds=(w,),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(w)
    try:
        assert os.read(r, 1) == b"R"
        time.sleep(0.2)
        second = env.run("backup", "b")
        assert p.poll() is None, "the first run ended too soon to test the lock"
        assert second.returncode == 5, second.stderr
        assert "locked" in second.stderr and "Traceback" not in second.stderr
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    finally:
        os.close(r)
        if p.poll() is None:
            p.kill()
            p.wait()
    assert_done(env, src, dst)
    # Two different blocks at the same time.
    src2, dst2 = env.root / "src2", env.root / "remote2"
    write(src2 / "g" / "x", rng.randbytes(100_000))
    dst2.mkdir()
    env.run("add", "c", src2, dst2, check=0)
    for i in range(5):
        write(src / f"more{i}", rng.randbytes(50_000))
    procs = [subprocess.Popen([sys.executable, "-m", "btsoot", "backup", n], env=env.vars(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in ("b", "c")]
    for q in procs:
        _, err = q.communicate(timeout=120)
        assert q.returncode == 0, err
    assert_done(env, src, dst, "b")
    assert_done(env, src2, dst2, "c")


# --- property-based: random mutation sequences ----------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NAMES = ["a", "b", "c", "d\xe9", "E"]
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["create", "modify", "truncate", "same-size", "delete", "rename",
                         "swap", "chmod", "file-to-dir", "dir-to-file", "mkdir", "symlink",
                         "copy"]),
        st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 5000)),
    min_size=1, max_size=8)


def _entries(root: Path) -> list[Path]:
    out = []
    for top, dirs, files in os.walk(root):
        for n in sorted(dirs) + sorted(files):
            out.append(Path(top) / n)
    return out


def _new_path(root: Path, i: int) -> Path:
    dirs = [root] + [p for p in _entries(root) if p.is_dir() and not p.is_symlink()]
    d = dirs[i % len(dirs)]
    return d / NAMES[(i // len(dirs)) % len(NAMES)]


def _mutate(root: Path, op: str, i: int, j: int, n: int) -> None:
    ents = _entries(root)
    files = [p for p in ents if p.is_file() and not p.is_symlink()]
    dirs = [p for p in ents if p.is_dir() and not p.is_symlink()]

    def pick(xs: list[Path], k: int) -> Path:
        return xs[k % len(xs)]

    if op == "create":
        p = _new_path(root, i)
        if not os.path.lexists(p):
            p.write_bytes(bytes([i % 256]) * n)
    elif op == "modify" and files:
        with open(pick(files, i), "ab") as f:
            f.write(b"m" * (n % 100 + 1))
    elif op == "truncate" and files:
        p = pick(files, i)
        os.truncate(p, p.stat().st_size // 2)
    elif op == "same-size" and files:
        p = pick(files, i)
        s = p.stat()
        p.write_bytes(bytes([(j % 255) + 1]) * s.st_size)
        os.utime(p, ns=(s.st_atime_ns, s.st_mtime_ns))
    elif op == "delete" and ents:
        p = pick(ents, i)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    elif op == "rename" and ents:
        p, q = pick(ents, i), _new_path(root, j)
        if not os.path.lexists(q) and not (p.is_dir() and str(q).startswith(str(p) + "/")):
            os.rename(p, q)
    elif op == "swap" and len(ents) >= 2:
        p, q = pick(ents, i), pick(ents, j)
        if p != q and not str(q).startswith(str(p) + "/") and not str(p).startswith(str(q) + "/"):
            t = root / ".swap"
            os.rename(p, t)
            os.rename(q, p)
            os.rename(t, q)
    elif op == "chmod" and ents:
        p = pick(ents, i)
        if not p.is_symlink():
            os.chmod(p, (0o700 if p.is_dir() else 0o600) | (j % 0o100))
    elif op == "file-to-dir" and files:
        p = pick(files, i)
        p.unlink()
        p.mkdir()
        (p / NAMES[j % len(NAMES)]).write_bytes(b"x" * (n % 300))
    elif op == "dir-to-file" and dirs:
        p = pick(dirs, i)
        shutil.rmtree(p)
        p.write_bytes(b"was a folder" * (n % 50))
    elif op == "mkdir":
        p = _new_path(root, i)
        if not os.path.lexists(p):
            p.mkdir()
    elif op == "symlink":
        p = _new_path(root, i)
        if not os.path.lexists(p):
            os.symlink(NAMES[j % len(NAMES)], p)
    elif op == "copy" and files:  # duplicate content: a remote-side copy
        p, q = pick(files, i), _new_path(root, j)
        if not os.path.lexists(q):
            shutil.copy2(p, q)


_prop_count = 0


@settings(max_examples=150 if STRESS else 25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(MUTATIONS, min_size=1, max_size=4))
def test_random_mutations_always_mirror(tmp_path: Path, steps) -> None:
    """After every backup of any sequence of mutations, the remote mirrors the
    source and the committed snapshot is true; a restore gives the source back."""
    global _prop_count
    import tempfile

    from btsoot.config import Block, Config

    _prop_count += 1
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    env = Env(root, root / "config.toml", root / "state")
    src, dst = root / "src", root / "remote"
    src.mkdir()
    dst.mkdir()
    cfg = Config.load(str(env.config))
    cfg.blocks["b"] = Block("b", str(src), str(dst), max_delete="100%")
    cfg.save()
    write(src / "a", b"seed a")
    (src / "b").mkdir()
    write(src / "b" / "c", b"seed c" * 100)
    res = lib_backup(env)
    assert res.exit_code == 0
    for muts in steps:
        for op, i, j, n in muts:
            _mutate(src, op, i, j, n)
        if not any(src.iterdir()):
            write(src / "a", b"never empty")  # the empty-source guard is tested elsewhere
        res = lib_backup(env)
        assert res.exit_code == 0, res.summary()
        assert_done(env, src, dst)
    if _prop_count % 8 == 1:  # the CLI round trip costs two processes: now and then
        assert_round_trip(env, src, dst)
    shutil.rmtree(root)


# --- paths longer than PATH_MAX ---------------------------------------------------------

def _fd_tree(fd: int, rel: bytes = b"") -> dict[bytes, tuple]:
    """tree_state's content by dir_fd chains, for trees deeper than PATH_MAX."""
    out: dict[bytes, tuple] = {}
    for name in sorted(os.listdir(fd)):
        n = os.fsencode(name)
        if not rel and n == b".btsoot":
            continue
        st = os.stat(n, dir_fd=fd, follow_symlinks=False)
        r = rel + b"/" + n if rel else n
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            try:
                out[r] = ("dir", stat.S_IMODE(st.st_mode))
                out.update(_fd_tree(sub, r))
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            f = os.open(n, os.O_RDONLY, dir_fd=fd)
            try:
                out[r] = ("file", os.read(f, 1 << 20))
            finally:
                os.close(f)
        elif stat.S_ISLNK(st.st_mode):
            out[r] = ("link", os.readlink(n, dir_fd=fd))
    return out


def test_paths_longer_than_path_max(block) -> None:
    env, src, dst = block
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(20):  # 20 x 251 bytes: a 5000-byte path
            n = b"%02d" % i + b"d" * 248
            os.mkdir(n, dir_fd=fd)
            nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, b"deep down")
        os.close(f)
    finally:
        os.close(fd)
    r = env.run("backup", "b")
    assert r.returncode == 0, r.stderr[-300:]
    a, b = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDONLY)
    try:
        assert _fd_tree(a) == _fd_tree(b)
    finally:
        os.close(a)
        os.close(b)
    # verify reads the deep file as backup wrote it, and finds it corrupt when it is.
    env.run("verify", "b", check=0)
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(20):
            nfd = os.open(b"%02d" % i + b"d" * 248, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open(b"leaf", os.O_WRONLY, dir_fd=fd)
        os.write(f, b"DEEP")
        os.close(f)
    finally:
        os.close(fd)
    assert "corrupt" in env.run("verify", "b", check=7).stdout
