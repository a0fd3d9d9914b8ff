"""The operations a plan is made of, and how each is named.

One class per operation. Each carries its three names, fixed by what is on
disk and in output:

- `name`: in the plan's counts (`--json` summaries): "remote-copy", "set-attributes"
- `verb`: the first word of its line in `btsoot diff` and `--dry-run`: "rcopy", "attrs"
- `tag`: its record in the journal (see journal.replay): "put", "attr"

and `paths`, the remote paths it changes. Some have a finer `label()` (a move of
a folder, a patch). Adding an operation is one class here, one handler in
execute.Executor, one branch in journal.replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .snapshot import DIR, Entry

STASH = b".btsoot/stash"
PATCH = b".btsoot/patch"  # redo files of in-place updates (see transfer.patch_file)
DAMAGED = b".btsoot/damaged"  # what stood where it should not (kept, never deleted)
# Content that left the mirror (deleted, or replaced by new content), by run:
# ATTIC/RUN/<its path in the mirror>, with ATTIC/RUN.jsonl listing it (see remote.py).
ATTIC = b".btsoot/attic"


class Tag:
    """Journal record kinds (on disk: never change one)."""

    PUT = "put"  # content placed under a temp name, renamed into place (files, links)
    PATCH = "patch"  # chunks written in place through a redo file
    MKDIR = "mkdir"
    MOVE = "move"
    DEL = "del"  # a file or an empty folder removed
    ATTR = "attr"
    ATTIC = "attic"  # old content moved into the attic


class _Op:
    __slots__ = ()
    name: ClassVar[str]
    verb: ClassVar[str]
    tag: ClassVar[str]
    # The begin record is synced before the operation runs (see Journal.begin).
    durable: ClassVar[bool] = False

    @property
    def paths(self) -> tuple[bytes, ...]:
        """The remote paths the operation changes."""
        raise NotImplementedError

    @property
    def where(self) -> bytes:
        """The path an error names."""
        raise NotImplementedError

    def label(self) -> str:
        return self.name


class _AtPath(_Op):
    """An operation on one remote path."""

    __slots__ = ()
    path: bytes

    @property
    def paths(self) -> tuple[bytes, ...]:
        return (self.path,)

    @property
    def where(self) -> bytes:
        return self.path


@dataclass(slots=True, frozen=True)
class Mkdir(_AtPath):
    name: ClassVar[str] = "mkdir"
    verb: ClassVar[str] = "mkdir"
    tag: ClassVar[str] = Tag.MKDIR
    path: bytes
    entry: Entry


@dataclass(slots=True, frozen=True)
class Move(_Op):
    """Rename src to dst on the remote: a folder move, a stash, or an unstash."""

    name: ClassVar[str] = "move"
    verb: ClassVar[str] = "move"
    tag: ClassVar[str] = Tag.MOVE
    # A move whose record a power cut took leaves the record naming a path that
    # is gone (the stash's too): recovery could not find it from the remote.
    durable: ClassVar[bool] = True
    src: bytes
    dst: bytes
    entry: Entry | None = None  # the final entry at dst (None when stashing)

    @property
    def paths(self) -> tuple[bytes, ...]:
        return (self.src, self.dst)

    @property
    def where(self) -> bytes:
        return self.dst

    def label(self) -> str:
        if self.dst.startswith(STASH + b"/"):
            return "stash"
        return "move-dir" if self.entry is not None and self.entry.kind == DIR else "move"


@dataclass(slots=True, frozen=True)
class Copy(_AtPath):
    """New content from the source, written to a temp name and renamed into place.

    With `patch`, only those chunks differ from `old`, which the remote holds at
    path: they are written into the remote file in place, through a redo file
    that makes the update atomic across crashes (see `transfer.patch_file`).
    """

    name: ClassVar[str] = "copy"
    verb: ClassVar[str] = "copy"
    tag: ClassVar[str] = Tag.PUT
    path: bytes
    entry: Entry
    old: Entry | None  # what the remote held at path before (kept on failure)
    patch: tuple[int, ...] | None = None  # indexes of the chunks to write

    def label(self) -> str:
        return "patch" if self.patch is not None else self.name


@dataclass(slots=True, frozen=True)
class RemoteCopy(_AtPath):
    """Content already on the remote at src, copied remote-side to path."""

    name: ClassVar[str] = "remote-copy"
    verb: ClassVar[str] = "rcopy"
    tag: ClassVar[str] = Tag.PUT
    path: bytes
    entry: Entry
    src: bytes
    old: Entry | None


@dataclass(slots=True, frozen=True)
class Link(RemoteCopy):
    """Another name of a hard-link group whose content is on the remote at src (put
    there by this run, or staying): a hard link to it where the remote holds
    links, else a remote-side copy. Runs after every other transfer."""

    name: ClassVar[str] = "link"
    verb: ClassVar[str] = "link"


@dataclass(slots=True, frozen=True)
class Symlink(_AtPath):
    name: ClassVar[str] = "symlink"
    verb: ClassVar[str] = "symlink"
    tag: ClassVar[str] = Tag.PUT
    path: bytes
    entry: Entry


@dataclass(slots=True, frozen=True)
class Delete(_AtPath):
    name: ClassVar[str] = "delete"
    verb: ClassVar[str] = "delete"
    tag: ClassVar[str] = Tag.DEL
    path: bytes
    entry: Entry


@dataclass(slots=True, frozen=True)
class Rmdir(_AtPath):
    name: ClassVar[str] = "rmdir"
    verb: ClassVar[str] = "rmdir"
    tag: ClassVar[str] = Tag.DEL
    path: bytes


@dataclass(slots=True, frozen=True)
class SetAttr(_AtPath):
    name: ClassVar[str] = "set-attributes"
    verb: ClassVar[str] = "attrs"
    tag: ClassVar[str] = Tag.ATTR
    path: bytes
    entry: Entry


@dataclass(slots=True, frozen=True)
class Retire(_AtPath):
    """Move the old content at path into the attic instead of losing it: a file or
    link deleted, a file about to be replaced, or a folder deleted whole with
    everything in it (one rename: no bytes are sent)."""

    name: ClassVar[str] = "retire"
    verb: ClassVar[str] = "attic"
    tag: ClassVar[str] = Tag.ATTIC
    path: bytes  # where it is now: its path in the mirror, or its place in the stash
    entry: Entry  # what it is; entry.path is its path in the mirror
    # A folder: the entries below it that go with it (what the attic lists).
    members: tuple[Entry, ...] = ()


Op = Mkdir | Move | Copy | RemoteCopy | Link | Symlink | Delete | Rmdir | SetAttr | Retire


def attic_path(run: bytes, path: bytes, escaped: set[bytes]) -> bytes:
    """Where run puts the old content of mirror path: ATTIC/RUN/path, stored under
    the mirror's names (escaped holds the mirror paths kept under their escaped
    name, case twins: the attic's matching paths are added to it, so two twins
    retired in one run do not take each other's place)."""
    top = ATTIC + b"/" + run + b"/"
    if escaped:
        p = path
        while p:
            if p in escaped:
                escaped.add(top + p)
            p = p.rpartition(b"/")[0]
    return top + path


def op_name(op: Op) -> str:
    """op's name in the plan's counts."""
    return op.label()
