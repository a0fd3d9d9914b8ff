"""Shared fixtures: an isolated config/state, a real CLI in a subprocess, and an
independent tree comparison (it uses only os and hashlib, never btsoot)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC_DIR = Path(__file__).resolve().parent.parent / "src"


@dataclass
class Env:
    root: Path
    config: Path
    state: Path

    def vars(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BTSOOT_CONFIG"] = str(self.config)
        env["BTSOOT_STATE"] = str(self.state)
        env.pop("BTSOOT_DEBUG", None)
        if not _installed():
            env["PYTHONPATH"] = str(SRC_DIR) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def run(self, *args: str | os.PathLike, check: int | None = None,
            timeout: float = 300, extra_env: dict[str, str] | None = None,
            **kw) -> subprocess.CompletedProcess:
        """Run `btsoot ARGS` as a real process; check=N asserts the exit code."""
        p = subprocess.run([sys.executable, "-m", "btsoot", *map(str, args)],
                           env=dict(self.vars(), **(extra_env or {})),
                           capture_output=True, text=True, timeout=timeout, **kw)
        if check is not None:
            assert p.returncode == check, (
                f"btsoot {' '.join(map(str, args))} exited {p.returncode}, expected {check}\n"
                f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p


_INSTALLED: bool | None = None


def _installed() -> bool:
    global _INSTALLED
    if _INSTALLED is None:
        import importlib.util

        spec = importlib.util.find_spec("btsoot")
        _INSTALLED = spec is not None and spec.origin is not None and str(SRC_DIR) in spec.origin
    return _INSTALLED


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    e = Env(tmp_path, tmp_path / "config.toml", tmp_path / "state")
    monkeypatch.setenv("BTSOOT_CONFIG", str(e.config))
    monkeypatch.setenv("BTSOOT_STATE", str(e.state))
    return e


@pytest.fixture
def block(env: Env) -> tuple[Env, Path, Path]:
    """A configured block 'b' with empty source and remote folders."""
    src, dst = env.root / "src", env.root / "remote"
    src.mkdir()
    dst.mkdir()
    env.run("add", "b", src, dst, check=0)
    return env, src, dst


def tree_state(root: Path, ignore_top: tuple[str, ...] = (".btsoot",)) -> dict[bytes, tuple]:
    """Every entry below root: kind, content digest, mode, mtime_ns (links: target)."""
    out: dict[bytes, tuple] = {}
    base = os.fsencode(root)

    def visit(rel: bytes) -> None:
        full = base + (b"/" + rel if rel else b"")
        for name in os.listdir(full):
            if not rel and os.fsdecode(name) in ignore_top:
                continue
            r = rel + b"/" + name if rel else name
            p = full + b"/" + name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[r] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[r] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
                visit(r)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                out[r] = ("file", h.hexdigest(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            # fifos, sockets, devices are not backed up
    visit(b"")
    return out


def assert_mirror(src: Path, dst: Path) -> None:
    """The remote holds exactly the source: names, kinds, content, mode, mtime, links."""
    a, b = tree_state(src), tree_state(dst)
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    assert not (missing or extra or differ), (
        f"remote is not a mirror: missing={missing[:10]} extra={extra[:10]} "
        f"differ={[(k, a[k], b[k]) for k in differ[:5]]}")
