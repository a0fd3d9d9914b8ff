"""Named points of a run, for a program that watches one (the crash tests).

A backup announces its phases (scan, plan, recover, commit, snapshot-write,
snapshot-prune, cleanup, init), each remote operation it carries out (on the
thread that carries it out) and each flush of a snapshot writer. Nobody
watches by default, and then each announcement costs one test of a global.

A watcher is any object with these methods (all optional):

    phase(name, entering)      a phase starts (True) or ends (False)
    operation(label, entering) an operation starts or ends, on this thread;
                               label: the op's name in the plan's counts
    point(kind)                a single event ("flush")

tests/torture.py counts the system calls that fall in each phase and
operation and kills the run at one of them; these names are what it reports,
so they stay stable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

watcher: Any = None

_F = TypeVar("_F", bound=Callable[..., Any])


def watch(w: Any) -> None:
    """Install w as the watcher (None: nobody watches)."""
    global watcher
    watcher = w


@contextmanager
def phase(name: str) -> Iterator[None]:
    w = watcher
    if w is None or not hasattr(w, "phase"):
        yield
        return
    w.phase(name, True)
    try:
        yield
    finally:
        w.phase(name, False)


def in_phase(name: str) -> Callable[[_F], _F]:
    """Decorator: the function's whole call is phase name."""
    def wrap(fn: _F) -> _F:
        def inner(*a: Any, **kw: Any) -> Any:
            if watcher is None:
                return fn(*a, **kw)
            with phase(name):
                return fn(*a, **kw)
        inner.__name__, inner.__doc__, inner.__wrapped__ = fn.__name__, fn.__doc__, fn  # type: ignore[attr-defined]
        return inner  # type: ignore[return-value]
    return wrap


@contextmanager
def operation(label: str) -> Iterator[None]:
    w = watcher
    if w is None or not hasattr(w, "operation"):
        yield
        return
    w.operation(label, True)
    try:
        yield
    finally:
        w.operation(label, False)


def point(kind: str) -> None:
    w = watcher
    if w is not None and hasattr(w, "point"):
        w.point(kind)


def operates(fn: _F) -> _F:
    """Decorator for a method(self, op, ...): the call is operation op.label()."""
    def inner(self: Any, op: Any, *a: Any, **kw: Any) -> Any:
        if watcher is None:
            return fn(self, op, *a, **kw)
        with operation(op.label()):
            return fn(self, op, *a, **kw)
    inner.__name__, inner.__doc__, inner.__wrapped__ = fn.__name__, fn.__doc__, fn  # type: ignore[attr-defined]
    return inner  # type: ignore[return-value]
