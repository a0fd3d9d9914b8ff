"""plan.make_plan on in-memory snapshots: no file system involved.

`Remote` below is a small model of the remote folder that applies a plan's
operations with the rules a POSIX file system enforces (a file cannot be
renamed over a folder, rmdir needs an empty folder, a folder's mtime moves when
an entry inside it is created, renamed or removed). Every test applies the
plan to the old tree and checks the result is exactly the new tree: content,
kind, mode, mtime and link targets. The hypothesis test does that for random
trees changed in nasty ways (folders moved into renamed folders, a file and a
folder trading places, duplicates, moves into a folder that replaces a file).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btsoot.execute import ANNOUNCE, Spread, chains
from btsoot.plan import (
    STASH,
    Copy,
    Delete,
    Link,
    Mkdir,
    Move,
    Plan,
    RemoteCopy,
    Retire,
    Rmdir,
    SetAttr,
    Symlink,
    is_under,
    make_plan,
    op_name,
    parent,
)
from btsoot.snapshot import DIR, FILE, SYMLINK, Entry, sort_key

S_IFDIR, S_IFREG, S_IFLNK = 0o040000, 0o100000, 0o120000
DIRTY = -1  # a folder's mtime after the file system changed something inside it


# --- building trees -----------------------------------------------------------

def digest_of(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()  # any 128-bit digest will do here


def file(path: bytes, content: bytes, mode: int = 0o644, mtime: int = 1) -> Entry:
    return Entry(path, FILE, len(content), mtime, S_IFREG | mode, digest=digest_of(content))


def folder(path: bytes, mode: int = 0o755, mtime: int = 1) -> Entry:
    return Entry(path, DIR, 0, mtime, S_IFDIR | mode)


def link(path: bytes, target: bytes, mtime: int = 1) -> Entry:
    return Entry(path, SYMLINK, len(target), mtime, S_IFLNK | 0o777, target=target)


def tree(spec: dict[str, object]) -> dict[bytes, Entry]:
    """{"a/b": b"content", "d/": None, "l": ("->", b"target"), "x": Entry(...)}; parents added."""
    out: dict[bytes, Entry] = {}
    for k, v in spec.items():
        p = k.encode() if isinstance(k, str) else k
        if isinstance(v, Entry):
            e = v.with_path(p.rstrip(b"/"))
        elif v is None:
            e = folder(p.rstrip(b"/"))
        elif isinstance(v, tuple):
            e = link(p, v[1])
        else:
            assert isinstance(v, bytes)
            e = file(p, v)
        out[e.path] = e
        q = parent(e.path)
        while q and q not in out:
            out[q] = folder(q)
            q = parent(q)
    return out


def ordered(t: dict[bytes, Entry]) -> list[Entry]:
    return [t[k] for k in sorted(t, key=sort_key)]


def plan_for(old: dict[bytes, Entry], new: dict[bytes, Entry], attic: bool = False) -> Plan:
    return make_plan(lambda: iter(ordered(old)), lambda: iter(ordered(new)), run_id="r1",
                     attic=attic)


# --- the model of the remote ----------------------------------------------------

class PlanError(AssertionError):
    pass


@dataclass
class Node:
    kind: str
    mode: int = 0
    mtime: int = 0
    digest: str | None = None
    size: int = 0
    target: bytes | None = None


def _node(e: Entry) -> Node:
    return Node(e.kind, e.mode, e.mtime_ns, e.digest, e.size, e.target)


class Remote:
    """What the remote holds, keyed by path; b"" is the remote root."""

    def __init__(self, entries: dict[bytes, Entry]) -> None:
        self.t: dict[bytes, Node] = {b"": Node(DIR)}
        self.attic: dict[bytes, Node] = {}  # what Retire moved there, by path in the mirror
        for p, e in entries.items():
            self.t[p] = _node(e)
        meta = b""
        for part in (STASH + b"/r1").split(b"/"):
            meta = meta + b"/" + part if meta else part
            self.t[meta] = Node(DIR)

    def _fail(self, op: object, why: str) -> PlanError:
        return PlanError(f"{op}: {why}")

    def _children(self, p: bytes) -> list[bytes]:
        return [k for k in self.t if k and k != p and parent(k) == p]

    def _need_dir(self, op: object, p: bytes) -> None:
        n = self.t.get(p)
        if n is None or n.kind != DIR:
            raise self._fail(op, f"parent {p!r} is not a folder")

    def _dirty(self, p: bytes) -> None:
        n = self.t.get(p)
        if n is not None and n.kind == DIR:
            n.mtime = DIRTY

    def _put(self, op: object, p: bytes, node: Node) -> None:
        """Write to a temp name in the folder, then rename it onto p."""
        self._need_dir(op, parent(p))
        old = self.t.get(p)
        if old is not None and old.kind == DIR:
            raise self._fail(op, "rename of a file over a folder (EISDIR)")
        self.t[p] = node
        self._dirty(parent(p))

    def _rename(self, op: object, src: bytes, dst: bytes) -> None:
        n = self.t.get(src)
        if n is None:
            raise self._fail(op, "source does not exist (ENOENT)")
        if src == dst or is_under(dst, src):
            raise self._fail(op, "rename onto itself or into its own subtree (EINVAL)")
        self._need_dir(op, parent(dst))
        old = self.t.get(dst)
        if old is not None:
            if n.kind == DIR and (old.kind != DIR or self._children(dst)):
                raise self._fail(op, "folder renamed over a file or a non-empty folder")
            if n.kind != DIR and old.kind == DIR:
                raise self._fail(op, "file renamed over a folder (EISDIR)")
            del self.t[dst]
        for k in [k for k in self.t if is_under(k, src)]:
            self.t[dst + k[len(src):]] = self.t.pop(k)
        self._dirty(parent(src))
        self._dirty(parent(dst))

    def apply(self, op: object) -> None:
        if isinstance(op, Mkdir):
            self._need_dir(op, parent(op.path))
            n = self.t.get(op.path)
            if n is not None:
                raise self._fail(op, f"path exists already as {n.kind}")
            self.t[op.path] = Node(DIR, 0o40700, DIRTY)
            self._dirty(parent(op.path))
        elif isinstance(op, Move):
            self._rename(op, op.src, op.dst)
            e = op.entry
            if e is not None:
                n = self.t[op.dst]
                if n.kind != e.kind:
                    raise self._fail(op, f"moved a {n.kind} where a {e.kind} was planned")
                if e.kind == FILE:
                    if n.digest != e.digest:
                        raise self._fail(op, "moved content is not the planned content")
                    n.mode, n.mtime = e.mode, e.mtime_ns  # the executor sets a file's attrs
        elif isinstance(op, Copy):
            self._put(op, op.path, _node(op.entry))
        elif isinstance(op, RemoteCopy):
            n = self.t.get(op.src)
            if n is None or n.kind != FILE or n.digest != op.entry.digest:
                raise self._fail(op, "remote copy source does not hold that content")
            self._put(op, op.path, _node(op.entry))
        elif isinstance(op, Symlink):
            self._put(op, op.path, _node(op.entry))
        elif isinstance(op, Delete):
            n = self.t.get(op.path)
            if n is None or n.kind == DIR:
                raise self._fail(op, "unlink of a missing path or a folder")
            del self.t[op.path]
            self._dirty(parent(op.path))
        elif isinstance(op, Rmdir):
            n = self.t.get(op.path)
            if n is None or n.kind != DIR:
                raise self._fail(op, "rmdir of a missing path or a non-folder")
            if self._children(op.path):
                raise self._fail(op, f"rmdir of a non-empty folder: {self._children(op.path)}")
            del self.t[op.path]
            self._dirty(parent(op.path))
        elif isinstance(op, Retire) and op.entry.kind == DIR:
            n = self.t.get(op.path)
            if n is None or n.kind != DIR:
                raise self._fail(op, "retire of a folder that is not one")
            below = {k: v for k, v in self.t.items() if is_under(k, op.path)}
            held = {k for k, v in below.items() if v.kind != DIR}
            if held != {m.path for m in op.members}:
                raise self._fail(op, f"a folder retired with {sorted(held)}, listed as "
                                     f"{sorted(m.path for m in op.members)}")
            for m in op.members:
                got = below[m.path]
                if got.kind != m.kind or (got.kind == FILE and got.digest != m.digest):
                    raise self._fail(op, f"retired content of {m.path!r} is not the entry's")
                self.attic[m.path] = got
            for k in below:
                del self.t[k]
            self._dirty(parent(op.path))
        elif isinstance(op, Retire):
            n = self.t.get(op.path)
            if n is None or n.kind == DIR:
                raise self._fail(op, "retire of a missing path or a folder")
            if n.kind != op.entry.kind or (n.kind == FILE and n.digest != op.entry.digest):
                raise self._fail(op, "retired content is not the entry's")
            del self.t[op.path]
            self.attic[op.entry.path] = n
            self._dirty(parent(op.path))
        elif isinstance(op, SetAttr):
            n = self.t.get(op.path)
            if n is None or n.kind != op.entry.kind:
                raise self._fail(op, "set attributes on a missing path or another kind")
            if n.kind != SYMLINK:
                n.mode = op.entry.mode
            n.mtime = op.entry.mtime_ns
        else:  # pragma: no cover
            raise self._fail(op, "unknown operation")

    def user_tree(self) -> dict[bytes, Node]:
        return {k: v for k, v in self.t.items() if k and not is_under(k, b".btsoot")}

    def stash_left(self) -> list[bytes]:
        return [k for k in self.t if k.startswith(STASH + b"/r1/")]


def apply_plan(old: dict[bytes, Entry], new: dict[bytes, Entry], plan: Plan) -> Remote:
    """Apply plan to old; assert the remote then holds exactly new, with no leftovers."""
    remote = Remote(old)
    for op in plan.ops:
        remote.apply(op)
    assert not remote.stash_left(), f"left in the stash: {remote.stash_left()}"
    want = {p: _node(e) for p, e in new.items()}
    got = remote.user_tree()
    for n in list(want.values()) + list(got.values()):
        if n.kind == SYMLINK:
            n.mode = 0  # a link's mode is not ours to set
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted((p, want[p], got[p]) for p in set(want) & set(got) if want[p] != got[p])
    assert not (missing or extra or differ), (
        f"missing={missing} extra={extra} differ={differ}\nplan:\n"
        + "\n".join(map(str, plan.ops)))
    # Only content the remote did not hold anywhere crosses the link.
    old_digests = {e.digest for e in old.values() if e.kind == FILE}
    sent = [op for op in plan.ops if isinstance(op, Copy) and op.entry.digest in old_digests]
    assert not sent, f"re-sent content the remote already held: {sent}"
    return remote


def check(old_spec: dict[str, object], new_spec: dict[str, object]) -> tuple[Plan, Counter[str]]:
    old, new = tree(old_spec), tree(new_spec)
    plan = plan_for(old, new)
    apply_plan(old, new, plan)
    return plan, plan.count()


# --- one test per kind of change -------------------------------------------------

def test_identical_trees_make_an_empty_plan() -> None:
    plan, _ = check({"a/b": b"1", "c/": None, "l": ("->", b"a")},
                    {"a/b": b"1", "c/": None, "l": ("->", b"a")})
    assert plan.empty and plan.old_files == plan.new_files == 1 and plan.deleted_files == 0


def test_first_backup_is_mkdirs_copies_and_folder_attributes() -> None:
    plan, c = check({}, {"a/b/c": b"123", "a/d": b"4", "e/": None, "l": ("->", b"x")})
    assert c == {"mkdir": 3, "copy": 2, "symlink": 1, "set-attributes": 3}
    assert plan.copy_bytes == 4 and plan.new_files == 2


def test_new_changed_and_deleted_files() -> None:
    plan, c = check({"a": b"1", "b": b"2", "d/x": b"3"}, {"a": b"11", "c": b"4", "d/": None})
    assert c["copy"] == 2 and c["delete"] == 2 and c["set-attributes"] == 1  # d/ after the delete
    update = next(op for op in plan.ops if isinstance(op, Copy) and op.path == b"a")
    assert update.old is not None and update.old.digest == digest_of(b"1")
    assert plan.deleted_files == 2 and plan.old_files == 3


def test_removed_folders_go_deepest_first() -> None:
    plan, c = check({"a/b/c/f": b"1", "keep": b"2"}, {"keep": b"2"})
    assert [op.path for op in plan.ops if isinstance(op, Rmdir)] == [b"a/b/c", b"a/b", b"a"]


def test_attributes_only() -> None:
    old = {"f": file(b"", b"1"), "g": file(b"", b"2"), "d/": folder(b""), "l": link(b"", b"t")}
    new = {"f": file(b"", b"1", mode=0o600), "g": file(b"", b"2", mtime=5),
           "d/": folder(b"", mode=0o700), "l": link(b"", b"t", mtime=9)}
    plan, c = check(old, new)
    assert c == {"set-attributes": 4}


def test_symlink_retarget_and_new_link() -> None:
    _, c = check({"l": ("->", b"a"), "m": ("->", b"b")}, {"l": ("->", b"c"), "m": ("->", b"b"),
                                                          "n": ("->", b"../x")})
    assert c == {"symlink": 2}


def test_duplicate_of_staying_content_is_a_remote_copy() -> None:
    plan, c = check({"a": b"same", "b": b"other"}, {"a": b"same", "b": b"other", "d/c": b"same"})
    assert c["remote-copy"] == 1 and "copy" not in c and plan.copy_bytes == 0
    rc = next(op for op in plan.ops if isinstance(op, RemoteCopy))
    assert (rc.src, rc.path) == (b"a", b"d/c")


def test_new_file_with_two_copies_is_sent_once() -> None:
    plan, c = check({}, {"a": b"dup", "b": b"dup"})
    assert c["copy"] == 2 and plan.copy_bytes == 6  # no old copy to take it from: both sent


def linked(content: bytes, n: int, ino: int = 77, mode: int = 0o644) -> Entry:
    """A file that is one of n hard links to inode ino (its path comes from tree())."""
    return replace(file(b"x", content, mode), ino=ino, dev=1, nlink=n)


def test_a_new_hard_link_group_is_sent_once_then_linked() -> None:
    plan, c = check({}, {"a/x": linked(b"data", 3), "b/y": linked(b"data", 3),
                         "c": linked(b"data", 3)})
    assert c["copy"] == 1 and c["link"] == 2 and plan.copy_bytes == 4
    first = next(op for op in plan.ops if isinstance(op, Copy))
    links = [op for op in plan.ops if isinstance(op, Link)]
    assert {op.src for op in links} == {first.path}
    # after every transfer: the content they link to is in place
    assert plan.ops.index(first) < min(plan.ops.index(op) for op in links)


def test_a_group_gaining_a_name_links_to_a_member_that_stays() -> None:
    old = {"a": linked(b"data", 2), "b": linked(b"data", 2), "z": b"data"}
    plan, c = check(old, {"a": linked(b"data", 3), "b": linked(b"data", 3), "z": b"data",
                          "new": linked(b"data", 3)})
    (op,) = [op for op in plan.ops if not isinstance(op, SetAttr)]
    # the same inode, not just the same content ("z" is a copy)
    assert isinstance(op, Link) and op.src in (b"a", b"b") and op.path == b"new"
    assert "copy" not in c and "remote-copy" not in c


def test_names_of_different_inodes_are_not_linked() -> None:
    plan, c = check({}, {"a": linked(b"data", 2, ino=1), "b": linked(b"data", 2, ino=2)})
    assert "link" not in c and c["copy"] == 2


def test_without_links_a_group_is_files() -> None:
    new = tree({"a": linked(b"data", 2), "b": linked(b"data", 2)})
    plan = make_plan(lambda: iter(()), lambda: iter(ordered(new)), run_id="r1", links=False)
    assert "link" not in plan.count() and plan.count()["copy"] == 2
    apply_plan({}, new, plan)


def test_a_change_of_what_the_remote_cannot_hold_needs_no_operation() -> None:
    old = tree({"a": replace(file(b"a", b"1"), uid=1, gid=1),
                "b": replace(file(b"b", b"2"), xattrs=((b"user.k", b"v"),))})
    new = tree({"a": replace(file(b"a", b"1"), uid=2, gid=1),
                "b": replace(file(b"b", b"2"), xattrs=((b"user.k", b"w"),))})

    def ops(held: tuple[bool, bool]) -> list[bytes]:
        plan = make_plan(lambda: iter(ordered(old)), lambda: iter(ordered(new)), run_id="r1",
                         held=held)
        return sorted(op.path for op in plan.ops if isinstance(op, SetAttr))

    assert ops((False, False)) == []
    assert ops((True, False)) == [b"a"]
    assert ops((False, True)) == [b"b"]
    # an owner the old record does not know (a version 1 snapshot) is no change
    old[b"a"] = file(b"a", b"1")
    assert ops((True, True)) == [b"b"]


def test_file_rename_is_a_move() -> None:
    plan, c = check({"a": b"1", "b": b"2"}, {"c": b"1", "b": b"2"})
    assert "copy" not in c and c["move"] == 1 and plan.deleted_files == 0 and plan.file_moves == 1


def test_moved_content_feeds_several_targets() -> None:
    plan, c = check({"a": b"1"}, {"x": b"1", "y": b"1", "z": b"1"})
    assert c["move"] == 1 and c["remote-copy"] == 2 and "copy" not in c


def test_folder_rename_is_one_move_whatever_its_size() -> None:
    files = {f"photos/2024/{i:04d}.jpg": f"{i}".encode() for i in range(1000)}
    files["photos/2024/sub/deep/x"] = b"x"
    moved = {k.replace("photos/2024", "photos/2024-summer"): v for k, v in files.items()}
    plan, c = check(files, moved)
    assert c == {"move-dir": 1, "set-attributes": 2}  # the moved folder and its parent
    assert plan.folder_moves == 1 and plan.copy_bytes == 0 and plan.deleted_files == 0


def test_folder_moved_deeper_with_edits_inside() -> None:
    old = {f"a/{i}": bytes([65 + i]) * 3 for i in range(10)}
    new = {f"x/y/a2/{i}": bytes([65 + i]) * 3 for i in range(10)}
    new["x/y/a2/3"] = b"edited"
    new["x/y/a2/new"] = b"brand new"
    del new["x/y/a2/7"]
    plan, c = check(old, new)
    assert c["move-dir"] == 1 and c["copy"] == 2 and c["delete"] == 1
    assert plan.copy_bytes == len(b"edited") + len(b"brand new")


def test_swap_two_files() -> None:
    plan, c = check({"a": b"AAAA", "b": b"BBBB"}, {"a": b"BBBB", "b": b"AAAA"})
    assert "copy" not in c and plan.copy_bytes == 0 and plan.deleted_files == 0


def test_chain_of_renames() -> None:
    _, c = check({"a": b"1", "b": b"2", "c": b"3"}, {"a": b"3", "b": b"1", "c": b"2"})
    assert "copy" not in c and "remote-copy" not in c


def test_swap_two_folders() -> None:
    old = {**{f"a/{i}": f"a{i}".encode() for i in range(3)},
           **{f"b/{i}": f"b{i}".encode() for i in range(3)}}
    new = {**{f"b/{i}": f"a{i}".encode() for i in range(3)},
           **{f"a/{i}": f"b{i}".encode() for i in range(3)}}
    plan, c = check(old, new)
    assert "copy" not in c and plan.copy_bytes == 0


def test_file_becomes_folder_and_folder_becomes_file() -> None:
    _, c = check({"a": b"1", "b/x": b"2"}, {"a/x": b"2", "b": b"1"})
    assert "copy" not in c


def test_file_replaced_by_link_and_link_by_folder() -> None:
    check({"a": b"1", "l": ("->", b"t")}, {"a": ("->", b"t"), "l/f": b"1"})


def test_folder_moved_out_of_a_folder_that_becomes_a_file() -> None:
    old = {"p/q/1": b"one", "p/q/2": b"two", "p/q/3": b"three"}
    new = {"p": b"now a file", "z/1": b"one", "z/2": b"two", "z/3": b"three"}
    _, c = check(old, new)
    assert c["move-dir"] == 1


@pytest.mark.parametrize("obstacle", [b"file", ("->", b"x")])
def test_folder_moved_onto_a_file_path_with_leftovers(obstacle: object) -> None:
    old = {"a": obstacle, "b/a": b"1", "b/b": b"2", "b/c": b"3"}
    new = {"a/a": b"1", "a/b": b"2"}
    plan, c = check(old, new)  # b/c, now a/c, is deleted in the moved folder, not the stash
    assert c["move-dir"] == 1 and plan.deleted_files == 1 + (obstacle == b"file")


def test_folder_moved_into_a_folder_that_replaces_a_file() -> None:
    old = {"a": b"file a", "d/1": b"one", "d/2": b"two"}
    new = {"a/d/1": b"one", "a/d/2": b"two"}
    _, c = check(old, new)
    assert c["move-dir"] == 1 and "copy" not in c


@pytest.mark.parametrize("inner_votes", [1, 2, 5])  # the inner move wins the vote, or not
def test_folder_moved_into_a_renamed_folder(inner_votes: int) -> None:
    old = {"a/f": b"f", "a/g": b"g", **{f"b/{i}": b"x%d" % i for i in range(inner_votes)}}
    new = {"c/f": b"f", "c/g": b"g", **{f"c/b2/{i}": b"x%d" % i for i in range(inner_votes)}}
    _, c = check(old, new)
    assert c == {"move-dir": 2, "set-attributes": 2}


@pytest.mark.parametrize("inner_votes", [1, 5])
def test_folder_moved_onto_a_subfolder_of_a_renamed_folder(inner_votes: int) -> None:
    # c/b2 is where a/b2 arrives with the rename of a: b cannot be renamed onto it.
    old = {"a/f": b"f", "a/g": b"g", "a/b2/h": b"h",
           **{f"b/{i}": b"x%d" % i for i in range(inner_votes)}}
    new = {"c/f": b"f", "c/g": b"g", **{f"c/b2/{i}": b"x%d" % i for i in range(inner_votes)}}
    _, c = check(old, new)
    assert "copy" not in c and c["move-dir"] == 1


def test_content_in_a_moved_folder_feeds_remote_copies() -> None:
    plan, c = check({"a b/a": b"photo", "c": b"other"},
                    {"a/a": b"photo", "b/a": b"photo", "c": b"other"})
    assert c["move-dir"] == 1 and c["remote-copy"] == 1 and plan.copy_bytes == 0


def test_leftovers_of_a_moved_folder_are_deleted_at_the_new_place() -> None:
    old = {"a/1": b"1", "a/2": b"2", "a/3": b"3", "a/sub/4": b"4"}
    new = {"b/1": b"1", "b/2": b"2", "b/3": b"3"}
    plan, c = check(old, new)
    assert c["move-dir"] == 1 and plan.deleted_files == 1


def test_deleted_files_counts_only_content_leaving_the_remote() -> None:
    plan = plan_for(tree({f"d/{i}": str(i).encode() for i in range(10)}),
                    tree({"e/0": b"0", "e/1": b"1"}))
    assert plan.deleted_files == 8 and plan.old_files == 10 and plan.new_files == 2


def test_odd_names_sort_and_apply() -> None:
    names = [b"a", b"a b", b"a!", b"a.b", b"a\xff", b"-x", b"x\ny", b"x\\y", b"\xff" * 255]
    old = tree({b"d/" + n: n for n in names} | {b"a/b": b"x"})
    new = tree({b"moved/" + n: n for n in names} | {b"a!": b"x"})
    plan = plan_for(old, new)
    apply_plan(old, new, plan)
    assert plan.count()["move-dir"] == 1


# --- property: for any old and new tree, applying the plan to old gives new ------

NAMES = [b"a", b"b", b"c", b"a b", b"a.b", b"\xff", b"-"]


class TreeGen:
    """A tree (path -> spec) changed by random operations drawn from hypothesis."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.t: dict[bytes, tuple] = {}
        self.next_content = 0

    def draw(self, strategy: st.SearchStrategy) -> object:
        return self.data.draw(strategy)

    def dirs(self) -> list[bytes]:
        return [b""] + sorted(p for p, s in self.t.items() if s[0] == "d" and p.count(b"/") < 2)

    def paths(self) -> list[bytes]:
        return sorted(self.t)

    def contents(self) -> list[int]:
        return sorted({s[1] for s in self.t.values() if s[0] == "f"})

    def content(self) -> int:
        known = self.contents()
        if known and self.draw(st.booleans()):
            return self.draw(st.sampled_from(known))  # type: ignore[return-value]
        self.next_content += 1
        return self.next_content

    def attrs(self) -> tuple[int, int]:
        return self.draw(st.sampled_from([0o644, 0o600, 0o755])), self.draw(st.integers(1, 3))

    def spec(self, kind: str) -> tuple:
        mode, mtime = self.attrs()
        if kind == "f":
            return ("f", self.content(), mode, mtime)
        if kind == "d":
            return ("d", mode | 0o700, mtime)
        return ("l", self.draw(st.sampled_from(NAMES)), mtime)

    def new_path(self) -> bytes:
        d = self.draw(st.sampled_from(self.dirs()))
        name = self.draw(st.sampled_from(NAMES))
        return d + b"/" + name if d else name  # type: ignore[operator]

    def remove(self, p: bytes) -> None:
        for k in [k for k in self.t if is_under(k, p)]:
            del self.t[k]

    def create(self, p: bytes, kind: str) -> None:
        self.remove(p)
        self.t[p] = self.spec(kind)

    def step(self) -> None:
        what = self.draw(st.sampled_from(
            ["add", "add", "delete", "move", "move", "copy", "edit", "attrs", "kind", "swap"]))
        paths = self.paths()
        if what == "add" or not paths:
            p = self.new_path()
            if p not in self.t:
                self.create(p, self.draw(st.sampled_from("ffdl")))  # type: ignore[arg-type]
            return
        p = self.draw(st.sampled_from(paths))
        if what == "delete":
            self.remove(p)
        elif what in ("move", "copy"):  # rename, move elsewhere, onto an entry; or duplicate
            dst = self.new_path()
            if is_under(dst, p) or p in {dst, parent(dst)}:
                return
            sub = {k: self.t[k] for k in self.t if is_under(k, p)}
            if what == "move":
                self.remove(p)
            self.remove(dst)
            if parent(dst) and parent(dst) not in self.t:
                return  # the destination folder was inside what moved
            for k, v in sub.items():
                self.t[dst + k[len(p):]] = v
        elif what == "edit" and self.t[p][0] == "f":
            s = self.t[p]
            self.t[p] = ("f", self.content(), s[2], self.draw(st.integers(1, 3)))
        elif what == "attrs":
            s = self.t[p]
            mode, mtime = self.attrs()
            self.t[p] = (*s[:-2], mode | (0o700 if s[0] == "d" else 0), mtime) if s[0] != "l" \
                else (*s[:-1], mtime)
        elif what == "kind":  # the same path, another kind; maybe something moves inside
            kind = self.draw(st.sampled_from([k for k in "fdl" if k != self.t[p][0]]))
            self.create(p, kind)  # type: ignore[arg-type]
            others = [q for q in self.paths() if not is_under(q, p) and not is_under(p, q)]
            if kind == "d" and others and self.draw(st.booleans()):
                q = self.draw(st.sampled_from(others))
                sub = {k: self.t[k] for k in self.t if is_under(k, q)}
                self.remove(q)
                name = q.rsplit(b"/", 1)[-1]  # type: ignore[union-attr]
                for k, v in sub.items():
                    self.t[p + b"/" + name + k[len(q):]] = v  # type: ignore[operator]
        elif what == "swap":
            files = [q for q in paths if self.t[q][0] == "f"]
            if len(files) >= 2:
                a, b = self.draw(st.lists(st.sampled_from(files), min_size=2, max_size=3,
                                          unique=True))[:2]  # type: ignore[index]
                self.t[a], self.t[b] = self.t[b], self.t[a]

    def entries(self) -> dict[bytes, Entry]:
        out: dict[bytes, Entry] = {}
        for p, s in self.t.items():
            if s[0] == "f":
                content = str(s[1]).encode() * (1 + s[1] % 3)
                out[p] = file(p, content, s[2], s[3])
            elif s[0] == "d":
                out[p] = folder(p, s[1], s[2])
            else:
                out[p] = link(p, s[1], s[2])
        return out


