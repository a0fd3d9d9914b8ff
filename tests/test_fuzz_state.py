"""Fuzzed damage to every kind of state and config btsoot reads: refused cleanly, never a hang.

One real block is made once per module by the real CLI (add, a first backup, a
change, a second backup: a base snapshot and a delta on the remote; a verify
that remembered a damaged path; then a pending change in the source). A second
copy of it holds a crashed run (a real journal, made by killing a backup with
tests/torture.py). Every example copies that block into fresh folders, one per
command, damages one thing the same way in each copy, and runs the CLI as real
processes, in parallel: backup, diff, verify, restore NAME --to EMPTY, restore
--from REMOTE --to EMPTY and (where it reads what was damaged) list.

For each run:

- it ends within TIMEOUT (a hang is a failure) and well below it (FAST);
- never exit 1 (internal error), a signal, or a traceback on stderr;
- the exit code is one the damage allows: 2, 4 or 8 (refused) always; 0 (and the
  run's usual code on the undamaged block) only where the damage may be harmless
  (a flipped byte may leave a valid file; a command that does not read what was
  damaged); 3 and 7 where a snapshot that still parses may disagree with the
  remote's content (verify, restore);
- the source is unchanged (every entry digested before and after);
- the remote's user files (everything outside REMOTE/.btsoot) are unchanged by
  every command but backup; a backup that refused (2, 4, 8) changed none of
  them either, and any backup lost no file the source still has;
- a restore that refused wrote nothing into its destination.

Failures of a class this suite found before (KNOWN: each a narrow check naming a
bug that was then fixed, so a regression is named at once) do not stop the search
for others: they are collected and fail the test at its end, listed.
BTSOOT_STRESS=1 runs many more examples; BTSOOT_FUZZ_SURVEY=1 collects every
failure instead of stopping at the first unknown one (to list them all at once).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import tomli_w
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import torture
from conftest import Env, tree_state

# State parsing is the same in both cores: the pure-Python twin's run skips it.
pytestmark = pytest.mark.slow

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STRESS = os.environ.get("BTSOOT_STRESS") == "1"
SURVEY = os.environ.get("BTSOOT_FUZZ_SURVEY") == "1"
VERBOSE = os.environ.get("BTSOOT_FUZZ_VERBOSE") == "1"  # print every example's damage and exit codes
TIMEOUT = 20.0  # a run still going after this is a hang
FAST = 10.0  # no run may take longer than this (they take well under a second)

REFUSED = frozenset({2, 4, 8})
CMDS = ("backup", "diff", "verify", "restore", "restore-from", "list")
RCMDS = CMDS[:-1]  # list reads only the config and the run log
REMOTE_READERS = ("restore-from",)  # commands that read REMOTE/.btsoot/snapshots with local state
LOST_READERS = ("backup", "diff", "restore-from")  # ... and without it
# Codes for "the snapshot disagrees with the remote's content" (a snapshot that still
# parses after the damage): verify reports damage, restore partial or damaged.
CONTENT = {"verify": frozenset({3, 7}), "restore": frozenset({3, 7}), "restore-from": frozenset({3, 7})}


def _examples(n: int) -> int:
    return n * 10 if STRESS else n


def _settings(n: int) -> settings:
    # No shrinking but in stress runs: an example costs about a second of real processes,
    # and the drawn damage is printed as it is (and replayed first by the next run).
    phases = tuple(Phase) if STRESS else (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(max_examples=_examples(n), deadline=None, print_blob=True, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# --- the prepared block ------------------------------------------------------------------

@dataclass
class Prepared:
    base: Path
    src: Path
    src_tree: dict[bytes, tuple[Any, ...]]
    variants: dict[str, Path]  # "plain", "crashed": saved {config.toml, state, remote} made in k(0)
    head: str  # the committed snapshot's id
    old: str  # the first snapshot's id
    baselines: dict[tuple[str, bool], dict[str, int]] = field(default_factory=dict)

    def k(self, i: int) -> Path:
        """Work folder i: all names the same length (damage offsets fit every copy), and
        no one byte apart (a flipped byte of a path does not name another copy)."""
        return self.base / f"w{i}{i}"


def _write(p: Path | bytes, data: bytes) -> None:
    with open(p, "wb") as f:
        f.write(data)


def _sid(name: str) -> str:
    """The snapshot id of a snapshot's file name (ID.jsonl, ID.full.jsonl.gz, ID.delta.jsonl.gz)."""
    return ".".join(name.split(".")[:2])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    base = tmp_path_factory.mktemp("fuzz")
    src, k0 = base / "src", base / "w00"
    env = Env(k0, k0 / "config.toml", k0 / "state")
    for d in ("sub/deep", "empty"):
        (src / d).mkdir(parents=True)
    (k0 / "remote").mkdir(parents=True)
    files = {"a": b"alpha\n", "notes.txt": b"n" * 300, "sub/b": b"bee",
             "sub/deep/x.bin": bytes(range(256)) * 8}
    for n, data in files.items():
        _write(src / n, data)
    _write(os.fsencode(src) + b"/caf\xe9", b"a name that is not UTF-8")  # path_b64 in snapshots
    os.symlink("a", src / "link")
    env.run("add", "b", src, k0 / "remote", check=0)
    env.run("backup", "b", check=0)
    with open(src / "a", "ab") as f:
        f.write(b"more\n")
    _write(src / "c", b"sea")
    os.rename(src / "sub", src / "sub2")
    env.run("backup", "b", check=0)  # a delta on the remote
    os.rename(k0 / "remote" / "notes.txt", base / "aside")
    env.run("verify", "b", check=7)  # remembers notes.txt in damaged.jsonl
    os.rename(base / "aside", k0 / "remote" / "notes.txt")
    # A pending change: the next backup has a file to add, one to update, one to delete.
    _write(src / "new.txt", b"new")
    with open(src / "notes.txt", "ab") as f:
        f.write(b"x")
    os.unlink(src / "c")
    st_dir = k0 / "state" / "blocks" / "b"
    head = orjson.loads((st_dir / "state.json").read_bytes())["head"]
    old = min(_sid(n) for n in os.listdir(st_dir / "snapshots"))
    assert head != old
    plain = base / "plain"
    shutil.copytree(k0, plain, symlinks=True)

    # A crashed run: measure a backup's events, then kill one before its last remote operation.
    trace = base / "trace.json"
    p, r = torture.start(env.vars(), ("backup", "b"), 0, 0.0, str(trace))
    p.communicate(timeout=120)
    os.close(r)
    assert p.returncode == 0
    t = orjson.loads(trace.read_bytes())
    idx = max(i for i, (lab, kind) in enumerate(zip(t["events"], t["kinds"], strict=True))
              if lab in ("copy", "move", "delete") and kind != "write")
    shutil.rmtree(k0)
    shutil.copytree(plain, k0, symlinks=True)
    p, r = torture.start(env.vars(), ("backup", "b"), idx + 1, 0.0, None)
    p.communicate(timeout=120)
    os.close(r)
    assert p.returncode == -signal.SIGKILL and (st_dir / "journal.jsonl").exists()
    crashed = base / "crashed"
    shutil.copytree(k0, crashed, symlinks=True)
    shutil.rmtree(k0)
    return Prepared(base, src, tree_state(src, ignore_top=()), {"plain": plain, "crashed": crashed},
                    head, old)


