"""`gradcheck watch RUN_DIR`: follow a run being written, re-inspecting it whenever its snapshot files change."""

from __future__ import annotations

import functools
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from gradcheck.analysis.config import Config
from gradcheck.analysis.errors import GradcheckError
from gradcheck.analysis.history import steps_until
from gradcheck.analysis.inspection import Report, inspect_run
from gradcheck.analysis.runs import Note, is_rank_folder, is_snapshot_name
from gradcheck.analysis.scanning import ScanOptions

from .common import (
    EXIT_FINDINGS,
    EXIT_OK,
    InputError,
    config_options,
    scan_options,
    settle_config,
    warn_unreadable,
)
from .console import make_console, printable
from .render import findings_lines, header_lines, parameter_table, render_report, verdict

_NEWEST = 5  # findings pinned on top of the dashboard at most (a quarter of the height at most)
DEFAULT_INTERVAL = 1.0  # seconds between polls: a recorder writes every few seconds at most, stat is cheap
WATCH_HELP = """\b
Exit codes (on --timeout, --idle, Ctrl-C or --fail-fast):
  0  no finding at the --fail-on level so far
  1  findings at the --fail-on level (--fail-fast: at the
     first error finding, right away)
  2  usage error, bad config, or no readable snapshot by
     the end
  3  internal error (rerun with gradcheck --debug)

Polls RUN_DIR every --interval seconds; waits for it if it does
not exist yet. On a terminal: title, verdict and the newest findings
on top, the table cut to the terminal height ("+N rows"), and the
full report when the watch ends. A file whose size or mtime
changed since the last poll is still being written: if it reads as
cut short it is retried, and reported unreadable only once it stops
changing. On a terminal the table refreshes in place; otherwise one
line per new step with the verdict so far. More: gradcheck help watch.
"""

Signature = tuple[int, int, int]  # size, mtime in ns, inode: any change means the file is still being written


@dataclass
class WatchState:
    """What a watch has seen so far."""

    report: Report | None = None
    inspected: dict[str, Signature] = field(
        default_factory=dict
    )  # the files as listed when `report` was made
    listed: dict[str, Signature] = field(default_factory=dict)  # the files at the last poll
    steps: tuple[int, ...] = ()
    warned: set[tuple[str, Signature]] = field(default_factory=set)
    idled: bool = False  # ended by --idle


Update = Callable[
    [Report, list[int], list[Note]], None
]  # (report, steps new since the last one, new warnings)


def list_snapshots(run_dir: Path) -> dict[str, Signature]:
    """Snapshot files directly in `run_dir` or in its rank folders, with their signatures (none yet: empty)."""
    found: dict[str, Signature] = {}
    if not run_dir.exists():  # training has not created it yet: wait for it
        return found
    with os.scandir(run_dir) as entries:
        for entry in entries:
            if entry.is_dir() and is_rank_folder(entry.name):
                found.update(list_snapshots(Path(entry.path)))
            elif is_snapshot_name(entry.name) and entry.is_file():
                info = entry.stat()
                found[entry.path] = (info.st_size, info.st_mtime_ns, info.st_ino)
    return found


def poll(
    run_dir: Path, state: WatchState, inspect: Callable[[], Report]
) -> tuple[Report, list[int], list[Note]] | None:
    """One poll: re-inspect if any file changed; return (report, new steps, new warnings) when there is news."""
    files = list_snapshots(run_dir)
    previous, state.listed = state.listed, files
    changed = bool(files) and files != state.inspected
    if changed:
        state.report, state.inspected = inspect(), files
    if state.report is None:
        return None
    warnings = [note for note in state.report.run.unreadable if _settled(note.file, previous, state)]
    state.warned.update((note.file, files[note.file]) for note in warnings)
    new_steps = [step for step in state.report.run.steps if step not in state.steps]
    state.steps = state.report.run.steps
    return (state.report, new_steps, warnings) if changed or warnings else None


def _settled(path: str, previous: dict[str, Signature], state: WatchState) -> bool:
    """Unchanged since the last poll and since the inspection, and not warned about in this version yet."""
    signature = state.listed.get(path)
    return (
        signature is not None
        and previous.get(path) == signature == state.inspected.get(path)
        and (path, signature) not in state.warned
    )


def follow(
    run_dir: Path,
    *,
    inspect: Callable[[], Report],
    on_update: Update,
    interval: float = DEFAULT_INTERVAL,
    timeout: float | None = None,
    fail_fast: bool = False,
    idle: float | None = None,
) -> WatchState:
    """Poll until the timeout, or `idle` seconds without a new or changed snapshot file once there is one
    (Ctrl-C is the caller's to catch), calling `on_update` on every change."""
    state = WatchState()
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    last_change = math.inf  # --idle counts from the first snapshot file: before it, training is starting up
    while True:
        files = state.listed
        news = poll(run_dir, state, inspect)
        now = time.monotonic()
        if state.listed != files:
            last_change = now
        if news is not None:
            on_update(*news)
            if fail_fast and news[0].errors:
                return state
        if idle is not None and now - last_change >= idle:
            state.idled = True
            return state
        if deadline - now <= 0:
            return state
        remaining = min(deadline, math.inf if idle is None else last_change + idle) - now
        time.sleep(max(0.0, min(interval, remaining)))


