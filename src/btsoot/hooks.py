"""Telling someone: hooks and health-check pings around each block's backup.

A cron job that fails quietly for weeks is how backups die. Per block:

- `on_success`, `on_failure`, `on_always`: shell commands run after the block's
  run, the run's JSON summary (as `backup --json` prints it) on their stdin and
  BTSOOT_BLOCK, BTSOOT_RESULT, BTSOOT_EXIT_CODE (and BTSOOT_STALE_DAYS when the
  block is stale) in their environment. "Success" is exit 0 and not stale.
- `ping_url`: a health-check URL in the convention of healthchecks-style
  services, pinged at the start (`URL/start`) and at the end (`URL/0` on
  success, else `URL/<exit code>`, or `URL/fail` when only staleness failed);
  the end ping carries the summary as its body. A service that hears nothing
  alerts too: the case of a cron that stopped running, which btsoot cannot see.
- `stale_after` (a duration like "3d"): a block whose last successful run is
  older than that counts as failed for the hooks and the ping, whatever this
  run's outcome (a guard that stops every night, exit 3 every night).

A hook or ping that fails, or hangs past `hook_timeout` seconds (its process
group is killed), is reported on stderr and in the run's summary; it never
changes the backup's outcome or its exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import orjson

from .config import Block
from .retention import within_start
from .state import BlockState

OK_RESULTS = ("ok", "nothing")


def last_success_ns(st: BlockState, runs: int = 1000) -> int | None:
    """When the newest run that left the remote up to date (exit 0) started."""
    for r in st.recent_runs(runs):
        if r.get("exit_code") == 0 and r.get("result") in OK_RESULTS:
            t = r.get("started")
            if isinstance(t, (int, float)):
                return int(t * 10**9)
    return None


def stale_days(st: BlockState, stale_after: str, now_ns: int | None = None) -> float | None:
    """Days since the last successful run, when that is longer ago than
    stale_after allows (None: not stale, or no limit set)."""
    if stale_after.strip() in ("", "0"):
        return None
    now_ns = time.time_ns() if now_ns is None else now_ns
    last = last_success_ns(st)
    if last is None:
        # Never succeeded: stale once the first run is that long ago.
        runs = st.recent_runs(100_000)
        started = [r["started"] for r in runs if isinstance(r.get("started"), (int, float))]
        if not started:
            return None
        last = int(min(started) * 10**9)
    if last >= within_start(now_ns, stale_after):
        return None
    return (now_ns - last) / 86_400e9


def ping(url: str, what: str, body: bytes, timeout: float) -> str | None:
    """POST body to url/what (url itself for ""); None, or why it failed."""
    import urllib.error
    import urllib.request

    target = url.rstrip("/") + (f"/{what}" if what else "")
    req = urllib.request.Request(target, data=body, method="POST",
                                 headers={"User-Agent": "btsoot", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - the user's URL
            r.read(1 << 16)
    except urllib.error.HTTPError as e:
        return f"ping {target}: HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"ping {target}: {reason}"
    return None


def run_hook(name: str, cmd: str, stdin: bytes, env: dict[str, str], timeout: float) -> str | None:
    """Run one hook command; None, or why it failed (its exit, a timeout)."""
    try:
        p = subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as e:
        return f"{name} hook cannot start: {e.strerror}"
    try:
        _, err = p.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        return f"{name} hook killed after {timeout:g} s"
    if p.returncode != 0:
        first = err.decode("utf-8", "replace").strip().splitlines()
        return f"{name} hook exited {p.returncode}" + (f": {first[-1]}" if first else "")
    return None


def started(block: Block) -> list[str]:
    """The start ping; the warnings to show."""
    if not block.ping_url:
        return []
    why = ping(block.ping_url, "start", b"", block.hook_timeout)
    return [why] if why else []


def finished(block: Block, summary: dict[str, Any]) -> list[str]:
    """Run the block's hooks and end ping for this summary (stale_days added to it
    when the block is stale); the warnings to show."""
    code = summary.get("exit_code", 0)
    days = stale_days(BlockState(block.state), block.stale_after)
    if days is not None:
        summary["stale_days"] = round(days, 2)
    ok = code == 0 and days is None
    body = orjson.dumps(summary, option=orjson.OPT_INDENT_2)
    env = dict(os.environ, BTSOOT_BLOCK=block.name, BTSOOT_RESULT=str(summary.get("result")),
               BTSOOT_EXIT_CODE=str(code))
    if days is not None:
        env["BTSOOT_STALE_DAYS"] = f"{days:.2f}"
    warnings = []
    for name, cmd in (("on_success", block.on_success if ok else ""),
                      ("on_failure", block.on_failure if not ok else ""),
                      ("on_always", block.on_always)):
        if cmd:
            why = run_hook(name, cmd, body, env, block.hook_timeout)
            if why:
                warnings.append(why)
    if block.ping_url:
        what = "0" if ok else (str(code) if code else "fail")
        why = ping(block.ping_url, what, body, block.hook_timeout)
        if why:
            warnings.append(why)
    return warnings