def _random_trees(data: st.DataObject) -> None:
    g = TreeGen(data)
    for _ in range(data.draw(st.integers(0, 14), label="old size")):
        g.step()
    old = g.entries()
    for _ in range(data.draw(st.integers(1, 8), label="changes")):
        g.step()
    new = g.entries()
    plan = plan_for(old, new)
    apply_plan(old, new, plan)
    # The counts the deletion guard relies on.
    assert plan.old_files == sum(e.kind == FILE for e in old.values())
    assert plan.new_files == sum(e.kind == FILE for e in new.values())
    gone = [p for p, e in old.items() if e.kind == FILE and (p not in new or new[p].kind != FILE)]
    assert 0 <= plan.deleted_files <= len(gone)
    # With the attic: the same mirror, and every old content that is nowhere in the
    # new tree is in the attic; the attic holds only what the old tree held (under
    # the path it had when it left: inside a folder moved in the same run, the
    # folder's new path).
    plan = plan_for(old, new, attic=True)
    remote = apply_plan(old, new, plan)
    kept = {n.digest for n in new.values() if n.kind == FILE}
    had = {(e.kind, e.digest, e.target) for e in old.values()}
    for path, n in remote.attic.items():
        assert (n.kind, n.digest, n.target) in had, path
    retired = {n.digest for n in remote.attic.values() if n.kind == FILE}
    lost = {e.digest for e in old.values() if e.kind == FILE} - kept - retired
    assert not lost, f"old content neither kept nor in the attic: {lost}\n" + "\n".join(map(str, plan.ops))


