"""btsoot's round trip on real file systems mounted for the test: tmpfs, ext4 and xfs
on loop devices, exFAT (exfat-fuse), NTFS (ntfs-3g) and sshfs to a local sshd.

Each test gets a freshly made and mounted file system (see remotes.py) and runs the
real CLI against it: backup, a day of changes, backup, verify, restore --from the
remote into a local folder, which must equal the source exactly. The FUSE file
systems cannot hold everything ext4 can (exFAT: no `:` in names, no symlinks, case
folds; NTFS via ntfs-3g: UTF-16 names): what btsoot cannot store must be reported,
and everything else must come back byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Env, assert_mirror, tree_state
from remotes import KINDS, mount

pytestmark = pytest.mark.root

MiB = 1 << 20
BIG = 17 * MiB + 4321  # over the 16 MiB threshold: changed in place, chunk by chunk
T0 = 1_600_000_000_123_456_789  # a base mtime with every nanosecond digit significant


@pytest.fixture
def mounted(request: pytest.FixtureRequest, env: Env) -> Iterator[tuple[str, Path]]:
    """(kind, a fresh empty folder on a newly mounted file system of that kind)."""
    kind = request.param
    with mount(kind, env.root / "mnt") as remote:
        yield kind, remote


def backup(env: Env, check: int, *more: str) -> tuple[dict, str]:
    """`btsoot backup b --json`: its summary and its stderr."""
    p = env.run("backup", "b", "--json", *more, check=check)
    return json.loads(p.stdout), p.stderr


def put(path: Path, data: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def stamp_dirs(root: Path, rng: random.Random) -> None:
    """Give every folder below root its own sub-second mtime (deepest first: setting a
    folder's time does not change its parent's)."""
    dirs = sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                  key=lambda p: -len(p.parts))
    for d in dirs:
        t = T0 + rng.randrange(10**15)
        os.utime(d, ns=(t, t))


# ---------------------------------------------------------------------------
# a. The round trip on every kind


def build_tree(src: Path, rng: random.Random) -> int:
    """About 60 files of mixed sizes and modes in a few folders, one BIG file; the
    number of files."""
    folders = ["", "docs", "docs/2019", "docs/2020/q1", "photos/rome", "music/a band", "vm"]
    count = {"photos/rome": 10}  # the folder the day of changes renames
    n = 0
    for folder in folders:
        for i in range(count.get(folder, 8)):
            size = rng.choice([0, 1, 100, 4096, rng.randrange(200 * 1024)])
            put(src / folder / f"file{i:02d}.dat", rng.randbytes(size),
                mode=rng.choice([0o644, 0o600, 0o640, 0o755]), mtime_ns=T0 + rng.randrange(10**15))
            n += 1
    put(src / "docs" / "2019" / "ledger.csv", rng.randbytes(12_345), mtime_ns=T0 + rng.randrange(10**15))
    put(src / "vm" / "disk.img", rng.randbytes(BIG), mtime_ns=T0 + rng.randrange(10**15))
    (src / "empty").mkdir()
    (src / "docs" / "2020").chmod(0o700)
    stamp_dirs(src, rng)
    return n + 2


def day_of_changes(src: Path, rng: random.Random) -> None:
    # three files edited: longer, same size, shorter
    put(src / "docs/file01.dat", rng.randbytes(150_000), mtime_ns=T0 + 2 * 10**15 + 1)
    put(src / "docs/2019/ledger.csv", rng.randbytes(12_345), mode=0o600, mtime_ns=T0 + 2 * 10**15 + 7)
    put(src / "music/a band/file05.dat", b"short now")  # mtime: now
    # two added, two deleted
    put(src / "docs/2020/q1/new.dat", rng.randbytes(70_000), mtime_ns=T0 + 3 * 10**15 + 3)
    put(src / "new top.dat", rng.randbytes(33), mode=0o755)
    (src / "file02.dat").unlink()
    (src / "docs/2020/q1/file06.dat").unlink()
    # a folder of 10 files renamed
    (src / "photos/rome").rename(src / "photos/roma 2019")
    # 100 bytes rewritten in the middle of the big file, its size kept
    with open(src / "vm/disk.img", "r+b") as f:
        f.seek(BIG // 2)
        f.write(rng.randbytes(100))
    os.utime(src / "vm/disk.img", ns=(T0 + 4 * 10**15 + 11,) * 2)


@pytest.mark.parametrize("mounted", KINDS, indirect=True)
def test_round_trip(env: Env, mounted: tuple[str, Path]) -> None:
    kind, remote = mounted
    src, restored = env.root / "src", env.root / "restored"
    rng = random.Random(f"round trip {kind}")
    files = build_tree(src, rng)
    env.run("add", "b", src, remote, check=0)

    # doctor probes the remote; on one not backed up into yet, it leaves nothing there
    doc = env.run("doctor", "b", check=0).stdout
    case = re.search(r"^\s*case\s+(\S+)", doc, re.M)
    assert case, doc
    assert case[1].rstrip(":") == ("insensitive" if kind == "exfat" else "sensitive"), doc
    assert os.listdir(remote) == [], "doctor left something on a fresh remote"

    s, err = backup(env, 0)
    assert s["result"] == "ok" and s["files"] == files and not s["errors"], (s, err)
    first, before = s["snapshot"], tree_state(src)

    day_of_changes(src, rng)
    s, err = backup(env, 0)
    ops = s["operations"]
    assert s["result"] == "ok" and not s["errors"], (s, err)
    # the renamed folder is one move; the big file sends its changed chunk only
    assert ops.get("move-dir") == 1 and ops.get("patch") == 1, ops
    # history (the default): 2 deleted and 3 replaced files move into the attic,
    # and the big file's overwritten chunk is kept as an undo record
    assert ops.get("copy") == 5 and ops.get("retire") == 5 and "delete" not in ops, ops
    assert s["bytes_sent"] < 8 * MiB, s

    v = json.loads(env.run("verify", "b", "--json", "--attic", check=0).stdout)
    assert v["checked_files"] == v["files"] == files, v
    assert not (v["missing"] or v["corrupt"] or v["extra"] or v["errors"]), v
    assert v["attic"] == {"checked_files": 6, "missing": [], "corrupt": []}, v  # (+ the undo)

    env.run("restore", "--from", remote, "--to", restored, check=0)
    assert_mirror(src, restored)
    # the big file's old version: a clone where the file system can (xfs: reflink,
    # a whole file sharing the blocks), else an undo record of the chunk overwritten
    attic = remote / ".btsoot" / "attic" / s["snapshot"]
    (line,) = [ln for ln in (attic.parent / f"{s['snapshot']}.jsonl").read_text().splitlines()
               if '"vm/disk.img"' in ln]
    if kind == "xfs":
        assert re.search(r"clones \(reflink\) +yes", env.run("doctor", "b", check=0).stdout)
        assert '"undo"' not in line and (attic / "vm/disk.img").stat().st_size == BIG
    else:
        assert '"undo"' in line and (attic / "vm/disk.img").stat().st_size < 4 * MiB + 4096
    # the day before, from the mirror and the attic, whatever names the remote holds
    env.run("restore", "--from", remote, "--snapshot", first, "--to", env.root / "before",
            check=0)
    assert tree_state(env.root / "before") == before
    if kind in ("tmpfs", "ext4", "xfs"):  # these hold names, modes and mtimes as they are
        assert_mirror(src, remote)

    # and nothing left to do
    s, err = backup(env, 0)
    assert s["result"] == "nothing" and not s["operations"], (s, err)


def _in_seconds(state: dict[bytes, tuple]) -> dict[bytes, tuple]:
    """tree_state with mtimes in whole seconds (what sshfs keeps)."""
    return {p: (*v[:-1], v[-1] // 10**9) if v[0] in ("dir", "file") else v for p, v in state.items()}


@pytest.mark.parametrize("mounted", ["sshfs"], indirect=True)
def test_many_folders_at_once_on_a_network_remote(env: Env, mounted: tuple[str, Path]) -> None:
    """On a network remote btsoot makes folders level by level, and sends, retires
    and sets attributes in many folders at once (execute.Spread): the server's copy
    still ends as the source, every folder's mode and mtime included."""
    _, remote = mounted
    served = env.root / "mnt" / "served" / remote.name  # the same folder, read at the server
    src = env.root / "src"
    rng = random.Random("many folders")
    folders = [f"{a}/{b}" for a in "pqrs" for b in ("one", "two", "three")]
    folders += [f"{f}/deep/er" for f in folders[::3]]
    for f in folders:
        for i in range(6):
            put(src / f / f"f{i}.dat", rng.randbytes(rng.randrange(1, 9000)),
                mode=rng.choice([0o644, 0o600, 0o755]), mtime_ns=T0 + rng.randrange(10**15))
    for f in folders[::2]:
        (src / f).chmod(rng.choice([0o700, 0o750, 0o755]))
    stamp_dirs(src, rng)
    env.run("add", "b", src, remote, check=0)
    s, err = backup(env, 0)
    assert s["result"] == "ok" and not s["errors"], (s, err)
    assert s["operations"]["mkdir"] == len(folders) + 4 + 4  # + p q r s, + each deep/
    assert _in_seconds(tree_state(served)) == _in_seconds(tree_state(src))

    # A day in every folder: edits (their old versions retired), deletions, a folder
    # gone, a new branch.
    for f in folders:
        put(src / f / "f1.dat", rng.randbytes(500), mtime_ns=T0 + 2 * 10**15 + rng.randrange(10**9))
        (src / f / "f2.dat").unlink()
    for p in sorted((src / "s/three").rglob("*"), key=lambda p: -len(p.parts)):
        p.rmdir() if p.is_dir() else p.unlink()
    (src / "s/three").rmdir()
    for i in range(5):
        put(src / "new/a/b" / f"n{i}", rng.randbytes(100), mtime_ns=T0 + rng.randrange(10**15))
    stamp_dirs(src, rng)
    s, err = backup(env, 0)
    assert s["result"] == "ok" and not s["errors"], (s, err)
    assert _in_seconds(tree_state(served)) == _in_seconds(tree_state(src))
    s, err = backup(env, 0)
    assert s["result"] == "nothing", (s, err)


