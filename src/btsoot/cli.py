"""The command line: a thin shell over the library (config, backup, restore, verify).

Every failure a user can meet is a `BtsootError`; `main()` prints it as one line
on stderr and exits with its code (see README, "Exit codes").
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click
import orjson

from .cli_base import human, load_config, main_group, when
from .config import (
    MAX_ATTIC_DAYS,
    MAX_KEEP,
    Block,
    check_apart,
    check_value,
    parse_max_delete,
    validate_name,
)
from .errors import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    BtsootError,
    ConfigError,
    StateError,
    Stopped,
    UsageError,
    printable,
)
from .retention import DEFAULT_WITHIN, Policy


@main_group.command()
@click.argument("name")
@click.argument("source", type=click.Path())
@click.argument("remote", type=click.Path())
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="gitignore-style pattern, relative to SOURCE (repeatable).")
@click.option("--max-delete", default="50%", show_default=True, metavar="N|P%",
              help="Stop a backup that would delete more files than this.")
@click.option("--one-file-system/--cross-file-systems", default=True, show_default=True,
              help="Stay on SOURCE's file system (mount points are kept as empty folders).")
@click.option("--keep-within", default=DEFAULT_WITHIN, show_default=True, metavar="DURATION",
              help="Keep every snapshot this long (30d, 2w, 6m, 1y; 0: none).")
@click.option("--keep-last", "--keep", "keep_last", default=1, show_default=True,
              type=click.IntRange(1, MAX_KEEP), help="Keep the N newest snapshots.")
@click.option("--keep-daily", default=0, type=click.IntRange(0, MAX_KEEP), metavar="N",
              help="Keep the newest snapshot of each of the last N days.")
@click.option("--keep-weekly", default=0, type=click.IntRange(0, MAX_KEEP), metavar="N",
              help="Likewise, of each of the last N ISO weeks.")
@click.option("--keep-monthly", default=0, type=click.IntRange(0, MAX_KEEP), metavar="N",
              help="Likewise, of each of the last N months.")
@click.option("--keep-yearly", default=0, type=click.IntRange(0, MAX_KEEP), metavar="N",
              help="Likewise, of each of the last N years.")
@click.option("--attic-max", default="", metavar="SIZE",
              help="Let the oldest snapshots go while the attic is bigger (50G).")
@click.option("--attic-days", default=None, metavar="DAYS", type=click.IntRange(0, MAX_ATTIC_DAYS),
              hidden=True)  # the older name of --keep-within DAYSd
@click.option("--no-owners", is_flag=True,
              help="Do not give the remote's files their owners (still recorded).")
@click.option("--no-xattrs", is_flag=True,
              help="Neither record nor copy extended attributes (ACLs included).")
@click.option("--no-acls", is_flag=True, help="Neither record nor copy POSIX ACLs.")
@click.option("--no-hard-links", is_flag=True,
              help="Treat hard links as separate files (each sent and restored on its own).")
@click.option("--snapshot", type=click.Choice(["btrfs", "command"]),
              help="Back up from a snapshot of SOURCE made for each run (see README).")
@click.option("--snapshot-path", default="", metavar="DIR",
              help="With --snapshot command: where the snapshot appears.")
@click.option("--snapshot-create", default="", metavar="CMD",
              help="With --snapshot command: makes the snapshot (a shell command).")
@click.option("--snapshot-release", default="", metavar="CMD",
              help="With --snapshot command: drops it.")
@click.option("--on-success", default="", metavar="CMD",
              help="A shell command run after a successful run (the JSON summary on stdin).")
@click.option("--on-failure", default="", metavar="CMD",
              help="A shell command run after a failed run, or when the block is stale.")
@click.option("--on-always", default="", metavar="CMD", help="A shell command run after every run.")
@click.option("--ping-url", default="", metavar="URL",
              help="A health-check URL (healthchecks-style): /start, then /0 or /<exit code>.")
@click.option("--stale-after", default="", metavar="DURATION",
              help="No successful run for this long (e.g. 3d) counts as a failure for the alerts.")
@click.option("--bwlimit", default="", metavar="RATE",
              help="Send at most this much per second: 2M (bytes) or 20Mbit.")
@click.pass_context
def add(ctx: click.Context, name: str, source: str, remote: str, exclude: tuple[str, ...],
        max_delete: str, one_file_system: bool, keep_within: str, keep_last: int,
        keep_daily: int, keep_weekly: int, keep_monthly: int, keep_yearly: int,
        attic_max: str, attic_days: int | None, no_owners: bool, no_xattrs: bool,
        no_acls: bool, no_hard_links: bool, snapshot: str | None, snapshot_path: str,
        snapshot_create: str, snapshot_release: str, on_success: str = "", on_failure: str = "",
        on_always: str = "", ping_url: str = "", stale_after: str = "",
        bwlimit: str = "") -> None:
    """Add a block: a SOURCE folder backed up to a REMOTE folder."""
    validate_name(name)
    parse_max_delete(max_delete)
    check_value("ping_url", ping_url, "--ping-url")
    check_value("stale_after", stale_after, "--stale-after")
    check_value("bwlimit", bwlimit, "--bwlimit")
    if attic_days is not None:
        keep_within = f"{attic_days}d"
    check_value("keep_within", keep_within, "--keep-within")
    check_value("attic_max", attic_max, "--attic-max")
    from .scan import make_exclude

    make_exclude(list(exclude))  # refuse a pattern gitignore would not take
    cfg = load_config(ctx)
    if name in cfg.blocks:
        raise ConfigError(f"a block named {name!r} exists already")
    src, dst = os.path.abspath(source), os.path.abspath(remote)
    if not os.path.isdir(src):
        raise ConfigError(f"source {src} is not an existing folder")
    if not os.path.isdir(dst):
        raise ConfigError(f"remote {dst} is not an existing folder (is the share mounted?)")
    check_apart(src, dst)
    cfg.blocks[name] = Block(name, src, dst, list(exclude), max_delete, one_file_system,
                             keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly,
                             keep_monthly=keep_monthly, keep_yearly=keep_yearly,
                             keep_within=keep_within, attic_max=attic_max,
                             owners=not no_owners, xattrs=not no_xattrs,
                             acls=not (no_acls or no_xattrs), hard_links=not no_hard_links,
                             snapshot=snapshot or "", snapshot_path=snapshot_path,
                             snapshot_create=snapshot_create, snapshot_release=snapshot_release,
                             on_success=on_success, on_failure=on_failure, on_always=on_always,
                             ping_url=ping_url, stale_after=stale_after, bwlimit=bwlimit)
    cfg.blocks[name].check()
    cfg.save()
    click.echo(f"added block {name}: {src} -> {dst}")


@main_group.command()
@click.argument("name")
@click.pass_context
def rm(ctx: click.Context, name: str) -> None:
    """Forget a block. Its source, remote and snapshots are left untouched."""
    cfg = load_config(ctx)
    cfg.get(name)
    del cfg.blocks[name]
    cfg.save()
    click.echo(f"removed block {name} from the config (no data was touched)")


@main_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List blocks with their last run."""
    from . import runlog
    from .cli_log import age
    from .state import BlockState

    cfg = load_config(ctx)
    rows: list[dict[str, Any]] = []
    for b in sorted(cfg.blocks.values(), key=lambda b: b.name):
        bst = BlockState(b.state)
        last = bst.last_run() or {}
        try:
            remotes = bst.load_head().remotes
        except StateError:
            remotes = {}
        attic = next((r["attic_bytes"] for r in bst.recent_runs(50)
                      if type(r.get("attic_bytes")) is int), None)
        rows.append({"name": b.name, "source": b.source, "remote": b.remote, "last_run": last,
                     # files the remote does not hold as the source has them, since when
                     "unsent": runlog.unsent_summary(runlog.load_unsent(bst.root)),
                     "state_bytes": bst.size(),  # the local state folder's size
                     "attic_bytes": attic,  # as the last run that pruned it left it
                     # each remote (disk) the block went to: generation, snapshot, when
                     "remotes": [dict(v, id=k) for k, v in sorted(remotes.items())]})
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    if not rows:
        click.echo("no blocks; add one with 'btsoot add NAME SOURCE REMOTE'")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None)
    for col in ("name", "source", "remote", "last run", "result", "files", "bytes", "attic",
                "unsent", "state"):
        t.add_column(col)
    for r in rows:
        last = r["last_run"]
        # (The run log is read as written, by whatever wrote it: every field checked.)
        started = when(last.get("started")) if last else "never"
        files, size = last.get("files"), last.get("bytes")
        t.add_row(r["name"], r["source"], r["remote"], started, str(last.get("result", "-")),
                  str(files) if type(files) is int else "-",
                  human(size) if type(size) is int and size >= 0 else "-",
                  human(r["attic_bytes"]) if r["attic_bytes"] is not None else "-",
                  f"{u['files']} ({u['never_sent']} never sent; oldest {age(u['oldest_age_s'])})"
                  if (u := r["unsent"])["files"] else "-",
                  human(r["state_bytes"]) + (f" ({r['state_bytes'] / files:.0f} B/file)"
                                             if type(files) is int and files > 0 else ""))
        if len(r["remotes"]) > 1:  # a rotation: when each disk was last brought up to date
            for rem in sorted(r["remotes"], key=lambda x: str(x.get("updated_ns"))):
                ns = rem.get("updated_ns")
                upd = when(ns / 1e9 if type(ns) is int else None)
                t.add_row("", f"  remote {rem['id']}", str(rem.get("path", "")), upd,
                          f"generation {rem.get('generation')}", "", "", "", "", "")
    Console(width=200 if not sys.stdout.isatty() else None).print(t)


