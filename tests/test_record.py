"""The local record against the remote's own: generations, rotated disks, rollbacks, clocks.

btsoot plans from its record of what the remote holds and never lists the
remote. When that record is not the remote's (another disk of a rotation at
the mount point, the remote rolled back to an older copy), planning from it
would leave what changed since off that disk for good. Each commit counts a
generation on both sides (state.json and REMOTE/.btsoot/block.json); a run
whose two disagree plans from the remote's own record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from btsoot.state import BlockState
from conftest import Env, assert_mirror


def put(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def summary(env: Env, *args: str, check: int = 0) -> dict:
    p = env.run("backup", "b", "--json", *args, check=check)
    return json.loads(p.stdout)


def a_day(src: Path, k: int) -> None:
    """Edits, a new file, a deletion and a renamed folder."""
    put(src / "docs" / "edited.txt", b"version %d" % k)
    put(src / "docs" / f"new-{k}.txt", b"new on day %d" % k)
    gone = sorted((src / "music").glob("*"))
    if gone:
        gone[0].unlink()
    a, b = ("photos", "pictures") if (src / "photos").exists() else ("pictures", "photos")
    os.rename(src / a, src / b)


@pytest.fixture
def tree(env: Env) -> tuple[Env, Path, Path]:
    src, dst = env.root / "src", env.root / "offsite"
    for i in range(5):
        put(src / "music" / f"song{i}.mp3", os.urandom(3000))
        put(src / "photos" / f"img{i}.jpg", os.urandom(5000))
    put(src / "docs" / "edited.txt", b"version 0")
    dst.mkdir()
    env.run("add", "b", src, dst, check=0)
    return env, src, dst


def swap(dst: Path, disk: Path) -> None:
    """Put `disk` at the mount point dst (the folder there goes to dst.other)."""
    held = dst.with_name(dst.name + ".other")
    os.rename(dst, held)
    os.rename(disk, dst)
    os.rename(held, disk)


def test_two_disks_rotated_under_one_block(tree) -> None:
    env, src, dst = tree
    summary(env)  # disk A
    disk = env.root / "diskB"
    disk.mkdir()
    swap(dst, disk)  # disk B (empty) at the mount point; A is stored away in `disk`
    # An empty folder where the backup should be: the guard still stops it (an
    # unmounted share looks the same) ...
    assert "block.json" in env.run("backup", "b", check=4).stderr
    # ... until the user says it is a new disk of the block.
    a_day(src, 1)
    s = summary(env, "--new-remote")
    assert s["adopted"] and s["operations"].get("copy", 0) == sum(
        1 for p in src.rglob("*") if p.is_file())
    assert_mirror(src, dst)
    env.run("backup", "b", "--new-remote", check=2)  # not for a folder holding a backup

    # Disk A comes back: its own record says day 1 never reached it.
    swap(dst, disk)
    a_day(src, 2)
    s = summary(env)
    assert s["adopted"] and any("not the one the last backup went to" in n for n in s["notices"])
    assert_mirror(src, dst)
    # The folder renamed on both days is back where A had it: one move, not copies.
    assert s["operations"].get("copy", 0) <= 3
    env.run("verify", "b", check=0)

    # And B again: it missed day 2.
    swap(dst, disk)
    s = summary(env)
    assert s["adopted"]
    assert_mirror(src, dst)
    env.run("verify", "b", check=0)
    # Settled: the next run plans from the local record again, and has nothing to do.
    s = summary(env)
    assert not s["adopted"] and s["result"] == "nothing"
    rows = json.loads(env.run("list", "--json", check=0).stdout)
    assert len(rows[0]["remotes"]) == 2


def test_a_remote_rolled_back_gets_what_it_lost(tree) -> None:
    env, src, dst = tree
    summary(env)
    old = env.root / "offsite-yesterday"
    subprocess.run(["cp", "-a", str(dst), str(old)], check=True)
    a_day(src, 1)
    summary(env)
    # The NAS is rolled back (a ZFS rollback, a copy of last week's disk).
    shutil.rmtree(dst)
    os.rename(old, dst)
    s = summary(env)
    assert s["adopted"] and any("older than the local one" in n for n in s["notices"])
    assert_mirror(src, dst)
    env.run("verify", "b", check=0)
    assert not summary(env)["adopted"]


def test_restore_and_verify_read_the_remotes_own_record(tree) -> None:
    env, src, dst = tree
    summary(env)
    old = env.root / "offsite-yesterday"
    subprocess.run(["cp", "-a", str(dst), str(old)], check=True)
    before = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    a_day(src, 1)
    summary(env)
    shutil.rmtree(dst)
    os.rename(old, dst)
    # The local record lists day 1's files, the remote does not hold them: verify
    # judges the remote by its own record, and restore brings back what it holds.
    env.run("verify", "b", check=0)
    out = env.root / "back"
    env.run("restore", "b", "--to", out, check=0)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_run_that_committed_on_the_remote_but_not_locally(tree) -> None:
    """A crash between the remote's block.json and the local state.json: the
    state is as before the run, the remote a generation ahead."""
    env, src, dst = tree
    summary(env)
    st = env.state / "blocks" / "b"
    saved = env.root / "saved-state"
    shutil.copytree(st, saved)
    a_day(src, 1)
    summary(env)
    shutil.rmtree(st)
    shutil.copytree(saved, st)
    s = summary(env)
    assert s["adopted"] and any("updated since" in n for n in s["notices"])
    assert s["bytes_sent"] == 0  # it has it all already
    assert_mirror(src, dst)


def faketime(when: str) -> dict[str, str]:
    if not shutil.which("faketime"):
        pytest.skip("faketime (Debian package faketime) is not installed")
    lib = subprocess.run(["sh", "-c", "ls /usr/lib/*/faketime/libfaketime.so.1"],
                         capture_output=True, text=True).stdout.split()
    if not lib:
        pytest.skip("libfaketime not found")
    return {"LD_PRELOAD": lib[0], "FAKETIME": f"@{when}", "DONT_FAKE_MONOTONIC": "1"}


def test_clock_steps_never_make_an_old_snapshot_the_newest(tree) -> None:
    env, src, dst = tree
    # A clock two years ahead for one run (a bad RTC, a wrong NTP answer) ...
    env.run("backup", "b", check=0, extra_env=faketime("2030-01-01 00:00:00"))
    a_day(src, 1)
    env.run("backup", "b", check=0)  # ... then right again
    a_day(src, 2)
    # ... then a year behind.
    env.run("backup", "b", check=0, extra_env=faketime("2020-06-01 00:00:00"))
    ids = BlockState(str(env.state / "blocks" / "b")).committed_ids()
    head = json.loads((env.state / "blocks" / "b" / "state.json").read_bytes())["head"]
    assert head == ids[-1]  # the last run's id sorts last, whatever the clock said
    # A restore from the remote alone takes the last backup, not the 2030 one.
    out = env.root / "back"
    env.run("restore", "--from", dst, "--to", out, check=0)
    assert_mirror(src, out)


# --- power cuts on the local side ----------------------------------------------

def test_a_moves_journal_record_is_synced_before_the_move(tree, tmp_path: Path) -> None:
    """A lost record of a move is the one recovery cannot rebuild from the remote:
    the journal is synced after the move's begin record and before the rename
    on the remote (seen in the system calls of a real run)."""
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    env, src, dst = tree
    summary(env)
    os.rename(src / "photos", src / "pictures-moved")
    log = tmp_path / "strace.log"
    p = subprocess.run(["strace", "-f", "-s", "300", "-e", "trace=write,fsync,fdatasync,renameat2,"
                        "renameat,rename", "-o", str(log), sys.executable, "-m", "btsoot", "backup",
                        "b"], env=env.vars(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = log.read_text(errors="replace").splitlines()
    journal_fd = None
    synced_after_record = False
    moves = 0
    for line in lines:
        if "write(" in line and '\\"t\\":\\"move\\"' in line and "pictures-moved" in line:
            journal_fd = line.split("write(", 1)[1].split(",", 1)[0]
            synced_after_record = False
        elif journal_fd and ("fsync(" + journal_fd + ")") in line:
            synced_after_record = True
        elif "rename" in line and "pictures-moved" in line and ".btsoot" not in line:
            moves += 1
            assert synced_after_record, "the move ran before its journal record was synced"
    assert moves == 1
    assert_mirror(src, dst)


def test_puts_and_deletes_are_on_disk_in_the_journal_before_the_remote_changes(
        tree, tmp_path: Path) -> None:
    """Every file placed and every file deleted on the remote has its journal record
    written and synced first (announced in batches: far fewer syncs than files)."""
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    env, src, dst = tree
    summary(env)
    for i in range(5):
        (src / "music" / f"song{i}.mp3").unlink()
    for i in range(300):  # more than one batch
        put(src / "new" / f"n{i:03d}.txt", b"new %d" % i)
    log = tmp_path / "strace.log"
    p = subprocess.run(["strace", "-s", "1000000", "-e",
                        "trace=openat,write,fsync,fdatasync,renameat2,renameat,rename,unlinkat,unlink",
                        "-o", str(log), sys.executable, "-m", "btsoot", "backup", "b", "--jobs", "1"],
                       env=env.vars(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    journal = str(env.state / "blocks" / "b" / "journal.jsonl")
    ours = re.compile(r"^(n\d{3}\.txt|song\d\.mp3)$")  # the files put and deleted
    fds: set[str] = set()
    written: set[str] = set()  # names in journal records written ...
    synced: set[str] = set()  # ... and synced since
    changed = syncs = 0
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("openat(") and f'"{journal}"' in line and "= " in line:
            fds.add(line.rsplit("= ", 1)[1].split()[0])
        elif line.startswith("write(") and line[6:].split(",", 1)[0] in fds:
            for path in re.findall(r'\\"path\\":\\"([^"\\]+)\\"', line):
                written.add(path.rpartition("/")[2])
        elif line.startswith(("fsync(", "fdatasync(")) and line.split("(", 1)[1].split(")")[0] in fds:
            synced |= written
            syncs += 1
        elif line.startswith(("rename", "unlink")) and line.rstrip().endswith("= 0"):
            # The remote is changed by names relative to a folder descriptor.
            name = re.findall(r'"([^"]+)"', line)[-1]
            if ours.match(name):
                changed += 1
                assert name in synced, f"{line}: the remote changed before its record was synced"
    assert changed >= 305, changed
    assert syncs < 50, syncs  # batches, not one sync per file
    assert_mirror(src, dst)


def test_state_renames_are_followed_by_a_sync_of_their_folder(tree, tmp_path: Path) -> None:
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    env, src, dst = tree
    log = tmp_path / "strace.log"
    p = subprocess.run(["strace", "-f", "-e", "trace=openat,rename,renameat,renameat2,fsync",
                        "-o", str(log), sys.executable, "-m", "btsoot", "backup", "b"],
                       env=env.vars(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = log.read_text(errors="replace").splitlines()
    state = str(env.state / "blocks" / "b")
    for target in ("journal.jsonl", "state.json"):
        at = [i for i, ln in enumerate(lines) if "rename" in ln and f'{target}"' in ln
              and "= 0" in ln]
        assert at, target
        # After the rename: the folder opened and synced.
        rest = lines[at[-1]:at[-1] + 12]
        opened = [ln for ln in rest if "openat(" in ln and f'"{state}"' in ln and "O_DIRECTORY" in ln]
        assert opened, (target, rest)
        fd = opened[0].rsplit("= ", 1)[1].strip()
        assert any(f"fsync({fd})" in ln for ln in rest), (target, rest)


# --- what vanishes during the walk -----------------------------------------------

def test_a_folder_moved_during_the_scan_is_kept_then_moved(env: Env, monkeypatch) -> None:
    """z/big is moved to a/big while the walk is between them: this run sees it
    nowhere. It is kept on the remote as it was (not deleted), and the next run
    moves it there: nothing sent again."""
    from btsoot import scanner
    from btsoot.backup import backup
    from btsoot.config import Config

    src, dst = env.root / "src", env.root / "remote"
    put(src / "a" / "keep.txt", b"a")
    put(src / "m" / "middle.txt", b"m")
    for i in range(20):
        put(src / "z" / "big" / f"part{i:02d}.bin", os.urandom(100_000))
    dst.mkdir()
    env.run("add", "b", src, dst, check=0)
    env.run("backup", "b", check=0)

    real_walk = scanner.walk

    def walk_that_races(*args, **kw):
        for w in real_walk(*args, **kw):
            if w[0] == b"m":  # a/ is walked, z/ is not yet listed
                # (Some time into the scan, as in any scan that matters: file times
                # come from the kernel's coarse clock, up to a tick behind.)
                time.sleep(0.05)
                os.rename(src / "z" / "big", src / "a" / "big")
            yield w

    monkeypatch.setenv("BTSOOT_CONFIG", str(env.config))
    monkeypatch.setenv("BTSOOT_STATE", str(env.state))
    monkeypatch.setattr(scanner, "walk", walk_that_races)
    s = backup(Config.load().get("b")).summary()
    monkeypatch.undo()
    assert s["vanished"] >= 1 and "delete" not in s["operations"], s
    assert len(list((dst / "z" / "big").iterdir())) == 20  # kept for now
    s = json.loads(env.run("backup", "b", "--json", check=0).stdout)
    assert s["operations"].get("move-dir") == 1 and s["bytes_sent"] == 0, s
    assert_mirror(src, dst)


# --- durability that reaches the far end ---------------------------------------

def test_on_sshfs_every_file_sent_is_synced_on_the_server(env: Env, tmp_path: Path) -> None:
    """syncfs on an sshfs mount sends nothing to the server; the profile knows,
    and each file is fsynced before its rename, which sshfs carries to the
    server (counted in the server's own system calls)."""
    import remotes

    remotes.need("sshfs", "strace")
    with remotes.mount("sshfs", tmp_path / "w") as dst:
        src = env.root / "src"
        for i in range(12):
            put(src / "d" / f"f{i:02d}", os.urandom(1000 + i))
        put(src / "big", os.urandom(3 << 20))  # beyond the compiled small-file copy
        env.run("add", "b", src, dst, check=0)
        log = tmp_path / "server.strace"
        with remotes.traced_server(tmp_path / "w", "fsync,fdatasync", log):
            s = json.loads(env.run("backup", "b", "--json", check=0).stdout)
        assert s["operations"].get("copy") == 13
        synced = [ln for ln in log.read_text().splitlines() if "fsync(" in ln and "= 0" in ln]
        # 13 files, and the remote's snapshot and block.json.
        assert len(synced) >= 13, log.read_text()[-2000:]
        env.run("verify", "b", check=0)  # (sshfs keeps whole seconds: no byte-exact mirror)


# --- the remote's record survives damage ------------------------------------------

def _flip(p: Path, at: float) -> None:
    data = bytearray(p.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x55
    p.write_bytes(bytes(data))


def test_every_snapshot_resolves_from_the_remotes_chain_as_recorded(tree) -> None:
    """The remote keeps a full snapshot and deltas; each kept snapshot, resolved
    from them as a stream (what restore --from and a rebuilt state read), is the
    one the local state recorded, entry for entry (less what the remote leaves out)."""
    from btsoot import remote as rmt
    from btsoot.remote import _strip

    env, src, dst = tree
    for k in range(6):
        summary(env)
        a_day(src, k)
    st = BlockState(str(env.state / "blocks" / "b"))
    ids = st.committed_ids()
    assert len(ids) == 6
    kinds = {kind for kind, _ in rmt.list_snapshots(str(dst)).values()}
    assert kinds == {"full", "delta"}
    for sid in ids:
        local = [_strip(e) for e in st.entries(sid)]
        header, entries = rmt.stream(str(dst), sid)
        assert header.id == sid and list(entries) == local, sid


def test_a_damaged_full_snapshot_on_the_remote_is_read_from_its_copy(tree) -> None:
    env, src, dst = tree
    summary(env)
    snaps = dst / ".btsoot" / "snapshots"
    full = sorted(snaps.glob("*.full.jsonl.gz"))
    copies = sorted(snaps.glob("*.full-copy.jsonl.gz"))
    assert len(full) == len(copies) == 1
    assert gzip_lines(full[0]) == gzip_lines(copies[0])
    a_day(src, 1)
    summary(env)  # a delta on top
    _flip(full[0], 0.5)
    env.run("restore", "--from", dst, "--to", env.root / "r1", check=0)
    assert_mirror(src, env.root / "r1")
    full[0].unlink()
    env.run("restore", "--from", dst, "--to", env.root / "r2", check=0)
    assert_mirror(src, env.root / "r2")
    _flip(copies[0], 0.5)  # both gone now: refused, never a wrong restore
    p = env.run("restore", "--from", dst, "--to", env.root / "r3", check=8)
    assert "snapshot" in p.stderr and "Traceback" not in p.stderr


def test_copies_of_full_snapshots_are_pruned_with_them(tree) -> None:
    env, src, dst = tree
    env.config.write_text(env.config.read_text().replace("keep_snapshots = 30",
                                                         "keep_snapshots = 1"))
    summary(env)
    a_day(src, 1)
    summary(env)
    snaps = dst / ".btsoot" / "snapshots"
    first = sorted(p.name for p in snaps.iterdir())
    assert len(first) == 3, first  # full, its copy, a delta
    # The local state lost: the next run starts from the remote's record and
    # writes a new full snapshot; the old one, its copy and the delta go.
    shutil.rmtree(env.state / "blocks" / "b")
    a_day(src, 2)
    s = summary(env)
    assert s["adopted"]
    now = sorted(p.name for p in snaps.iterdir())
    assert not set(now) & set(first), now
    assert len(now) == 2 and now[0].split(".full")[0] == now[1].split(".full")[0], now
    assert_mirror(src, dst)


def gzip_lines(p: Path) -> list[bytes]:
    import gzip

    return gzip.decompress(p.read_bytes()).splitlines()


def test_the_remote_restores_itself_without_btsoot(env: Env, tmp_path: Path) -> None:
    """REMOTE/.btsoot/restore.py, run by a bare interpreter (isolated: no btsoot,
    no xxhash, no site-packages), gives back the tree byte for byte: names that
    are not UTF-8, modes, mtimes, links, a delta on top of the full snapshot,
    a damaged first copy of the full snapshot."""
    src, dst = env.root / "src", env.root / "remote"
    s_ = os.fsencode(src)
    put(src / "docs" / "a.txt", b"alpha")
    put(src / "docs" / "ro.txt", b"read-only")
    os.chmod(src / "docs" / "ro.txt", 0o444)
    os.makedirs(s_ + b"/caf\xe9")
    with open(s_ + b"/caf\xe9/\xff.bin", "wb") as f:
        f.write(os.urandom(70_000))
    os.symlink("docs/a.txt", src / "link")
    dst.mkdir()
    env.run("add", "b", src, dst, check=0)
    env.run("backup", "b", check=0)
    put(src / "docs" / "a.txt", b"alpha, edited")
    put(src / "new.txt", b"new")
    env.run("backup", "b", check=0)
    guide = dst / ".btsoot"
    assert (guide / "FORMAT.txt").read_text().startswith("What this folder is")
    full = sorted((guide / "snapshots").glob("*.full.jsonl.gz"))[0]
    whole = full.read_bytes()
    # Damage in the header, the deflate stream (a CRC error or an invalid code,
    # depending on the bytes there) or the trailer: the copy is read instead.
    for k, at in enumerate((0.02, 0.2, 0.4, 0.6, 0.8, 0.99)):
        full.write_bytes(whole)
        _flip(full, at)
        out = tmp_path / f"restored-{k}"
        p = subprocess.run(["/usr/bin/python3", "-I", "-S", str(guide / "restore.py"), str(out)],
                           capture_output=True, text=True, timeout=60, cwd="/")
        assert p.returncode == 0, (at, p.stdout + p.stderr)
        assert "restored snapshot" in p.stdout and "problems" not in p.stdout
        assert_mirror(src, out)
    listed = subprocess.run(["/usr/bin/python3", "-I", "-S", str(guide / "restore.py"), "--list"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "delta" in listed.stdout and "full" in listed.stdout


# --- power cuts on the machine running btsoot ----------------------------------------

POWERCUT = Path(__file__).with_name("powercut.py")


class PowerCutLayer:
    """The block's state folder on tests/powercut.py: after a cut, the folder holds
    only what was synced (file bytes as of their fsync, names as of their folder's)."""

    def __init__(self, env: Env, where: Path) -> None:
        self.env, self.where = env, where

    def __enter__(self) -> Env:
        shutil.rmtree(self.where, ignore_errors=True)
        self.back, self.mnt, self.records = (self.where / n for n in ("back", "mnt", "records"))
        self.mnt.mkdir(parents=True)
        shutil.copytree(self.env.state, self.back, symlinks=True)
        self.proc = subprocess.Popen([sys.executable, str(POWERCUT), str(self.back),
                                      str(self.mnt), str(self.records)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):
            if os.path.ismount(self.mnt):
                break
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise AssertionError(f"power-cut layer: {self.proc.stderr.read().decode()}")
            time.sleep(0.02)
        else:
            raise AssertionError("power-cut layer did not mount")
        return Env(self.env.root, self.env.config, self.mnt)

    def __exit__(self, *exc: object) -> None:
        for _ in range(100):
            if subprocess.run(["fusermount3", "-u", str(self.mnt)],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        self.proc.wait(timeout=30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def cut(self) -> None:
        """The power comes back: the state folder is what the disk held."""
        from powercut import rebuild

        shutil.rmtree(self.env.state)
        rebuild(str(self.records), str(self.env.state))


@pytest.mark.slow
def test_power_cuts_lose_nothing_committed(tmp_path: Path) -> None:
    """Kill a backup at 36 points, then throw away every local write that was not
    synced (tests/powercut.py), as a power cut on the machine running btsoot does.
    The remote (a NAS that kept its power) holds what the run did. The next run
    must finish (no exit 6 or 8 for good) and leave the remote a mirror with a
    committed snapshot that tells the truth and nothing left behind."""
    import random
    import signal

    from test_reliability import SEED, assert_done, build, torture_run

    rng = random.Random(SEED)
    cuts = 0
    for step in (1, 2, 3):  # edits; renamed folders; swaps and chains
        root = tmp_path / f"step{step}"
        env, src, dst = build(root, SEED + step, step)
        saved = root / "saved"
        for name in ("src", "remote", "state"):
            shutil.copytree(root / name, saved / name, symlinks=True)

        def restore(root: Path = root, saved: Path = saved) -> None:
            for name in ("src", "remote", "state"):
                shutil.rmtree(root / name)
                shutil.copytree(saved / name, root / name, symlinks=True)

        with PowerCutLayer(env, root / "layer") as on_layer:
            _, labels = torture_run(on_layer, trace=root / "trace.json", args=("--jobs", "1"))
        assert labels
        # Half the cuts in the commit (state.json, snapshots, the journal's end),
        # half anywhere in the run (journal records around each operation).
        late = [i + 1 for i, lab in enumerate(labels)
                if lab.partition(":")[0] in ("commit", "snapshot-write", "snapshot-prune")]
        points = sorted(set(rng.sample(late, min(6, len(late)))
                            + rng.sample(range(1, len(labels) + 1), 6)))
        for idx in points:
            restore()
            layer = PowerCutLayer(env, root / "layer")
            with layer as on_layer:
                rc, _ = torture_run(on_layer, kill_at=idx, args=("--jobs", "1"))
            assert rc == -signal.SIGKILL
            layer.cut()
            r = env.run("backup", "b")
            assert r.returncode == 0, f"step {step}, cut at {idx} ({labels[idx - 1]}): {r.stderr}"
            try:
                assert_done(env, src, dst)
            except AssertionError as e:
                raise AssertionError(f"step {step}, cut at {idx} ({labels[idx - 1]}): {e}") from None
            cuts += 1
    assert cuts >= 30


def test_restore_from_the_remote_reads_its_full_snapshot_once(tree, tmp_path: Path) -> None:
    """restore --from proves the full snapshot whole before it uses an entry, then
    reads it: from a local copy of its bytes, so the remote's file crosses the
    link once (counted from the restore's own read calls, with strace)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (see scripts/test.sh for the Debian packages)")
    env, src, dst = tree
    for i in range(3000):
        put(src / "many" / f"f{i:04}", b"%d" % i)
    summary(env)
    full = next((dst / ".btsoot" / "snapshots").glob("*.full.jsonl.gz"))
    size = full.stat().st_size
    assert size > 50_000
    log = tmp_path / "trace"
    cmd = ["strace", "-f", "-e", "trace=openat,read,close", "-o", str(log),
           sys.executable, "-m", "btsoot", "restore", "--from", str(dst), "--to", str(tmp_path / "out")]
    p = subprocess.run(cmd, env=env.vars(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert_mirror(src, tmp_path / "out")
    fds: dict[tuple[str, str], bool] = {}  # (pid, fd) -> opened on the full snapshot
    got = 0
    per_open: list[int] = []  # bytes read at each opening of it
    for line in log.read_text().splitlines():
        pid, _, call = line.partition(" ")
        call = call.strip()
        m = re.match(r'openat\(.*"([^"]+)".*\) = (\d+)$', call)
        if m:
            fds[(pid, m.group(2))] = m.group(1).endswith(full.name)
            if fds[(pid, m.group(2))]:
                per_open.append(0)
            continue
        m = re.match(r"read\((\d+), .*\) = (\d+)$", call)
        if m and fds.get((pid, m.group(1))):
            got += int(m.group(2))
            per_open[-1] += int(m.group(2))
            continue
        m = re.match(r"close\((\d+)\)", call)
        if m:
            fds.pop((pid, m.group(1)), None)
    # Once through, plus the header reads of the chain (a gzip block or two each).
    assert size <= got < size * 1.3, (got, size, per_open)
