"""`btsoot restore`: round trips through real CLI processes, compared independently
(tests/conftest.py's tree_state uses only os and hashlib)."""

from __future__ import annotations

import gzip
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash

from conftest import Env, assert_mirror, tree_state

T0 = 1_600_000_000_000_000_000  # a fixed past time (ns), so restored mtimes are checkable
NON_UTF8 = b"caf\xe9-\xff.txt"


def make_tree(root: Path) -> None:
    """Every kind of entry restore must bring back, with distinct modes and mtimes."""
    r = os.fsencode(root)
    for d in ("docs/deep/er", "empty", "ro", "private"):
        (root / d).mkdir(parents=True, exist_ok=True)
    files = {
        "docs/a.txt": b"alpha\n",
        "docs/deep/b.bin": os.urandom(300_000),
        "docs/deep/er/c": b"",
        "docs/big.bin": os.urandom(5 << 20),  # above the one-read digest size
        "private/secret": b"s3cret",
        "ro/inside": b"in a read-only folder",
        "top.txt": b"top",
        "-leading dash": b"dash",
        "new\nline": b"nl",
    }
    for i, (name, data) in enumerate(files.items()):
        p = root / name
        p.write_bytes(data)
        os.utime(p, ns=(T0 + i, T0 + i * 1_000_000_007))
    with open(r + b"/docs/" + NON_UTF8, "wb") as f:
        f.write(b"latin-1 name")
    os.utime(r + b"/docs/" + NON_UTF8, ns=(T0, T0 + 5))
    os.chmod(root / "private/secret", 0o600)
    os.chmod(root / "top.txt", 0o755)
    os.chmod(root / "docs/a.txt", 0o444)
    os.symlink("docs/a.txt", root / "link-rel")
    os.symlink("/nonexistent/target", root / "docs/link-abs")
    os.symlink("docs", root / "docs-link")  # a link to a folder: never followed
    os.symlink(NON_UTF8, r + b"/docs/link-" + NON_UTF8)
    # Folder modes and mtimes last, deepest first: writing inside a folder moves its mtime.
    os.chmod(root / "private", 0o750)
    for i, d in enumerate(("docs/deep/er", "docs/deep", "docs", "empty", "private", "ro")):
        os.utime(root / d, ns=(T0, T0 - (i + 1) * 3_000_000_011))
    os.chmod(root / "ro", 0o555)


def backup(env: Env, name: str = "b") -> str:
    p = env.run("backup", name, "--json", check=0)
    return json.loads(p.stdout)["snapshot"]


def restore(env: Env, *args: object, check: int | None = 0) -> subprocess.CompletedProcess:
    return env.run("restore", *args, check=check, stdin=subprocess.DEVNULL)


def summary(p: subprocess.CompletedProcess) -> dict:
    return json.loads(p.stdout)


