"""`btsoot backup` end to end: the real CLI in a subprocess, on real trees in temp dirs.

After every backup an independent comparison (conftest.assert_mirror: os and
hashlib only) shows the remote mirrors the source: names, kinds, content, mode,
mtime, link targets, empty folders. `--json` tells which operations ran and how
many bytes crossed the link, so each test also checks that a change cost what
it should (a renamed folder: one rename, no data).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Env, assert_mirror, tree_state

OLD_NS = time.time_ns() - 3600 * 10**9  # an mtime far outside the racy window


def put(path: Path | bytes, data: bytes = b"", mtime_ns: int | None = None,
        mode: int | None = None) -> None:
    p = os.fsencode(path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(p, mode)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def backup(env: Env, *args: str, check: int = 0, name: str = "b", **kw) -> dict:
    """`btsoot backup NAME --json ARGS`: the parsed summary."""
    p = env.run("backup", name, "--json", *args, check=check, **kw)
    return json.loads(p.stdout)


def ops(summary: dict) -> dict[str, int]:
    """The operations that ran, without the stash round trips of moves."""
    return {k: v for k, v in summary["operations"].items() if k != "stash"}


def refused(env: Env, code: int, *args: str | os.PathLike, says: str,
            **kw) -> subprocess.CompletedProcess:
    """The command fails with `code` and one line on stderr (no traceback) containing `says`."""
    p = env.run(*args, check=code, **kw)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], p.stderr
    return p


def everything(root: Path) -> dict[bytes, tuple]:
    """tree_state including .btsoot: for "nothing on the remote changed"."""
    return tree_state(root, ignore_top=())


def inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_ino for p in root.rglob("*")}


# --- every operation type ------------------------------------------------------------

def test_every_operation_type(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "docs/a.txt", b"alpha" * 100)
    put(src / "docs/b.txt", b"beta" * 100, mode=0o600)
    put(src / "music/song.mp3", rand(70_000, 1), mtime_ns=OLD_NS)
    (src / "empty/deeper").mkdir(parents=True)
    os.symlink("docs/a.txt", src / "link")
    os.symlink("/nonexistent/target", src / "dangling")
    s = backup(env)
    assert ops(s) == {"mkdir": 4, "copy": 3, "symlink": 2, "set-attributes": 4}
    assert s["result"] == "ok" and s["bytes_sent"] == 500 + 400 + 70_000
    assert_mirror(src, dst)

    # copy (update), copy (new), remote-copy, set-attributes, symlink, delete, rmdir, mkdir
    put(src / "docs/a.txt", b"ALPHA" * 100)
    put(src / "docs/new.txt", b"new")
    shutil.copy2(src / "music/song.mp3", src / "docs/song-copy.mp3")
    os.chmod(src / "docs/b.txt", 0o644)
    os.unlink(src / "link")
    os.symlink("docs/b.txt", src / "link")
    os.unlink(src / "dangling")
    (src / "empty/deeper").rmdir()
    (src / "fresh").mkdir()
    s = backup(env)
    # (History is kept by default: what leaves the mirror, a deleted file and the
    # old content of the replaced one, moves into the attic.)
    assert ops(s) == {"copy": 2, "remote-copy": 1, "symlink": 1, "retire": 2, "rmdir": 1,
                      "mkdir": 1, "set-attributes": 4}
    assert s["bytes_sent"] == 500 + 3 and s["bytes_remote_copied"] == 70_000
    assert_mirror(src, dst)

    # move (file rename), move-dir (folder rename), delete of a whole folder
    os.rename(src / "docs/new.txt", src / "docs/renamed.txt")
    os.rename(src / "music", src / "audio")
    shutil.rmtree(src / "empty")
    s = backup(env)
    assert ops(s) == {"move": 1, "move-dir": 1, "rmdir": 1, "set-attributes": 2}
    assert s["bytes_sent"] == 0
    assert_mirror(src, dst)

    # The remote describes itself: its snapshot chain resolves to the local head.
    from btsoot import remote as rmt
    from btsoot.snapshot import SnapshotReader

    snaps = sorted(os.listdir(dst / ".btsoot/snapshots"))
    assert snaps[0].endswith((".full.jsonl.gz", ".full-copy.jsonl.gz"))
    assert snaps[-1].startswith(s["snapshot"])
    assert all(re.fullmatch(r"[0-9T.]+Z\.(full|full-copy|delta)\.jsonl\.gz", n) for n in snaps)
    _, entries = rmt.load(str(dst))
    with SnapshotReader(str(env.state / "blocks/b/snapshots" / f"{s['snapshot']}.jsonl")) as r:
        local = [(e.path, e.kind, e.digest, e.mode, e.mtime_ns, e.target) for e in r]
    assert [(e.path, e.kind, e.digest, e.mode, e.mtime_ns, e.target) for e in entries] == local


def test_folder_rename_is_one_rename_and_no_data(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    for i in range(200):
        put(src / f"photos/2024/img{i:03d}.jpg", rand(2000 + i, i))
    put(src / "photos/2024/raw/big.cr2", rand(300_000, 999))
    put(src / "photos/other.txt", b"stays")
    backup(env)
    before = inodes(dst / "photos/2024")
    os.rename(src / "photos/2024", src / "photos/2024-summer")
    s = backup(env)
    assert ops(s) == {"move-dir": 1, "set-attributes": 2}  # the folder and its parent
    assert s["bytes_sent"] == 0 and s["bytes_remote_copied"] == 0
    assert_mirror(src, dst)
    assert inodes(dst / "photos/2024-summer") == before  # renamed, not rewritten


@pytest.mark.parametrize("new_name", ["0-photos", "zz-photos"])
def test_renamed_folder_is_not_read_again(block: tuple[Env, Path, Path], new_name: str) -> None:
    """Files at new paths with the inode, size and mtime of files the last scan saw
    keep those digests: a renamed folder costs no hashing, whether its new name
    sorts before the old one (its files are met first) or after, and whatever
    their size (the folder keeps its inode: its files are looked up where it
    was). An edited file is read."""
    env, src, dst = block
    for i in range(30):
        put(src / f"photos/img{i:02d}.jpg", rand(20_000 + i, i), mtime_ns=OLD_NS)
    put(src / "photos/tiny.txt", b"small", mtime_ns=OLD_NS)
    put(src / "photos/edited.jpg", rand(30_000, 99), mtime_ns=OLD_NS)
    put(src / "racy.jpg", rand(40_000, 98))  # modified just now: never trusted
    backup(env)
    os.rename(src / "photos", src / new_name)
    os.link(src / "racy.jpg", src / new_name / "racy-link.jpg")
    with open(src / new_name / "edited.jpg", "r+b") as f:
        f.write(b"edit")
    s = backup(env)
    assert s["hashed_files"] == 2  # edited.jpg and racy.jpg (once for its two names)
    assert ops(s)["move-dir"] == 1 and s["bytes_sent"] == 30_000
    assert_mirror(src, dst)


def test_renamed_tree_of_small_files_is_not_read_again(block: tuple[Env, Path, Path]) -> None:
    """A renamed folder of small files in nested folders (files beside subfolders,
    so the walk comes back to a folder after each one): nothing is read but a
    file replaced by another of the same name, size and mtime (another inode),
    and a small file moved on its own into a folder that stayed."""
    env, src, dst = block
    for a in range(3):
        for b in range(4):
            put(src / f"mail/a{a}/f{b}.eml", b"m%d%d" % (a, b), mtime_ns=OLD_NS)
            put(src / f"mail/a{a}/s{b}/g.eml", b"g%d%d" % (a, b), mtime_ns=OLD_NS)
        put(src / f"mail/a{a}/z.eml", b"z%d" % a, mtime_ns=OLD_NS)
    put(src / "inbox/loose.eml", b"loose", mtime_ns=OLD_NS)
    (src / "kept").mkdir()
    backup(env)
    os.rename(src / "mail", src / "mail-2025")
    os.unlink(src / "mail-2025/a1/f2.eml")
    put(src / "mail-2025/a1/f2.eml", b"X12", mtime_ns=OLD_NS)  # another file, same name/size/mtime
    os.rename(src / "inbox/loose.eml", src / "kept/loose.eml")
    s = backup(env)
    assert s["hashed_files"] == 2, s  # the replaced file, and the file moved on its own
    assert ops(s)["move-dir"] == 1 and s["bytes_sent"] == 3
    assert_mirror(src, dst)


def test_folder_moved_with_edits_inside(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    for i in range(20):
        put(src / f"a/f{i}", rand(1000, i))
    backup(env)
    os.makedirs(src / "x/y")
    os.rename(src / "a", src / "x/y/a2")
    put(src / "x/y/a2/f3", b"edited")
    put(src / "x/y/a2/f4", rand(1000, 104))  # same size, new content
    os.unlink(src / "x/y/a2/f5")
    put(src / "x/y/a2/new", b"brand new")
    s = backup(env)
    o = ops(s)
    assert o["move-dir"] == 1 and o["copy"] == 3 and o["retire"] == 3 and "move" not in o
    assert s["bytes_sent"] == len(b"edited") + 1000 + len(b"brand new")
    assert_mirror(src, dst)


def test_swap_and_chain_of_renames(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    for n in "abcde":
        put(src / n, rand(5000, ord(n)))
    backup(env)
    os.rename(src / "a", src / "tmp")  # swap a <-> b
    os.rename(src / "b", src / "a")
    os.rename(src / "tmp", src / "b")
    os.rename(src / "e", src / "tmp")  # chain c -> d -> e -> c
    os.rename(src / "d", src / "e")
    os.rename(src / "c", src / "d")
    os.rename(src / "tmp", src / "c")
    put(src / "f", b"new content", mode=0o600)
    shutil.copy2(src / "a", src / "a-copy")
    s = backup(env, "--jobs", "1")  # transfers inline, not on a thread pool
    assert ops(s) == {"move": 5, "copy": 1, "remote-copy": 1}
    assert s["bytes_sent"] == len(b"new content") and s["bytes_remote_copied"] == 5000
    assert_mirror(src, dst)
    assert not os.listdir(dst / ".btsoot/stash")  # the stash round trips left nothing


def test_file_replaced_by_folder_and_back(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "thing", rand(3000, 1))
    put(src / "dir/inner", rand(3000, 2))
    for i in range(4):  # so that replacing both is within the deletion limit
        put(src / f"other{i}", b"%d" % i)
    backup(env)
    os.rename(src / "thing", src / "tmp")
    os.rename(src / "dir", src / "thing")  # the folder takes the file's name
    os.rename(src / "tmp", src / "dir")  # and the file the folder's
    s = backup(env)
    assert s["bytes_sent"] == 0
    assert_mirror(src, dst)
    shutil.rmtree(src / "thing")
    put(src / "thing", b"a file again")
    os.unlink(src / "dir")
    put(src / "dir/x/y", b"a folder again")
    backup(env)
    assert_mirror(src, dst)


def test_folder_moved_out_of_a_folder_that_became_a_file(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    for i in range(5):
        put(src / f"p/q/{i}", rand(1000, i))
    backup(env)
    os.rename(src / "p/q", src / "z")
    os.rmdir(src / "p")
    put(src / "p", b"now a file")
    s = backup(env)
    assert ops(s)["move-dir"] == 1 and s["bytes_sent"] == len(b"now a file")
    assert_mirror(src, dst)


MiB = 1 << 20


def test_large_file_edits_send_only_the_changed_chunks(block: tuple[Env, Path, Path]) -> None:
    """A file of >= 16 MiB has 4 MiB chunk digests: an edit sends the chunks it
    touched, written into the remote file in place (through a redo file)."""
    env, src, dst = block
    put(src / "vm.img", rand(40 * MiB, 1))
    put(src / "log", rand(20 * MiB, 2))
    first = backup(env)["snapshot"]
    with open(src / "vm.img", "r+b") as f:  # two chunks: 1 and 7
        f.seek(5 * MiB)
        f.write(b"x" * 10)
        f.seek(30 * MiB - 3)
        f.write(b"y" * 6)
    with open(src / "log", "ab") as f:  # a partial last chunk: rewritten, then one more
        f.write(b"z" * 100)
    assert "patch     vm.img  (8388608 of 41943040 bytes, 2 chunks)" in env.run("diff", "b").stdout
    s = backup(env)
    assert ops(s) == {"patch": 2}
    assert s["bytes_sent"] == 2 * 4 * MiB + 100
    assert_mirror(src, dst)
    assert not (dst / ".btsoot" / "patch").exists()
    # History: the chunks each patch overwrote are kept as undo records in the
    # attic (vm.img: its two old chunks; log: nothing was overwritten, only added),
    # and the snapshot before restores exactly from them.
    attic = dst / ".btsoot" / "attic" / s["snapshot"]
    assert 2 * 4 * MiB < (attic / "vm.img").stat().st_size < 2 * 4 * MiB + 4096
    assert (attic / "log").stat().st_size < 4096
    r = env.run("restore", "b", "--snapshot", first, "--to", env.root / "then")
    assert r.returncode == 0, r.stderr
    assert (env.root / "then" / "vm.img").read_bytes() == rand(40 * MiB, 1)
    assert (env.root / "then" / "log").read_bytes() == rand(20 * MiB, 2)
    # Shrunk in the middle of a chunk: only the new last chunk, then a truncate.
    os.truncate(src / "vm.img", 33 * MiB + 5)
    s = backup(env)
    assert ops(s) == {"patch": 1} and s["bytes_sent"] == 1 * MiB + 5
    assert_mirror(src, dst)
    # Mostly rewritten: one whole copy beats writing most of it twice.
    with open(src / "log", "r+b") as f:
        f.write(rand(15 * MiB, 3))
    s = backup(env)
    assert ops(s) == {"copy": 1, "retire": 1} and s["bytes_sent"] == 20 * MiB + 100
    assert_mirror(src, dst)


@pytest.mark.parametrize("how", ["hard-linked", "changed-behind-our-back"])
def test_patch_falls_back_to_a_whole_copy(block: tuple[Env, Path, Path], how: str) -> None:
    """In place only when the remote file is the one the snapshot describes and no
    other name shares it (hard-link snapshots of the remote keep their content)."""
    env, src, dst = block
    put(src / "big", rand(20 * MiB, 4))
    backup(env)
    keep = (dst / "big").read_bytes()
    if how == "hard-linked":
        os.link(dst / "big", env.root / "remote-history-link")
    else:
        os.utime(dst / "big", ns=(1, 1))
    with open(src / "big", "r+b") as f:
        f.write(b"new start")
    s = backup(env)
    assert ops(s) == {"copy": 1} and s["bytes_sent"] == 20 * MiB
    assert_mirror(src, dst)
    if how == "hard-linked":
        assert (env.root / "remote-history-link").read_bytes() == keep


def test_patch_in_place_can_be_turned_off(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "big", rand(20 * MiB, 5))
    backup(env)
    cfg = env.config.read_text()
    assert "patch_in_place = true" in cfg  # written by `add`, for people to find
    env.config.write_text(cfg.replace("patch_in_place = true", "patch_in_place = false"))
    with open(src / "big", "r+b") as f:
        f.write(b"new start")
    s = backup(env)
    assert ops(s) == {"copy": 1, "retire": 1} and s["bytes_sent"] == 20 * MiB
    assert_mirror(src, dst)
    env.config.write_text(cfg.replace("patch_in_place = true", "patch_in_place = 1"))
    refused(env, 2, "backup", "b", says="patch_in_place = 1: expected true or false")


def test_attributes_only(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "d/a", b"a" * 100)
    put(src / "d/b", b"b" * 100)
    put(src / "c", b"c" * 100)
    backup(env)
    os.chmod(src / "d/a", 0o600)
    os.utime(src / "d/b", ns=(OLD_NS, OLD_NS))  # touch -d
    os.chmod(src / "d", 0o750)
    os.utime(src / "c")  # touch: now
    s = backup(env)
    assert ops(s) == {"set-attributes": 4} and s["bytes_sent"] == 0
    assert_mirror(src, dst)


def test_empty_folders(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    (src / "a/b/c").mkdir(parents=True)
    (src / "e").mkdir(mode=0o700)
    backup(env)
    assert_mirror(src, dst)
    (src / "a/b/c").rmdir()
    (src / "e/f").mkdir()
    s = backup(env)
    assert ops(s) == {"rmdir": 1, "mkdir": 1, "set-attributes": 3}
    assert_mirror(src, dst)


ODD_NAMES = [b"caf\xe9-latin1", b"\xff\xfe", b"new\nline", b"back\\slash", b"-leading-dash",
             b"--", b"x" * 255, b" spaced ", b"tab\there", b"quote\"'", b"\xe2\x82\xac-utf8"]


def test_odd_names(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    s_, d_ = os.fsencode(src), os.fsencode(dst)
    for i, n in enumerate(ODD_NAMES):
        put(s_ + b"/" + n, rand(100 + i, i))
        put(s_ + b"/dir-" + n[:200] + b"/" + n, n)
    os.symlink(b"\xff\xfe", s_ + b"/link-\xfe")
    os.mkfifo(s_ + b"/fifo-\xff")  # skipped, and reported: the report must survive the name
    s = backup(env)
    assert s["skipped"] and "fifo-" in s["skipped"][0]
    assert_mirror(src, dst)
    assert os.path.isfile(d_ + b"/dir-\xff\xfe/\xff\xfe")
    for i, n in enumerate(ODD_NAMES):  # renames between odd names
        os.rename(s_ + b"/" + n, s_ + b"/" + ODD_NAMES[(i + 1) % len(ODD_NAMES)][:250] + b".2")
    s = backup(env)
    assert ops(s)["move"] == len(ODD_NAMES) and s["bytes_sent"] == 0
    assert_mirror(src, dst)
    p = env.run("diff", "b", check=0)
    assert "no changes" in p.stdout


def test_a_non_utf8_name_is_spelled_one_way_in_every_command(block: tuple[Env, Path, Path]) -> None:
    """backup's report, diff, verify and restore all print byte 0xff as \\xff,
    never as Python's stand-in \\udcff."""
    env, src, dst = block
    s_, d_ = os.fsencode(src), os.fsencode(dst)
    put(s_ + b"/caf\xe9-\xff.txt", b"one")
    os.mkfifo(s_ + b"/fifo-\xff")
    out = [env.run("backup", "b", check=0)]
    put(s_ + b"/new-\xff", b"two")
    out.append(env.run("diff", "b", check=0))
    with open(d_ + b"/caf\xe9-\xff.txt", "wb") as f:
        f.write(b"ONE")
    out.append(env.run("verify", "b", check=7))
    out.append(env.run("restore", "b", "--to", env.root / "back", check=7))
    texts = [p.stdout + p.stderr for p in out]
    assert "fifo-\\xff" in texts[0] and "new-\\xff" in texts[1]
    assert all("caf\\xe9-\\xff.txt" in t for t in texts[2:]), texts
    assert not any("\\udc" in t for t in texts), texts


