"""The restore's pair walk: one decision per (snapshot entry, destination entry) pair.

The snapshot's entries (those selected) and what the destination holds are
merged in snapshot order (see reading.merge_found). For each pair the walker
decides one action (the dataclasses below) and hands it to an applier
(restore_apply): `Applier` carries it out, `DryRunApplier` records it. The
walker itself writes nothing; it keeps the stack of folders the current entry
is in, and skips the subtree of a folder that is given up or handled as a
whole (the applier tells it a folder could not be opened by returning None).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import meta
from .paths import is_under, merge, parent
from .reading import DIR_FLAGS, EntryChecker, Found, SnapshotSource, lstat_found, walk_found
from .snapshot import DIR, FILE, SYMLINK, Entry
from .transfer import temp_name

TMP_TAG = "restore-"
TMP_PREFIX = temp_name(b"x", TMP_TAG)  # our own leftovers: removed, never listed
NOWHERE = b"\x00"  # never a valid path: content the remote no longer holds


@dataclass(slots=True, eq=False)
class Folder:
    """A destination folder being restored: open while its subtree is processed."""

    path: bytes
    entry: Entry | None  # None: the destination root
    fd: int | None  # None: dry run, and the folder does not exist yet
    created: bool = False
    left: bool = False  # the walk has moved past its subtree
    rfd: int | None = None  # the same folder on the remote (opened on first use)
    rerr: str | None = None  # why the remote folder could not be opened
    stale: bool = False  # existed with another mode or mtime than the snapshot's
    parent: Folder | None = None
    # (name, kind) of the files and links written into it: checked when it is done
    written: list[tuple[bytes, str]] = field(default_factory=list)


def basename(path: bytes) -> bytes:
    return path.rpartition(b"/")[2]


# --- the actions: one per pair ---------------------------------------------------


@dataclass(slots=True, frozen=True)
class Skip:
    """Nothing to do: inside a subtree given up or handled as a whole, or excluded."""

    entry: Entry | None  # a snapshot entry: counted as handled


@dataclass(slots=True, frozen=True)
class Leftover:
    """A temp file of an interrupted restore: removed, never listed."""

    found: Found


@dataclass(slots=True, frozen=True)
class KeepExtra:
    """Not in the snapshot, and no --delete: kept and listed."""

    found: Found

    @property
    def shown(self) -> bytes:
        return _shown(self.found)


@dataclass(slots=True, frozen=True)
class DeleteExtra:
    """Not in the snapshot, with --delete: deleted (a folder as a whole)."""

    found: Found

    @property
    def shown(self) -> bytes:
        return _shown(self.found)


def _shown(d: Found) -> bytes:
    return d.path + b"/" if d.kind == DIR else d.path


@dataclass(slots=True, frozen=True)
class Refuse:
    """Not restored: reported; what the destination holds there is left alone."""

    entry: Entry
    why: str


@dataclass(slots=True, frozen=True)
class MakeDir:
    """Create the folder (after removing the non-folder there, with `replace`), enter it."""

    entry: Entry
    replace: bool = False


@dataclass(slots=True, frozen=True)
class EnterDir:
    """The folder exists: enter it; its mode and mtime are set once its subtree is done."""

    entry: Entry


@dataclass(slots=True, frozen=True)
class Keep:
    """The file or symlink there already matches: left alone."""

    entry: Entry


@dataclass(slots=True, frozen=True)
class SetAttrs:
    """Content matches, the mode (a file) or the mtime (a symlink) does not: set it."""

    entry: Entry


@dataclass(slots=True, frozen=True)
class PutSymlink:
    """Write the symlink (after removing the folder there, with `replace`)."""

    entry: Entry
    replace: bool = False


@dataclass(slots=True, frozen=True)
class PutFile:
    """Copy the file in from the remote (after removing the folder there, with `replace`).

    `src`: where the remote holds its content; None, at the entry's own path;
    else the path of the same content now (an older snapshot's file that moved,
    see NowIndex), or NOWHERE."""

    entry: Entry
    src: bytes | None = None
    replace: bool = False


@dataclass(slots=True, frozen=True)
class CheckFile:
    """--checksum, same size: compare digests; copy as PutFile only if they differ."""

    entry: Entry
    src: bytes | None = None


Action = (Skip | Leftover | KeepExtra | DeleteExtra | Refuse | MakeDir | EnterDir | Keep
          | SetAttrs | PutSymlink | PutFile | CheckFile)


class Sink(Protocol):
    """What carries the actions out (restore_apply's appliers)."""

    def apply(self, cur: Folder, action: Action) -> Folder | None:
        """Carry out action in folder cur; for MakeDir and EnterDir, the folder entered
        (None: it cannot be restored, its subtree is skipped)."""

    def leave(self, d: Folder) -> None:
        """The walk has moved past d's subtree."""


# --- where an older snapshot's content lives now ----------------------------------


class NowIndex:
    """Restoring an older snapshot: where each content lives on the remote now.

    The mirror holds only the newest state, so an older snapshot's file is
    found by its digest, at its own path or wherever the same content lives
    now, in the mirror or in the attic. Reading the current snapshot also tells which paths the remote stores
    under their escaped names (added to `escaped`).

    Held in memory: only what differs. The snapshot to restore (`wanted`) and the
    current one are merged once (both are in path order): a file whose content
    is at its own path now needs nothing; the others' digests, and the bases of
    the attic's undo records, are then looked up in a second read of the current
    snapshot and in the attic's lists."""

    def __init__(self, current: Callable[[], Iterator[Entry]], escaped: set[bytes],
                 attic: Callable[[], Iterable[tuple[bytes, Entry, dict[str, Any] | None]]]
                 | None = None, wanted: Callable[[], Iterator[Entry]] | None = None) -> None:
        checker = EntryChecker("the remote's current snapshot")
        self._elsewhere: set[bytes] = set()  # wanted files not at their own path now
        want: set[str] = set()  # their digests
        self._digest: dict[str, bytes] = {}
        # Undo records (old content = the record applied to its base): by the
        # digest they rebuild, their path; by their path, (base digest, base size).
        self._undo_of: dict[str, bytes] = {}
        self.undo: dict[bytes, tuple[str, int]] = {}
        for w, c in merge(wanted() if wanted is not None else iter(()), current()):
            if c is not None:
                checker.check(c)
                if c.escaped:
                    escaped.add(c.path)
            if w is not None and w.kind == FILE and w.digest and not (
                    c is not None and c.kind == FILE and c.digest == w.digest):
                self._elsewhere.add(w.path)
                want.add(w.digest)
        plain: list[tuple[str, bytes]] = []
        if attic is not None:
            # Content that left the mirror, kept in the attic (remote.attic_contents):
            # found there when the mirror holds it nowhere.
            for where, e, undo in attic():
                if e.kind != FILE or not e.digest:
                    continue
                if undo is None:
                    plain.append((e.digest, where))
                else:
                    self._undo_of.setdefault(e.digest, where)
                    self.undo[where] = (undo["base"], undo["base_size"])
                    want.add(undo["base"])
        plain = [(d, where) for d, where in plain if d in want]
        if want:
            for e in current():
                if e.kind == FILE and e.digest in want:
                    self._digest.setdefault(e.digest, e.path)
        for d, where in plain:
            self._digest.setdefault(d, where)

    def source_of(self, e: Entry) -> bytes | None:
        """None: the remote holds e's content at e's own path; else where it does (or
        NOWHERE)."""
        if e.path not in self._elsewhere:
            return None
        assert e.digest is not None
        return self._digest.get(e.digest) or self._undo_of.get(e.digest, NOWHERE)

    def rebuild_chain(self, where: bytes) -> tuple[bytes, int, list[bytes]] | None:
        """For an undo record at where: (the file to start from, its size, the undo
        records to apply to it in order); None when a base is held nowhere."""
        chain = [where]
        while len(chain) <= 10_000:
            base, size = self.undo[chain[-1]]
            plain = self._digest.get(base)
            if plain is not None:
                return plain, size, chain[::-1]
            nxt = self._undo_of.get(base)
            if nxt is None or nxt in chain:
                return None
            chain.append(nxt)
        return None


# --- the two sorted streams ---------------------------------------------------------


def selected(source: SnapshotSource, roots: list[bytes]) -> Iterator[Entry]:
    """The snapshot's entries within roots, and the folders above them."""
    ancestors = {parent(r) for r in roots if r}
    for r in list(ancestors):
        while r:
            r = parent(r)
            ancestors.add(r)
    ancestors.discard(b"")
    # Checked again as read: a snapshot file swapped since the first pass is still refused.
    checker = EntryChecker(f"snapshot {source.header.id}")
    for e in source.entries():
        checker.check(e)
        if roots == [b""] or e.path in ancestors or any(is_under(e.path, r) for r in roots):
            yield e


def found(dest: bytes, roots: list[bytes], errors: list[tuple[bytes, str]]) -> Iterator[Found]:
    """What the destination holds within roots, and the folders above them (errors
    collected)."""
    unlistable: set[bytes] = set()
    if roots == [b""]:
        yield from walk_found(dest, b"", errors, unlistable)
        return
    real_dirs: dict[bytes, bool] = {}
    for r in roots:
        parts = r.split(b"/")
        reachable = True
        for i in range(1, len(parts)):
            a = b"/".join(parts[:i])
            if a not in real_dirs:
                f = lstat_found(dest, a)
                real_dirs[a] = f is not None and f.kind == DIR
                if f is not None:
                    yield f
            if not real_dirs[a]:
                reachable = False
                break
        if not reachable:
            continue
        f = lstat_found(dest, r)
        if f is not None:
            yield f
            if f.kind == DIR:
                yield from walk_found(dest + b"/" + r, r + b"/", errors, unlistable)


# --- the walker ---------------------------------------------------------------------


def _is_empty_dir(parent_fd: int, name: bytes) -> bool:
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        return not os.listdir(fd)
    finally:
        os.close(fd)


class PairWalker:
    """Decides what to do with each pair; `walk` hands the decisions to a Sink."""

    def __init__(self, delete: bool, checksum: bool,
                 exclude: Callable[[bytes, bool], bool] | None, now: NowIndex | None,
                 how: meta.Apply = meta.NOTHING) -> None:
        self.delete = delete
        self.checksum = checksum
        self.exclude = exclude
        self.now = now
        self.how = how

    def walk(self, root: Folder, pairs: Iterable[tuple[Entry | None, Found | None]],
             sink: Sink) -> None:
        """Every pair in snapshot order, one action each.

        `stack` holds the open folders from the root down to the current
        entry's parent; `skip` a subtree given up (or handled as a whole).
        """
        stack = [root]
        skip: bytes | None = None
        for s, d in pairs:
            path = s.path if s is not None else d.path  # type: ignore[union-attr]
            if skip is not None:
                if is_under(path, skip):
                    sink.apply(stack[-1], Skip(s))
                    continue
                skip = None
            while stack[-1].path and not path.startswith(stack[-1].path + b"/"):
                sink.leave(stack.pop())
            cur = stack[-1]
            if parent(path) != cur.path:
                raise AssertionError(f"restore: {path!r} is not inside {cur.path!r}")
            sub = sink.apply(cur, self.decide(cur, s, d))
            if sub is not None:
                stack.append(sub)
            elif (s is not None and s.kind == DIR) or (d is not None and d.kind == DIR):
                skip = path  # given up, replaced, or listed (or deleted) as one
        while stack:
            sink.leave(stack.pop())

    def decide(self, cur: Folder, s: Entry | None, d: Found | None) -> Action:
        if s is None:
            assert d is not None
            return self._extra(d)
        if s.kind == DIR:
            return self._folder(s, d)
        return self._leaf(cur, s, d)

    def _extra(self, d: Found) -> Action:
        """A destination entry the snapshot lacks."""
        if basename(d.path).startswith(TMP_PREFIX) and d.kind != DIR:
            return Leftover(d)
        if self.exclude is not None and self.exclude(d.path, d.kind == DIR):
            return Skip(None)  # never backed up: not the restore's business
        return DeleteExtra(d) if self.delete else KeepExtra(d)

    def _folder(self, s: Entry, d: Found | None) -> Action:
        if d is None:
            return MakeDir(s)
        if d.kind == DIR:
            return EnterDir(s)
        if d.kind == SYMLINK and not self.delete:
            return Refuse(s, "is a symlink in the destination, the snapshot has a folder: "
                          "refusing to restore through it (remove it, or use --delete)")
        return MakeDir(s, replace=True)

    def _leaf(self, cur: Folder, s: Entry, d: Found | None) -> Action:
        """A file or symlink."""
        replace = d is not None and d.kind == DIR
        if replace:
            if not self.delete and not (cur.fd is not None
                                        and _is_empty_dir(cur.fd, basename(s.path))):
                return Refuse(s, f"is a folder in the destination, the snapshot has a "
                              f"{s.kind}: kept (use --delete to replace it)")
            d = None
        if s.kind == SYMLINK:
            if d is not None and d.kind == SYMLINK and d.target == s.target:
                return Keep(s) if d.mtime_ns == s.mtime_ns and self._same_meta(s, d) else SetAttrs(s)
            return PutSymlink(s, replace)
        if d is not None and d.kind == FILE and d.size == s.size and (
                self.checksum or d.mtime_ns == s.mtime_ns):
            if self.checksum:
                return CheckFile(s, self._source_of(s))
            return (Keep(s) if stat.S_IMODE(d.mode) == s.mode & 0o7777 and self._same_meta(s, d)
                    else SetAttrs(s))
        return PutFile(s, self._source_of(s), replace)

    def _same_meta(self, s: Entry, d: Found) -> bool:
        """Owner as wanted, and no recorded xattrs to check (SetAttrs reads them)."""
        owner = self.how.want_owner(s)
        return (owner is None or owner == (d.uid, d.gid)) and not self.how.want_xattrs(s)

    def _source_of(self, e: Entry) -> bytes | None:
        return None if self.now is None else self.now.source_of(e)