@main_group.command("snapshots")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, oldest first.")
@click.pass_context
def snapshots_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """List a block's kept snapshots: size, what went to the attic, whether each
    restores exactly (restore NAME --snapshot ID)."""
    from .history import snapshot_table

    rows = snapshot_table(load_config(ctx).get(name))
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    if not rows:
        click.echo(f"{name}: no snapshots yet")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None)
    for col in ("id", "time (UTC)", "files", "bytes", "to the attic", "restores", "kept by"):
        t.add_column(col)
    for r in rows:
        attic = ("-" if r["attic_files"] is None else
                 f"{r['attic_files']} files, {human(r['attic_bytes'])}" if r["attic_files"] else "")
        t.add_row(r["id"], (r["time"] or "-").replace("T", " ").rstrip("Z"),
                  "-" if r["files"] is None else str(r["files"]),
                  "-" if r["bytes"] is None else human(r["bytes"]), attic,
                  {True: "exactly", False: "in part", None: "? (remote not reachable)"}[r["complete"]],
                  ", ".join(r["kept_by"]))
    Console(width=200 if not sys.stdout.isatty() else None).print(t)


@main_group.command("prune")
@click.argument("name")
@click.option("--dry-run", "-n", is_flag=True, help="Print what would be removed; remove nothing.")
@click.pass_context
def prune_cmd(ctx: click.Context, name: str, dry_run: bool) -> None:
    """Apply the block's retention now: let go the snapshots it does not keep, and
    remove from the attic what no kept snapshot needs (each backup that writes to
    the remote does this too)."""
    from .history import prune

    block = load_config(ctx).get(name)
    d = prune(block, dry_run)
    if d is None:
        click.echo(f"{name}: no snapshots yet")
        return
    verb = "would let go" if dry_run else "let go"
    click.echo(f"{name}: keeps {len(d.kept)} snapshot(s) ({Policy.of(block).describe()}); "
               f"{verb} {len(d.dropped)}" + (f" ({len(d.capped)} for attic_max)" if d.capped else ""))
    for sid in d.dropped:
        click.echo(f"  {sid}")
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{name}: attic: {verb} {len(d.doomed)} file(s), {human(d.doomed_bytes)}; "
               f"keeps {len(d.held)}, {human(d.attic_bytes)}")


