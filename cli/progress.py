"""A progress bar on stderr for long inspections: on a terminal only, after a second, never in CI."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich.progress is imported when a bar is shown: most inspections never show one
    from rich.console import Console
    from rich.progress import Progress, TaskID

SHOW_AFTER_SECONDS = 1.0  # quicker inspections never flash a bar


def progress_wanted(console: Console, *, quiet: bool, output_format: str) -> bool:
    """Whether to show a bar: a terminal on stderr, table output, not --quiet, and not in CI (env CI)."""
    return console.is_terminal and not quiet and output_format == "table" and not os.environ.get("CI")


class ScanProgress:
    """The scanner's progress callback: a transient bar of bytes read, shown once a scan outlasts the delay."""

    def __init__(
        self,
        console: Console,
        *,
        delay: float = SHOW_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._console = console
        self._delay = delay
        self._clock = clock
        self._began = clock()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        """Record that `done` of `total` bytes are scanned."""
        if self._bar is None:
            if self._clock() - self._began < self._delay or done >= total:
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("reading snapshots"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._task = self._bar.add_task("read", total=total)
            self._bar.start()
        assert self._task is not None
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        """Remove the bar, if it was shown."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