# --- damage --------------------------------------------------------------------------

@dataclass
class Damage:
    desc: str
    apply: Callable[[Path], None]  # damage the copy in work folder k (k/state, k/remote, k/config.toml)
    certain: frozenset[str]  # commands that read what was damaged and must refuse it
    extra: dict[str, frozenset[int]] = field(default_factory=dict)  # codes allowed when harmless-looking
    lost: bool = False  # the block's local state is gone (a backup reads the remote's snapshots)


def _edit(rels: str | tuple[str, ...], f: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(k: Path) -> None:
        for rel in (rels,) if isinstance(rels, str) else rels:
            p = k / rel
            _write(p, f(p.read_bytes()))
    return apply


def _readers(*cmds: str) -> frozenset[str]:
    return frozenset(cmds)


WRONG: list[Any] = [None, True, False, "x", "", 5, -1, 1.5, 1e30, [], [5], {}, {"a": 1}]
NUMBERS: list[Any] = [1e30, -1e30, -1, 0, 2**64, 2**63, -(2**63), 1.5]
# Paths a restore must refuse before writing anything (README: "Restore never writes outside
# the destination").
HOSTILE = ["../x", "/etc/passwd", "a/../../x", ".", "..", "", "sub2//b", "a\x00b", "sub2/./b", "a/"]
JUNK = [b"\x00", b"\xff", b"{", b"}", b"[", b'"', b"\n", b",", b"null", b"-1", b'"x"', b"\\", b"\xc3"]


def _dumps(v: Any) -> bytes:
    """JSON that orjson cannot write (integers beyond 64 bits)."""
    return json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode()


def draw_bytes(data: st.DataObject, blob: bytes) -> tuple[str, Callable[[bytes], bytes], dict[str, Any]]:
    """A byte-level damage of blob: (op, transform, details)."""
    n = len(blob)
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "cut", "garbage"]), label="byte op")
    if op == "flip":
        flips = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1,
                                   max_size=3), label="flips (offset, xor)")

        def flip(b: bytes) -> bytes:
            ba = bytearray(b)
            for i, x in flips:
                ba[i] ^= x
            return bytes(ba)
        return op, flip, {"offsets": [i for i, _ in flips]}
    if op == "truncate":
        at = data.draw(st.integers(0, n - 1), label="truncate at")
        return op, lambda b: b[:at], {"at": at}
    if op == "insert":
        at = data.draw(st.integers(0, n), label="insert at")
        junk = data.draw(st.sampled_from(JUNK), label="junk")
        return op, lambda b: b[:at] + junk + b[at:], {"at": at}
    if op == "cut":
        at = data.draw(st.integers(0, n - 1), label="cut at")
        ln = data.draw(st.integers(1, 16), label="cut length")
        return op, lambda b: b[:at] + b[at + ln:], {"at": at}
    garbage = data.draw(st.binary(max_size=64), label="garbage")
    return op, lambda b: garbage, {"garbage": garbage}


def _key_paths(obj: Any) -> list[tuple[str, ...]]:
    if not isinstance(obj, dict):
        return []
    out: list[tuple[str, ...]] = []
    for k, v in obj.items():
        out.append((k,))
        if isinstance(v, dict):
            out += [(k, k2) for k2 in v]
    return out


def _get(obj: dict[str, Any], kp: tuple[str, ...]) -> Any:
    for k in kp:
        obj = obj[k]
    return obj


def _set(obj: dict[str, Any], kp: tuple[str, ...], value: Any, drop: bool = False) -> None:
    for k in kp[:-1]:
        obj = obj[k]
    if drop:
        del obj[kp[-1]]
    else:
        obj[kp[-1]] = value


def _is_int(v: Any) -> bool:
    return type(v) is int


def _b64ok(v: Any) -> bool:
    try:
        base64.b64decode(v, validate=True)
        return True
    except (ValueError, TypeError):
        return False


def entry_certain(key: str, old: Any, new: Any, dropped: bool) -> bool:
    """Must a reader refuse an entry whose field `key` went from old to new (or was dropped)?
    (The snapshot format: docs/design.md and btsoot.snapshot; a reader may refuse more.)"""
    if dropped:
        return key in ("path", "path_b64", "type", "mtime", "mode")
    if key == "path":
        return not isinstance(new, str)
    if key in ("path_b64", "target_b64"):
        return not isinstance(new, str) or not _b64ok(new)
    if key == "type":
        return new != old  # another kind's mode bits, or no kind at all
    if key == "size":
        return not (_is_int(new) and 0 <= new < 2**63)
    if key == "mtime":
        return not (_is_int(new) and -(2**63) < new < 2**63)
    if key == "mode":
        return not (_is_int(new) and not new & ~0o177777 and stat.S_IFMT(new) in (0, stat.S_IFMT(old)))
    if key in ("digest", "target"):
        return new is not None and not isinstance(new, str)
    return False  # ino, dev, chunks, esc, unknown keys: a reader may accept what it can use


def header_certain(key: str, old: Any, new: Any, dropped: bool) -> bool:
    if key in ("format", "hash"):
        return dropped or new != old
    if key == "version":  # newer than this btsoot, or not a version number at all
        return dropped or not (type(new) in (int, bool) and new <= 1)
    if dropped:
        return key in ("id", "block", "source", "created_ns", "scan_started_ns")
    return False


def snapshot_line_certain(role: str, kp: tuple[str, ...], old: Any, new: Any, dropped: bool) -> bool:
    """role: header, entry, trailer, record (a remote delta's put/del)."""
    if role == "header":
        return len(kp) == 1 and header_certain(kp[0], old, new, dropped)
    if role == "trailer":
        return kp == ("count",) and (dropped or new != old)
    if role == "record":
        if kp in (("op",), ("entry",)):
            return True
        if kp == ("path",):
            return dropped or not isinstance(new, str)
        if len(kp) == 2 and kp[0] == "entry":
            return entry_certain(kp[1], old, new, dropped)
        return False
    return len(kp) == 1 and entry_certain(kp[0], old, new, dropped)


def journal_line_certain(role: str, kp: tuple[str, ...], old: Any, new: Any, dropped: bool) -> bool:
    if role == "header":
        if kp in (("format",), ("version",)):
            return header_certain(kp[0], old, new, dropped)
        if kp == ("base",):  # a base view that is not there
            return not dropped and new is not None
        return False
    if kp == ("t",):
        return not dropped  # an operation this btsoot does not know
    if kp == ("entry",):
        return True
    if kp == ("path",):
        return dropped or not isinstance(new, str)
    if len(kp) == 2 and kp[0] == "entry":
        return entry_certain(kp[1], old, new, dropped)
    return False