def test_excludes(env: Env) -> None:
    src, dst = env.root / "src", env.root / "remote"
    dst.mkdir()
    put(src / "keep.txt", b"k")
    put(src / "scratch.tmp", b"t")
    put(src / "sub/also.tmp", b"t")
    put(src / "cache/blob", b"c")
    put(src / "sub/cache/blob", b"c")
    put(src / "sub/keep", b"k")
    env.run("add", "b", src, dst, "--exclude", "*.tmp", "--exclude", "cache/", check=0)
    backup(env)
    kept = {k: v for k, v in tree_state(src).items()
            if not (k.endswith(b".tmp") or b"cache" in k)}
    assert tree_state(dst) == kept and b"sub/keep" in kept


def test_dry_run_and_diff_change_nothing(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    for i in range(6):
        put(src / f"d/{i}", rand(100, i))
    backup(env)
    os.rename(src / "d", src / "e")
    put(src / "new", b"new")
    os.unlink(src / "e/0")

    def state() -> tuple:
        # Local state: the same files with the same content (a scratch file may come
        # and go; the lock file holds the pid of the last run to take it).
        local = {k: v[:2] for k, v in everything(env.state).items() if k != b"blocks/b/lock"}
        return everything(dst), local

    before = state()
    p = env.run("backup", "b", "--dry-run", check=0)
    assert re.search(r"^move-dir +d -> e$", p.stdout, re.M), p.stdout
    assert re.search(r"^copy +new", p.stdout, re.M) and re.search(r"^attic +e/0", p.stdout, re.M)
    p2 = env.run("diff", "b", check=0)
    assert p2.stdout.splitlines()[:-1] == p.stdout.splitlines()[:-1]
    s = backup(env, "--dry-run")
    assert s["result"] == "dry-run" and ops(s)["move-dir"] == 1 and s["bytes_sent"] == 0
    assert state() == before
    backup(env)
    assert_mirror(src, dst)


def test_json_and_quiet(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "a", b"12345")
    p = env.run("backup", "b", "--quiet", check=0)
    assert p.stdout == "" and p.stderr == ""
    put(src / "b", b"678")
    s = backup(env)
    assert set(s) >= {"block", "result", "exit_code", "snapshot", "files", "bytes", "hashed_files",
                      "hashed_bytes", "operations", "bytes_sent", "bytes_remote_copied",
                      "errors", "skipped", "durations"}
    assert (s["block"], s["result"], s["exit_code"], s["files"], s["bytes"]) == ("b", "ok", 0, 2, 8)
    assert s["bytes_sent"] == 3 and s["errors"] == [] and ops(s)["copy"] == 1
    assert os.path.exists(env.state / "blocks/b/snapshots" / f"{s['snapshot']}.jsonl")
    p = env.run("backup", "b", check=0)  # the one summary line cron mails
    assert len(p.stdout.splitlines()) == 1 and p.stdout.startswith("b: nothing")


def test_list_shows_each_run(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "a", b"x" * 2048)
    env.run("backup", "b", check=0)
    out = env.run("list", check=0).stdout
    assert re.search(r"\bb\b.*\bok\b.*\b1\b.*2\.0 KiB", out), out
    env.run("backup", "b", check=0)
    assert json.loads(env.run("list", "--json", check=0).stdout)[0]["last_run"]["result"] == "nothing"
    shutil.rmtree(src)
    env.run("backup", "b", check=4)
    last = json.loads(env.run("list", "--json", check=0).stdout)[0]["last_run"]
    assert last["result"] == "failed" and last["exit_code"] == 4 and "does not exist" in last["error"]
    with open(env.state / "blocks/b/runs.jsonl", "rb") as f:
        assert len(f.read().splitlines()) == 3


def test_backup_all_goes_on_past_a_failing_block(env: Env) -> None:
    for n in ("one", "two"):
        put(env.root / n / "src/f", n.encode())
        (env.root / n / "dst").mkdir()
        env.run("add", n, env.root / n / "src", env.root / n / "dst", check=0)
    shutil.rmtree(env.root / "one/src")
    p = env.run("backup", "--all", check=4)
    assert "one:" in p.stderr and "does not exist" in p.stderr
    assert_mirror(env.root / "two/src", env.root / "two/dst")
    refused(env, 2, "backup", says="--all")


# --- tiered change detection ----------------------------------------------------------

def test_unchanged_files_are_not_read_again(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    for i in range(30):
        put(src / f"f{i}", rand(1000, i), mtime_ns=OLD_NS)
    assert backup(env)["hashed_files"] == 30
    s = backup(env)
    assert s["hashed_files"] == 0 and s["result"] == "nothing"
    s = backup(env, "--checksum")
    assert s["hashed_files"] == 30 and s["result"] == "nothing"


def test_checksum_finds_what_size_and_mtime_hide(block: tuple[Env, Path, Path]) -> None:
    """The tiered-detection contract: a file whose size, mtime (ns) and inode all match
    the last backup is trusted unread, so a same-size rewrite with its mtime put back
    is not seen by a plain backup. --checksum re-reads everything and finds it."""
    env, src, dst = block
    put(src / "doc", b"version one", mtime_ns=OLD_NS)
    backup(env)
    with open(src / "doc", "r+b") as f:  # in place: same inode
        f.write(b"VERSION ONE")
    os.utime(src / "doc", ns=(OLD_NS, OLD_NS))
    s = backup(env)
    assert s["result"] == "nothing" and (dst / "doc").read_bytes() == b"version one"
    s = backup(env, "--checksum")
    assert ops(s) == {"copy": 1, "retire": 1} and s["bytes_sent"] == 11
    assert_mirror(src, dst)


def test_racy_timestamp_is_not_trusted(block: tuple[Env, Path, Path]) -> None:
    """A file written just before a backup, then changed again within the same
    timestamp tick (simulated: mtime put back), is re-read by the next backup: its
    mtime was too close to the scan start to be trusted (DESIGN: racy timestamps)."""
    env, src, dst = block
    put(src / "old", b"old", mtime_ns=OLD_NS)
    put(src / "hot", b"first")
    mtime = os.stat(src / "hot").st_mtime_ns
    backup(env)
    with open(src / "hot", "r+b") as f:
        f.write(b"FIRST")
    os.utime(src / "hot", ns=(mtime, mtime))
    s = backup(env)
    assert ops(s) == {"copy": 1, "retire": 1} and s["hashed_files"] == 1  # "hot" only
    assert_mirror(src, dst)


# --- unreadable source entries --------------------------------------------------------

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_dac_override() -> None:
    """preexec_fn: the CLI runs as root minus the capabilities that bypass file
    permissions, so a mode-000 file or folder is unreadable to it, as to any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_user(env: Env, probe: Path) -> dict:
    try:
        p = subprocess.run(["cat", probe], capture_output=True, preexec_fn=_without_dac_override)
    except OSError as e:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE: {e}")
    if p.returncode == 0:
        pytest.skip("file permissions are not enforced here (not root, or capabilities kept)")
    return {"preexec_fn": _without_dac_override}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop the permission-bypassing caps")
def test_unreadable_file_and_folder_are_errors_never_deletions(
        block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "ok", b"fine")
    put(src / "secret", b"secret v1")
    put(src / "closed/a", b"inside a")
    put(src / "closed/sub/b", b"inside b")
    backup(env)
    remote_before = everything(dst)
    put(env.root / "probe", b"", mode=0)
    user = _as_user(env, env.root / "probe")

    put(src / "ok", b"fine, edited")
    os.chmod(src / "secret", 0)
    os.chmod(src / "closed", 0)
    put(src / "new-secret", b"never readable", mode=0)
    p = env.run("backup", "b", "--json", check=3, **user)
    s = json.loads(p.stdout)
    assert s["result"] == "partial" and ops(s) == {"copy": 1, "retire": 1}
    assert sorted(e["path"] for e in s["errors"]) == ["closed", "new-secret", "secret"]
    assert "secret" in p.stderr and "closed" in p.stderr
    after = everything(dst)
    kept = [b"secret", b"closed", b"closed/a", b"closed/sub", b"closed/sub/b"]
    assert {k: after[k] for k in kept} == {k: remote_before[k] for k in kept}
    assert b"new-secret" not in after
    listed = json.loads(env.run("list", "--json").stdout)[0]
    assert listed["last_run"]["exit_code"] == 3
    # Exit 3's causes counted apart; what is not on the remote as the source has it,
    # in the summary, `list` and the run's item list.
    assert s["causes"] == {"permission": 3} and s["counts"]["errors"] == 3
    assert s["unsent"]["files"] == 3 and sorted(s["unsent"]["paths"]) == ["closed", "new-secret", "secret"]
    assert listed["unsent"]["files"] == 3 and listed["unsent"]["since"] == s["started"]
    # new-secret never reached the remote; the others' last backed-up versions are there.
    assert s["unsent"]["never_sent_paths"] == listed["unsent"]["never_sent_paths"] == ["new-secret"]
    assert "3 not backed up (permission 3); 3 files not on the remote as they are (1 never sent)" in env.run(
        "backup", "b", **user).stdout
    items = [json.loads(x) for x in env.run("log", "b", "last", "--json", check=0).stdout.splitlines()]
    assert sorted(i["path"] for i in items if i["op"] == "failed") == ["closed", "new-secret", "secret"]
    assert {i["cause"] for i in items if i["op"] == "failed"} == {"permission"}
    # Still unsent a run later: since the first run that failed, not the last one.
    assert json.loads(env.run("list", "--json").stdout)[0]["unsent"]["since"] == s["started"]

    # Readable again (and edited meanwhile): the next run brings the remote up to date.
    os.chmod(src / "secret", 0o644)
    os.chmod(src / "closed", 0o755)
    os.chmod(src / "new-secret", 0o644)
    put(src / "closed/sub/b", b"inside b, edited")
    s = backup(env, **user)
    assert s["result"] == "ok" and s["causes"] == {} and s["unsent"]["files"] == 0
    assert_mirror(src, dst)
    assert json.loads(env.run("list", "--json").stdout)[0]["unsent"]["files"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop the permission-bypassing caps")
def test_read_only_folders_as_a_user(block: tuple[Env, Path, Path]) -> None:
    """Read-only folders (a Go module cache, a photo archive made read-only) are
    mirrored read-only; the user's next backups must still add, move and delete in
    them, as the user could at the source after a chmod u+w."""
    env, src, dst = block
    put(env.root / "probe", b"", mode=0)
    user = _as_user(env, env.root / "probe")
    for d in ("mod/pkg@v1", "mod/pkg@v1/sub", "archive", "gone"):
        for i in range(3):
            put(src / d / f"f{i}", b"%s %d" % (d.encode(), i), mode=0o444)
    for d in ("mod/pkg@v1/sub", "mod/pkg@v1", "archive", "gone"):
        os.chmod(src / d, 0o555)
    put(src / "keep", b"keep")
    backup(env, **user)
    assert_mirror(src, dst)

    def writable(*ds: str) -> None:
        for d in ds:
            os.chmod(src / d, 0o755)

    writable("mod/pkg@v1", "mod/pkg@v1/sub", "gone", "archive")
    shutil.rmtree(src / "mod/pkg@v1")  # go clean -modcache
    shutil.rmtree(src / "gone")
    put(src / "archive/new", b"added while writable")
    os.rename(src / "archive/f0", src / "archive/f0-renamed")
    os.chmod(src / "archive", 0o555)
    s = backup(env, "--override", **user)
    assert s["result"] == "ok"
    assert_mirror(src, dst)


# --- guards -----------------------------------------------------------------------------

def _populated(block: tuple[Env, Path, Path], n: int = 10) -> tuple[Env, Path, Path, dict]:
    env, src, dst = block
    for i in range(n):
        put(src / f"f{i}", rand(100, i))
    backup(env)
    return env, src, dst, everything(dst)


def test_guard_missing_source_and_not_a_folder(block: tuple[Env, Path, Path]) -> None:
    env, src, dst, before = _populated(block)
    shutil.rmtree(src)
    refused(env, 4, "backup", "b", says="does not exist")
    put(src, b"a file where the folder was")
    refused(env, 4, "backup", "b", says="not a folder")
    assert everything(dst) == before


def test_guard_empty_source(block: tuple[Env, Path, Path]) -> None:
    env, src, dst, before = _populated(block)
    for p in src.iterdir():
        p.unlink()
    refused(env, 4, "backup", "b", says="empty")
    assert everything(dst) == before
    backup(env, "--override")
    assert tree_state(dst) == {}
    assert backup(env)["result"] == "nothing"  # empty now, and empty last time: fine


def test_first_backup_of_an_empty_source(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    assert backup(env)["exit_code"] == 0
    assert (dst / ".btsoot/block.json").exists()
    assert backup(env)["result"] == "nothing"
    put(src / "a", b"a")
    backup(env)
    assert_mirror(src, dst)


def test_guard_too_many_deletions(block: tuple[Env, Path, Path]) -> None:
    env, src, dst, before = _populated(block)
    for i in range(6):  # 6 of 10: more than the default half
        os.unlink(src / f"f{i}")
    refused(env, 4, "backup", "b", says="would delete 6 of 10 files")
    assert everything(dst) == before
    put(src / "f0", rand(100, 0))  # 5 of 10 is within the limit
    backup(env)
    assert_mirror(src, dst)
    for i in range(1, 10):
        (src / f"f{i}").unlink(missing_ok=True)
    refused(env, 4, "backup", "b", says="more than the block's limit")
    backup(env, "--override")
    assert_mirror(src, dst)


def test_guard_deletion_limit_as_a_count(env: Env) -> None:
    src, dst = env.root / "src", env.root / "remote"
    for i in range(10):
        put(src / f"f{i}", b"%d" % i)
    dst.mkdir()
    env.run("add", "b", src, dst, "--max-delete", "2", check=0)
    backup(env)
    for i in range(3):
        os.unlink(src / f"f{i}")
    refused(env, 4, "backup", "b", says="would delete 3 of 10")
    os.rename(src / "f3", src / "renamed")  # a rename is not a deletion
    put(src / "f0", b"0")
    put(src / "f1", b"1")
    s = backup(env)
    assert s["operations"]["retire"] == 1
    assert_mirror(src, dst)


def _mount_tmpfs(where: Path) -> None:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", where],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")


@pytest.mark.root
def test_guard_source_on_another_file_system(env: Env) -> None:
    src, dst = env.root / "disk", env.root / "remote"
    src.mkdir()
    dst.mkdir()
    _mount_tmpfs(src)
    try:
        for i in range(4):
            put(src / f"f{i}", b"%d" % i)
        env.run("add", "b", src, dst, check=0)
        backup(env)
    finally:
        subprocess.run(["umount", src], check=True)
    before = everything(dst)
    # The disk is gone: its empty mount point is a folder on another file system.
    refused(env, 4, "backup", "b", says="different file system")
    assert everything(dst) == before
    put(src / "other", b"something else now")  # not empty either: still refused
    refused(env, 4, "backup", "b", says="different file system")
    backup(env, "--override")
    assert_mirror(src, dst)


@pytest.mark.root
def test_one_file_system_keeps_mount_points_empty(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "a", b"a")
    (src / "mnt").mkdir()
    _mount_tmpfs(src / "mnt")
    try:
        put(src / "mnt/on-the-other-fs", b"not backed up")
        backup(env)
        want = {k: v for k, v in tree_state(src).items() if not k.startswith(b"mnt/")}
        assert tree_state(dst) == want and (dst / "mnt").is_dir()
        env.run("rm", "b", check=0)
        env.run("add", "b", src, dst, "--cross-file-systems", check=0)
        s = backup(env)
        assert ops(s)["copy"] == 1
        assert_mirror(src, dst)
    finally:
        subprocess.run(["umount", src / "mnt"], check=True)


def test_first_backup_into_a_non_empty_remote_is_refused(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "a", b"a")
    put(dst / "someone-elses-file", b"precious")
    refused(env, 4, "backup", "b", says="not empty")
    assert everything(dst) == {b"someone-elses-file": tree_state(dst)[b"someone-elses-file"]}


def test_remote_missing_or_unmounted_is_refused(block: tuple[Env, Path, Path]) -> None:
    env, src, dst, before = _populated(block)
    put(src / "new", b"n")
    shutil.move(dst / ".btsoot", env.root / "meta")  # an empty mount point: no .btsoot
    refused(env, 4, "backup", "b", says="block.json")
    assert not (dst / "new").exists()
    shutil.move(env.root / "meta", dst / ".btsoot")
    os.rename(dst, env.root / "elsewhere")
    refused(env, 4, "backup", "b", says="does not exist")
    assert not dst.exists()
    os.rename(env.root / "elsewhere", dst)
    backup(env)
    assert_mirror(src, dst)


def test_lock_held_exits_5(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "a", b"a")
    lock = env.state / "blocks/b/lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        refused(env, 5, "backup", "b", says="locked")
        assert not (dst / "a").exists()
    backup(env)
    assert_mirror(src, dst)


# --- nothing changed: nothing written to the remote ---------------------------------------

def test_no_change_backup_writes_nothing_to_the_remote(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    put(src / "d/a", b"a")
    put(src / "b", b"b", mtime_ns=OLD_NS)
    backup(env)
    before = everything(dst)
    meta_mtimes = [os.stat(p).st_mtime_ns for p in (dst, dst / ".btsoot", dst / ".btsoot/snapshots")]
    for _ in range(2):  # the first re-reads "d/a" (written just before: racy), the second nothing
        s = backup(env)
        assert s["result"] == "nothing" and s["remote_snapshot_bytes"] == 0
    assert everything(dst) == before
    assert [os.stat(p).st_mtime_ns for p in (dst, dst / ".btsoot", dst / ".btsoot/snapshots")] \
        == meta_mtimes


# --- the remote is never listed or read to find changes -----------------------------------

def _remote_paths(log: str, remote: Path) -> set[str]:
    """Remote paths in an `strace -y` log: path arguments and the paths behind fds."""
    r = re.escape(str(remote))
    return {m.group(1)[len(str(remote)):].lstrip("/")
            for m in re.finditer(rf'["<]({r}(?:/[^"<>]*)?)[">]', log)}


def _traced_backup(env: Env, log: Path) -> tuple[dict, str]:
    p = subprocess.run(["strace", "-f", "-y", "-qq", "-s", "1024", "-e", "trace=%file,%desc",
                        "-o", log, sys.executable, "-m", "btsoot", "backup", "b", "--json"],
                       env=env.vars(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), log.read_text(errors="replace")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (scripts/test.sh)")
def test_change_detection_never_lists_or_reads_the_remote(block: tuple[Env, Path, Path]) -> None:
    env, src, dst = block
    for d in "abc":
        for i in range(20):
            put(src / f"{d}/f{i}", rand(500, ord(d) * 100 + i))
    backup(env)
    probe = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode().strip()}")

    def meta(rel: str) -> bool:  # the remote itself and btsoot's own metadata
        return rel == "" or rel == ".btsoot" or rel.startswith(".btsoot/")

    # Nothing changed: nothing below the remote is looked at, not even stat'ed.
    s, log = _traced_backup(env, env.root / "nothing.strace")
    assert s["result"] == "nothing"
    touched = _remote_paths(log, dst)
    assert touched and all(meta(p) for p in touched), sorted(touched)
    assert "getdents" not in "".join(ln for ln in log.splitlines() if str(dst) + "/a" in ln)

    # A small change: only the paths the plan writes (and their temp names, their folders).
    put(src / "a/f3", rand(500, 4242))
    put(src / "b/new", b"new file")
    s, log = _traced_backup(env, env.root / "change.strace")
    assert ops(s) == {"copy": 2, "retire": 1, "set-attributes": 2}
    planned = {"a", "a/f3", "b", "b/new"}
    temp = re.compile(r"[ab]/\.btsoot-tmp-[^/]*")
    stray = sorted(p for p in _remote_paths(log, dst)
                   if not (meta(p) or p in planned or temp.fullmatch(p)))
    assert not stray, f"the backup looked at remote paths outside its plan: {stray[:10]}"
    assert_mirror(src, dst)


# --- a renamed 500 MB folder costs no data ----------------------------------------------

def _sectors_written(dev: str) -> int:
    os.sync()
    with open(f"/sys/block/{dev}/stat") as f:
        return int(f.read().split()[6])


@pytest.mark.root
def test_renamed_500mb_folder_writes_no_data_to_the_remote(env: Env) -> None:
    img, disk, src = env.root / "remote.img", env.root / "disk", env.root / "src"
    dst = disk / "backup"  # a folder on the disk: its root holds lost+found
    disk.mkdir()
    with open(img, "wb") as f:
        f.truncate(2 << 30)
    mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                           img], capture_output=True, text=True)
    if mkfs.returncode != 0:
        pytest.skip(f"mkfs.ext4 unavailable: {mkfs.stderr.strip()}")
    m = subprocess.run(["mount", "-o", "loop", img, disk], capture_output=True, text=True)
    if m.returncode != 0:
        pytest.skip(f"cannot loop-mount an image here: {m.stderr.strip()}")
    try:
        dst.mkdir()
        dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE", disk], capture_output=True,
                             text=True, check=True).stdout.strip().rsplit("/", 1)[-1]
        if not os.path.exists(f"/sys/block/{dev}/stat"):
            pytest.skip(f"no write counter for {dev}")
        block = os.urandom(1 << 20)
        for i in range(5):  # 5 x 100 MiB, each file different
            put(src / f"movies/trip/part{i}.mkv", b"".join(
                block[j:] + block[:j] for j in range(i * 100, i * 100 + 100)))
        put(src / "notes.txt", b"small")
        env.run("add", "b", src, dst, check=0)
        assert backup(env)["bytes_sent"] == 500 << 20 | len(b"small")
        os.rename(src / "movies/trip", src / "movies/trip-2024")
        before = _sectors_written(dev)
        s = backup(env)
        written = (_sectors_written(dev) - before) * 512
        assert ops(s) == {"move-dir": 1, "set-attributes": 2} and s["bytes_sent"] == 0
        assert written < 1 << 20, f"the rename wrote {written} bytes to the remote's disk"
        print(f"rename backup wrote {written} bytes to the remote disk")
        assert_mirror(src, dst)
    finally:
        subprocess.run(["umount", disk], check=True)


def test_first_backup_hashes_while_sending(block: tuple[Env, Path, Path]) -> None:
    """A first backup reads each file once: the copy hashes what it sends. The
    committed digests and chunk digests equal the scanner's, and a second run
    trusts them (nothing re-read, nothing sent)."""
    from btsoot import scanner
    from btsoot.snapshot import SnapshotReader

    env, src, dst = block
    big = rand(scanner.CHUNK_THRESHOLD + scanner.CHUNK_SIZE // 2 + 17, 1)
    put(src / "big.bin", big, mtime_ns=OLD_NS)
    put(src / "small", b"tiny", mtime_ns=OLD_NS)
    put(src / "empty", b"", mtime_ns=OLD_NS)
    s = backup(env)
    assert s["hashed_files"] == 3 and s["bytes_sent"] == len(big) + 4
    state = json.loads((env.state / "blocks" / "b" / "state.json").read_bytes())
    snap = env.state / "blocks" / "b" / "snapshots" / f"{state['head']}.jsonl"
    with SnapshotReader(str(snap)) as r:
        entries = {e.path: e for e in r}
    for name in (b"big.bin", b"small", b"empty"):
        digest, chunks, *_ = scanner.hash_file(os.fsencode(src) + b"/" + name,
                                               scanner.CHUNK_SIZE, scanner.CHUNK_THRESHOLD)
        assert entries[name].digest == digest
        assert entries[name].chunks == (tuple(chunks) if chunks else None)
    assert entries[b"big.bin"].chunks is not None and len(entries[b"big.bin"].chunks) == 5
    s = backup(env)
    assert s["result"] == "nothing" and s["hashed_files"] == 0
    assert_mirror(src, dst)


def test_transfer_threads_follow_the_remote_file_system(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Local disks and network file systems get different transfer policies
    (told from /proc/self/mountinfo, escaped mount points included)."""
    from btsoot import remote as rmt

    assert rmt.fs_type(str(tmp_path)) != ""
    mnt = tmp_path / "a mount\tpoint"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); run the suite as root")
    try:
        (mnt / "sub").mkdir()
        assert rmt.fs_type(str(mnt / "sub")) == "tmpfs"
        assert not rmt.is_network(str(mnt / "sub"))
        assert rmt.default_jobs(rmt.is_network(str(mnt / "sub"))) == rmt.LOCAL_JOBS
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    for kind in ("fuse.sshfs", "nfs4", "cifs"):
        monkeypatch.setattr(rmt, "fs_type", lambda p, k=kind: k)
        assert rmt.is_network("/x") and rmt.default_jobs(rmt.is_network("/x")) == rmt.NETWORK_JOBS


def test_the_remotes_profile_is_read_from_the_blocks_copy(env: Env) -> None:
    """The profile (what the remote can hold) is kept in the block's state too,
    tagged with the remote's id: a run reads that copy, not the remote's file (two
    round trips over a slow link). A copy of another remote, of another file
    system or damaged is not used: the remote's own is read (or probed) again."""
    src, dst = env.root / "src", env.root / "dst"
    put(src / "a", b"a", OLD_NS)
    dst.mkdir()
    env.run("add", "b", src, dst, check=0)
    backup(env)
    copy = env.state / "blocks/b/profile.json"
    remote_profile = dst / ".btsoot/profile.json"
    block = json.loads((dst / ".btsoot/block.json").read_bytes())
    kept = json.loads(copy.read_bytes())
    assert kept["remote_id"] == block["remote_id"]
    assert {k: v for k, v in kept.items() if k != "remote_id"} == json.loads(remote_profile.read_bytes())

    # The copy stands in: the remote's profile is not read (gone, it is not probed again).
    remote_profile.unlink()
    put(src / "b", b"b", OLD_NS)
    assert backup(env)["result"] == "ok"
    assert not remote_profile.exists()

    def spoiled(why: str, edit) -> None:
        edit()
        put(src / why, why.encode(), OLD_NS)
        assert backup(env)["result"] == "ok"
        assert remote_profile.is_file(), why  # probed again: nothing on the remote to read
        assert json.loads(copy.read_bytes())["remote_id"] == block["remote_id"], why
        assert_mirror(src, dst)
        remote_profile.unlink()

    spoiled("another-remote", lambda: copy.write_bytes(
        json.dumps({**kept, "remote_id": "0123456789abcdef"}).encode()))
    spoiled("another-fs", lambda: copy.write_bytes(
        json.dumps({**kept, "identity": {**kept["identity"], "type": "exfat"}}).encode()))
    spoiled("damaged", lambda: copy.write_bytes(b"\x00{not json"))
    spoiled("gone", copy.unlink)

    # `btsoot doctor` probes again: backups use its result, from the copy too.
    env.run("doctor", "b", check=0)
    assert remote_profile.is_file()
    assert json.loads(copy.read_bytes())["probed_ns"] == json.loads(remote_profile.read_bytes())["probed_ns"]