@pytest.mark.parametrize("mounted", ["sshfs", "exfat"], indirect=True)
def test_adopting_a_copy_made_by_rsync(env: Env, mounted: tuple[str, Path]) -> None:
    """A copy made by rsync onto the mount (exFAT: content and times only) is taken
    as it is (`backup --adopt`): size and mtime matched at the time the remote
    keeps, nothing sent; a stale folder renamed since is moved; the remote then
    restores the source exactly."""
    kind, remote = mounted
    src, restored = env.root / "src", env.root / "restored"
    rng = random.Random(f"adopt {kind}")
    files = build_tree(src, rng)
    subprocess.run(["rsync", "-rt" if kind == "exfat" else "-a", f"{src}/", f"{remote}/"],
                   check=True)
    (src / "photos/rome").rename(src / "photos/roma 2019")
    env.run("add", "b", src, remote, check=0)
    s, err = backup(env, 0, "--adopt")
    assert s["result"] == "ok" and not s["errors"], (s, err)
    assert s["bytes_sent"] == 0 and s["adoption"]["files"] == files, s
    assert s["operations"].get("move-dir") == 1 and "copy" not in s["operations"], s
    env.run("restore", "--from", remote, "--to", restored, check=0)
    assert_mirror(src, restored)
    s, err = backup(env, 0)
    assert s["result"] == "nothing", (s, err)


