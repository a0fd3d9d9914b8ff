"""A plan's operations, one item each: text lines for diff and --dry-run, records
for the run's kept list (see runlog.py). Both come from `items`, so what a dry
run announces and what the real run logs are spelled alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .errors import show_path
from .ops import STASH, Copy, Delete, Mkdir, Move, RemoteCopy, Retire, Rmdir, SetAttr, Symlink
from .plan import Plan, patch_bytes

display_path = show_path


def items(plan: Plan) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """(verb, path, details) per operation; stash round trips come out as one move.
    details: "from" (a move's or remote copy's source), "target" (a symlink's),
    "bytes" (what a copy or patch sends), "size", "chunks", "members" (a folder
    into the attic), "dir" (the path is a folder)."""
    origin: dict[bytes, bytes] = {}

    def orig(p: bytes) -> bytes:
        for stash, o in origin.items():
            if p == stash or p.startswith(stash + b"/"):
                return o + p[len(stash):]
        return p

    for op in plan.all_ops():
        if isinstance(op, Move):
            if op.dst.startswith(STASH + b"/"):
                origin[op.dst] = orig(op.src)
                continue
            yield op.label(), op.dst, {"from": orig(op.src)}
        elif isinstance(op, Copy) and op.patch is not None:
            yield op.label(), op.path, {"bytes": patch_bytes(op.entry, op.patch),
                                        "size": op.entry.size, "chunks": len(op.patch)}
        elif isinstance(op, Copy):
            verb = "update" if op.old is not None else op.verb
            yield verb, op.path, {"bytes": op.entry.size, "size": op.entry.size}
        elif isinstance(op, RemoteCopy):
            yield op.verb, op.path, {"from": orig(op.src)}
        elif isinstance(op, Mkdir):
            yield op.verb, op.path, {"dir": True}
        elif isinstance(op, Symlink):
            yield op.verb, op.path, {"target": op.entry.target or b""}
        elif isinstance(op, Retire):
            d: dict[str, Any] = {"dir": True, "members": len(op.members)} if op.entry.kind == "dir" else {}
            yield op.verb, op.entry.path, d
        elif isinstance(op, Delete):
            yield op.verb, orig(op.path), {}
        elif isinstance(op, Rmdir):
            yield op.verb, orig(op.path), {"dir": True}
        elif isinstance(op, SetAttr):
            yield op.verb, op.path, {"dir": True} if op.entry.kind == "dir" else {}


def line(verb: str, path: bytes, d: dict[str, Any]) -> str:
    """One item as people read it: `copy      photos/a.jpg  (120 bytes)`."""
    p = display_path(path) + ("/" if d.get("dir") else "")
    if verb == "patch":
        return f"{verb:<9} {p}  ({d['bytes']} of {d['size']} bytes, {d['chunks']} chunks)"
    if "from" in d and verb in ("move", "move-dir"):
        return f"{verb:<9} {display_path(d['from'])} -> {p}"
    if "from" in d:
        return f"{verb:<9} {p}  (from {display_path(d['from'])})"
    if "target" in d:
        return f"{verb:<9} {p} -> {display_path(d['target'])}"
    if "members" in d:
        return f"{verb:<9} {p}  ({d['members']} in it)"
    if "error" in d:
        return f"{verb:<9} {p}  ({d['error']})"
    if "size" in d:
        return f"{verb:<9} {p}  ({d['size']} bytes)"
    return f"{verb:<9} {p}"


def itemize(plan: Plan) -> Iterator[str]:
    """Lines like `copy      photos/a.jpg  (120 bytes)`."""
    for verb, path, d in items(plan):
        yield line(verb, path, d)
