"""Metadata fidelity: numeric owners and groups, extended attributes of every
namespace, POSIX ACLs (access and default), hard-link groups, set-id bits,
symlink owners and sparse files survive backup and restore.

The reference is rsync, independent of btsoot: `same_tree` asks
`rsync -aHAXS -c --numeric-ids --dry-run --itemize-changes --delete` what it
would change, in both directions, and a restored tree must leave it nothing to
do. Everything here runs the real CLI, as root (chown, trusted.* xattrs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Env
from remotes import mount

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="owners and trusted.* xattrs need root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("rsync", "setfacl", "getfacl")),
                       reason="rsync and setfacl/getfacl are needed"),
]

MiB = 1 << 20
T0 = 1_600_000_000_123_456_789  # a base mtime with every nanosecond digit significant

# Paths of make_tree, named so the tests can pick on them (no two differ by case
# only: exFAT folds case).
LINK3 = ("links/one", "links/two", "links/three")  # 3 links to a 1 MiB random file
PAIR = ("left/pair-a", "right/pair-b")  # 2 links across two folders
SETUID = "bin/setuid-tool"
SPARSE = "data/sparse.img"
SYMLINK = "owned/link-to-u1001"
ACL_FILE = "acl/shared.txt"
ACL_DIR = "acl/inherit"
PLAIN = ("plain/a.txt", "plain/b.txt", "plain/c.txt", "plain/d.txt", "plain/sub/e.txt")

# The sparse file: 8 MiB, data only in [2, 3) MiB and [5, 6) MiB: holes at the
# start, in the middle and at the end, all on 1 MiB boundaries.
SPARSE_SIZE = 8 * MiB
SPARSE_DATA = ((2 * MiB, MiB), (5 * MiB, MiB))

# A warning about owners or extended attributes on stderr.
META_WORDS = re.compile(r"owner|group|xattr|extended|attribute|\bacls?\b", re.I)


# ---------------------------------------------------------------------------
# helpers


def setfacl(*args: str | os.PathLike) -> None:
    subprocess.run(["setfacl", *map(str, args)], check=True, capture_output=True, timeout=30)


def put(root: Path, rel: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None,
        mtime_ns: int | None = None) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if owner is not None:
        os.chown(p, *owner)  # before chmod: a chown clears the set-id bits
    os.chmod(p, mode)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))
    return p


def make_tree(root: Path, symlink: bool = True) -> None:
    """A tree whose every piece of metadata matters; symlink=False leaves out the
    one symlink (exFAT cannot hold one: btsoot refuses it there)."""
    root.mkdir(parents=True, exist_ok=True)
    t = iter(range(T0, T0 + 10**12, 1_000_003_007))

    # Ordinary files, several modes, one folder deeper.
    for i, rel in enumerate(PLAIN):
        put(root, rel, f"plain file {i}\n".encode() * (i + 1),
            mode=(0o644, 0o600, 0o640, 0o755, 0o444)[i], mtime_ns=next(t))

    # Numeric owners (the users need not exist), a folder with its own owner.
    for rel, owner in (("owned/u1001", (1001, 1001)), ("owned/u1002", (1002, 2002)),
                       ("owned/nobody", (65534, 65534)), ("owned/root", (0, 0))):
        put(root, rel, rel.encode() + b"\n", owner=owner, mtime_ns=next(t))
    os.chown(root / "owned", 1002, 2002)

    # Set-id bits: a setuid file owned by 1001, a setgid file and a setgid folder.
    put(root, SETUID, b"#!/bin/sh\necho hi\n", mode=0o4755, owner=(1001, 1001), mtime_ns=next(t))
    put(root, "bin/setgid-tool", b"#!/bin/sh\n", mode=0o2755, owner=(0, 2002), mtime_ns=next(t))
    (root / "shared").mkdir()
    put(root, "shared/inside", b"in a setgid folder\n", mtime_ns=next(t))
    os.chown(root / "shared", 1001, 2002)
    os.chmod(root / "shared", 0o2775)

    # Extended attributes: text, binary with NULs, an empty value; on files and a
    # folder; one trusted.* (root only).
    x = put(root, "xattr/tagged.txt", b"tagged\n", mtime_ns=next(t))
    os.setxattr(x, "user.comment", b"hello, world")
    os.setxattr(x, "user.binary", b"\x00\x01\xfe\xff\x00end\x00")
    os.setxattr(x, "user.empty", b"")
    os.setxattr(x, "trusted.btsoot-test", b"\x00trusted\x00")
    y = put(root, "xattr/other.bin", os.urandom(5000), owner=(1002, 2002), mtime_ns=next(t))
    os.setxattr(y, "user.mime_type", b"application/octet-stream")
    os.setxattr(root / "xattr", "user.folder", b"a folder's attribute")

    # ACLs: an access ACL on a file, a default ACL on a folder. One file in that
    # folder predates the default ACL (it has none), one inherits it.
    a = put(root, ACL_FILE, b"shared with 1001 and group 2002\n", mode=0o640, mtime_ns=next(t))
    setfacl("-m", "u:1001:rw,g:2002:r", a)
    (root / ACL_DIR).mkdir()
    put(root, ACL_DIR + "/before", b"made before the default ACL\n", mtime_ns=next(t))
    setfacl("-d", "-m", "u:1001:rwx", root / ACL_DIR)
    put(root, ACL_DIR + "/inherited", b"inherits the default ACL\n", mtime_ns=next(t))

    # Hard links: 3 links to a 1 MiB random file in one folder (owned by 1001, with
    # an xattr: one inode's metadata); a group of 2 across two folders.
    p = put(root, LINK3[0], os.urandom(MiB), mode=0o640, owner=(1001, 1001), mtime_ns=next(t))
    os.setxattr(p, "user.linked", b"one inode")
    for rel in LINK3[1:]:
        os.link(p, root / rel)
    q = put(root, PAIR[0], os.urandom(64 * 1024), mtime_ns=next(t))
    (root / PAIR[1]).parent.mkdir(parents=True, exist_ok=True)
    os.link(q, root / PAIR[1])

    # A sparse file.
    s = root / SPARSE
    s.parent.mkdir(parents=True, exist_ok=True)
    with open(s, "wb") as f:
        for off, n in SPARSE_DATA:
            f.seek(off)
            f.write(os.urandom(n))
        f.truncate(SPARSE_SIZE)
    os.chown(s, 65534, 65534)
    os.utime(s, ns=(next(t),) * 2)

    # A symlink owned by 1002.
    if symlink:
        os.symlink("u1001", root / SYMLINK)
        os.chown(root / SYMLINK, 1002, 1002, follow_symlinks=False)
        os.utime(root / SYMLINK, ns=(next(t),) * 2, follow_symlinks=False)

    stamp_dirs(root)


def stamp_dirs(root: Path) -> None:
    """Every folder its own mtime, deepest first (setting a folder's time does not
    move its parent's)."""
    dirs = sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                  key=lambda p: -len(p.parts))
    for i, d in enumerate(dirs):
        os.utime(d, ns=(T0 + i * 7_000_000_013,) * 2)


