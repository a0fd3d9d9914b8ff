"""Blocks and where btsoot keeps its files.

The config is TOML in the platform's config directory (override: --config or
BTSOOT_CONFIG); state (snapshots, journals, run logs, locks) lives in the
platform's state directory (override: BTSOOT_STATE). The config is rewritten
atomically, so a crash never leaves it half-written.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import platformdirs
import tomli_w

from .errors import ConfigError, LockedError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_MAX_DELETE = "50%"
DEFAULT_KEEP = 30


def config_path(override: str | None = None) -> str:
    if override:
        return override
    env = os.environ.get("BTSOOT_CONFIG")
    if env:
        return env
    return os.path.join(platformdirs.user_config_dir("btsoot"), "config.toml")


def state_dir() -> str:
    return os.environ.get("BTSOOT_STATE") or platformdirs.user_state_dir("btsoot")


def parse_max_delete(value: str | int) -> tuple[int, bool]:
    """'500' -> (500, False); '10%' -> (10, True)."""
    s = str(value).strip()
    pct = s.endswith("%")
    num = s[:-1] if pct else s
    if not num.isdigit() or (pct and int(num) > 100):
        raise ConfigError(f"--max-delete: expected a count or a percentage like 10%, got {s!r}")
    return int(num), pct


@dataclass(slots=True)
class Block:
    name: str
    source: str
    remote: str
    exclude: list[str] = field(default_factory=list)
    max_delete: str = DEFAULT_MAX_DELETE
    one_file_system: bool = True
    keep_snapshots: int = DEFAULT_KEEP
    jobs: int = 0  # 0: automatic
    # Large files with few changed chunks: write those chunks into the remote file
    # (docs/design.md). Off for remotes with hard-linked history that hide link counts.
    patch_in_place: bool = True

    def delete_limit(self, files_before: int) -> int:
        n, pct = parse_max_delete(self.max_delete)
        return files_before * n // 100 if pct else n

    @property
    def state(self) -> str:
        return os.path.join(state_dir(), "blocks", self.name)

    def to_toml(self) -> dict[str, Any]:
        d = asdict(self)
        del d["name"]
        return d


def validate_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid block name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit)"
        )


class Config:
    def __init__(self, path: str, blocks: dict[str, Block]) -> None:
        self.path = path
        self.blocks = blocks

    @classmethod
    def load(cls, override: str | None = None) -> Config:
        path = config_path(override)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            return cls(path, {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # TOML is UTF-8
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        blocks: dict[str, Block] = {}
        raw = data.get("blocks", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: [blocks] must be a table")
        for name, b in raw.items():
            try:
                validate_name(name)
                block = Block(name=name, **b)
                if not isinstance(block.source, str) or not isinstance(block.remote, str):
                    raise TypeError("source and remote must be strings")
                if not isinstance(block.patch_in_place, bool):
                    raise TypeError("patch_in_place must be true or false")
                parse_max_delete(block.max_delete)
            except (TypeError, ConfigError) as e:
                msg = e.message if isinstance(e, ConfigError) else str(e)
                raise ConfigError(f"{path}: block {name!r}: {msg}") from None
            blocks[name] = block
        return cls(path, blocks)

    def save(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        data = {"blocks": {n: b.to_toml() for n, b in sorted(self.blocks.items())}}
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "wb") as f:
            tomli_w.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def get(self, name: str) -> Block:
        try:
            return self.blocks[name]
        except KeyError:
            raise ConfigError(f"no block named {name!r} (see 'btsoot list')") from None


class Lock:
    """One run per block: an exclusive flock on the block's lock file.

    The kernel drops the lock when the process dies, even by SIGKILL, so a
    crashed run never leaves a stale lock behind.
    """

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        self.fd = -1

    def __enter__(self) -> Lock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise LockedError(f"{self.what} is locked by another btsoot run") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