def _blocks(ctx: click.Context, names: tuple[str, ...], all_: bool) -> list[Block]:
    cfg = load_config(ctx)
    if all_ == bool(names):
        raise ConfigError("name one or more blocks, or give --all")
    return sorted(cfg.blocks.values(), key=lambda b: b.name) if all_ else [cfg.get(n) for n in names]


@main_group.command("backup")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Back up every block.")
@click.option("--dry-run", "-n", is_flag=True, help="Print what would be done; change nothing.")
@click.option("--checksum", "-c", is_flag=True, help="Re-read and hash every file.")
@click.option("--override", is_flag=True, help="Pass the safety guards deliberately.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), help="Parallel transfers.")
@click.option("--new-remote", is_flag=True,
              help="The remote is an empty folder joining the block (a second disk of a "
                   "rotation): back up into it as a first backup.")
@click.option("--adopt", type=click.Choice(["times", "checksum"]), is_flag=False,
              flag_value="times", default=None,
              help="The remote holds a copy made another way (rsync, a carried disk): take "
                   "what it holds as it is, send only what differs. A file counts as the "
                   "source's when size and mtime match; --adopt=checksum reads them all.")
@click.option("--keep-extras", is_flag=True,
              help="With --adopt: leave files the source does not have where they are, "
                   "outside the backup, instead of removing them.")
@click.option("--bwlimit", metavar="RATE",
              help="Send at most this much per second: 2M (bytes) or 20Mbit; overrides the "
                   "block's bwlimit; 0: no limit.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--quiet", "-q", is_flag=True, help="No output unless something fails.")
@click.pass_context
def backup_cmd(ctx: click.Context, names: tuple[str, ...], all_: bool, dry_run: bool,
               checksum: bool, override: bool, jobs: int | None, as_json: bool,
               quiet: bool, new_remote: bool = False, adopt: str | None = None,
               keep_extras: bool = False, bwlimit: str | None = None) -> None:
    """Back up blocks: send only what changed to the remote."""
    from . import hooks
    from .adopt import Adoption
    from .backup import backup
    from .errors import EXIT_OK
    from .itemize import display_path, itemize
    from .progress import Reporter

    if keep_extras and not adopt:
        raise UsageError("--keep-extras goes with --adopt")
    rate = None
    if bwlimit is not None:
        from .limit import parse_rate

        try:
            rate = parse_rate(bwlimit)
        except ValueError as e:
            raise UsageError(f"--bwlimit: {e}") from None
    if adopt and (all_ or len(names) != 1 or new_remote):
        raise UsageError("--adopt takes one block (and not --new-remote): it lists that remote")
    worst = EXIT_OK
    summaries = []
    for block in _blocks(ctx, names, all_):
        reporter = Reporter(block.name, enabled=not (quiet or as_json or dry_run))
        if not dry_run:
            _warn(block.name, hooks.started(block))
        try:
            with reporter:
                res = backup(block, dry_run=dry_run, checksum=checksum, override=override,
                             jobs=jobs, progress=reporter.update, new_remote=new_remote,
                             adopt=Adoption(adopt, keep_extras) if adopt else None,
                             bwlimit=rate)
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one block's failure never stops the others
            if isinstance(e, BtsootError):
                code, message = e.exit_code, e.message
            elif isinstance(e, KeyboardInterrupt):
                signum = getattr(e, "signum", signal.SIGINT)
                code, message = 128 + signum, f"interrupted ({signal.Signals(signum).name})"
            else:
                code, message = EXIT_INTERNAL, f"internal error: {type(e).__name__}: {e}"
            message = printable(message)
            failed = {"block": block.name, "result": "failed", "exit_code": code, "error": message}
            if not dry_run:
                _warn(block.name, hooks.finished(block, failed))
            if (len(names) == 1 and not all_) or isinstance(e, KeyboardInterrupt):
                raise
            click.echo(f"btsoot: {block.name}: {message}", err=True)
            worst = max(worst, code)
            summaries.append(failed)
            continue
        worst = max(worst, res.exit_code)
        s = res.summary()
        if not dry_run:
            s["hooks"] = hooks.finished(block, s)
            _warn(block.name, s["hooks"])
        summaries.append(s)
        if dry_run and res.plan is not None and not as_json:
            for line in itemize(res.plan):
                click.echo(line)
        for path, why in (res.scan.errors if res.scan else []) + (
                res.execution.errors if res.execution else []):
            click.echo(f"btsoot: {block.name}: cannot back up {display_path(path)}: {why}",
                       err=True)
        for note in s["notices"] if not quiet else []:
            click.echo(f"btsoot: {block.name}: note: {note}", err=True)
        for aside in s["set_aside"] if not quiet else []:
            click.echo(f"btsoot: {block.name}: warning: {aside['path']} on the remote: found what "
                       f"btsoot did not put there; kept in {aside['to']}", err=True)
        for path in res.scan.skipped if res.scan and not quiet else []:
            click.echo(f"btsoot: {block.name}: warning: skipped {display_path(path)}: "
                       "not a file, folder or link (fifo, socket or device)", err=True)
        if not quiet and not as_json:
            click.echo(_summary_line(s, dry_run))
    if as_json:
        click.echo(orjson.dumps(summaries if len(summaries) != 1 else summaries[0],
                                option=orjson.OPT_INDENT_2).decode())
    ctx.exit(worst)


def _warn(name: str, warnings: list[str]) -> None:
    for w in warnings:
        click.echo(f"btsoot: {name}: warning: {printable(w)}", err=True)


def _summary_line(s: dict[str, Any], dry_run: bool) -> str:
    ops = s["operations"]
    parts = [f"{k} {v}" for k, v in sorted(ops.items()) if k != "stash"]
    what = ", ".join(parts) if parts else "no changes"
    head = "would do" if dry_run else s["result"]
    extra = "" if dry_run else (
        f"; sent {human(s['bytes_sent'])} in {s['durations'].get('total', 0):.1f}s")
    repaired = s.get("repaired", 0)
    a = s.get("adoption")
    if a:
        what = (f"adopted {a['files']} files, {human(a['bytes'])} already on the remote"
                f" ({a['matched_elsewhere']} of them to be moved)"
                + (f", {a['extras']} extra files kept as they are" if a["keep_extras"] and a["extras"]
                   else "") + f"; then {what}")
    return (f"{s['block']}: {head}: {what}; {s['files']} files, {human(s['bytes'])}{extra}"
            + (f"; {s['counts']['errors']} not backed up ("
               + ", ".join(f"{k} {v}" for k, v in s["causes"].items()) + ")"
               if s["counts"].get("errors") else "")
            + _unsent_part(s.get("unsent"))
            + (f"; {'would re-send' if dry_run else 're-sent'} {repaired} damaged"
               if repaired else "")
            + (f"; {len(s['set_aside'])} in the way moved to .btsoot/damaged/"
               if s.get("set_aside") else "")
            + (f"; {len(s['remade'])} remote folders made again" if s.get("remade") else "")
            + (f"; {s['refetched']} gone from the remote sent again" if s.get("refetched") else ""))


def _unsent_part(u: dict[str, Any] | None) -> str:
    """'; 3 files not on the remote as they are, the oldest for 2d' (nothing when none)."""
    from .cli_log import age

    if not u or not u.get("files"):
        return ""
    oldest = u.get("oldest_age_s")
    return (f"; {u['files']} files not on the remote as they are"
            + (f" ({u['never_sent']} never sent)" if u.get("never_sent") else "")
            + (f", the oldest for {age(oldest)}" if isinstance(oldest, (int, float)) else ""))


@main_group.command("doctor")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@click.pass_context
def doctor_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """Probe what the block's remote can hold (case, names, timestamps, links) and
    keep the result on it; backups use it from then on."""
    from . import profile as profiles
    from . import remote as rmt
    from .errors import FatalIOError
    from .remotefs import Remote
    from .state import BlockState, Lock

    block = load_config(ctx).get(name)
    st = BlockState(block.state)
    st.ensure()
    with Lock(st.lock, f"block {block.name!r}"):
        rmt.check_remote(block.remote, block.name, st.load_head().head is not None)
        try:
            with Remote(block.remote) as remote:
                ident = rmt.read_block_id(block.remote)
                if ident is not None:
                    p = profiles.probe(remote)
                    profiles.save(remote, p)
                    if ident.get("remote_id"):  # backups use this result from now on
                        profiles.keep_copy(st, ident["remote_id"], p)
                else:  # not backed up into yet: probe, but leave nothing behind
                    remote.makedirs(profiles.PROBE.rpartition(b"/")[0])
                    try:
                        p = profiles.probe(remote)
                    finally:
                        remote.rmdir(profiles.PROBE.rpartition(b"/")[0])
        except OSError as e:
            raise FatalIOError(f"remote {block.remote}: cannot probe: {e.strerror}") from None
    if as_json:
        click.echo(p.to_json().decode())
        return
    click.echo(f"{name}: remote {block.remote}")
    for what, value in profiles.describe(p):
        click.echo(f"  {what:<22} {value}")
    from . import mounts

    _, kind, source = mounts.mount_of(block.source)
    click.echo(f"{name}: source {block.source}")
    for what, value in (
            ("file system", f"{kind or '?'} ({source or '?'})"),
            ("inode numbers", "kept across mounts: trusted" if mounts.inodes_stable(block.source)
             else "change with each mount: not recorded; a moved file is known by its "
                  "name, size and mtime"),
            ("read from", f"a {block.snapshot} snapshot made for each run" if block.snapshot
             else "the live tree")):
        click.echo(f"  {what:<22} {value}")


@main_group.command("diff")
@click.argument("name")
@click.option("--checksum", "-c", is_flag=True, help="Re-read and hash every file.")
@click.option("--from", "old", metavar="ID", help="Compare two kept snapshots instead: this one ...")
@click.option("--to", "new", metavar="ID", help="... with this one (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="With --from: one JSON object per line.")
@click.pass_context
def diff_cmd(ctx: click.Context, name: str, checksum: bool, old: str | None, new: str | None,
             as_json: bool) -> None:
    """Show what the next backup would do (changes nothing); with --from, what
    changed between two snapshots."""
    if old is None:
        if new is not None or as_json:
            raise UsageError("--to and --json go with --from ID")
        ctx.invoke(backup_cmd, names=(name,), all_=False, dry_run=True, checksum=checksum,
                   override=True, jobs=None, as_json=False, quiet=False)
        return
    from .history import snapshot_diff
    from .itemize import display_path

    a, b, changes = snapshot_diff(load_config(ctx).get(name), old, new)
    counts: dict[str, int] = {}
    for what, e in changes:
        counts[what] = counts.get(what, 0) + 1
        if as_json:
            click.echo(orjson.dumps({"change": what, "path": display_path(e.path), "type": e.kind,
                                     "size": e.size}).decode())
        else:
            tail = "/" if e.kind == "dir" else ""
            click.echo(f"{what:<8} {display_path(e.path)}{tail}")
    if not as_json:
        said = ", ".join(f"{n} {w}" for w, n in sorted(counts.items())) or "no changes"
        click.echo(f"{name}: {a} -> {b}: {said}")


def _stop(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def _stopped(e: Stopped) -> int:
    click.echo(f"btsoot: stopped by {signal.Signals(e.signum).name}; the next run picks up "
               "where this one ended", err=True)
    return 128 + e.signum


def main(argv: list[str] | None = None) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        rv = main_group.main(args=argv, prog_name="btsoot", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = EXIT_USAGE
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, Stopped):  # click turns an interrupt into Abort
            code = _stopped(e.__cause__)
        else:
            click.echo("btsoot: aborted", err=True)
            code = 130
    except BtsootError as e:
        click.echo(f"btsoot: error: {e.message}", err=True)
        code = e.exit_code
    except Stopped as e:
        code = _stopped(e)
    except KeyboardInterrupt:
        click.echo("btsoot: interrupted", err=True)
        code = 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if os.environ.get("BTSOOT_DEBUG"):
            raise
        click.echo(f"btsoot: internal error: {type(e).__name__}: {printable(str(e))} "
                   "(set BTSOOT_DEBUG=1 for a traceback)", err=True)
        code = EXIT_INTERNAL
    sys.exit(code)


from . import cli_log, cli_restore  # noqa: E402,F401  (register log; restore, verify)
