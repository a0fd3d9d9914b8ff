"""The `log` command: a block's last runs, and what one run did item by item.

Imported at the bottom of cli.py, which registers it onto `main_group`.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from .cli_base import human, load_config, main_group, when
from .errors import UsageError, printable


def age(seconds: float) -> str:
    """A duration as people say it: 40s, 12m, 5h, 3d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(0.0, seconds):.0f}s"


def _pick(runs: list[dict[str, Any]], which: str) -> dict[str, Any]:
    """The run named by its id, a unique start of it, or "last"."""
    if which == "last":
        if runs:
            return runs[0]
        raise UsageError("no runs logged yet")
    found = [r for r in runs if isinstance(r.get("run"), str) and r["run"].startswith(which)]
    exact = [r for r in found if r["run"] == which]
    if exact or len(found) == 1:
        return (exact or found)[0]
    if found:
        raise UsageError(f"{which!r} names {len(found)} runs; give more of the id")
    raise UsageError(f"no run {which!r} in the log (btsoot log NAME lists them)")


@main_group.command("log")
@click.argument("name")
@click.argument("run", required=False)
@click.option("--last", "-n", "count", type=click.IntRange(1), default=20, show_default=True,
              help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True,
              help="The records (a run's items) as JSON, one per line.")
@click.pass_context
def log_cmd(ctx: click.Context, name: str, run: str | None, count: int, as_json: bool) -> None:
    """The block's last runs; with RUN (an id, its start, or "last"), everything that
    run did: copied, patched, moved, deleted, re-sent, failed."""
    from . import runlog
    from .itemize import line
    from .state import BlockState

    st = BlockState(load_config(ctx).get(name).state)
    if run is None:
        runs = st.recent_runs(count)
        if as_json:
            for r in reversed(runs):
                click.echo(orjson.dumps(r).decode())
            return
        if not runs:
            click.echo(f"{name}: no runs logged yet")
            return
        _table(list(reversed(runs)))
        return
    rec = _pick(st.recent_runs(100_000), run)
    rid = rec.get("run")
    try:
        found = runlog.read_items(st.root, rid) if isinstance(rid, str) else None
        first = next(found, None) if found is not None else None
    except FileNotFoundError:
        found = first = None
    if as_json:
        if found is None:
            raise UsageError(f"run {rid} has no item list kept (a failed or dry run, or "
                             "one dropped by the size cap)")
        for it in [first] if first is not None else []:
            click.echo(orjson.dumps(it).decode())
        for it in found:
            click.echo(orjson.dumps(it).decode())
        return
    click.echo(_headline(rec))
    if rec.get("error"):
        click.echo(f"  error: {printable(str(rec['error']))}")
    if found is None:
        click.echo("  (no item list kept: a failed run, or one dropped by the size cap)")
        return
    for it in ([first] if first is not None else []):
        click.echo(_item_line(it, line))
    for it in found:
        click.echo(_item_line(it, line))


def _item_line(it: dict[str, Any], line: Any) -> str:
    op, path = str(it.get("op", "?")), str(it.get("path", ""))
    if op == "truncated":
        return f"... {it.get('left_out')} more items left out (the item lists' size cap)"
    d = {k: v.encode("utf-8", "surrogateescape") if k in ("from", "target") and isinstance(v, str) else v
         for k, v in it.items() if k not in ("op", "path", "cause", "why")}
    if op == "failed":
        d = {"error": f"{it.get('cause', 'other')}: {it.get('error', '?')}"}
    elif op == "resend" and "why" in it:
        d = {"error": it["why"]}
    return line(op, path.encode("utf-8", "surrogateescape"), d)


def _headline(r: dict[str, Any]) -> str:
    parts = [f"run {r.get('run', '?')}", when(r.get("started"), seconds=True), str(r.get("result", "?")),
             f"exit {r.get('exit_code', '?')}"]
    ops = r.get("operations")
    if isinstance(ops, dict) and ops:
        parts.append(", ".join(f"{k} {v}" for k, v in sorted(ops.items()) if k != "stash"))
    sent = r.get("bytes_sent")
    if isinstance(sent, int):
        parts.append(f"sent {human(sent)}")
    causes = r.get("causes")
    if isinstance(causes, dict) and causes:
        parts.append("not backed up: " + ", ".join(f"{k} {v}" for k, v in causes.items()))
    return "; ".join(parts)


def _table(runs: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None)
    for col in ("run", "started", "result", "exit", "files", "sent", "seconds", "changes",
                "not backed up", "items"):
        t.add_column(col)
    for r in runs:
        ops = r.get("operations")
        changes = (sum(v for k, v in ops.items() if k != "stash" and isinstance(v, int))
                   if isinstance(ops, dict) else None)
        causes = r.get("causes")
        why = ", ".join(f"{k} {v}" for k, v in causes.items()) if isinstance(causes, dict) else ""
        secs = (r.get("durations") or {}).get("total") if isinstance(r.get("durations"), dict) else None
        secs = secs if secs is not None else r.get("seconds")
        t.add_row(str(r.get("run", "-")), when(r.get("started"), seconds=True), str(r.get("result", "-")),
                  str(r.get("exit_code", "-")),
                  str(r["files"]) if type(r.get("files")) is int else "-",
                  human(r["bytes_sent"]) if type(r.get("bytes_sent")) is int else "-",
                  f"{secs:.1f}" if isinstance(secs, (int, float)) else "-",
                  str(changes) if changes is not None else "-",
                  why or ("-" if r.get("error") is None else printable(str(r["error"]))[:60]),
                  str(r["items"]) if type(r.get("items")) is int else "-")
    Console(width=200 if not sys.stdout.isatty() else None).print(t)