def test_a_run_with_nothing_to_do_asks_the_server_for_block_json_only(env: Env, tmp_path: Path) -> None:
    """Over a slow link every request the server answers is a round trip. A run
    that finds nothing changed reads the remote's block.json and nothing else: the
    profile comes from the block's copy of it, and no statfs is asked (FUSE has no
    file system id to give). Counted in the server's own system calls."""
    import remotes

    remotes.need("sshfs", "strace")
    with remotes.mount("sshfs", tmp_path / "w") as dst:
        src = env.root / "src"
        for i in range(20):
            put(src / f"d{i % 3}" / f"f{i:02d}", os.urandom(100 + i))
        env.run("add", "b", src, dst, check=0)
        assert backup(env, 0)[0]["result"] == "ok"
        log = tmp_path / "server.strace"
        with remotes.traced_server(tmp_path / "w", "%file,%desc", log):
            s, err = backup(env, 0)
        assert s["result"] == "nothing", (s, err)
        calls = log.read_text()
        served = str(tmp_path / "w" / "served" / dst.name)
        paths = set(re.findall(r'"(/[^"]*)"', calls))
        assert paths, calls[-2000:]  # block.json was read: the trace saw the session
        allowed = {served, f"{served}/.btsoot", f"{served}/.btsoot/block.json"}
        assert paths <= allowed, (paths - allowed, calls[-3000:])
        assert len(re.findall(r"open(at)?\(.*block\.json", calls)) == 1, calls[-3000:]
        assert not re.search(r"\bstatv?fs\(", calls), calls[-3000:]
        # The remote's profile is still the one a restore from the remote alone reads.
        assert (dst / ".btsoot" / "profile.json").is_file()