Rule = Callable[[str, tuple[str, ...], Any, Any, bool], bool]


def _role(i: int, obj: Any, kind: str) -> str:
    if i == 0:
        return "header"
    if isinstance(obj, dict) and "end" in obj:
        return "trailer"
    return "record" if kind in ("rdelta", "journal") else "entry"


SNAPSHOTS = ("snap", "snap-old", "base", "rfull", "rdelta")
RESTORERS = frozenset({"restore", "restore-from"})
Certain = bool | frozenset[str]  # must every reader refuse it, or exactly these commands


def _must(certain: Certain, readers: frozenset[str]) -> frozenset[str]:
    """The commands that must refuse: every reader, none, or the named ones that read it."""
    if isinstance(certain, frozenset):
        return certain & readers
    return readers if certain else frozenset()


def draw_jsonl(data: st.DataObject, blob: bytes, kind: str,
               rule: Rule | None) -> tuple[str, Callable[[bytes], bytes], Certain]:
    """A damage to one line of a JSON-lines file: (description, transform, must a reader refuse?)."""
    lines = blob.split(b"\n")
    objs = {i: orjson.loads(ln) for i, ln in enumerate(lines) if ln.strip()}
    op = data.draw(st.sampled_from(["wrong-type", "number", "drop-key", "unknown-key", "dup-line",
                                    "drop-line", "hostile-path"]), label="json op")
    cands = [(i, kp) for i, o in objs.items() for kp in _key_paths(o)]
    # (A delta's del record naming such a path deletes nothing: not among them.)
    paths = [(i, kp) for i, kp in cands if kp[-1] == "path" and isinstance(_get(objs[i], kp), str)
             and not (kind == "rdelta" and kp == ("path",))]
    if op == "hostile-path" and paths and kind in SNAPSHOTS:
        i, kp = data.draw(st.sampled_from(paths), label="line, key")
        bad = data.draw(st.sampled_from(HOSTILE), label="path")

        def hostile(b: bytes, i: int = i, kp: tuple[str, ...] = kp) -> bytes:
            ls = b.split(b"\n")
            o = orjson.loads(ls[i])
            _set(o, kp, bad)
            ls[i] = _dumps(o)
            return b"\n".join(ls)
        # A restore refuses the snapshot (exit 8); what else reads it may refuse it too.
        return f"line {i} {'.'.join(kp)} = {bad!r} (was {_get(objs[i], kp)!r})", hostile, RESTORERS
    if op == "number":
        cands = [(i, kp) for i, kp in cands if type(_get(objs[i], kp)) in (int, float)]
    if op in ("wrong-type", "number", "drop-key") and cands:
        i, kp = data.draw(st.sampled_from(cands), label="line, key")
        old = _get(objs[i], kp)
        if op == "drop-key":
            new: Any = None
        else:
            pool = NUMBERS if op == "number" else WRONG
            new = data.draw(st.sampled_from([v for v in pool if not (type(v) is type(old) and v == old)]),
                            label="value")
        dropped = op == "drop-key"

        def f(b: bytes, i: int = i, kp: tuple[str, ...] = kp, new: Any = new) -> bytes:
            ls = b.split(b"\n")
            o = orjson.loads(ls[i])
            _set(o, kp, new, drop=dropped)
            ls[i] = _dumps(o)
            return b"\n".join(ls)
        certain = rule is not None and rule(_role(i, objs[i], kind), kp, old, new, dropped)
        what = "drop" if dropped else f"= {new!r}"
        return f"line {i} {'.'.join(kp)} {what} (was {old!r})", f, certain
    i = data.draw(st.sampled_from(sorted(objs)), label="line")
    role = _role(i, objs[i], kind)
    if op == "unknown-key" and isinstance(objs[i], dict):
        def add(b: bytes, i: int = i) -> bytes:
            ls = b.split(b"\n")
            o = orjson.loads(ls[i])
            o["zz_unknown"] = [1, {"x": None}]
            ls[i] = _dumps(o)
            return b"\n".join(ls)
        return f"line {i}: an unknown key", add, False
    drop = op == "drop-line"

    def f2(b: bytes, i: int = i) -> bytes:
        ls = b.split(b"\n")
        if drop:
            del ls[i]
        else:
            ls.insert(i, ls[i])
        return b"\n".join(ls)
    # Every line of a snapshot counts (header, entries or records, trailer); a journal's
    # header must be the first line; its records may repeat or be lost (recovery probes).
    certain = kind in SNAPSHOTS or (kind == "journal" and role == "header" and drop)
    if kind == "rdelta" and role == "header":
        certain = False  # the chain falls back to an older snapshot
    return f"{'drop' if drop else 'duplicate'} line {i} ({role})", f2, certain


def draw_json_object(data: st.DataObject, blob: bytes, rule: Callable[[tuple[str, ...], Any, Any, bool], bool]
                     ) -> tuple[str, Callable[[bytes], bytes], bool]:
    """A damage to a file holding one JSON object (state.json, block.json, profile.json)."""
    obj = orjson.loads(blob)
    op = data.draw(st.sampled_from(["wrong-type", "number", "drop-key", "unknown-key", "not-an-object"]),
                   label="json op")
    if op == "not-an-object":
        v = data.draw(st.sampled_from([[], [obj], 5, "x", None, True]), label="document")
        # A profile is a cache of the remote's probe: one that is no object may be probed again.
        return f"the document replaced by {v!r}", lambda b: _dumps(v), rule is not never
    if op == "unknown-key":
        def add(b: bytes) -> bytes:
            o = orjson.loads(b)
            o["zz_unknown"] = 1
            return _dumps(o)
        return "an unknown key", add, False
    cands = _key_paths(obj)
    if op == "number":
        cands = [kp for kp in cands if type(_get(obj, kp)) in (int, float)] or cands
    kp = data.draw(st.sampled_from(cands), label="key")
    old = _get(obj, kp)
    dropped = op == "drop-key"
    new: Any = None
    if not dropped:
        pool = NUMBERS if op == "number" else WRONG
        new = data.draw(st.sampled_from([v for v in pool if not (type(v) is type(old) and v == old)]),
                        label="value")

    def f(b: bytes) -> bytes:
        o = orjson.loads(b)
        _set(o, kp, new, drop=dropped)
        return _dumps(o)
    what = "drop" if dropped else f"= {new!r}"
    return f"{'.'.join(kp)} {what} (was {old!r})", f, rule(kp, old, new, dropped)


def block_json_rule(kp: tuple[str, ...], old: Any, new: Any, dropped: bool) -> bool:
    if kp == ("block",):
        return True  # not this block's remote (a guard), or unreadable
    if kp in (("format",), ("version",)):
        return header_certain(kp[0], old, new, dropped)  # not a btsoot remote, or too new
    return False


def never(*_: Any) -> bool:
    return False