def rsync_changes(a: Path, b: Path, flags: str = "-aHAXS") -> list[str]:
    """What rsync would change to make b like a (itemized, one line each)."""
    p = subprocess.run(["rsync", flags, "-c", "--numeric-ids", "--dry-run", "--itemize-changes",
                        "--delete", f"{a}/", f"{b}/"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"rsync {a} {b} exited {p.returncode}: {p.stderr}"
    out = []
    for line in p.stdout.splitlines():
        flags_, path = line[:11], line[12:]
        # a line for the top folder that flags no change (only ever with -ii)
        if path == "./" and set(flags_[2:]) <= {".", " "}:
            continue
        out.append(line)
    return out


def same_tree(a: Path, b: Path, flags: str = "-aHAXS") -> list[str]:
    """rsync's differences between a and b, both ways: [] when they are the same
    (names, content, owners, modes, mtimes, xattrs, ACLs, hard links)."""
    return ([f"{a.name}->{b.name}: {x}" for x in rsync_changes(a, b, flags)]
            + [f"{b.name}->{a.name}: {x}" for x in rsync_changes(b, a, flags)])


def item_path(line: str) -> str:
    """The path an itemized line is about (no `/` of a folder, no ` -> target` of a
    symlink, no ` => first` of a hard link)."""
    item = line.split(": ", 1)[-1][12:]  # 11 columns of flags, a space
    return re.split(r" -> | => ", item)[0].rstrip("/")


def copy_tree(a: Path, b: Path) -> None:
    """An exact copy of a at b, by rsync (the reference for a later comparison)."""
    subprocess.run(["rsync", "-aHAXS", "--numeric-ids", f"{a}/", f"{b}/"], check=True,
                   capture_output=True, timeout=120)
    assert same_tree(a, b) == []


def xattrs(p: Path) -> dict[str, bytes]:
    """Every extended attribute of p itself (not a symlink's target)."""
    names = os.listxattr(p, follow_symlinks=False)
    return {n: os.getxattr(p, n, follow_symlinks=False) for n in names
            if n != "security.selinux"}


def walk(root: Path) -> Iterator[Path]:
    """Every entry below root, .btsoot/ left out."""
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".btsoot" in dirnames:
            dirnames.remove(".btsoot")
        for n in dirnames + filenames:
            yield Path(dirpath) / n


def backup(env: Env, check: int | None = 0) -> tuple[dict, str]:
    p = env.run("backup", "b", "--json", check=check)
    return json.loads(p.stdout), p.stderr


def restore(env: Env, to: Path, *more: str, check: int | None = 0) -> subprocess.CompletedProcess:
    to.mkdir()  # an empty folder
    return env.run("restore", "b", "--to", to, *more, check=check, stdin=subprocess.DEVNULL)


def meta_warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if META_WORDS.search(ln)]


@contextlib.contextmanager
def remote_of(kind: str, env: Env) -> Iterator[Path]:
    """A fresh empty remote: 'local' is a plain folder beside the source."""
    if kind == "local":
        r = env.root / "remote"
        r.mkdir()
        yield r
    else:
        with mount(kind, env.root / "mnt") as r:
            yield r


@contextlib.contextmanager
def backed_up(env: Env, kind: str = "local", *add: str,
              symlink: bool = True) -> Iterator[tuple[Path, Path, dict, str]]:
    """make_tree at env.root/src, block 'b' onto a fresh remote of `kind` (more
    `add` options), one backup that succeeded: (source, remote, its summary, stderr)."""
    src = env.root / "src"
    make_tree(src, symlink=symlink)
    with remote_of(kind, env) as remote:
        env.run("add", "b", src, remote, *add, check=0)
        s, err = backup(env)
        assert s["result"] == "ok" and not s["errors"], (s, err)
        yield src, remote, s, err


def restores_both(env: Env, src: Path, before: Path, first: str) -> None:
    """The newest snapshot restores exactly as src is, the first as `before` was."""
    now = env.root / "restored-now"
    restore(env, now)
    assert same_tree(src, now) == []
    then = env.root / "restored-first"
    restore(env, then, "--snapshot", first)
    assert same_tree(before, then) == []


def allocated(p: Path) -> int:
    return os.lstat(p).st_blocks * 512


# ---------------------------------------------------------------------------
# 1-2. The tree and the comparison themselves


def test_same_tree_sees_every_kind_of_difference(tmp_path: Path) -> None:
    src, copy = tmp_path / "src", tmp_path / "copy"
    make_tree(src)
    # the tree is what it claims to be
    assert os.stat(src / LINK3[0]).st_nlink == 3 and os.stat(src / PAIR[1]).st_nlink == 2
    assert stat.S_IMODE(os.stat(src / SETUID).st_mode) == 0o4755
    assert os.lstat(src / SYMLINK).st_uid == 1002
    assert "system.posix_acl_access" in xattrs(src / ACL_FILE)
    assert "system.posix_acl_default" in xattrs(src / ACL_DIR)
    assert "system.posix_acl_access" in xattrs(src / ACL_DIR / "inherited")
    assert "system.posix_acl_access" not in xattrs(src / ACL_DIR / "before")
    assert allocated(src / SPARSE) <= 2 * MiB + 64 * 1024, "the source does not keep holes"

    copy_tree(src, copy)
    assert same_tree(src, copy) == [] and same_tree(copy, src) == []

    def differs(change: Callable[[Path], object], path: str) -> None:
        undo = tmp_path / "undo"
        copy_tree(copy, undo)
        change(copy / path)
        found = same_tree(src, copy)
        assert path in {item_path(line) for line in found}, (path, found)
        shutil.rmtree(copy)
        undo.rename(copy)
        assert same_tree(src, copy) == []

    differs(lambda p: os.setxattr(p, "user.comment", b"hello, World"), "xattr/tagged.txt")
    differs(lambda p: os.removexattr(p, "user.empty"), "xattr/tagged.txt")
    differs(lambda p: os.setxattr(p, "trusted.btsoot-test", b"x"), "xattr/tagged.txt")
    differs(lambda p: os.chown(p, 1001, 1002), "owned/u1001")  # the group only
    differs(lambda p: os.chown(p, 1003, 1001), "owned/u1001")  # the owner only
    differs(lambda p: os.chown(p, 1001, 1001, follow_symlinks=False), SYMLINK)
    differs(lambda p: setfacl("-m", "u:1001:r", p), ACL_FILE)
    differs(lambda p: setfacl("-k", p), ACL_DIR)  # the default ACL gone
    differs(lambda p: os.chmod(p, 0o755), SETUID)  # the setuid bit gone

    def split(p: Path) -> None:  # same content, same metadata, no longer one inode
        tmp = p.with_name("tmp")
        subprocess.run(["cp", "-a", "--preserve=all", p, tmp], check=True)
        os.rename(tmp, p)
    differs(split, LINK3[1])

    def flip(p: Path) -> None:  # one byte of content, size and mtime kept (-c sees it)
        st = os.stat(p)
        with open(p, "r+b") as f:
            f.seek(2 * MiB + 12345)
            b = f.read(1)
            f.seek(2 * MiB + 12345)
            f.write(bytes([b[0] ^ 1]))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    differs(flip, SPARSE)
    differs(lambda p: p.unlink(), PLAIN[4])  # gone: --delete the other way
    differs(lambda p: os.utime(p, ns=(T0, T0)), ".")  # the top folder's own mtime


# ---------------------------------------------------------------------------
# 3. Round trip on a local remote


def test_round_trip_local_remote(env: Env) -> None:
    with backed_up(env) as (src, remote, _, _):
        out = env.root / "restored"
        restore(env, out)
        assert same_tree(src, out) == []
        # the sparse file holds about the same blocks
        assert abs(allocated(out / SPARSE) - allocated(src / SPARSE)) <= 256 * 1024, (
            allocated(out / SPARSE), allocated(src / SPARSE))
        # and the same again from the remote alone (no local state)
        fresh = Env(env.root / "fresh", env.root / "fresh/config.toml", env.root / "fresh/state")
        out2 = env.root / "restored-from"
        fresh.run("restore", "--from", remote, "--to", out2, check=0, stdin=subprocess.DEVNULL)
        assert same_tree(src, out2) == []


# ---------------------------------------------------------------------------
# 4. Round trip on remotes that hold less


@pytest.mark.parametrize("kind", ["ext4", "exfat", "sshfs"])
def test_round_trip_on_remote_kinds(env: Env, kind: str) -> None:
    with backed_up(env, kind, symlink=kind != "exfat") as (src, _, s, err):
        # Whatever the remote could not hold: one line about it at most.
        assert len(meta_warnings(err)) <= 1, err
        assert s["bytes_sent"] < 4 * MiB, s  # 1 MiB group once, 2 MiB of sparse data, small files
        out = env.root / "restored"
        restore(env, out)
        assert same_tree(src, out) == []
        # sparse again, from the record, even from a remote that filled the holes
        assert allocated(out / SPARSE) <= allocated(src / SPARSE) + 256 * 1024, (
            allocated(out / SPARSE), allocated(src / SPARSE))
        s, err = backup(env)
        assert s["result"] == "nothing" and s["bytes_sent"] == 0, (s, err)


# ---------------------------------------------------------------------------
# 5. A hard-link group crosses the link once


@pytest.mark.parametrize("kind", ["local", "ext4", "exfat"])
def test_hard_link_group_sent_once(env: Env, kind: str) -> None:
    src = env.root / "src"
    names = ("big-1", "big-2", "sub/big-3")
    (src / "sub").mkdir(parents=True)
    p = put(src, names[0], os.urandom(10 * MiB), mtime_ns=T0)
    for n in names[1:]:
        os.link(p, src / n)
    with remote_of(kind, env) as remote:
        env.run("add", "b", src, remote, check=0)
        s, err = backup(env)
        assert s["result"] == "ok" and not s["errors"], (s, err)
        assert 10 * MiB <= s["bytes_sent"] < 11 * MiB, s
        want = p.read_bytes()
        sts = [os.stat(remote / n) for n in names]
        if kind == "exfat":  # cannot hold links: full copies
            assert all((remote / n).read_bytes() == want for n in names)
            assert all(st.st_nlink == 1 for st in sts), [st.st_nlink for st in sts]
        else:
            assert len({(st.st_dev, st.st_ino) for st in sts}) == 1, [st.st_ino for st in sts]
            assert all(st.st_nlink == 3 for st in sts), [st.st_nlink for st in sts]
            assert (remote / names[0]).read_bytes() == want
        out = env.root / "restored"
        restore(env, out)
        assert same_tree(src, out) == []
        assert len({os.stat(out / n).st_ino for n in names}) == 1


# ---------------------------------------------------------------------------
# 6. Link groups that change


def test_link_groups_that_change(env: Env) -> None:
    before = env.root / "before"
    with backed_up(env) as (src, remote, s, _):
        first = s["snapshot"]
        copy_tree(src, before)

        os.link(src / LINK3[0], src / "links/four")  # a 4th member
        (src / PAIR[1]).unlink()  # the pair: one left alone
        tmp = src / "links/.tmp-split"  # one member split off with new content
        tmp.write_bytes(b"split off\n" * 100)
        os.rename(tmp, src / LINK3[2])
        assert os.stat(src / LINK3[0]).st_nlink == 3 and os.stat(src / PAIR[0]).st_nlink == 1

        s, err = backup(env)
        assert s["result"] == "ok" and not s["errors"], (s, err)
        assert s["bytes_sent"] < 256 * 1024, s  # no group content sent again
        # the remote's groups (outside .btsoot/: the attic may keep an old member)
        groups: dict[int, set[str]] = {}
        for p in walk(remote):
            if p.is_file() and not p.is_symlink():
                groups.setdefault(os.stat(p).st_ino, set()).add(str(p.relative_to(remote)))
        assert groups[os.stat(remote / LINK3[0]).st_ino] == {LINK3[0], LINK3[1], "links/four"}
        assert groups[os.stat(remote / LINK3[2]).st_ino] == {LINK3[2]}
        assert groups[os.stat(remote / PAIR[0]).st_ino] == {PAIR[0]}

        restores_both(env, src, before, first)


def test_a_group_rewritten_in_place_is_read_and_sent_once(env: Env) -> None:
    """Writing into a file changes every name of it: the scan hashes it once, the
    backup sends it once and links the other names to it."""
    with backed_up(env) as (src, remote, _, _):
        with open(src / LINK3[1], "r+b") as f:  # in place: the inode stays
            f.write(os.urandom(MiB))
        s, err = backup(env)
        assert s["result"] == "ok", (s, err)
        assert s["hashed_files"] == 1 and s["hashed_bytes"] == MiB, s
        assert MiB <= s["bytes_sent"] < MiB + 64 * 1024, s
        assert s["operations"].get("link") == 2, s
        assert len({os.stat(remote / p).st_ino for p in LINK3}) == 1
        assert (remote / LINK3[2]).read_bytes() == (src / LINK3[0]).read_bytes()
        now = env.root / "now"
        restore(env, now)
        assert same_tree(src, now) == []


def test_restore_into_a_restored_tree_changes_nothing(env: Env) -> None:
    """A second restore into the same folder finds owners, xattrs, ACLs and hard
    links already right: nothing is copied, set or linked."""
    with backed_up(env) as (src, _, _, _):
        out = env.root / "out"
        restore(env, out)
        p = env.run("restore", "b", "--to", out, "--json", check=0, stdin=subprocess.DEVNULL)
        s = json.loads(p.stdout)
        assert s["result"] == "unchanged", s
        assert (s["copied_files"], s["attributes_set"], s["hard_links"]) == (0, 0, 0), s
        # An xattr lost and a link split in the restored tree are put right again.
        os.removexattr(out / "xattr/tagged.txt", "user.comment")
        data = (out / LINK3[2]).read_bytes()
        (out / LINK3[2]).unlink()
        put(out, LINK3[2], data, mode=0o640, owner=(1001, 1001),
            mtime_ns=os.stat(src / LINK3[2]).st_mtime_ns)
        p = env.run("restore", "b", "--to", out, "--json", check=0, stdin=subprocess.DEVNULL)
        s = json.loads(p.stdout)
        assert s["hard_links"] == 1 and s["attributes_set"] >= 1, s
        assert same_tree(src, out) == []


# ---------------------------------------------------------------------------
# 7. Metadata-only changes


def test_metadata_only_changes(env: Env) -> None:
    before = env.root / "before"
    with backed_up(env) as (src, remote, s, _):
        first = s["snapshot"]
        copy_tree(src, before)

        os.setxattr(src / "plain/a.txt", "user.new", b"added later")
        os.chown(src / "plain/b.txt", 1003, 1004)
        setfacl("-m", "u:1002:r", src / "plain/c.txt")
        os.chmod(src / "plain/d.txt", 0o700)

        s, err = backup(env)
        assert s["exit_code"] == 0 and s["result"] == "ok" and not s["errors"], (s, err)
        assert s["bytes_sent"] == 0, s
        ops = s["operations"]
        assert not {"copy", "patch", "remote-copy"} & set(ops), ops
        assert sum(n for op, n in ops.items() if "attr" in op) >= 4, ops
        # the remote holds them too
        assert os.getxattr(remote / "plain/a.txt", "user.new") == b"added later"
        st = os.stat(remote / "plain/b.txt")
        assert (st.st_uid, st.st_gid) == (1003, 1004)
        assert "system.posix_acl_access" in xattrs(remote / "plain/c.txt")
        assert stat.S_IMODE(os.stat(remote / "plain/d.txt").st_mode) == 0o700

        restores_both(env, src, before, first)

        s, err = backup(env)
        assert s["result"] == "nothing", (s, err)


# ---------------------------------------------------------------------------
# 8. Restore switches


def test_restore_switches(env: Env) -> None:
    with backed_up(env) as (src, _, _, _):
        out = env.root / "numeric"
        restore(env, out, "--numeric-ids")
        assert same_tree(src, out) == []

        # --no-owner: the restoring user (root) owns everything; all else is kept.
        out = env.root / "no-owner"
        restore(env, out, "--no-owner")
        owners = {str(p.relative_to(out)): os.lstat(p).st_uid for p in walk(out)}
        assert set(owners.values()) == {0}, {k: v for k, v in owners.items() if v}
        assert same_tree(src, out, "-rlptDHAXS") == []  # -a without -o -g

        # --no-xattrs: no extended attributes at all, ACLs included.
        out = env.root / "no-xattrs"
        restore(env, out, "--no-xattrs")
        found = {str(p.relative_to(out)): xattrs(p) for p in walk(out)}
        assert not any(found.values()), {k: sorted(v) for k, v in found.items() if v}
        assert same_tree(src, out, "-aHS") == []

        # --no-acls: the xattrs, no ACL.
        out = env.root / "no-acls"
        restore(env, out, "--no-acls")
        for p in walk(src):
            rel = p.relative_to(src)
            want = {k: v for k, v in xattrs(p).items() if not k.startswith("system.posix_acl_")}
            assert xattrs(out / rel) == want, rel
        assert xattrs(out / "xattr/tagged.txt")["user.binary"] == b"\x00\x01\xfe\xff\x00end\x00"
        assert same_tree(src, out, "-aHXS") == []


# ---------------------------------------------------------------------------
# 9. A block that keeps no xattrs


def test_block_without_xattrs(env: Env) -> None:
    with backed_up(env, "local", "--no-xattrs") as (src, remote, _, _):
        on_remote = {str(p.relative_to(remote)): sorted(xattrs(p)) for p in walk(remote)}
        assert not any(n.startswith(("user.", "trusted.")) for v in on_remote.values() for n in v), (
            {k: v for k, v in on_remote.items() if v})
        out = env.root / "restored"
        restore(env, out)
        restored = {str(p.relative_to(out)): sorted(xattrs(p)) for p in walk(out)}
        assert not any(n.startswith(("user.", "trusted.")) for v in restored.values() for n in v), (
            {k: v for k, v in restored.items() if v})
        assert same_tree(src, out, "-aHS") == []  # all else is kept


# ---------------------------------------------------------------------------
# 10. The remote's own copy


def test_local_remote_carries_owners_and_xattrs(env: Env) -> None:
    with backed_up(env) as (src, remote, _, err):
        assert meta_warnings(err) == [], err
        for p in walk(src):
            rel = p.relative_to(src)
            a, b = os.lstat(p), os.lstat(remote / rel)
            assert (b.st_uid, b.st_gid) == (a.st_uid, a.st_gid), rel
            if not stat.S_ISLNK(a.st_mode):
                assert stat.S_IMODE(b.st_mode) == stat.S_IMODE(a.st_mode), rel
            assert xattrs(remote / rel) == xattrs(p), rel


def test_exfat_remote_warns_once(env: Env) -> None:
    src = env.root / "src"
    make_tree(src, symlink=False)
    for i in range(20):  # more files with owners and xattrs: still one line
        p = put(src, f"many/f{i:02d}", b"x" * i, owner=(1001 + i, 2001 + i))
        os.setxattr(p, "user.n", str(i).encode())
    with remote_of("exfat", env) as remote:
        env.run("add", "b", src, remote, check=0)
        s, err = backup(env)
        assert s["exit_code"] == 0 and s["result"] == "ok" and not s["errors"], (s, err)
        assert len(meta_warnings(err)) <= 1, err
        out = env.root / "restored"
        restore(env, out)
        assert same_tree(src, out) == []


def test_restore_onto_a_file_system_without_metadata_warns_once_per_kind(env: Env) -> None:
    """A destination that keeps no owners, xattrs, ACLs or hard links (exFAT): the
    content comes back, exit 0, and what it refused is said once per kind, not
    once per file."""
    src = env.root / "src"
    make_tree(src, symlink=False)
    for i in range(20):  # many files with xattrs: still one line
        p = put(src, f"many/x{i}", b"%d" % i, owner=(1001, 1001))
        os.setxattr(p, "user.n", b"%d" % i)
    stamp_dirs(src)
    with remote_of("local", env) as remote:
        env.run("add", "b", src, remote, check=0)
        backup(env)
        with mount("exfat", env.root / "dest") as dest:
            p = env.run("restore", "b", "--to", dest / "r", "--json", check=0,
                        stdin=subprocess.DEVNULL)
            s = json.loads(p.stdout)
            assert s["result"] == "ok" and not s["errors"], s
            lines = [ln for ln in p.stderr.splitlines() if ": warning: " in ln]
            kinds = s["metadata_not_applied"]
            assert len(lines) == len(s["warnings"]) == len(kinds), p.stderr  # one line a kind
            assert kinds["extended attributes"] >= 20 and kinds["hard links"] == 3, kinds
            assert kinds["set-id bits"] == 3, kinds  # two files and a folder: the rest of their modes
            for i in range(20):
                assert (dest / "r" / f"many/x{i}").read_bytes() == b"%d" % i
            assert (dest / "r" / LINK3[2]).read_bytes() == (src / LINK3[0]).read_bytes()
