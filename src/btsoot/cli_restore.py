"""The `restore` and `verify` commands: thin shells over btsoot.restore and btsoot.verify.

Imported at the bottom of cli.py, which registers them onto `main_group`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click
import orjson

from .cli_base import human, load_config, main_group
from .errors import ConfigError, GuardError
from .progress import Reporter

if TYPE_CHECKING:
    from .reading import SnapshotSource

#: Seconds to wait, visibly, before a restore writes into a block's source.
COUNTDOWN = 15


class _Bar(Reporter):
    """The backup progress bar, labelled for restore or verify.

    It starts on the first event rather than on entering, so the countdown
    before a restore prints on a clean terminal.
    """

    def __init__(self, block: str, verb: str, enabled: bool) -> None:
        super().__init__(block, enabled)
        self.verb = verb

    def __enter__(self) -> _Bar:
        return self

    def update(self, what: str, value: Any) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            Reporter.__enter__(self)
            assert self._progress is not None
        if what == "total":
            self._progress.update(self._task, description=self.verb, completed=0,
                                  total=value or None)
        elif what == "phase":
            self._progress.update(self._task, description=f"{self.verb}: {value}")
        elif what == "progress":
            now = time.monotonic()
            if now - self._last < 0.1:
                return
            self._last = now
            files, nbytes = value
            self._progress.update(self._task, description=f"{self.verb}: {files} files",
                                  completed=nbytes)


def _countdown(delete: bool) -> Any:
    def confirm(source: SnapshotSource, dest: str) -> None:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise GuardError(
                f"restoring into the source {dest} waits {COUNTDOWN} s for a Ctrl-C, which "
                "needs a terminal; nothing was written (use --override to restore without "
                "the countdown, or --to DIR)")
        what = ("replaced, and files the snapshot does not have deleted" if delete
                else "replaced; files the snapshot does not have are kept")
        click.echo(f"btsoot: restoring snapshot {source.header.id} into the source folder "
                   f"{dest}: files there that differ from the snapshot will be {what}.", err=True)
        for left in range(COUNTDOWN, 0, -1):
            click.echo(f"\rstarting in {left:2d} s; Ctrl-C aborts ", err=True, nl=False)
            time.sleep(1)
        click.echo("\r" + " " * 40 + "\r", err=True, nl=False)
    return confirm


@main_group.command("restore")
@click.argument("name", required=False)
@click.option("--from", "from_remote", metavar="REMOTE", type=click.Path(),
              help="Restore from this remote folder alone: no config or local state needed.")
@click.option("--to", "to", metavar="DIR", type=click.Path(),
              help="Restore into DIR instead of the block's source (no countdown).")
@click.option("--snapshot", metavar="ID", help="A snapshot id (or unique prefix); default: "
              "the block's committed snapshot, or the remote's newest.")
@click.option("--only", multiple=True, metavar="PATH",
              help="Restore only this file or folder (repeatable).")
@click.option("--delete", is_flag=True,
              help="Delete what the snapshot does not have (mirror back); default: keep and list.")
@click.option("--dry-run", "-n", is_flag=True, help="Print what would be done; change nothing.")
@click.option("--checksum", "-c", is_flag=True,
              help="Compare files by digest, not by size and mtime.")
@click.option("--override", is_flag=True,
              help=f"Restore into the source without the {COUNTDOWN} s countdown.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), help="Parallel copies.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--quiet", "-q", is_flag=True, help="No output unless something fails.")
@click.option("--no-owner", is_flag=True,
              help="Leave files owned by whoever restores (default as a normal user).")
@click.option("--numeric-ids", is_flag=True,
              help="Give the recorded user and group ids, not those of the recorded names.")
@click.option("--no-xattrs", is_flag=True, help="Restore no extended attributes (nor ACLs).")
@click.option("--no-acls", is_flag=True, help="Restore no POSIX ACLs.")
@click.pass_context
def restore_cmd(ctx: click.Context, name: str | None, from_remote: str | None, to: str | None,
                snapshot: str | None, only: tuple[str, ...], delete: bool, dry_run: bool,
                checksum: bool, override: bool, jobs: int | None, as_json: bool,
                quiet: bool, no_owner: bool, numeric_ids: bool, no_xattrs: bool,
                no_acls: bool) -> None:
    """Restore a block's backup into its source (or --to DIR), copying only what differs.

    Without NAME, --from REMOTE --to DIR restores from the snapshots the remote
    keeps in REMOTE/.btsoot/ (a fresh machine, the NAS died).
    """
    from .restore import restore_block, restore_from, show  # not loaded for other commands

    if bool(name) == bool(from_remote):
        raise ConfigError("restore: name a block, or give --from REMOTE (not both)")
    kw: dict[str, Any] = dict(snapshot=snapshot, only=only, delete=delete, dry_run=dry_run,
                              checksum=checksum, jobs=jobs,
                              owners=False if no_owner else None, numeric_ids=numeric_ids,
                              xattrs=not no_xattrs, acls=not no_acls)
    bar = _Bar(name or "restore", "restore", enabled=not (quiet or as_json or dry_run))
    with bar:
        if from_remote:
            if not to:
                raise ConfigError("restore --from REMOTE needs --to DIR")
            res = restore_from(os.path.abspath(from_remote), to, progress=bar.update, **kw)
        else:
            assert name is not None
            block = load_config(ctx).get(name)
            into_source = to is None or (
                os.path.realpath(to) == os.path.realpath(block.source))
            confirm = _countdown(delete) if into_source and not override else None
            res = restore_block(block, to=to, progress=bar.update, confirm=confirm, **kw)
    s = res.summary()
    if as_json:
        click.echo(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode())
    elif dry_run:
        for op, path in res.actions:
            click.echo(f"{op:<10} {show(path)}")
    elif not quiet:
        for p in res.extra:
            click.echo(f"extra (kept)  {show(p)}")
        for p in res.deleted:
            click.echo(f"deleted       {show(p)}")
    label = name or "restore"
    for p, why in res.damaged:
        click.echo(f"btsoot: {label}: damaged: {show(p)}: {why}", err=True)
    for p, why in res.errors:
        click.echo(f"btsoot: {label}: cannot restore {show(p)}: {why}", err=True)
    for line in res.warnings:
        click.echo(f"btsoot: {label}: warning: {line}", err=True)
    if not (quiet or as_json):
        click.echo(_restore_line(label, s, dry_run))
    ctx.exit(res.exit_code)


def _restore_line(label: str, s: dict[str, Any], dry_run: bool) -> str:
    verb = "would copy" if dry_run else "copied"
    parts = [f"{verb} {s['copied_files']} files ({human(s['copied_bytes'])})"]
    for key, what in (("dirs_created", "folders created"), ("symlinks", "symlinks"),
                      ("hard_links", "hard links"),
                      ("attributes_set", "attributes set"), ("unchanged", "unchanged")):
        if s[key]:
            parts.append(f"{s[key]} {what}")
    if s["extra"]:
        parts.append(f"{len(s['extra'])} extra kept (--delete removes them)")
    if s["deleted"]:
        parts.append(f"{len(s['deleted'])} {'to delete' if dry_run else 'deleted'}")
    if s["damaged"]:
        parts.append(f"{len(s['damaged'])} DAMAGED on the remote (not restored)")
    if s["errors"]:
        parts.append(f"{len(s['errors'])} errors")
    took = "" if dry_run else f" in {s['durations'].get('total', 0):.1f}s"
    return (f"{label}: {s['result']}: snapshot {s['snapshot']} -> {s['destination']}: "
            f"{', '.join(parts)}{took}")


@main_group.command("verify")
@click.argument("name")
@click.option("--snapshot", metavar="ID", help="Verify against this snapshot (default: the "
              "committed one).")
@click.option("--subset", metavar="K/N",
              help="Read only slice K of N (by a hash of the path: stable, disjoint, complete; "
                   "for a nightly rotation use --next).")
@click.option("--sample", type=click.FloatRange(0, 100, min_open=True), metavar="PERCENT",
              help="Read only a random share of the files.")
@click.option("--next", "next_", metavar="K/N",
              help="Read the next K slices of N, from a cursor the block keeps: nightly "
                   "--next 1/30 reads everything once every 30 runs.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), help="Parallel readers.")
@click.option("--attic", is_flag=True, help="Also read the attic's files against their lists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--quiet", "-q", is_flag=True, help="No output unless damage is found.")
@click.pass_context
def verify_cmd(ctx: click.Context, name: str, snapshot: str | None, subset: str | None,
               sample: float | None, jobs: int | None, attic: bool, as_json: bool,
               quiet: bool, next_: str | None = None) -> None:
    """Re-read the remote and compare it with the snapshot (sizes and digests).

    Exits 7 when files are missing or corrupt; the next backup re-sends them.
    """
    from . import verify as v
    from .reading import show

    if sum(x is not None for x in (subset, sample, next_)) > 1:
        raise ConfigError("verify: give one of --subset, --sample and --next")
    select = v.subset(*v.parse_subset(subset)) if subset else (
        v.sample(sample) if sample is not None else None)
    rotate = v.parse_subset(next_, "--next") if next_ else None
    block = load_config(ctx).get(name)
    with _Bar(name, "verify", enabled=not (quiet or as_json)) as bar:
        res = v.verify(block, snapshot=snapshot, select=select, jobs=jobs,
                       progress=bar.update, attic=attic, rotate=rotate)
    s = res.summary()
    if as_json:
        click.echo(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode())
    else:
        for p in res.missing:
            click.echo(f"missing   {show(p)}")
        for p, why in res.corrupt:
            click.echo(f"corrupt   {show(p)}: {why}")
        for p in res.attic_missing:
            click.echo(f"missing   {show(p)} (attic)")
        for p, why in res.attic_corrupt:
            click.echo(f"corrupt   {show(p)} (attic): {why}")
        if not quiet:
            for p in res.extra:
                click.echo(f"extra     {show(p)}")
    for p, why in res.errors:
        click.echo(f"btsoot: {name}: cannot verify {show(p)}: {why}", err=True)
    if not as_json and (not quiet or res.damaged or res.attic_missing or res.attic_corrupt):
        click.echo(_verify_line(name, s))
    ctx.exit(res.exit_code)


def _verify_line(name: str, s: dict[str, Any]) -> str:
    parts = []
    if s["missing"]:
        parts.append(f"{len(s['missing'])} missing ({s['missing_files']} files)")
    if s["corrupt"]:
        parts.append(f"{len(s['corrupt'])} corrupt")
    head = f"{name}: verify: {s['result']}" + (f": {', '.join(parts)}" if parts else "")
    r = s.get("rotation")
    if r:
        last = (r["first"] - 1 + r["count"] - 1) % r["of"] + 1
        head += (f"; slice {r['first']}" + (f"-{last}" if r["count"] > 1 else "")
                 + f" of {r['of']} (next: {r['next']})")
    line = (f"{head}; read {s['checked_files']} of {s['files']} files "
            f"({human(s['checked_bytes'])}) in {s['durations'].get('total', 0):.1f}s")
    if s["extra"]:
        line += f"; {len(s['extra'])} extra on the remote (not in the snapshot)"
    if s["errors"]:
        line += f"; {len(s['errors'])} could not be checked"
    if s["recorded_for_next_backup"]:
        line += f"; the next backup re-sends {s['recorded_for_next_backup']} damaged paths"
    a = s["attic"]
    if a is not None:
        bad = len(a["missing"]) + len(a["corrupt"])
        line += (f"; attic: read {a['checked_files']} files"
                 + (f", {bad} missing or corrupt (kept as they are)" if bad else ", ok"))
    return line