def special_file(data: st.DataObject, rel: str, k_outside: str) -> tuple[str, Callable[[Path], None]]:
    """Put something other than a regular file where a remote file belongs."""
    what = data.draw(st.sampled_from(["fifo", "folder", "dangling link", "link to a copy outside",
                                      "removed"]), label="special")

    def apply(k: Path) -> None:
        p = k / rel
        saved = p.read_bytes()
        p.unlink()
        if what == "fifo":
            os.mkfifo(p)
        elif what == "folder":
            p.mkdir()
            _write(p / "x", saved)
        elif what == "dangling link":
            os.symlink(str(k / "nonexistent"), p)
        elif what == "link to a copy outside":
            out = k / k_outside
            out.mkdir(exist_ok=True)
            _write(out / p.name, saved)
            os.symlink(str(out / p.name), p)
    return what, apply


# --- running and checking ----------------------------------------------------------------

@dataclass
class Outcome:
    cmd: str
    rc: int | None  # None: killed after TIMEOUT
    seconds: float
    stderr: str


@dataclass(frozen=True)
class Failure:
    test: str
    cmd: str
    problem: str
    damage: str
    rc: int | None
    line: str

    def __str__(self) -> str:
        return (f"[{self.test}] {self.cmd}: {self.problem} (exit {self.rc}) | damage: {self.damage} "
                f"| {self.line}")


def _argv(cmd: str, k: Path) -> list[str]:
    return {"backup": ["backup", "b"], "diff": ["diff", "b"], "verify": ["verify", "b"],
            "restore": ["restore", "b", "--to", str(k / "out")],
            "restore-from": ["restore", "--from", str(k / "remote"), "--to", str(k / "out")],
            "list": ["list"]}[cmd]


def _line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln or "Traceback" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else ""


def _copy(prep: Prepared, variant: str, k: Path, lost: bool) -> None:
    saved = prep.variants[variant]
    if k.exists():
        shutil.rmtree(k)
    shutil.copytree(saved / "state", k / "state", symlinks=True)
    shutil.copytree(saved / "remote", k / "remote", symlinks=True)
    old, new = os.fsencode(prep.k(0)), os.fsencode(k)
    _write(k / "config.toml", (saved / "config.toml").read_bytes().replace(old, new))
    journal = k / "state" / "blocks" / "b" / "journal.jsonl"
    if journal.exists():  # it names its base view by absolute path
        _write(journal, journal.read_bytes().replace(old, new))
    if lost:
        shutil.rmtree(k / "state")
    (k / "out").mkdir()
    (k / "cwd").mkdir()


def _run_parallel(jobs: list[tuple[str, Path]]) -> dict[str, Outcome]:
    procs = []
    for cmd, k in jobs:
        env = Env(k, k / "config.toml", k / "state").vars()
        err = open(k / "stderr", "w+b")  # closed below, once read
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "btsoot", *_argv(cmd, k)], env=env, cwd=k / "cwd",
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        procs.append((cmd, p, t0, err))
    ends: dict[str, float] = {}
    while len(ends) < len(procs):
        now = time.monotonic()
        for cmd, p, t0, _ in procs:
            if cmd in ends:
                continue
            if p.poll() is not None:
                ends[cmd] = now
            elif now - t0 > TIMEOUT:
                p.kill()
                p.wait()
                ends[cmd] = now
        time.sleep(0.01)
    out = {}
    for cmd, p, t0, err in procs:
        err.seek(0)
        text = err.read().decode(errors="replace")
        err.close()
        hung = ends[cmd] - t0 > TIMEOUT
        out[cmd] = Outcome(cmd, None if hung else p.returncode, ends[cmd] - t0, text)
    return out


def _lost_files(before: dict[bytes, tuple[Any, ...]], after: dict[bytes, tuple[Any, ...]],
                src: dict[bytes, tuple[Any, ...]]) -> list[bytes]:
    """Remote entries the source still has (same kind) that are gone or hold neither
    their old content nor the source's."""
    bad = []
    for p, v in before.items():
        s = src.get(p)
        if s is None or s[0] != v[0]:
            continue
        a = after.get(p)
        if a is None or a[0] != v[0]:
            bad.append(p)
        elif v[0] == "file" and a[1] not in (v[1], s[1]):
            bad.append(p)
        elif v[0] == "link" and a not in (v, s):
            bad.append(p)
    return bad


def run_case(prep: Prepared, test: str, variant: str, damage: Damage, cmds: tuple[str, ...],
             baseline: dict[str, int] | None = None) -> tuple[dict[str, Outcome], list[Failure]]:
    """Copy the variant once per command, damage each copy, run, check."""
    jobs = []
    before: dict[str, dict[bytes, tuple[Any, ...]]] = {}
    for i, cmd in enumerate(cmds, 1):
        k = prep.k(i)
        _copy(prep, variant, k, damage.lost)
        damage.apply(k)
        before[cmd] = tree_state(k / "remote")
        jobs.append((cmd, k))
    outcomes = _run_parallel(jobs)
    fails: list[Failure] = []

    def fail(cmd: str, problem: str) -> None:
        o = outcomes[cmd]
        desc = damage.desc + (" [local state lost]" if damage.lost else "")
        fails.append(Failure(test, cmd, problem, desc, o.rc, _line(o.stderr)))

    for cmd, k in jobs:
        o = outcomes[cmd]
        if o.rc is None:
            fail(cmd, f"hang: still running after {TIMEOUT:.0f} s")
        elif o.seconds > FAST:
            fail(cmd, f"slow: {o.seconds:.1f} s")
        if o.rc is not None and o.rc < 0:
            fail(cmd, f"killed by signal {-o.rc}")
        elif o.rc == 1 or "internal error" in o.stderr:
            fail(cmd, "internal error")
        if "Traceback" in o.stderr:
            fail(cmd, "traceback on stderr")
        if baseline is not None:
            allowed = REFUSED | damage.extra.get(cmd, frozenset())
            if cmd not in damage.certain:
                allowed |= {baseline[cmd]}
            if o.rc is not None and o.rc >= 0 and o.rc != 1 and o.rc not in allowed:
                fail(cmd, f"exit {o.rc}, allowed {sorted(allowed)}")
        after = tree_state(k / "remote")
        if cmd != "backup" or o.rc in REFUSED:
            if after != before[cmd]:
                changed = sorted(p for p in set(before[cmd]) | set(after)
                                 if before[cmd].get(p) != after.get(p))
                fail(cmd, f"changed the remote's user files: {changed[:5]}")
        else:
            lost = _lost_files(before[cmd], after, prep.src_tree)
            if lost:
                fail(cmd, f"lost remote files the source still has: {lost[:5]}")
        if cmd in ("restore", "restore-from") and o.rc in REFUSED and any((k / "out").iterdir()):
            fail(cmd, f"refused (exit {o.rc}) but wrote into the destination")
    if tree_state(prep.src, ignore_top=()) != prep.src_tree:
        fails.append(Failure(test, "+".join(cmds), "changed the source", damage.desc, None, ""))
    return outcomes, fails