def test_round_trip_into_new_folder(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    backup(env)
    out = env.root / "out"
    s = summary(restore(env, "b", "--to", out, "--json"))
    assert s["result"] == "ok" and s["exit_code"] == 0
    assert s["copied_files"] == s["files"] == 10
    assert_mirror(src, out)
    assert (out / "ro").stat().st_mode & 0o777 == 0o555
    assert os.readlink(os.fsencode(out) + b"/docs/link-" + NON_UTF8) == NON_UTF8
    # A second run finds everything in place and writes nothing.
    s = summary(restore(env, "b", "--to", out, "--json"))
    assert s["result"] == "unchanged" and s["copied_files"] == 0
    assert_mirror(src, out)


def test_wipe_source_and_restore_with_override(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    backup(env)
    before = tree_state(src)
    os.chmod(src / "ro", 0o755)
    shutil.rmtree(src)
    p = restore(env, "b", "--override")
    assert "copied 10 files" in p.stdout
    assert tree_state(src) == before


def test_damaged_source_restored_incrementally(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    backup(env)
    before = tree_state(src)
    (src / "docs/deep/b.bin").write_bytes(b"changed")  # other size and mtime
    os.unlink(src / "top.txt")
    os.chmod(src / "private/secret", 0o644)  # mode only
    shutil.rmtree(src / "docs/deep/er")  # a whole folder
    (src / "docs/new.txt").write_bytes(b"not in the snapshot")
    (src / "junk").mkdir()
    (src / "junk/x").write_bytes(b"x")
    # Same size, same mtime, other content: only --checksum can see it.
    st = os.stat(src / "docs/a.txt")
    os.chmod(src / "docs/a.txt", 0o644)
    (src / "docs/a.txt").write_bytes(b"ALPHA\n")
    os.chmod(src / "docs/a.txt", 0o444)
    os.utime(src / "docs/a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))

    s = summary(restore(env, "b", "--override", "--json"))
    assert s["copied_files"] == 3  # b.bin, top.txt, er/c
    assert s["dirs_created"] == 1
    assert sorted(s["extra"]) == ["docs/new.txt", "junk/"]
    assert (src / "docs/a.txt").read_bytes() == b"ALPHA\n"  # size+mtime match: left alone
    assert (src / "junk/x").exists() and (src / "docs/new.txt").exists()

    p = restore(env, "b", "--override", "--checksum", "--delete")
    assert "deleted       junk/" in p.stdout and "deleted       docs/new.txt" in p.stdout
    assert tree_state(src) == before


def test_into_source_refused_without_terminal(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    backup(env)
    os.unlink(src / "top.txt")
    p = restore(env, "b", check=4)
    assert "needs a terminal" in p.stderr and "--override" in p.stderr
    assert not (src / "top.txt").exists()
    # --to the source itself is the source too.
    restore(env, "b", "--to", src, check=4)
    assert not (src / "top.txt").exists()


def test_countdown_ctrl_c_aborts(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    backup(env)
    os.unlink(src / "top.txt")
    pid, fd = pty.fork()
    if pid == 0:  # child: btsoot on a terminal
        try:
            os.execve(sys.executable, [sys.executable, "-m", "btsoot", "restore", "b"],
                      env.vars())
        finally:
            os._exit(127)
    seen = b""
    deadline = time.monotonic() + 30
    while b"Ctrl-C aborts" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    assert b"Ctrl-C aborts" in seen, seen
    assert b"into the source folder" in seen
    os.write(fd, b"\x03")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 130
    assert not (src / "top.txt").exists()


def test_only_file_and_subtree(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    backup(env)
    out = env.root / "out"
    restore(env, "b", "--to", out, "--only", "docs/deep/b.bin")
    state = tree_state(out)
    assert sorted(state) == [b"docs", b"docs/deep", b"docs/deep/b.bin"]
    assert state[b"docs/deep/b.bin"] == tree_state(src)[b"docs/deep/b.bin"]

    out2 = env.root / "out2"
    out2.mkdir()
    (out2 / "unrelated").write_bytes(b"u")
    # Absolute paths inside the source work too; nested --only paths are one.
    restore(env, "b", "--to", out2, "--only", src / "docs", "--only", "docs/deep",
            "--delete")
    want = {k: v for k, v in tree_state(src).items() if k == b"docs" or k.startswith(b"docs/")}
    got = tree_state(out2)
    assert (out2 / "unrelated").read_bytes() == b"u"  # outside --only: untouched by --delete
    del got[b"unrelated"]
    assert got == want

    p = restore(env, "b", "--to", out, "--only", "no/such/path", check=2)
    assert "not in snapshot" in p.stderr


def test_extra_kept_and_listed_then_deleted(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    backup(env)
    out = env.root / "out"
    restore(env, "b", "--to", out)
    (out / "extra.txt").write_bytes(b"mine")
    (out / "docs/more/deeper").mkdir(parents=True)
    (out / "docs/more/deeper/f").write_bytes(b"f")
    os.symlink("/etc/passwd", out / "docs/extra-link")
    p = restore(env, "b", "--to", out)
    assert "extra (kept)  extra.txt" in p.stdout
    assert "extra (kept)  docs/more/" in p.stdout and "docs/more/deeper" not in p.stdout
    assert "3 extra kept" in p.stdout
    p = restore(env, "b", "--to", out, "--delete", "--dry-run")
    assert "delete     docs/more/" in p.stdout
    assert (out / "docs/more/deeper/f").exists()
    restore(env, "b", "--to", out, "--delete")
    assert_mirror(src, out)
    assert os.path.exists("/etc/passwd")


def _errors(p: subprocess.CompletedProcess) -> dict[str, str]:
    return {e["path"]: e["error"] for e in summary(p)["errors"]}


def _without(state: dict[bytes, tuple], *paths: bytes) -> dict[bytes, tuple]:
    return {k: v for k, v in state.items() if k not in paths}


def test_older_snapshot_and_from_delta_chain(env: Env, tmp_path: Path) -> None:
    src, remote = tmp_path / "src", tmp_path / "remote"
    src.mkdir()
    remote.mkdir()
    env.run("add", "b", src, remote, check=0)
    make_tree(src)
    states, ids = [], []
    for step in range(4):
        if step:
            (src / f"added-{step}").write_bytes(b"x" * step)
            (src / "docs/a.txt").write_bytes(b"v%d" % step)  # the old content leaves the remote
            if step == 2:
                os.unlink(src / "top.txt")
                os.rename(src / "docs/deep", src / "moved")  # content stays, elsewhere
        ids.append(backup(env))
        states.append(tree_state(src))
    assert any(n.endswith(".delta.jsonl.gz") for n in os.listdir(remote / ".btsoot/snapshots"))

    # With the attic (history is kept by default), every snapshot restores exactly.
    p = restore(env, "b", "--to", tmp_path / "out0", "--snapshot", ids[0], "--json")
    assert tree_state(tmp_path / "out0") == states[0]
    # Without it (lost here by hand): what changed since is reported, and the rest is
    # found by digest, wherever the mirror holds it now.
    shutil.rmtree(remote / ".btsoot" / "attic")
    out = tmp_path / "out1"
    p = restore(env, "b", "--to", out, "--snapshot", ids[0][:-3], "--json", check=3)
    assert set(_errors(p)) == {"docs/a.txt", "top.txt"}
    assert "not on the remote any more" in _errors(p)["top.txt"]
    assert tree_state(out) == _without(states[0], b"docs/a.txt", b"top.txt")
    p = restore(env, "b", "--to", out, "--snapshot", ids[2], "--delete", "--json", check=3)
    assert set(_errors(p)) == {"docs/a.txt"}
    assert tree_state(out) == _without(states[2], b"docs/a.txt")

    # --from: a fresh machine, no config and no state at all; the remote's delta chain.
    fresh = Env(tmp_path / "fresh", tmp_path / "fresh/none.toml", tmp_path / "fresh/state")
    out = tmp_path / "out2"
    p = restore(fresh, "--from", remote, "--to", out, "--json")
    assert summary(p)["snapshot"] == ids[-1]
    assert tree_state(out) == states[-1]
    assert not fresh.state.exists() and not fresh.config.exists()
    p = restore(fresh, "--from", remote, "--to", out, "--snapshot", ids[2], "--delete",
                "--json", check=3)
    assert set(_errors(p)) == {"docs/a.txt"}
    # A file that cannot be restored keeps what the destination held there.
    assert tree_state(out) == {**states[2], b"docs/a.txt": states[3][b"docs/a.txt"]}

    p = restore(fresh, "--from", remote, check=2)
    assert "--to" in p.stderr
    restore(fresh, "b", "--from", remote, "--to", out, check=2)
    p = restore(fresh, "--from", remote, "--to", remote / "docs", check=2)
    assert "must not contain" in p.stderr


def _hostile_remote(root: Path, entries: list[dict]) -> Path:
    """A remote whose only snapshot holds the given (crafted) entries."""
    remote = root / "hostile"
    snaps = remote / ".btsoot" / "snapshots"
    snaps.mkdir(parents=True)
    header = {"format": "btsoot-snapshot", "version": 1, "kind": "full",
              "id": "20200101T000000.000000Z", "base": None, "block": "evil", "source": "/x",
              "created_ns": T0, "scan_started_ns": T0, "hash": "xxh3-128"}
    lines = [header, *entries, {"end": True, "count": len(entries)}]
    with gzip.open(snaps / f"{header['id']}.full.jsonl.gz", "wb") as f:
        for obj in lines:
            f.write(json.dumps(obj).encode() + b"\n")
    (remote / "payload").write_bytes(b"evil")
    return remote


def _file(path: str) -> dict:
    return {"path": path, "type": "file", "size": 4, "mtime": T0, "mode": 0o100644,
            "digest": xxhash.xxh3_128_hexdigest(b"evil")}


@pytest.mark.parametrize("entries, why", [
    ([_file("/tmp/btsoot-evil-abs")], "absolute path"),
    ([_file("../escaped")], "'..'"),
    ([{"path": "d", "type": "dir", "mtime": T0, "mode": 0o40755}, _file("d/../../escaped")],
     "'..'"),
    ([_file("./dot")], "'.'"),
    ([_file("nul\u0000byte")], "NUL"),
    # A file routed through the snapshot's own symlink.
    ([{"path": "lnk", "type": "symlink", "mtime": T0, "mode": 0o120777,
       "target": "../outside"}, _file("lnk/escaped")], "no folder entry"),
    ([_file("orphan/escaped")], "no folder entry"),
])
def test_hostile_snapshot_refused(env: Env, tmp_path: Path, entries: list[dict],
                                  why: str) -> None:
    work = tmp_path / "w"
    outside = work / "outside"
    outside.mkdir(parents=True)
    remote = _hostile_remote(work, entries)
    dest = work / "dest"
    p = restore(env, "--from", remote, "--to", dest, check=8)
    # (Paths no entry may have are refused as the snapshot is read; the rest as it is used.)
    assert ("refusing to use this snapshot" in p.stderr or "bad snapshot entry" in p.stderr) \
        and why in p.stderr, p.stderr
    assert not dest.exists()
    assert list(outside.iterdir()) == []
    assert not (work / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not os.path.exists("/tmp/btsoot-evil-abs")


def test_symlinked_parent_in_destination(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    (src / "a").mkdir()
    (src / "a/x").write_bytes(b"x")
    backup(env)
    outside = env.root / "outside"
    outside.mkdir()
    dest = env.root / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "a")  # planted: restoring a/x must not write through it
    p = restore(env, "b", "--to", dest, check=3)
    assert "is a symlink in the destination" in p.stderr
    assert list(outside.iterdir()) == []
    p = restore(env, "b", "--to", dest, "--delete")
    assert list(outside.iterdir()) == []
    assert not (dest / "a").is_symlink()
    assert_mirror(src, dest)


def test_kind_conflicts(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    (src / "was-file").write_bytes(b"f")
    (src / "was-dir").mkdir()
    (src / "was-dir/in").write_bytes(b"i")
    (src / "empty-dir-here").write_bytes(b"e")
    backup(env)
    dest = env.root / "dest"
    (dest / "was-file").mkdir(parents=True)
    (dest / "was-file/mine").write_bytes(b"keep me")
    (dest / "was-dir").write_bytes(b"a file where the snapshot has a folder")
    (dest / "empty-dir-here").mkdir()
    p = restore(env, "b", "--to", dest, check=3)
    assert "was-file: is a folder in the destination" in p.stderr
    assert (dest / "was-file/mine").read_bytes() == b"keep me"
    assert (dest / "was-dir/in").read_bytes() == b"i"  # the snapshot wins on its own path
    assert (dest / "empty-dir-here").read_bytes() == b"e"  # an empty folder is replaced
    restore(env, "b", "--to", dest, "--delete")
    assert_mirror(src, dest)


def test_corrupt_remote_is_never_restored(block: tuple[Env, Path, Path]) -> None:
    env, src, remote = block
    (src / "good").write_bytes(b"good data")
    (src / "flipped").write_bytes(b"0123456789" * 1000)
    (src / "short").write_bytes(b"abcdef" * 100)
    (src / "gone").write_bytes(b"gone")
    backup(env)
    dest = env.root / "dest"
    dest.mkdir()
    (dest / "flipped").write_bytes(b"previous version")
    r = remote / "flipped"
    st = os.stat(r)
    data = bytearray(r.read_bytes())
    data[5000] ^= 0x01
    r.write_bytes(bytes(data))
    os.utime(r, ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(remote / "short", "r+b") as f:
        f.truncate(10)
    os.unlink(remote / "gone")
    p = restore(env, "b", "--to", dest, "--json", check=7)
    s = summary(p)
    damaged = {d["path"]: d["error"] for d in s["damaged"]}
    assert set(damaged) == {"flipped", "short", "gone"}
    assert "digest" in damaged["flipped"]
    assert "damaged: flipped" in p.stderr
    assert (dest / "flipped").read_bytes() == b"previous version"
    assert (dest / "good").read_bytes() == b"good data"
    assert not (dest / "short").exists() and not (dest / "gone").exists()
    assert not [n for n in os.listdir(dest) if n.startswith(".btsoot-tmp")]


def test_dry_run_writes_nothing(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    backup(env)
    dest = env.root / "dest"
    p = restore(env, "b", "--to", dest, "--dry-run")
    assert "copy       top.txt" in p.stdout and "mkdir      empty" in p.stdout
    assert "symlink    link-rel" in p.stdout
    assert not dest.exists()
    restore(env, "b", "--to", dest)
    (dest / "top.txt").write_bytes(b"changed!")
    (dest / "x").write_bytes(b"x")
    p = restore(env, "b", "--to", dest, "--dry-run", "--delete")
    assert p.stdout.splitlines()[:2] == ["copy       top.txt", "delete     x"]
    assert (dest / "top.txt").read_bytes() == b"changed!" and (dest / "x").exists()
