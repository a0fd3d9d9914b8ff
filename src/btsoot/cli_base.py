"""What every command shares: the command group, the config it loads, sizes for people.

The commands register on `main_group` from cli.py (backup, add, list, ...) and
cli_restore.py (restore, verify); both import this module, neither the other.
"""

from __future__ import annotations

import click

from . import __version__
from .config import Config


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="btsoot")
@click.option("--config", "config_path", metavar="FILE", envvar="BTSOOT_CONFIG",
              help="Config file (default: the platform config dir; env BTSOOT_CONFIG).")
@click.pass_context
def main_group(ctx: click.Context, config_path: str | None) -> None:
    """btsoot: incremental offsite backups that send only what changed."""
    ctx.obj = {"config": config_path}


def load_config(ctx: click.Context) -> Config:
    return Config.load(ctx.obj["config"])