def baseline(prep: Prepared, variant: str, lost: bool) -> dict[str, int]:
    """Exit codes of every command on the undamaged copy (made once)."""
    key = (variant, lost)
    if key not in prep.baselines:
        nothing = Damage("none", lambda k: None, frozenset(), lost=lost)
        outcomes, fails = run_case(prep, "baseline", variant, nothing, CMDS)
        assert not fails, "\n".join(map(str, fails))
        prep.baselines[key] = {c: o.rc for c, o in outcomes.items() if o.rc is not None}
    return prep.baselines[key]


# --- known failure classes ----------------------------------------------------------------

@dataclass(frozen=True)
class Known:
    """A failure class already reported: still a failure, listed at the end of its test,
    but it does not stop the search for others."""
    name: str
    match: Callable[[Failure], bool]


KNOWN: list[Known] = [
    Known("a mode out of range (negative, 2**63) in a snapshot, base view or journal entry: an "
          "OverflowError escaped (exit 1)",
          lambda f: f.problem == "internal error" and "mode = " in f.damage and "OverflowError" in f.line),
    Known("an ino or dev beyond 64 bits (1e30, 2**64) in a journal or snapshot entry was taken, and"
          " writing it again failed (exit 1)",
          lambda f: f.problem == "internal error" and "Integer exceeds 64-bit range" in f.line
          and any(w in f.damage for w in (" ino = ", " dev = ", ".ino = ", ".dev = "))),
    Known("list read the run log's last record unchecked: a record without 'started' was an "
          "internal error (exit 1)",
          lambda f: f.cmd == "list" and f.problem == "internal error" and "runs.jsonl" in f.damage),
    Known("snapshot paths were checked only by restore: a backup planning from one with '..', '.', "
          "an absolute path, NUL or 'a/' stopped with exit 6 (or 3, or 1) instead of refusing it "
          "(8)",
          lambda f: f.cmd in ("backup", "diff") and f.rc in (1, 3, 6)
          and any(f"path = {h!r}" in f.damage for h in HOSTILE)),
    Known("a fifo in REMOTE/.btsoot (block.json, a snapshot file) was opened blocking: the run hung",
          lambda f: f.problem.startswith("hang") and ": fifo" in f.damage),
    Known("a folder where REMOTE/.btsoot/profile.json belongs stopped every backup with exit 6",
          lambda f: f.cmd == "backup" and f.rc == 6 and f.damage.startswith("profile.json: folder")),
    Known("REMOTE/.btsoot/block.json's format and version were not checked (another format, a newer"
          " version or none was taken)",
          lambda f: "block.json" in f.damage and f.problem.startswith("exit 0")
          and any(w in f.damage for w in (" format ", " version "))),
]


class Collector:
    def __init__(self, test: str) -> None:
        self.test = test
        self.known: dict[str, list[Failure]] = {}
        self.unknown: list[Failure] = []
        self.examples = 0
        self.slowest: dict[str, float] = {}

    def check(self, damage: Damage, outcomes: dict[str, Outcome], fails: list[Failure]) -> None:
        self.examples += 1
        if VERBOSE:
            codes = " ".join(f"{c}={o.rc}" for c, o in outcomes.items())
            print(f"  {self.test}: {damage.desc}{' [state lost]' if damage.lost else ''}: {codes}"
                  f"{' FAIL' if fails else ''}")
        for c, o in outcomes.items():
            self.slowest[c] = max(self.slowest.get(c, 0.0), o.seconds)
        new = []
        for f in fails:
            kn = next((kn for kn in KNOWN if kn.match(f)), None)
            if kn is not None:
                self.known.setdefault(kn.name, []).append(f)
            else:
                new.append(f)
        if SURVEY:
            self.unknown += new
        elif new:
            raise AssertionError("\n".join(map(str, new)))

    def report(self) -> None:
        print(f"\n{self.test}: {self.examples} examples; slowest run per command: "
              + ", ".join(f"{c} {s:.2f}s" for c, s in sorted(self.slowest.items())))
        for line in self.messages():
            print(line)

    def messages(self) -> list[str]:
        msgs = []
        for name, fs in self.known.items():
            msgs.append(f"REGRESSION of a fixed bug ({len(fs)} runs): {name}")
            msgs += [f"    {f}" for f in _distinct(fs)[:8]]
        if self.unknown:
            msgs.append(f"{len(self.unknown)} failures:")
            msgs += [f"    {f}" for f in _distinct(self.unknown)]
        return msgs

    def finish(self) -> None:
        msgs = self.messages()
        assert not msgs, "\n".join(msgs)


def _distinct(fs: list[Failure]) -> list[Failure]:
    seen: dict[tuple[str, str, int | None, str], Failure] = {}
    for f in fs:
        key = (f.cmd, re.sub(r"\d+", "N", f.problem)[:60], f.rc, re.sub(r"[/\d]\S*", "_", f.line)[:80])
        seen.setdefault(key, f)
    return list(seen.values())


# --- 1. the config ----------------------------------------------------------------------

FIELD_VALUES: dict[str, list[Any]] = {
    "exclude": ["*.tmp", [5], ["*.nomatch"], [[]], [], "", 5, {"a": 1}],
    "max_delete": ["abc", "150%", "-1", "10%", "0", "5%", "", " 5", 5, -1, True, 1.5, ["50%"]],
    "one_file_system": ["no", "false", 0, 1, False, True, []],
    "keep_snapshots": [0, -1, 1, 2**63 - 1, 10**30, "30", 1.5, True, -(2**63)],
    "jobs": ["x", "4", -1, 0, 1, 64, 65, 10**6, 10**30, 1.5, True],
    "patch_in_place": ["no", 0, 1, False],
    "source": [5, [], "", "relative/x", "/nonexistent/x", {"a": 1}, True],
    "remote": [5, [], "", "relative/x", "/nonexistent/x", {"a": 1}, True],
}
COMMON_VALUES: list[Any] = ["x", "", 5, -1, 0, 1.5, True, [], [5], {"k": 1}, 10**30]


