"""Progress on a terminal (rich); silence elsewhere, so cron mails stay short."""

from __future__ import annotations

import sys
import time
from typing import Any


class Reporter:
    def __init__(self, block: str, enabled: bool = True) -> None:
        self.block = block
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._phase = ""
        self._last = 0.0
        self.total_bytes = 0

    def __enter__(self) -> Reporter:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.fields[block]}[/] {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("scan", total=None, block=self.block)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, what: str, value: Any) -> None:
        if self._progress is None:
            return
        if what == "phase":
            self._phase = value
            if value == "transfer":
                self._progress.update(self._task, description="transfer", completed=0,
                                      total=self.total_bytes or None)
            else:
                self._progress.update(self._task, description=value)
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        if what == "scan":
            self._progress.update(self._task, description=f"scan: {value.files} files",
                                  completed=value.bytes)
        elif what == "transfer":
            self._progress.update(self._task, description=f"transfer: {value.ops} ops",
                                  completed=value.bytes_sent)
        elif what == "plan_bytes":
            self.total_bytes = value