# ---------------------------------------------------------------------------
# b. Names a remote may not hold as they are

AWKWARD_FILES = [
    b"a:b", b"q?", b"star*", b'say "hi"', b"<angle>", b"pi|pe", b"back\\slash",
    b"trailing.", b"trailing ", b"x\xff",
    "\uf03a".encode(),  # the private-use character btsoot encodes `:` as on exFAT
    "a\uf03ab".encode(),  # what `a:b` is stored as there: the two must not meet
    b"n" * 255, b"new\nline", b"-leading-dash", b"plain.txt",
]
AWKWARD_DIR = b"odd: dir?"  # a folder with an awkward name, holding awkward names
# What a kind truly cannot hold: a symlink on exFAT. Everything else must be stored
# (encoded where needed) and come back.
CANNOT_HOLD = {"exfat": {b"link"}}


def build_awkward(src: Path) -> None:
    base = os.fsencode(src)
    os.makedirs(base + b"/" + AWKWARD_DIR)
    for i, name in enumerate(AWKWARD_FILES):
        for folder in (b"", AWKWARD_DIR + b"/"):
            p = base + b"/" + folder + name
            with open(p, "wb") as f:
                f.write(b"content of %r #%d\n" % (folder + name, i) * (i + 1))
            os.utime(p, ns=(T0 + i * 1_000_003,) * 2)
    os.symlink(b"a:b", base + b"/link")
    os.utime(base + b"/" + AWKWARD_DIR, ns=(T0 + 77,) * 2)


def refused(stderr: str) -> list[str]:
    """The `cannot back up PATH: WHY` lines of a backup, in order."""
    return [line for line in stderr.splitlines() if re.match(r"btsoot: b: cannot back up ", line)]


def names_of(root: Path, rel: bytes = b"") -> list[bytes]:
    return sorted(os.listdir(os.fsencode(root) + (b"/" + rel if rel else b"")))