def config_allowed(text: bytes, orig: dict[str, Any]) -> frozenset[str]:
    """The commands that must refuse this config text (an independent reading of the
    config's rules: README and `btsoot add`'s options)."""
    name_cmds = frozenset({"backup", "diff", "verify", "restore"})
    all_cmds = name_cmds | {"list"}
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return all_cmds
    blocks = data.get("blocks", {})
    if not isinstance(blocks, dict):
        return all_cmds
    for name, b in blocks.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or not isinstance(b, dict):
            return all_cmds
        if not all(isinstance(b.get(k), str) and b.get(k) for k in ("source", "remote")):
            return all_cmds
        ex = b.get("exclude", [])
        if not (isinstance(ex, list) and all(isinstance(x, str) for x in ex)):
            return all_cmds
        md = b.get("max_delete", "50%")
        mds = str(md).strip()  # (what `btsoot add --max-delete ' 5'` takes too)
        if isinstance(md, bool) or not isinstance(md, (str, int)) or not re.fullmatch(
                r"\d+%?", mds) or (mds.endswith("%") and int(mds[:-1]) > 100):
            return all_cmds
        for k in ("one_file_system", "patch_in_place"):
            if not isinstance(b.get(k, True), bool):
                return all_cmds
        keep = b.get("keep_snapshots", 30)
        if not _is_int(keep) or keep < 1:
            return all_cmds
        jobs = b.get("jobs", 0)
        if not _is_int(jobs) or jobs < 0:
            return all_cmds
    b = blocks.get("b")
    if b is None:
        return name_cmds  # no block named b
    must: set[str] = set()
    ob = orig["blocks"]["b"]
    if os.path.realpath(b["source"]) != os.path.realpath(ob["source"]):
        must |= {"backup", "diff"}  # a source that is not there
    if os.path.realpath(b["remote"]) != os.path.realpath(ob["remote"]):
        must |= {"backup", "diff", "verify", "restore"}  # a remote that is not there
    return frozenset(must)


def draw_config(data: st.DataObject, text: bytes, k0: Path) -> Damage:
    orig = tomllib.loads(text.decode())
    op = data.draw(st.sampled_from(["field", "field", "unknown key", "drop field", "blocks type", "bytes",
                                    "bytes"]), label="config op")
    if op == "bytes":
        bop, f, _ = draw_bytes(data, text)
        desc = f"config bytes: {bop}"
    else:
        d = tomllib.loads(text.decode())
        b = d["blocks"]["b"]
        if op == "field":
            key = data.draw(st.sampled_from(sorted(FIELD_VALUES)), label="field")
            value = data.draw(st.sampled_from(FIELD_VALUES[key] + COMMON_VALUES), label="value")
            b[key] = value
            desc = f"config {key} = {value!r}"
        elif op == "unknown key":
            where = data.draw(st.sampled_from(["block", "top"]), label="where")
            (b if where == "block" else d)["colour"] = "red"
            desc = f"config: an unknown key ({where})"
        elif op == "drop field":
            key = data.draw(st.sampled_from(sorted(b)), label="field")
            del b[key]
            desc = f"config: {key} left out"
        else:
            v = data.draw(st.sampled_from([5, "x", [], [{"b": 1}], {"b": 5}, {"b": []}, {"b b": b}]),
                          label="blocks")
            d["blocks"] = v
            desc = f"config blocks = {v!r}"
        new = tomli_w.dumps(d).encode()
        f = (lambda t: new)  # noqa: E731
    damaged = f(text)
    must = config_allowed(damaged, orig)
    if op == "unknown key" and "block" in desc:
        must = frozenset()  # may be refused (2) or ignored
    extra = {"restore-from": frozenset({0})}  # restore --from needs no config

    def apply(k: Path) -> None:
        # The same damage in each copy, which names its own folders (the same length).
        _write(k / "config.toml", damaged.replace(os.fsencode(k0), os.fsencode(k)))
    return Damage(desc, apply, must, extra)


Case = Callable[[st.DataObject], tuple[str, Damage, tuple[str, ...]]]


def _run_test(prep: Prepared, test: str, n: int, case: Case) -> None:
    """Run hypothesis over case (which draws a variant, a damage and the commands), collecting."""
    col = Collector(test)

    @_settings(n)
    @given(data=st.data())
    def examples(data: st.DataObject) -> None:
        variant, damage, cmds = case(data)
        base = baseline(prep, variant, damage.lost)
        col.check(damage, *run_case(prep, test, variant, damage, cmds, base))

    try:
        examples()
    finally:
        col.report()
    col.finish()


def test_fuzzed_config(prepared: Prepared) -> None:
    """The config TOML: wrong types, impossible values, unknown keys, bad bytes, truncation."""
    text = (prepared.variants["plain"] / "config.toml").read_bytes()

    def case(data: st.DataObject) -> tuple[str, Damage, tuple[str, ...]]:
        return "plain", draw_config(data, text, prepared.k(0)), CMDS

    _run_test(prepared, "config", 10, case)


# --- 2. local state --------------------------------------------------------------------

LOCAL = "state/blocks/b"
NAME_READERS = _readers("backup", "diff", "verify", "restore")
DANGLING = "20991231T235959.999999Z"


def _jsonl_invalid(blob: bytes) -> bool:
    """Is some line of this list (damaged.jsonl) not an object with a usable path?"""
    for line in blob.splitlines():
        try:
            o = orjson.loads(line)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(o, dict):
            return True
        p, pb = o.get("path"), o.get("path_b64")
        if p is not None and not isinstance(p, str):
            return True
        if p is None and pb is not None and (not isinstance(pb, str) or not _b64ok(pb)):
            return True
    return False


def _gzip_ignored(blob: bytes) -> set[int]:
    """Offsets of a gzip member a reader does not check: the header's mtime, extra flags and
    OS, the bytes of its file name and comment (not their ends), and the trailer (CRC32,
    size) of content that is otherwise intact (a reader may stop at the snapshot's trailer)."""
    out = set(range(4, 10)) | set(range(len(blob) - 8, len(blob)))
    flags, i = blob[3], 10
    if flags & 4:  # FEXTRA
        i += 2 + int.from_bytes(blob[i:i + 2], "little")
    for bit in (8, 16):  # FNAME, FCOMMENT: NUL-terminated
        if flags & bit:
            end = blob.index(b"\0", i)
            out |= set(range(i, end))
            i = end + 1
    return out


def _parses_as_object(blob: bytes) -> bool:
    try:
        return isinstance(orjson.loads(blob), dict)
    except orjson.JSONDecodeError:
        return False


