"""Human-readable lines for a plan, one per operation (for diff and --dry-run)."""

from __future__ import annotations

from collections.abc import Iterator

from .errors import show_path
from .ops import STASH, Copy, Delete, Mkdir, Move, RemoteCopy, Retire, Rmdir, SetAttr, Symlink
from .plan import Plan, patch_bytes

display_path = show_path


def itemize(plan: Plan) -> Iterator[str]:
    """Lines like `copy    photos/a.jpg`; stash round trips are shown as one move."""
    origin: dict[bytes, bytes] = {}

    def orig(p: bytes) -> bytes:
        for stash, o in origin.items():
            if p == stash or p.startswith(stash + b"/"):
                return o + p[len(stash):]
        return p

    for op in plan.ops:
        if isinstance(op, Move):
            if op.dst.startswith(STASH + b"/"):
                origin[op.dst] = orig(op.src)
                continue
            yield f"{op.label():<9} {display_path(orig(op.src))} -> {display_path(op.dst)}"
        elif isinstance(op, Copy) and op.patch is not None:
            yield (f"{op.label():<9} {display_path(op.path)}  ({patch_bytes(op.entry, op.patch)} of "
                   f"{op.entry.size} bytes, {len(op.patch)} chunks)")
        elif isinstance(op, Copy):
            verb = "update" if op.old is not None else op.verb
            yield f"{verb:<9} {display_path(op.path)}  ({op.entry.size} bytes)"
        elif isinstance(op, RemoteCopy):
            yield f"{op.verb:<9} {display_path(op.path)}  (from {display_path(orig(op.src))})"
        elif isinstance(op, Mkdir):
            yield f"{op.verb:<9} {display_path(op.path)}/"
        elif isinstance(op, Symlink):
            yield f"{op.verb:<9} {display_path(op.path)} -> {display_path(op.entry.target or b'')}"
        elif isinstance(op, Retire):
            tail = f"/  ({len(op.members)} in it)" if op.entry.kind == "dir" else ""
            yield f"{op.verb:<9} {display_path(op.entry.path)}{tail}"
        elif isinstance(op, (Delete, Rmdir)):
            yield f"{op.verb:<9} {display_path(orig(op.path))}{'/' if isinstance(op, Rmdir) else ''}"
        elif isinstance(op, SetAttr):
            yield f"{op.verb:<9} {display_path(op.path)}{'/' if op.entry.kind == 'dir' else ''}"
