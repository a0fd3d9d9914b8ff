"""Paths relative to a tree's top, as every stage of the pipeline uses them (bytes,
"/"-separated, no leading "/"): their order in a snapshot and how they nest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar


def sort_key(path: bytes) -> bytes:
    """The snapshot order: a folder's contents right after the folder, before its
    siblings that sort after it ("a", "a/x", "a.b", not "a", "a.b", "a/x")."""
    # NUL cannot occur in a name, so mapping "/" to it makes "/" sort first.
    return path.replace(b"/", b"\x00")


def parent(path: bytes) -> bytes:
    i = path.rfind(b"/")
    return path[:i] if i >= 0 else b""


def is_under(path: bytes, top: bytes) -> bool:
    """path is top or inside it."""
    return path == top or path.startswith(top + b"/")


class HasPath(Protocol):
    @property
    def path(self) -> bytes: ...


A = TypeVar("A", bound=HasPath)
B = TypeVar("B", bound=HasPath)


def merge(old: Iterable[A], new: Iterable[B]) -> Iterator[tuple[A | None, B | None]]:
    """Merge-join two streams in snapshot order by path."""
    oi, ni = iter(old), iter(new)
    o, n = next(oi, None), next(ni, None)
    while o is not None or n is not None:
        if n is None or (o is not None and sort_key(o.path) < sort_key(n.path)):
            yield o, None
            o = next(oi, None)
        elif o is None or sort_key(n.path) < sort_key(o.path):
            yield None, n
            n = next(ni, None)
        else:
            yield o, n
            o, n = next(oi, None), next(ni, None)