@click.command(epilog=WATCH_HELP)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--interval", type=click.FloatRange(min=0.01), default=DEFAULT_INTERVAL, show_default=True,
    help="Seconds between polls of the run directory.",
)  # fmt: skip
@click.option(
    "--timeout", type=click.FloatRange(min=0), help="Stop after this many seconds with the verdict so far."
)
@click.option(
    "--idle", type=click.FloatRange(min=0),
    help="Stop when no snapshot file arrived or changed for this many seconds (training ended).",
)  # fmt: skip
@click.option(
    "--fail-fast", is_flag=True, help="Exit 1 at the first error finding (a sidecar next to training)."
)
@config_options
@click.option("--color/--no-color", default=None, help="Force colour on or off (default: auto).")
@click.option("--no-cache", is_flag=True, help="Read every file again; neither use nor fill the stats cache.")
def watch(
    run_dir: Path,
    interval: float,
    timeout: float | None,
    idle: float | None,
    fail_fast: bool,
    fail_on: str | None,
    config_file: Path | None,
    thresholds: tuple[str, ...],
    ignore: tuple[str, ...],
    color: bool | None,
    no_cache: bool,
) -> None:
    """Follow RUN_DIR while it is written: new steps are read as they appear, the verdict kept up to date."""
    console = make_console(color=color)
    scan = scan_options(1, no_cache=no_cache)  # each refresh reads only new or changed files (Incremental)
    if not run_dir.exists():
        click.echo(f"gradcheck: waiting for {printable(str(run_dir))} to appear", err=True)
    try:
        config = settle_config(config_file, thresholds, ignore, fail_on)
        options = {"interval": interval, "timeout": timeout, "fail_fast": fail_fast, "idle": idle}
        state = _run(run_dir, config, scan, console, **options)
    except GradcheckError as error:
        raise InputError(str(error)) from None
    except OSError as error:
        raise InputError(f"{run_dir}: cannot list the directory ({error.strerror or error})") from None
    report = state.report
    if report is None or not report.readable:
        raise InputError(f"{run_dir}: no readable snapshot file")
    if console.is_terminal or state.idled:  # the dashboard is gone, or training ended: the whole story
        render_report(console, report, report.run.steps[-1])
    raise SystemExit(EXIT_FINDINGS if report.failed or (fail_fast and report.errors) else EXIT_OK)


def _run(
    run_dir: Path, config: Config, scan: ScanOptions, console: Console, **options: float | bool | None
) -> WatchState:
    """Follow the run with a live table on a terminal, or a line per new step elsewhere; Ctrl-C stops it."""
    inspect = Incremental(functools.partial(inspect_run, run_dir, config, scan))
    state = WatchState()
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None

    def on_update(report: Report, new_steps: list[int], warnings: list[Note]) -> None:
        warn_unreadable(warnings)
        if live is not None and report.readable:
            live.update(_view(console, report), refresh=True)
        elif live is None and new_steps:
            console.print(step_line(report, new_steps), soft_wrap=True)
        state.report = report

    try:
        if live is not None:
            live.start()
        followed = follow(run_dir, inspect=inspect, on_update=on_update, **options)  # type: ignore[arg-type]
        state.idled = followed.idled
    except KeyboardInterrupt:
        click.echo("gradcheck: watch interrupted", err=True)
    finally:
        if live is not None:
            live.stop()
    return state


class Incremental:
    """An inspection that reads only the files new or changed since its last report (`previous=`)."""

    def __init__(self, inspect: Callable[..., Report]) -> None:
        self.inspect = inspect
        self.report: Report | None = None

    def __call__(self) -> Report:
        """The run's report now; unchanged files come from the last one, so the cost follows the news."""
        self.report = self.inspect(previous=self.report)
        return self.report


def step_line(report: Report, new_steps: list[int]) -> Text:
    """`step 60: <verdict>`, or `steps 0-360 (7): <verdict>` when several steps arrived at once."""
    if len(new_steps) == 1:
        where = f"step {new_steps[0]}"
    else:
        where = f"steps {new_steps[0]}-{new_steps[-1]} ({len(new_steps)})"
    line = verdict(report)
    return Text(f"{where}: ") + line


def _view(console: Console, report: Report) -> Text:
    """The dashboard of the newest step at the console's size, as one renderable with its colours."""
    return Text("\n").join(dashboard(report, console.width, console.height, console.color_system))


def dashboard(report: Report, width: int, height: int, color_system: str | None = None) -> list[Text]:
    """At most `height` lines: title, verdict and newest findings on top, then the table cut to what is left.

    A cut table ends with `+N rows`; the full report is printed when the watch ends.
    """
    step = report.run.steps[-1]
    top = [_cut(line, width) for line in (*header_lines(report, step, width), verdict(report))]
    newest = findings_lines(report)[1:]  # without the heading, causes first
    groups = [line for line in newest if line.plain.startswith((" ERROR", " warn"))]
    causes = [line for line in newest if line.plain.startswith("likely cause")]
    shown = causes[:1] + groups[::-1][: max(0, min(_NEWEST, height // 4) - len(causes[:1]))]
    top += [_cut(line, width) for line in shown]
    buffer = io.StringIO()
    scratch = Console(
        file=buffer,
        width=width,
        color_system=color_system,
        force_terminal=True,
        highlight=False,  # type: ignore[arg-type]
    )
    scratch.print(parameter_table(scratch, report, step, steps_until(report.run.steps, step)))
    table = [Text.from_ansi(line) for line in buffer.getvalue().splitlines()]
    room = max(1, height - len(top) - 1)
    if len(table) > room:
        kept, cut = table[: room - 1], table[room - 1 :]
        hidden = sum(line.plain.startswith("│") for line in cut)
        table = [*kept, Text(f"+{hidden} rows (all of them when the watch ends)", style="dim")]
    return [*top, Text(), *table]


def _cut(line: Text, width: int) -> Text:
    line = line.copy()
    line.truncate(width, overflow="ellipsis")
    return line
