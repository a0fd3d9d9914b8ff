"""What every command shares: the command group, the config it loads, sizes for people.

The commands register on `main_group` from cli.py (backup, add, list, ...) and
cli_restore.py (restore, verify); both import this module, neither the other.
"""

from __future__ import annotations

import time

import click

from . import __version__
from .config import Config


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def when(t: object, seconds: bool = False) -> str:
    """A time from a record (seconds since the epoch) as local time; "?" if it is none."""
    try:
        return time.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""),
                             time.localtime(t))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .scanner import FALLBACK, IMPLEMENTATION

    core = ("compiled core" if IMPLEMENTATION == "compiled"
            else "pure-Python core: the compiled one is not installed or not loadable" if FALLBACK
            else "pure-Python core, as BTSOOT_PUREPYTHON=1 asks")
    click.echo(f"btsoot, version {__version__} ({core})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and which core is in use, and exit.")
@click.option("--config", "config_path", metavar="FILE", envvar="BTSOOT_CONFIG",
              help="Config file (default: the platform config dir; env BTSOOT_CONFIG).")
@click.pass_context
def main_group(ctx: click.Context, config_path: str | None) -> None:
    """btsoot: incremental offsite backups that send only what changed."""
    from .scanner import fallback_warning

    ctx.obj = {"config": config_path}
    warning = fallback_warning()  # (an sdist installed without a compiler)
    if warning is not None and not ctx.resilient_parsing:
        click.echo(warning, err=True)


def load_config(ctx: click.Context) -> Config:
    return Config.load(ctx.obj["config"])
