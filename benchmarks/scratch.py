"""A benchmark's scratch folder, removed at the end whatever ends the run."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_in_scratch(prefix: str, tmp: str | None, body: Callable[[Path], int]) -> int:
    """body(work) in a new folder under tmp; its exit status (130 after Ctrl-C or
    SIGTERM, which unwind like Ctrl-C so that mounts and servers are undone). The
    folder is removed after, unless something is still mounted in it (never delete
    through a mount)."""
    signal.signal(signal.SIGTERM, _interrupted)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    t = time.monotonic()
    try:
        return body(work)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        mounted = [p for p in work.glob("*") if os.path.ismount(p)]
        if mounted:
            print(f"still mounted, {work} left in place: {mounted}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        print(f"load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"{time.monotonic() - t:.0f} s in all")