def draw_file(data: st.DataObject, rel: str, kind: str, saved: Path,
              also: tuple[str, ...] = ()) -> tuple[str, Callable[[Path], None], Certain]:
    """A damage to the file at rel (below a work folder), drawn against its saved copy:
    (description, apply, must a reader refuse it?). `also`: files with the same content
    once decompressed (a full snapshot's copy) that get the very same damage."""
    rels = (rel, *also)
    blob = (saved / rel).read_bytes()
    gz = rel.endswith(".gz")
    plain = gzip.decompress(blob) if gz else blob
    level = data.draw(st.sampled_from(["json", "json", "bytes"]), label="level") if plain.strip() else "bytes"
    if level == "bytes":
        target = blob
        if gz:
            levels = ["bytes"] if also else ["compressed bytes", "bytes"]
            level = data.draw(st.sampled_from(levels), label="gzip level")
            target = blob if level == "compressed bytes" else plain
        op, f, info = draw_bytes(data, target)
        damaged = f(target)
        certain: Certain
        if kind in ("state", "block"):
            certain = op == "truncate" or (op == "garbage" and not _parses_as_object(damaged))
            if kind == "block" and op == "garbage" and _parses_as_object(damaged):
                certain = orjson.loads(damaged).get("block") != "b"
        elif kind in ("snap", "snap-old", "base", "rfull") and not (gz and level == "compressed bytes"):
            certain = (op == "truncate" and info["at"] < len(target) - 1) or (op == "garbage")
        elif kind == "rfull":  # the compressed stream: all but what a gzip reader ignores
            changed = [i for i in range(min(len(target), len(damaged))) if target[i] != damaged[i]]
            certain = op in ("truncate", "garbage") or (
                op == "flip" and any(i not in _gzip_ignored(target) for i in changed))
        elif kind == "journal":
            certain = (op == "truncate" and info["at"] < len(target.split(b"\n")[0])) or op == "garbage"
        elif kind == "damaged":
            certain = _jsonl_invalid(damaged)
        else:
            certain = False
        if gz and level == "bytes":
            g = f

            def f(b: bytes) -> bytes:
                return gzip.compress(g(gzip.decompress(b)))
        desc = f"{' and '.join(rels)}: {level} {op} {info}"
        return desc, _edit(rels, f), certain
    if kind in ("state", "block", "profile"):
        rule = {"state": state_json_rule, "block": block_json_rule, "profile": never}[kind]
        what, f, certain = draw_json_object(data, plain, rule)
    else:
        line_rule: Rule | None = {"snap": snapshot_line_certain, "snap-old": snapshot_line_certain,
                                  "base": snapshot_line_certain, "rfull": snapshot_line_certain,
                                  "rdelta": snapshot_line_certain, "journal": journal_line_certain,
                                  "damaged": damaged_line_certain}.get(kind)
        what, f, certain = draw_jsonl(data, plain, kind, line_rule)
        if kind == "rdelta" and what.startswith("line 0 "):
            certain = False  # a delta whose header cannot be used: the chain falls back
    if gz:
        g2 = f

        def f(b: bytes) -> bytes:
            return gzip.compress(g2(gzip.decompress(b)))
    return f"{' and '.join(rels)}: {what}", _edit(rels, f), certain


def damaged_line_certain(role: str, kp: tuple[str, ...], old: Any, new: Any, dropped: bool) -> bool:
    return kp == ("path",) and not dropped and new is not None and not isinstance(new, str)


def state_json_rule(kp: tuple[str, ...], old: Any, new: Any, dropped: bool) -> bool:
    if dropped:
        return False  # no head: no committed backup, as if the state were lost
    if kp == ("head",):  # not an id, or one no snapshot has
        return new is not None
    if kp == ("remote_head",):
        return new is not None and not isinstance(new, str)
    if kp in (("deltas",), ("delta_bytes",), ("full_bytes",)):
        return not _is_int(new)  # any integer can be lived with
    return False  # what else the state records (which remotes it knows): a reader may cope


def draw_local(data: st.DataObject, prep: Prepared) -> Damage:
    saved = prep.variants["plain"]
    files = {"state.json": "state", f"snapshots/{prep.head}.jsonl": "snap",
             f"snapshots/{prep.old}.back.jsonl.gz": "snap-old", "runs.jsonl": "runs",
             "damaged.jsonl": "damaged", "lock": "lock"}
    readers = {"state": NAME_READERS, "snap": NAME_READERS, "damaged": _readers("backup", "diff")}
    weights = {"state.json": 3, f"snapshots/{prep.head}.jsonl": 4, f"snapshots/{prep.old}.back.jsonl.gz": 1,
               "runs.jsonl": 1, "damaged.jsonl": 2, "lock": 1, "special": 2}
    target = data.draw(st.sampled_from([t for t, n in weights.items() for _ in range(n)]), label="target")
    if target != "special":
        kind = files[target]
        desc, apply, certain = draw_file(data, f"{LOCAL}/{target}", kind, saved)
        must = _must(certain, readers.get(kind, frozenset()))
        extra = CONTENT if kind in ("snap", "state") else {}
        return Damage(desc, apply, must, extra)
    what = data.draw(st.sampled_from(["stale head", "dangling head", "head snapshot removed",
                                      "snapshots folder removed", "state.json removed",
                                      "damaged.jsonl removed", "runs.jsonl removed"]), label="special")
    st_json = f"{LOCAL}/state.json"

    def head(value: str) -> Callable[[Path], None]:
        def f(b: bytes) -> bytes:
            o = orjson.loads(b)
            o["head"] = value
            return _dumps(o)
        return _edit(st_json, f)

    def remove(rel: str) -> Callable[[Path], None]:
        def apply(k: Path) -> None:
            p = k / LOCAL / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return apply

    if what == "stale head":  # a valid, older snapshot: trusted (local state is), not refused
        return Damage(what, head(prep.old), frozenset(), CONTENT)
    if what == "dangling head":
        return Damage(what, head(DANGLING), NAME_READERS)
    if what == "head snapshot removed":
        return Damage(what, remove(f"snapshots/{prep.head}.jsonl"), NAME_READERS)
    if what == "snapshots folder removed":
        return Damage(what, remove("snapshots"), NAME_READERS)
    return Damage(what, remove(what.split()[0]), frozenset())


def test_fuzzed_local_state(prepared: Prepared) -> None:
    """STATE/blocks/NAME/: state.json, the snapshots, the run log, the damaged list, the lock."""
    def case(data: st.DataObject) -> tuple[str, Damage, tuple[str, ...]]:
        damage = draw_local(data, prepared)
        # list reads the config and the run log, nothing else of the state
        return "plain", damage, CMDS if "runs.jsonl" in damage.desc else RCMDS

    _run_test(prepared, "local state", 12, case)


# --- 3. a crashed run's state ------------------------------------------------------------

def test_fuzzed_crashed_run_state(prepared: Prepared) -> None:
    """The journal of a killed backup, its base view and its scan."""
    saved = prepared.variants["crashed"]
    names = sorted(os.listdir(saved / LOCAL))
    bases = [n for n in names if n.startswith("base-")]
    assert "journal.jsonl" in names and "scan.jsonl" in names and bases, names
    files = {"journal.jsonl": "journal", bases[0]: "base", "scan.jsonl": "scan"}
    cmds = ("backup", "diff", "verify", "restore", "restore-from")

    def case(data: st.DataObject) -> tuple[str, Damage, tuple[str, ...]]:
        target = data.draw(st.sampled_from(["journal.jsonl", "journal.jsonl", bases[0], "scan.jsonl",
                                            "removed"]), label="target")
        if target == "removed":
            rel = data.draw(st.sampled_from(sorted(files)), label="removed")

            def rm(k: Path) -> None:
                (k / LOCAL / rel).unlink()
            # Without its base view the journal cannot be replayed; without the journal
            # the run starts again from the committed snapshot.
            must = _readers("backup") if files[rel] == "base" else frozenset()
            return "crashed", Damage(f"{rel} removed", rm, must, CONTENT), cmds
        kind = files[target]
        desc, apply, certain = draw_file(data, f"{LOCAL}/{target}", kind, saved)
        must = _must(certain, _readers("backup") if kind in ("journal", "base") else frozenset())
        return "crashed", Damage(desc, apply, must, CONTENT), cmds

    _run_test(prepared, "crashed run", 6, case)