@pytest.mark.parametrize("mounted", ["ext4", "exfat", "ntfs", "sshfs"], indirect=True)
def test_awkward_names(env: Env, mounted: tuple[str, Path]) -> None:
    kind, remote = mounted
    src, restored = env.root / "src", env.root / "restored"
    src.mkdir()
    build_awkward(src)
    env.run("add", "b", src, remote, check=0)
    lost = CANNOT_HOLD.get(kind, set())

    s, err = backup(env, 3 if lost else 0)
    lines = refused(err)
    assert sorted(e["path"].encode() for e in s["errors"]) == sorted(lost), (s["errors"], err)
    for p in lost:
        assert any(line.startswith(f"btsoot: b: cannot back up {p.decode()}: ") for line in lines), err
    assert len(lines) == len(lost), err

    v = json.loads(env.run("verify", "b", "--json", check=0).stdout)
    assert not (v["missing"] or v["corrupt"] or v["errors"]), v

    env.run("restore", "--from", remote, "--to", restored, check=0)
    assert names_of(restored) == sorted(set(names_of(src)) - lost)
    assert names_of(restored, AWKWARD_DIR) == names_of(src, AWKWARD_DIR)
    want = {k: v for k, v in tree_state(src).items() if k not in lost}
    got = tree_state(restored)
    assert got == want, sorted(set(got) ^ set(want)) or [k for k in got if got[k] != want[k]]
    # The remote's own restore script, with a bare interpreter, decodes the names too.
    bare = env.root / "bare"
    p = subprocess.run(["/usr/bin/python3", "-I", "-S", str(remote / ".btsoot" / "restore.py"),
                        str(bare)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert tree_state(bare) == want

    # a second run has nothing to do, or refuses exactly the same paths again
    s2, err2 = backup(env, 3 if lost else 0)
    if lost:
        assert refused(err2) == lines and s2["errors"] == s["errors"], (err, err2)
    else:
        assert s2["result"] == "nothing" and not refused(err2), (s2, err2)
    assert not s2["operations"] or set(s2["operations"]) <= {"symlink"}, s2


# ---------------------------------------------------------------------------
# c. Case twins on a remote that folds case


@pytest.mark.parametrize("mounted", ["exfat"], indirect=True)
def test_case_twins_on_exfat(env: Env, mounted: tuple[str, Path]) -> None:
    """Both twins are kept: the first under its own name, the second under its escaped
    name; verify, restore and later runs agree; the escaped one stays put when the
    other goes."""
    _, remote = mounted
    src = env.root / "src"
    put(src / "A.txt", b"upper-case A\n")
    put(src / "a.txt", b"lower-case a, longer\n")
    put(src / "Dir" / "one", b"in Dir\n")
    put(src / "dir" / "two", b"in dir\n")
    put(src / "other.txt", b"no twin\n")
    env.run("add", "b", src, remote, check=0)
    s, err = backup(env, 0)
    assert not refused(err), err
    stored = [n for n in os.listdir(remote) if n != ".btsoot"]
    assert len(stored) == 5, stored  # all of them, none merged
    assert (remote / "A.txt").read_bytes() == b"upper-case A\n"  # the first keeps its name
    assert os.listdir(remote / "Dir") == ["one"]
    v = json.loads(env.run("verify", "b", "--json", check=0).stdout)
    assert not (v["missing"] or v["corrupt"] or v["extra"] or v["errors"]), v
    env.run("restore", "--from", remote, "--to", env.root / "back", check=0)
    assert_mirror(src, env.root / "back")
    p = subprocess.run(["/usr/bin/python3", "-I", "-S", str(remote / ".btsoot" / "restore.py"),
                        str(env.root / "bare")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert_mirror(src, env.root / "bare")
    s2, _ = backup(env, 0)
    assert s2["result"] == "nothing", s2

    # The plain twin goes: the other keeps its (escaped) place, nothing is re-sent.
    before = tree_state(src)
    (src / "A.txt").unlink()
    s3, _ = backup(env, 0)
    assert s3["operations"] == {"retire": 1}, s3  # into the attic (history: the default)
    assert len([n for n in os.listdir(remote) if n != ".btsoot"]) == 4
    env.run("verify", "b", "--attic", check=0)
    env.run("restore", "--from", remote, "--to", env.root / "back2", check=0)
    assert_mirror(src, env.root / "back2")
    env.run("restore", "b", "--snapshot", s["snapshot"], "--to", env.root / "back1", check=0)
    assert tree_state(env.root / "back1") == before


# A file replaced by one whose name differs only in case (and whose content differs, so
# it is no rename): on a remote that folds case both names are one file. Copying the
# new name and then deleting the old one would delete the new file too; the plan
# stashes the old entry first, as it does any obstacle.


@pytest.mark.parametrize("mounted", ["exfat"], indirect=True)
def test_a_file_replaced_by_its_case_variant_on_exfat(env: Env, mounted: tuple[str, Path]) -> None:
    _, remote = mounted
    src = env.root / "src"
    put(src / "Readme.md", b"old readme\n")
    for i in range(3):
        put(src / f"keep{i}", b"k\n")
    env.run("add", "b", src, remote, check=0)
    backup(env, 0)
    (src / "Readme.md").unlink()
    put(src / "README.md", b"a brand new README\n")
    backup(env, 0)
    assert (remote / "README.md").read_bytes() == b"a brand new README\n"
    env.run("verify", "b", check=0)


@pytest.mark.parametrize("mounted", ["exfat"], indirect=True)
def test_the_other_twin_is_sent_when_the_kept_one_goes_on_exfat(env: Env, mounted: tuple[str, Path]) -> None:
    _, remote = mounted
    src = env.root / "src"
    put(src / "A.txt", b"upper-case A\n")
    put(src / "a.txt", b"lower-case a\n")
    for i in range(3):  # so that one deletion stays within the delete guard
        put(src / f"keep{i}", b"k\n")
    env.run("add", "b", src, remote, check=0)
    backup(env, 0)
    (src / "A.txt").unlink()  # the twin stored under its own name goes
    backup(env, 0)
    env.run("verify", "b", check=0)
    env.run("restore", "--from", remote, "--to", env.root / "back", check=0)
    assert_mirror(src, env.root / "back")


@pytest.mark.parametrize("mounted", ["exfat"], indirect=True)
def test_a_folder_replaced_by_its_case_variant_on_exfat(env: Env, mounted: tuple[str, Path]) -> None:
    """Docs/ replaced by a new docs/ with other files: no false "found what btsoot
    did not put there", nothing in .btsoot/damaged, the new files on the remote."""
    _, remote = mounted
    src = env.root / "src"
    put(src / "Docs" / "old1", b"old one\n")
    put(src / "Docs" / "old2", b"old two\n")
    for i in range(4):
        put(src / f"keep{i}", b"k\n")
    env.run("add", "b", src, remote, check=0)
    backup(env, 0)
    for n in ("old1", "old2"):
        (src / "Docs" / n).unlink()
    (src / "Docs").rmdir()
    put(src / "docs" / "new", b"a new file\n")
    _, err = backup(env, 0)
    assert "did not put there" not in err
    assert not (remote / ".btsoot" / "damaged").exists()
    assert sorted(os.listdir(remote / "docs")) == ["new"]
    env.run("verify", "b", check=0)
    r = env.run("restore", "--from", remote, "--to", env.root / "back", check=0)
    assert "Traceback" not in r.stderr
    assert_mirror(src, env.root / "back")


@pytest.mark.parametrize("mounted", ["exfat"], indirect=True)
def test_restore_into_a_case_folding_destination_reports_what_it_cannot_hold(
        env: Env, mounted: tuple[str, Path]) -> None:
    """The remote (ext4 here) holds A.txt and a.txt; restored onto exFAT, one name
    is lost to the other: reported, exit 3, never counted as restored."""
    _, dest = mounted
    src, remote = env.root / "src", env.root / "remote"
    put(src / "A.txt", b"upper\n")
    put(src / "a.txt", b"lower\n")
    put(src / "keep", b"k\n")
    remote.mkdir()
    env.run("add", "b", src, remote, check=0)
    env.run("backup", "b", check=0)
    r = env.run("restore", "--from", remote, "--to", dest / "r", "--json", check=3)
    summary = json.loads(r.stdout)
    assert summary["copied_files"] == 2
    assert [e["path"] for e in summary["errors"]] in (["A.txt"], ["a.txt"])
    survivor = "a.txt" if summary["errors"][0]["path"] == "A.txt" else "A.txt"
    assert sorted(os.listdir(dest / "r")) == sorted([survivor, "keep"])
