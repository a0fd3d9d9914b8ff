"""Human-readable lines for a plan, one per operation (for diff and --dry-run)."""

from __future__ import annotations

from collections.abc import Iterator

from .errors import show_path
from .plan import STASH, Copy, Delete, Mkdir, Move, Plan, RemoteCopy, Rmdir, SetAttr, Symlink, patch_bytes

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
            kind = "move-dir" if op.entry is not None and op.entry.kind == "dir" else "move"
            yield f"{kind:<9} {display_path(orig(op.src))} -> {display_path(op.dst)}"
        elif isinstance(op, Copy) and op.patch is not None:
            yield (f"{'patch':<9} {display_path(op.path)}  ({patch_bytes(op.entry, op.patch)} of "
                   f"{op.entry.size} bytes, {len(op.patch)} chunks)")
        elif isinstance(op, Copy):
            verb = "update" if op.old is not None else "copy"
            yield f"{verb:<9} {display_path(op.path)}  ({op.entry.size} bytes)"
        elif isinstance(op, RemoteCopy):
            yield f"{'rcopy':<9} {display_path(op.path)}  (from {display_path(orig(op.src))})"
        elif isinstance(op, Mkdir):
            yield f"{'mkdir':<9} {display_path(op.path)}/"
        elif isinstance(op, Symlink):
            yield f"{'symlink':<9} {display_path(op.path)} -> {display_path(op.entry.target or b'')}"
        elif isinstance(op, Delete):
            yield f"{'delete':<9} {display_path(orig(op.path))}"
        elif isinstance(op, Rmdir):
            yield f"{'rmdir':<9} {display_path(orig(op.path))}/"
        elif isinstance(op, SetAttr):
            yield f"{'attrs':<9} {display_path(op.path)}{'/' if op.entry.kind == 'dir' else ''}"