# --- 4. the remote's own files --------------------------------------------------------------

META = "remote/.btsoot"
PROFILE_EXTRA = {"backup": frozenset({3}), **CONTENT}


def test_fuzzed_remote_block_and_profile(prepared: Prepared) -> None:
    """REMOTE/.btsoot/block.json and profile.json, with the local state kept or lost."""
    saved = prepared.variants["plain"]

    def case(data: st.DataObject) -> tuple[str, Damage, tuple[str, ...]]:
        lost = data.draw(st.booleans(), label="local state lost")
        target = data.draw(st.sampled_from(["block.json", "profile.json"]), label="target")
        kind = target.split(".")[0]
        rel = f"{META}/{target}"
        certain: Certain
        if data.draw(st.integers(0, 3), label="special?") == 0:
            what, apply = special_file(data, rel, "outside")
            certain = kind == "block" and what != "link to a copy outside"
            desc = f"{target}: {what}"
        else:
            desc, apply, certain = draw_file(data, rel, kind, saved)
        must = _must(certain, _readers("backup", "diff", "verify"))
        extra = PROFILE_EXTRA if kind == "profile" else {}
        return "plain", Damage(desc, apply, must, extra, lost=lost), RCMDS

    _run_test(prepared, "remote block/profile", 6, case)


# --- 5. the remote's snapshots ------------------------------------------------------------------

def _gz_header(**kw: Any) -> Callable[[bytes], bytes]:
    def f(b: bytes) -> bytes:
        lines = gzip.decompress(b).split(b"\n")
        h = orjson.loads(lines[0])
        h.update(kw)
        lines[0] = _dumps(h)
        return gzip.compress(b"\n".join(lines))
    return f


def draw_chain(data: st.DataObject, full: str, delta: str,
               copy: str | None) -> tuple[str, Callable[[Path], None], bool]:
    """Damage to the chain of snapshots (full <- delta): (description, apply, no usable snapshot left?)."""
    snaps = f"{META}/snapshots"
    fid, did = _sid(full), _sid(delta)
    what = data.draw(st.sampled_from([
        "delta based on itself", "A->B->A", "base removed", "base id missing", "base is later",
        "duplicate id (second file)", "duplicate id (header)", "newer orphan delta", "newer corrupt full",
        "all snapshots removed"] + (["first file of the full removed"] if copy else [])), label="chain")

    def apply(k: Path) -> None:
        d = k / snaps
        if what == "delta based on itself":
            _edit(f"{snaps}/{delta}", _gz_header(base=did))(k)
        elif what == "A->B->A":  # the full becomes a delta based on the delta (and has no copy)
            _edit(f"{snaps}/{full}", _gz_header(kind="delta", base=did))(k)
            os.rename(d / full, d / f"{fid}.delta.jsonl.gz")
            if copy:
                (d / copy).unlink()
        elif what == "base removed":
            for n in (full, copy):
                if n:
                    (d / n).unlink()
        elif what == "first file of the full removed":  # its copy stands in
            (d / full).unlink()
        elif what == "base id missing":
            _edit(f"{snaps}/{delta}", _gz_header(base="20000101T000000.000000Z"))(k)
        elif what == "base is later":
            _edit(f"{snaps}/{delta}", _gz_header(base=DANGLING))(k)
        elif what == "duplicate id (second file)":
            shutil.copyfile(d / delta, d / f"{fid}.delta.jsonl.gz")
        elif what == "duplicate id (header)":
            _edit(f"{snaps}/{delta}", _gz_header(id=fid))(k)
        elif what == "newer orphan delta":
            _write(d / f"{DANGLING}.delta.jsonl.gz",
                   _gz_header(id=DANGLING, base="20000101T000000.000000Z")((d / delta).read_bytes()))
        elif what == "newer corrupt full":
            _write(d / f"{DANGLING}.full.jsonl.gz", gzip.compress(b'{"format":"btsoot-snapshot"\n'))
        else:
            for n in os.listdir(d):
                os.unlink(d / n)
    # (A newer file the chain does not reach may be ignored: the remote may name its newest.)
    certain = what in ("A->B->A", "base removed", "all snapshots removed")
    return f"chain: {what}", apply, certain


def test_fuzzed_remote_snapshots(prepared: Prepared) -> None:
    """REMOTE/.btsoot/snapshots: the full and the delta (their content and their bytes),
    broken chains (loops, missing bases, duplicate ids), with the local state kept or lost."""
    saved = prepared.variants["plain"]
    names = sorted(os.listdir(saved / META / "snapshots"))
    full = next(n for n in names if n.endswith(".full.jsonl.gz"))
    delta = next(n for n in names if n.endswith(".delta.jsonl.gz"))
    # A full snapshot may be kept twice (ID.full-copy.jsonl.gz): then damage to one of the
    # two may be harmless, and the same damage to both must be refused.
    copy = next((n for n in names if n.endswith(".full-copy.jsonl.gz")), None)
    assert len(names) == 2 + (copy is not None), names
    snaps = f"{META}/snapshots"

    def case(data: st.DataObject) -> tuple[str, Damage, tuple[str, ...]]:
        lost = data.draw(st.booleans(), label="local state lost")
        targets = [full, delta, full, delta, "chain", "special"] + ([copy, "both fulls"] if copy else [])
        target = data.draw(st.sampled_from(targets), label="target")
        # A backup without local state and without any snapshot on the remote may take
        # the remote's block.json as its word and start again (re-sending everything).
        lost_readers = _readers(*LOST_READERS)
        certain: Certain
        if target == "chain":
            desc, apply, certain = draw_chain(data, full, delta, copy)
            if desc.endswith("all snapshots removed"):
                lost_readers = _readers(*REMOTE_READERS)
        elif target == "special":
            which = data.draw(st.sampled_from([full, delta]), label="file")
            what, apply = special_file(data, f"{snaps}/{which}", "outside")
            desc = f"{which}: {what}"
            certain = which == full and copy is None and what != "link to a copy outside"
        elif target == "both fulls":
            assert copy is not None
            desc, apply, certain = draw_file(data, f"{snaps}/{full}", "rfull", saved,
                                             also=(f"{snaps}/{copy}",))
        else:
            kind = "rdelta" if target == delta else "rfull"
            desc, apply, certain = draw_file(data, f"{snaps}/{target}", kind, saved)
            if kind == "rfull" and copy is not None:
                certain = False  # the other copy stands in
        must = _must(certain, lost_readers if lost else _readers(*REMOTE_READERS))
        return "plain", Damage(desc, apply, must, CONTENT, lost=lost), RCMDS

    _run_test(prepared, "remote snapshots", 10, case)
