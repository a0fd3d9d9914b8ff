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

Failures of a known class (KNOWN, each a narrow check naming the bug) do not stop
the search for others: they are collected and fail the test at its end, listed.
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

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STRESS = os.environ.get("BTSOOT_STRESS") == "1"
SURVEY = os.environ.get("BTSOOT_FUZZ_SURVEY") == "1"
TIMEOUT = 20.0  # a run still going after this is a hang
FAST = 10.0  # no run may take longer than this (they take well under a second)

REFUSED = frozenset({2, 4, 8})
CMDS = ("backup", "diff", "verify", "restore", "restore-from", "list")
REMOTE_READERS = ("restore-from",)  # commands that read REMOTE/.btsoot/snapshots with local state
LOST_READERS = ("backup", "diff", "restore-from")  # ... and without it
# Codes for "the snapshot disagrees with the remote's content" (a snapshot that still
# parses after the damage): verify reports damage, restore partial or damaged.
CONTENT = {"verify": frozenset({3, 7}), "restore": frozenset({3, 7}), "restore-from": frozenset({3, 7})}


def _examples(n: int) -> int:
    return n * 10 if STRESS else n


def _settings(n: int) -> settings:
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
    variants: dict[str, Path]  # "plain", "crashed": saved {config.toml, state, remote} made in k0
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
    return name.split(".jsonl")[0].split(".full")[0].split(".delta")[0]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    base = tmp_path_factory.mktemp("fuzz")
    src, k0 = base / "src", base / "w00"
    env = Env(k0, k0 / "config.toml", k0 / "state")
    for d in ("sub/deep", "empty"):
        (src / d).mkdir(parents=True)
    (k0 / "remote").mkdir(parents=True)
    files = {"a": b"alpha\n", "notes.txt": b"n" * 300, "sub/b": b"bee", "sub/deep/x.bin": bytes(range(256)) * 8}
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


def _edit(rel: str, f: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(k: Path) -> None:
        p = k / rel
        _write(p, f(p.read_bytes()))
    return apply


def _readers(*cmds: str) -> frozenset[str]:
    return frozenset(cmds)


WRONG: list[Any] = [None, True, False, "x", "", 5, -1, 1.5, 1e30, [], [5], {}, {"a": 1}]
NUMBERS: list[Any] = [1e30, -1e30, -1, 0, 2**64, 2**63, -(2**63), 1.5]
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


def draw_jsonl(data: st.DataObject, blob: bytes, kind: str,
               rule: Rule | None) -> tuple[str, Callable[[bytes], bytes], bool]:
    """A damage to one line of a JSON-lines file: (description, transform, must a reader refuse?)."""
    lines = blob.split(b"\n")
    objs = {i: orjson.loads(ln) for i, ln in enumerate(lines) if ln.strip()}
    op = data.draw(st.sampled_from(["wrong-type", "number", "drop-key", "unknown-key", "dup-line",
                                    "drop-line"]), label="json op")
    cands = [(i, kp) for i, o in objs.items() for kp in _key_paths(o)]
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
    certain = kind in ("snap", "snap-old", "base", "rfull", "rdelta") or (kind == "journal" and role == "header"
                                                                         and drop)
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
        return f"the document replaced by {v!r}", lambda b: _dumps(v), True
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


def state_json_rule(kp: tuple[str, ...], old: Any, new: Any, dropped: bool) -> bool:
    if dropped:
        return kp == ("head",) and False  # no head: no committed backup (like a lost state)
    if kp in (("head",), ("remote_head",)):
        return new is not None and not isinstance(new, str)
    return not _is_int(new)  # deltas, delta_bytes, full_bytes: any integer can be lived with


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
        return f"[{self.test}] {self.cmd}: {self.problem} (exit {self.rc}) | damage: {self.damage} | {self.line}"


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
        err = open(k / "stderr", "w+b")  # noqa: SIM115 - closed below
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
        fails.append(Failure(test, cmd, problem, damage.desc, o.rc, _line(o.stderr)))

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


KNOWN: list[Known] = []


class Collector:
    def __init__(self, test: str) -> None:
        self.test = test
        self.known: dict[str, list[Failure]] = {}
        self.unknown: list[Failure] = []
        self.examples = 0
        self.slowest: dict[str, float] = {}

    def check(self, outcomes: dict[str, Outcome], fails: list[Failure]) -> None:
        self.examples += 1
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

    def finish(self) -> None:
        print(f"\n{self.test}: {self.examples} examples; slowest run per command: "
              + ", ".join(f"{c} {s:.2f}s" for c, s in sorted(self.slowest.items())))
        msgs = []
        for name, fs in self.known.items():
            msgs.append(f"KNOWN BUG ({len(fs)} runs): {name}")
            msgs += [f"    {f}" for f in _distinct(fs)[:8]]
        if self.unknown:
            msgs.append(f"{len(self.unknown)} failures:")
            msgs += [f"    {f}" for f in _distinct(self.unknown)]
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
        if isinstance(md, bool) or not isinstance(md, (str, int)) or not re.fullmatch(
                r"\d+%?", str(md)) or (str(md).endswith("%") and int(str(md)[:-1]) > 100):
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