test_plan_turns_any_old_tree_into_the_new_one = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)(given(st.data())(_random_trees))

# The same property, searched much harder (a minute or two).
test_plan_turns_any_old_tree_into_the_new_one_long = pytest.mark.slow(settings(
    max_examples=6000, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)(given(st.data())(_random_trees)))


def test_op_names() -> None:
    assert op_name(Move(b"a", b"b", folder(b"b"))) == "move-dir"
    assert op_name(Move(b"a", b"b", file(b"b", b"1"))) == "move"
    assert op_name(Move(b"a", STASH + b"/r/1")) == "stash"
    # A folder moved out of a stashed obstacle (a folder that became a file) is still a folder move.
    assert op_name(Move(STASH + b"/r/1/q", b"z", folder(b"z"))) == "move-dir"


# --- Spread: transfers on a network remote, from many folders at once --------

def _run_spread(ops: list[Copy], jobs: int, per_folder: int, lookahead: int,
                finish: Callable[[list[int]], int]) -> tuple[list[int], list[int], int]:
    """Drive a Spread as Executor._spread does, `finish` choosing which running
    transfer ends next; (order taken, announced indexes, most running in one folder)."""
    announced: list[int] = []
    order = Spread(list(ops), 0, len(ops), lookahead, per_folder, announced.extend)
    running: list[int] = []
    taken: list[int] = []
    most = 0
    while True:
        while len(running) < jobs:
            k = order.take()
            if k is None:
                break
            assert k in announced  # announced before it runs
            taken.append(k)
            assert len(announced) - len(taken) < ANNOUNCE  # never far ahead
            running.append(k)
            folders = Counter(parent(ops[r].path) for r in running)
            most = max(most, max(folders.values()))
        if not running:
            return taken, announced, most
        order.done(running.pop(finish(running)))


