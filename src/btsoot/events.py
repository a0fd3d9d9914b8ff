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
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

watcher: Any = None

_F = TypeVar("_F", bound=Callable[..., Any])


def watch(w: Any) -> None:
    """Install w as the watcher (None: nobody watches)."""
    global watcher
    watcher = w


@contextmanager
def _span(method: str, name: str) -> Iterator[None]:
    """The watcher's method(name, True) before, (name, False) after, if it has one."""
    call = getattr(watcher, method, None)
    if call is None:
        yield
        return
    call(name, True)
    try:
        yield
    finally:
        call(name, False)


def phase(name: str) -> AbstractContextManager[None]:
    return _span("phase", name)


def operation(label: str) -> AbstractContextManager[None]:
    """An operation on this thread (label: its name in the plan's counts)."""
    return _span("operation", label)


def point(kind: str) -> None:
    call = getattr(watcher, "point", None)
    if call is not None:
        call(kind)


def _traced(fn: _F, span: Callable[..., AbstractContextManager[None]]) -> _F:
    """fn, inside span(*its arguments) while someone watches."""
    def inner(*a: Any, **kw: Any) -> Any:
        if watcher is None:
            return fn(*a, **kw)
        with span(*a):
            return fn(*a, **kw)
    inner.__name__, inner.__doc__, inner.__wrapped__ = fn.__name__, fn.__doc__, fn  # type: ignore[attr-defined]
    return inner  # type: ignore[return-value]


def in_phase(name: str) -> Callable[[_F], _F]:
    """Decorator: the function's whole call is phase name."""
    return lambda fn: _traced(fn, lambda *a: phase(name))


def operates(fn: _F) -> _F:
    """Decorator for a method(self, op, ...): the call is operation op.label()."""
    return _traced(fn, lambda self, op, *a: operation(op.label()))
