"""What every command shares: exit codes, the one-line input error, config and reading options."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from gradcheck.analysis.config import (
    CHECK_IDS,
    FAIL_LEVELS,
    Config,
    load_config,
    parse_threshold_option,
    with_thresholds,
)
from gradcheck.analysis.errors import GradcheckError

from .console import printable

if TYPE_CHECKING:  # imported where used: the reader pulls numpy, the progress bar rich (cli/main.py)
    from gradcheck.analysis.cache import StatsCache
    from gradcheck.analysis.runs import Note
    from gradcheck.analysis.scanning import ScanOptions

    from .progress import ScanProgress

EXIT_OK, EXIT_FINDINGS, EXIT_INPUT = 0, 1, 2
Command = TypeVar("Command", bound=Callable[..., object])


def config_options(command: Command) -> Command:
    """--fail-on, --config, -t/--threshold and --ignore: what `settle_config` takes."""
    options = (
        click.option(
            "--fail-on", type=click.Choice(FAIL_LEVELS), help="Severity that makes the exit code 1."
        ),
        click.option(
            "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="TOML config."
        ),
        click.option(
            "-t",
            "--threshold",
            "thresholds",
            multiple=True,
            metavar="NAME=VALUE",
            help="Override a threshold.",
        ),
        click.option(
            "--ignore",
            multiple=True,
            type=click.Choice(CHECK_IDS),
            # the choices as a metavar made a 117-column line in every --help; listed in the text, click wraps it
            metavar="CHECK",
            help=f"Skip a check (repeatable): {', '.join(CHECK_IDS)}.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def reading_options(command: Command) -> Command:
    """-j/--jobs and --no-cache: what `scan_options` takes."""
    options = (
        click.option(
            "-j",
            "--jobs",
            type=click.IntRange(min=1),
            help="Worker processes that read files (default: the cores).",
        ),
        click.option(
            "--no-cache", is_flag=True, help="Read every file again; neither use nor fill the stats cache."
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


class InputError(click.ClickException):
    """Bad input or usage: one line on stderr, exit 2."""

    exit_code = EXIT_INPUT

    def show(self, file: object = None) -> None:
        """Print the one-line message."""
        click.echo(f"gradcheck: error: {printable(self.message)}", err=True)


def settle_config(
    config_file: Path | None, thresholds: tuple[str, ...], ignore: tuple[str, ...], fail_on: str | None
) -> Config:
    """The config file (or the nearest pyproject.toml) with the command-line options on top.

    A bad config is exit 2 here, so no command can let a ConfigError escape as an internal error (exit 3).
    """
    try:
        config = load_config(config_file)
        config = with_thresholds(
            config, dict(map(parse_threshold_option, thresholds)), "--threshold", pin=True
        )
    except GradcheckError as error:
        raise InputError(str(error)) from None
    config = replace(config, ignore=config.ignore | frozenset(ignore))
    return replace(config, fail_on=fail_on) if fail_on else config


def progress_bar(*, color: bool | None, quiet: bool, output_format: str) -> ScanProgress | None:
    """A progress bar on stderr where one is wanted (terminal, not quiet, table output, not CI)."""
    from .console import make_console
    from .progress import ScanProgress, progress_wanted

    console = make_console(color=color, stderr=True)
    wanted = progress_wanted(console, quiet=quiet, output_format=output_format)
    return ScanProgress(console) if wanted else None


def scan_options(jobs: int | None, no_cache: bool, progress: ScanProgress | None = None) -> ScanOptions:
    """How to read: --jobs (default: available cores), the stats cache unless --no-cache, the progress bar."""
    from gradcheck.analysis.cache import default_cache_dir
    from gradcheck.analysis.scanning import ScanOptions, available_cores

    cache = None if no_cache else _trusted_cache(default_cache_dir())
    return ScanOptions(jobs=jobs or available_cores(), cache=cache, progress=progress)


def _trusted_cache(directory: Path) -> StatsCache | None:
    """The stats cache in `directory`, or None (with one warning) if someone else could have written it."""
    from gradcheck.analysis.cache import StatsCache, cache_refusal

    problem = cache_refusal(directory)
    if problem is None:
        return StatsCache(directory)
    click.echo(
        f"gradcheck: warning: {printable(str(directory))}: {problem}; reading without the cache", err=True
    )
    return None


def warn_unreadable(notes: Iterable[Note]) -> None:
    """One warning line on stderr per unreadable file."""
    for note in notes:
        click.echo(f"gradcheck: warning: {printable(note.file)}: {printable(note.reason)}", err=True)