def test_spread_runs_every_transfer_once_from_many_folders() -> None:
    # Plan order: a folder's files side by side, folders of very different sizes.
    sizes = {b"a": 40, b"b/x": 3, b"b": 1, b"c": 25, b"d/e/f": 7}
    ops = [Copy(b"%s/%d" % (d, i), file(b"%s/%d" % (d, i), b"%d" % i), None)
           for d, n in sizes.items() for i in range(n)]
    for finish in (lambda r: 0, lambda r: len(r) - 1, lambda r: len(r) // 2):
        taken, announced, most = _run_spread(ops, jobs=6, per_folder=2, lookahead=20, finish=finish)
        assert sorted(taken) == list(range(len(ops)))  # each exactly once
        assert sorted(announced) == list(range(len(ops)))
        assert most == 2  # never more than per_folder in one folder
        # The first six started come from all five folders, not from "a" alone.
        assert len({parent(ops[k].path) for k in taken[:6]}) == len(sizes)
        # Within a folder, plan order is kept.
        for d in sizes:
            mine = [k for k in taken if parent(ops[k].path) == d]
            assert mine == sorted(mine)


def test_spread_one_folder_still_runs_per_folder_at_once() -> None:
    ops = [Copy(b"only/%d" % i, file(b"only/%d" % i, b"x"), None) for i in range(10)]
    taken, _, most = _run_spread(ops, jobs=8, per_folder=3, lookahead=100, finish=lambda r: 0)
    assert taken == list(range(10)) and most == 3


def test_spread_announces_in_batches_never_far_ahead() -> None:
    ops = [Copy(b"%d/%d" % (i % 3, i), file(b"%d/%d" % (i % 3, i), b"x"), None) for i in range(3 * ANNOUNCE)]
    ops.sort(key=lambda op: sort_key(op.path))
    batches: list[list[int]] = []
    order = Spread(ops, 0, len(ops), 64, 2, batches.append)
    taken: list[int] = []
    while (k := order.take()) is not None:
        taken.append(k)
        assert sum(map(len, batches)) - len(taken) < ANNOUNCE
        order.done(k)
    assert sorted(taken) == list(range(len(ops)))
    assert sorted(k for b in batches for k in b) == list(range(len(ops)))  # each once
    assert len(batches) <= 4  # one sync per ANNOUNCE puts, not one per put


def test_chains_put_each_retirement_before_its_new_content() -> None:
    old = {p: file(p, b"old " + p) for p in (b"a/1", b"a/2", b"b/3", b"c/gone")}
    retires = [Retire(p, e) for p, e in old.items()]
    transfers = [Copy(b"a/1", file(b"a/1", b"new"), old[b"a/1"]),
                 Copy(b"a/new", file(b"a/new", b"n"), None),
                 RemoteCopy(b"b/3", file(b"b/3", b"x"), b"elsewhere", old[b"b/3"]),
                 Copy(b"a/2", file(b"a/2", b"new 2"), old[b"a/2"])]
    got = [tuple((type(op).__name__, op.where) for op in c.ops) for c in chains(retires, transfers)]
    assert got == [
        (("Retire", b"a/1"), ("Copy", b"a/1")),
        (("Retire", b"a/2"), ("Copy", b"a/2")),
        (("Retire", b"b/3"), ("RemoteCopy", b"b/3")),
        (("Retire", b"c/gone"),),  # deleted: retired alone
        (("Copy", b"a/new"),),  # new: sent alone
    ]
