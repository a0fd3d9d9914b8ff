"""Blocks and where btsoot keeps its files.

The config is TOML in the platform's config directory (override: --config or
BTSOOT_CONFIG); state (snapshots, journals, run logs, locks) lives in the
platform's state directory (override: BTSOOT_STATE). The config is rewritten
atomically, so a crash never leaves it half-written.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import platformdirs
import tomli_w

from .durable import atomic_write
from .errors import ConfigError
from .meta import Keep
from .retention import DEFAULT_WITHIN, parse_size, parse_within

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_MAX_DELETE = "50%"


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
    if not (num.isascii() and num.isdigit()) or (pct and int(num) > 100):
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
    jobs: int = 0  # 0: automatic
    # Large files with few changed chunks: write those chunks into the remote file
    # (docs/design.md). Off for remotes with hard-linked history that hide link counts.
    patch_in_place: bool = True
    # Retention (retention.py): which snapshots are kept; the attic in
    # REMOTE/.btsoot/attic keeps what they need (docs/design.md, "The attic").
    keep_last: int = 1
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: str = DEFAULT_WITHIN
    attic_max: str | int = ""
    # Stop a run that modifies or deletes far more files than this block's recent
    # runs did (see backup.mass_change_guard).
    change_guard: bool = True
    # Metadata kept (meta.py): recorded in the snapshot and restored from it, and
    # applied on the remote where it can hold them. Owners are always recorded
    # (they cost nothing to read); `owners` says whether the remote gets them.
    owners: bool = True
    xattrs: bool = True
    acls: bool = True
    hard_links: bool = True
    # Read the source from a snapshot of it, made before the scan and released after
    # the run (frozen.py): "" (none), "btrfs", or "command" (the three commands below).
    snapshot: str = ""
    snapshot_path: str = ""
    snapshot_create: str = ""
    snapshot_release: str = ""
    # Telling someone (hooks.py): commands after each run, a health-check URL, and
    # how long without a successful run counts as failing.
    on_success: str = ""
    on_failure: str = ""
    on_always: str = ""
    ping_url: str = ""
    stale_after: str = ""
    hook_timeout: int = 60
    # What a run may send to the remote per second (limit.py: "2M", "20Mbit"; "": no limit).
    bwlimit: str = ""

    def keep(self) -> Keep:
        return Keep(self.owners, self.xattrs, self.acls, self.hard_links)

    def delete_limit(self, files_before: int) -> int:
        n, pct = parse_max_delete(self.max_delete)
        return files_before * n // 100 if pct else n

    @property
    def state(self) -> str:
        return os.path.join(state_dir(), "blocks", self.name)

    def check(self) -> None:
        """What the schema cannot see, checked at every run before anything is
        touched (the config may have been edited since `add`): neither folder may
        hold the other (through links too; a remote inside the source would be
        backed up into itself, one level deeper every run), and every exclude
        pattern must compile."""
        if self.snapshot == "command" and not (self.snapshot_path and self.snapshot_create):
            raise ConfigError(f"block {self.name!r}: snapshot = \"command\" needs snapshot_path "
                              "and snapshot_create (and snapshot_release)")
        try:
            check_apart(self.source, self.remote)
            if self.exclude:
                from .scan import make_exclude

                make_exclude(self.exclude)
        except ConfigError as e:
            raise ConfigError(f"block {self.name!r}: {e.message}") from None

    def to_toml(self) -> dict[str, Any]:
        d = asdict(self)
        del d["name"]
        if not self.snapshot:  # (the snapshot keys mean nothing without one)
            for k in ("snapshot", "snapshot_path", "snapshot_create", "snapshot_release"):
                del d[k]
        for k in ("on_success", "on_failure", "on_always", "ping_url", "stale_after", "bwlimit"):
            if not d[k]:
                del d[k]  # (unset: no alerts)
        if not (self.on_success or self.on_failure or self.on_always or self.ping_url):
            del d["hook_timeout"]
        return d


def _is_int(v: object) -> bool:
    return type(v) is int  # a TOML true is no number


def _text(v: object) -> bool:
    return isinstance(v, str) and v != "" and "\0" not in v


def _max_delete(v: object) -> bool:
    try:
        parse_max_delete(v)  # type: ignore[arg-type]
    except ConfigError:
        return False
    return _is_int(v) or isinstance(v, str)


MAX_KEEP = 100_000
MAX_ATTIC_DAYS = 36500


def _within(v: object) -> bool:
    try:
        parse_within(v)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        return False
    return isinstance(v, str)


def _size(v: object) -> bool:
    try:
        parse_size(v)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
    return _is_int(v) or isinstance(v, str)


def _rate(v: str) -> bool:
    from .limit import parse_rate

    try:
        parse_rate(v)
    except ValueError:
        return False
    return True


def _count(lo: int) -> tuple[bool, Callable[[object], bool], str]:
    return (False, lambda v: _is_int(v) and lo <= v <= MAX_KEEP,
            f"a whole number from {lo} to {MAX_KEEP}")


# Keys of configs written before the retention terms, read as those terms:
# keep_snapshots as keep_last, attic_days as keep_within in days (0: none).
LEGACY = {"keep_snapshots": "keep_last", "attic_days": "keep_within"}
MAX_JOBS = 256
MAX_HOOK_TIMEOUT = 86_400

# Each key of a block: (required, check, what a valid value looks like). One table,
# so the message names the key and says what it wants; no value of the wrong type
# reaches the code that uses it.
SCHEMA: dict[str, tuple[bool, Callable[[object], bool], str]] = {
    "source": (True, _text, "a folder path (a string)"),
    "remote": (True, _text, "a folder path (a string)"),
    "exclude": (False, lambda v: isinstance(v, list) and all(_text(p) for p in v),
                "a list of gitignore-style patterns (strings), e.g. [\"*.tmp\"]"),
    "max_delete": (False, _max_delete, "a count or a percentage, e.g. 500 or \"10%\""),
    "one_file_system": (False, lambda v: isinstance(v, bool), "true or false"),
    "keep_last": _count(1),
    "keep_daily": _count(0),
    "keep_weekly": _count(0),
    "keep_monthly": _count(0),
    "keep_yearly": _count(0),
    "keep_within": (False, _within, "a duration like \"30d\", \"2w\", \"6m\", \"1y\" or \"0\""),
    "attic_max": (False, _size, "a size like \"50G\" or \"500M\", or 0 (no cap)"),
    "keep_snapshots": _count(1),
    "jobs": (False, lambda v: _is_int(v) and 0 <= v <= MAX_JOBS,  # type: ignore[operator]
             f"a whole number from 0 (automatic) to {MAX_JOBS}"),
    "patch_in_place": (False, lambda v: isinstance(v, bool), "true or false"),
    "change_guard": (False, lambda v: isinstance(v, bool), "true or false"),
    "owners": (False, lambda v: isinstance(v, bool), "true or false"),
    "xattrs": (False, lambda v: isinstance(v, bool), "true or false"),
    "acls": (False, lambda v: isinstance(v, bool), "true or false"),
    "hard_links": (False, lambda v: isinstance(v, bool), "true or false"),
    "snapshot": (False, lambda v: v in ("", "btrfs", "command"), '"", "btrfs" or "command"'),
    "snapshot_path": (False, lambda v: isinstance(v, str), "a folder path (a string)"),
    "snapshot_create": (False, lambda v: isinstance(v, str), "a shell command (a string)"),
    "snapshot_release": (False, lambda v: isinstance(v, str), "a shell command (a string)"),
    "attic_days": (False, lambda v: _is_int(v) and 0 <= v <= MAX_ATTIC_DAYS,  # type: ignore[operator]
                   f"a whole number of days from 0 (no attic) to {MAX_ATTIC_DAYS}"),
    "on_success": (False, lambda v: isinstance(v, str) and "\0" not in v, "a shell command (a string)"),
    "on_failure": (False, lambda v: isinstance(v, str) and "\0" not in v, "a shell command (a string)"),
    "on_always": (False, lambda v: isinstance(v, str) and "\0" not in v, "a shell command (a string)"),
    "ping_url": (False, lambda v: v == "" or (isinstance(v, str) and re.fullmatch(r"https?://\S+", v)
                                             is not None), "an http:// or https:// URL, or \"\""),
    "stale_after": (False, _within, "a duration like \"3d\" or \"36h\", or \"\" (never)"),
    "bwlimit": (False, lambda v: isinstance(v, str) and _rate(v),
                'a rate like "2M" (bytes per second) or "20Mbit", or "" (no limit)'),
    "hook_timeout": (False, lambda v: _is_int(v) and 1 <= v <= MAX_HOOK_TIMEOUT,  # type: ignore[operator]
                     f"a whole number of seconds from 1 to {MAX_HOOK_TIMEOUT}"),
}


def check_value(key: str, value: object, name: str) -> None:
    """ConfigError naming `name` (an option) if SCHEMA does not take value for key."""
    _, ok, want = SCHEMA[key]
    if not ok(value):
        raise ConfigError(f"{name} {_show(value)}: expected {want}")


def check_block(b: object) -> dict[str, Any]:
    """A block's table from the config, checked against SCHEMA (ConfigError naming
    the first key that is wrong); returns the keyword arguments of Block."""
    if not isinstance(b, dict):
        raise ConfigError("must be a table of keys (source, remote, ...)")
    for key in b:
        if key not in SCHEMA:
            raise ConfigError(f"unknown key {key!r} (known: {', '.join(SCHEMA)})")
    for key, (required, ok, want) in SCHEMA.items():
        if key not in b:
            if required:
                raise ConfigError(f"{key} is missing")
            continue
        if not ok(b[key]):
            raise ConfigError(f"{key} = {_show(b[key])}: expected {want}")
    out = dict(b)
    for old, new in LEGACY.items():
        if old in out:
            if new in b:
                raise ConfigError(f"{old} and {new} are both given ({old} is the older name)")
            v = out.pop(old)
            out[new] = f"{v}d" if old == "attic_days" else v
    return out


def _show(v: object) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def check_apart(source: str, remote: str) -> None:
    rs, rd = os.path.realpath(source), os.path.realpath(remote)
    if os.path.commonpath([rs, rd]) in (rs, rd):  # (a prefix test misses "/")
        raise ConfigError(f"source {source} and remote {remote} must not contain one another")


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
        if not isinstance(data, dict) or set(data) - {"blocks"}:
            extra = sorted(set(data) - {"blocks"})
            raise ConfigError(f"{path}: unknown top-level key {extra[0]!r} (only [blocks.NAME] tables)")
        raw = data.get("blocks", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: [blocks] must be a table")
        blocks: dict[str, Block] = {}
        for name, b in raw.items():
            try:
                validate_name(name)
                blocks[name] = Block(name=name, **check_block(b))
            except ConfigError as e:
                raise ConfigError(f"{path}: block {name!r}: {e.message}") from None
        return cls(path, blocks)

    def save(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        data = {"blocks": {n: b.to_toml() for n, b in sorted(self.blocks.items())}}
        atomic_write(self.path, tomli_w.dumps(data).encode(), tmp=f"{self.path}.tmp.{os.getpid()}",
                     mode=0o644)

    def get(self, name: str) -> Block:
        try:
            return self.blocks[name]
        except KeyError:
            raise ConfigError(f"no block named {name!r} (see 'btsoot list')") from None
