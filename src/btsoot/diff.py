"""What differs between two snapshots, by path: pass 1 of planning, and what a
scan learns on its way (scan.py builds it while it walks; plan.py plans from it)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .paths import merge
from .snapshot import FILE, Entry


@dataclass(slots=True)
class Diff:
    """What differs between two snapshots, by path (pass 1 of planning)."""

    removed: dict[bytes, Entry] = field(default_factory=dict)
    added: dict[bytes, Entry] = field(default_factory=dict)
    changed: list[tuple[Entry, Entry]] = field(default_factory=list)  # same path and kind
    old_files: int = 0
    new_files: int = 0
    unchanged_files: int = 0
    dirs: dict[bytes, Entry] | None = None  # every folder of the new tree, when known
    # False: only counted (a first backup streams its plan: first.py), nothing kept.
    keep: bool = True

    @property
    def empty(self) -> bool:
        return not (self.removed or self.added or self.changed)

    def pair(self, o: Entry | None, n: Entry) -> None:
        """Record new entry n against the old entry at its path (None: none there)."""
        if not self.keep:
            return
        if o is None:
            self.added[n.path] = n
        elif o.kind != n.kind:
            self.removed[o.path] = o
            self.added[n.path] = n
        elif not (o.same_content(n) and o.same_attrs(n)):
            self.changed.append((o, n))
        elif n.kind == FILE:
            self.unchanged_files += 1


def diff_streams(old: Iterable[Entry], new: Iterable[Entry]) -> Diff:
    d = Diff()
    for o, n in merge(old, new):
        if o is not None and o.kind == FILE:
            d.old_files += 1
        if n is None:
            assert o is not None
            d.removed[o.path] = o
            continue
        if n.kind == FILE:
            d.new_files += 1
        d.pair(o, n)
    return d
