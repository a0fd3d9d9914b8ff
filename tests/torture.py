"""Crash-torture harness: run the btsoot CLI with kill points.

Run as a program (`python tests/torture.py ARGS...`, ARGS as for `btsoot`). It
counts "events" (every remote- or state-touching system call btsoot makes, each
file hashed, each snapshot flush) and labels each with the phase it happened in
(scan, plan, mkdir, copy, move, stash, delete, attr, symlink, commit,
snapshot-write, recover, ...). Controlled by the environment:

    TORTURE_KILL_AT=N   SIGKILL this very process just before event N (1-based)
    TORTURE_TRACE=FILE  on a normal exit, write {"events": [label, ...],
                        "kinds": [call, ...]} there
    TORTURE_SLOW=S      sleep S seconds at every event (spreads a run over time,
                        for kills from outside after a random delay)
    TORTURE_READY_FD=FD write one byte to FD when the backup itself starts

The kill is a real SIGKILL of the whole process: no finally blocks, no atexit,
threads die mid-call, exactly as with `kill -9` or the OOM killer.

Also a library of helpers the reliability tests share: reading journals and
committed snapshots independently of btsoot's recovery code.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import threading
import time
from typing import Any

import orjson

# --- starting the harness ------------------------------------------------------


def start(env: dict[str, str], args: tuple[str, ...], kill_at: int = 0, slow: float = 0.0,
          trace: str | None = None) -> tuple[Any, int]:
    """Start `btsoot ARGS` under this harness with env (an Env.vars()); returns the
    process and the read end of its ready pipe (one byte when the backup starts),
    which the caller closes."""
    import subprocess

    e = dict(env)
    e["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__)) + os.pathsep + e.get("PYTHONPATH", "")
    e["TORTURE_KILL_AT"] = str(kill_at)
    e["TORTURE_SLOW"] = str(slow)
    if trace is not None:
        e["TORTURE_TRACE"] = trace
    r, w = os.pipe()
    e["TORTURE_READY_FD"] = str(w)
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], env=e, pass_fds=(w,),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(w)
    return p, r


# --- the in-process hooks ----------------------------------------------------

_lock = threading.Lock()
_count = 0
_labels: list[str] = []
_kinds: list[str] = []
_phase = "start"
_tls = threading.local()
_kill_at = 0
_slow = 0.0


def _event(kind: str) -> None:
    global _count
    label = getattr(_tls, "op", None) or _phase
    with _lock:
        _count += 1
        n = _count
        _labels.append(label)
        _kinds.append(kind)
    if n == _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # never reached
    if _slow:
        time.sleep(_slow)


def _wrap_call(fn: Any, kind: str) -> Any:
    def wrapper(*a: Any, **kw: Any) -> Any:
        _event(kind)
        return fn(*a, **kw)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


class _Watcher:
    """btsoot.events' watcher: the labels events carry (the phase, or on a
    transfer thread the operation it carries out)."""

    def phase(self, name: str, entering: bool) -> None:
        global _phase
        stack = _phases
        if entering:
            stack.append(_phase)
            _phase = name
        else:
            _phase = stack.pop()

    def operation(self, label: str, entering: bool) -> None:
        stack = getattr(_tls, "ops", None)
        if stack is None:
            stack = _tls.ops = []
        if entering:
            stack.append(getattr(_tls, "op", None))
            _tls.op = _OP_LABELS.get(label, label)
        else:
            _tls.op = stack.pop()

    def point(self, kind: str) -> None:
        _event(kind)


_phases: list[str] = []
# Operations by the phase the crash tests aim at.
_OP_LABELS = {"move-dir": "move", "rmdir": "delete", "set-attributes": "attr", "remote-copy": "copy",
              "retire": "delete"}


def install() -> None:
    global _kill_at, _slow
    _kill_at = int(os.environ.get("TORTURE_KILL_AT", "0") or 0)
    _slow = float(os.environ.get("TORTURE_SLOW", "0") or 0)

    from btsoot import backup, events, scanner, transfer

    # System calls that change or sync the remote or the local state.
    for name in ("rename", "replace", "unlink", "rmdir", "mkdir", "write", "pwrite", "ftruncate",
                 "fsync", "open", "utime", "chmod", "fchmod", "symlink"):
        setattr(os, name, _wrap_call(getattr(os, name), name))
    transfer.copy_fd = _wrap_call(transfer.copy_fd, "copy_fd")
    transfer.syncfs = _wrap_call(transfer.syncfs, "syncfs")
    backup.syncfs = transfer.syncfs
    scanner.hash_file = _wrap_call(scanner.hash_file, "hash")
    scanner.copy_small = _wrap_call(scanner.copy_small, "copy_small")
    # Phases, operations and snapshot flushes come through btsoot's own seam.
    events.watch(_Watcher())

    ready_fd = int(os.environ.get("TORTURE_READY_FD", "-1") or -1)
    real_backup = backup.backup

    def started(*a: Any, **kw: Any) -> Any:
        if ready_fd >= 0:
            os.write(ready_fd, b"R")
        return real_backup(*a, **kw)

    backup.backup = started

    trace = os.environ.get("TORTURE_TRACE")
    if trace:
        import atexit

        def dump() -> None:
            with open(trace, "wb") as f:
                f.write(orjson.dumps({"events": _labels, "kinds": _kinds}))

        atexit.register(dump)


def main() -> None:
    install()
    from btsoot.cli import main as cli_main

    if os.environ.get("TORTURE_FIRST_CHUNK"):
        # Small chunks: a first backup's chunk boundaries (first.py) among the kill points.
        from btsoot import first

        first.CHUNK = int(os.environ["TORTURE_FIRST_CHUNK"])

    cli_main(sys.argv[1:])


# --- helpers for the tests -----------------------------------------------------

def get_path(d: dict[str, Any], key: str) -> bytes | None:
    v = d.get(key)
    if v is not None:
        return str(v).encode("utf-8")
    v = d.get(key + "_b64")
    return base64.b64decode(v) if v is not None else None


def read_journal_records(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, begin records in order), tolerating a torn last line."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    header = orjson.loads(lines[0])
    recs = []
    for line in lines[1:]:
        if not line:
            continue
        try:
            r = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # torn tail
        if r.get("s") == "b":
            recs.append(r)
    return header, recs


def under(p: bytes, top: bytes) -> bool:
    return p == top or p.startswith(top + b"/")


def explain(path: bytes, records: list[dict[str, Any]]) -> tuple[set[bytes], bool]:
    """Where the content of `path` may be after these journal records (begun ones
    included: each may or may not have happened), and whether the records say it
    was meant to leave: deleted, or replaced by a put or a rename onto one of its
    places."""
    places = {path}
    leaving = False
    for r in records:
        t = r.get("t")
        if t == "move":
            src, dst = get_path(r, "src"), get_path(r, "dst")
            assert src is not None and dst is not None
            if dst in places:
                leaving = True
            places |= {dst + c[len(src):] for c in places if under(c, src)}
        elif t == "attic":
            # Moved into the attic (history kept; a folder whole): the content stays there.
            src, dst = get_path(r, "src"), get_path(r, "dst")
            assert src is not None and dst is not None
            places |= {dst + c[len(src):] for c in places if under(c, src)}
        elif t == "del":
            if get_path(r, "path") in places:
                leaving = True
        elif t in ("put", "patch"):
            if get_path(r.get("entry") or {}, "path") in places:
                leaving = True
    return places, leaving


if __name__ == "__main__":
    main()
