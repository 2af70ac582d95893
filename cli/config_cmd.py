"""`gradcheck config [RUN_DIR]`: the settings in force, where each came from, and silent config mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from gradcheck.analysis.config import parse_threshold_option
from gradcheck.analysis.config_report import config_file as find_config_file
from gradcheck.analysis.config_report import (
    near_miss_sections,
    settings,
    unmatched_globs,
)
from gradcheck.analysis.errors import GradcheckError

from .common import EXIT_OK, InputError, config_options, scan_options, settle_config
from .console import make_console, printable

if (
    TYPE_CHECKING
):  # rich and the reader are imported by the `config` command: `inspect` needs warn_config only
    from gradcheck.analysis.config import Config

CONFIG_HELP = """\b
Exit codes:
  0  settings printed (warnings go to stderr)
  2  bad config, or RUN_DIR unreadable

Lowest to highest: defaults, one config file (--config FILE, else
the nearest pyproject.toml with [tool.gradcheck] from the current
directory upwards), command-line options. More: gradcheck help config.
"""


@click.command(epilog=CONFIG_HELP)
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@config_options
@click.option("--color/--no-color", default=None, help="Force colour on or off (default: auto).")
def config(
    run_dir: Path | None,
    fail_on: str | None,
    config_file: Path | None,
    thresholds: tuple[str, ...],
    ignore: tuple[str, ...],
    color: bool | None,
) -> None:
    """Print the effective settings and where each came from; with RUN_DIR, check the override globs."""
    try:
        settled = settle_config(config_file, thresholds, ignore, fail_on)
        file = find_config_file(config_file, Path.cwd())
        rows = settings(
            settled,
            file,
            cli_thresholds=dict(map(parse_threshold_option, thresholds)),
            cli_ignore=ignore,
            cli_fail_on=fail_on,
        )
        warnings = near_miss_sections(Path.cwd())
        if run_dir is not None:
            from gradcheck.analysis.runs import load_run

            run = load_run(run_dir, scan_options(None, no_cache=False))
            if not run.params:
                raise InputError(f"{run_dir}: no readable snapshot file")
            warnings += unmatched_globs(settled, run.params)
    except GradcheckError as error:
        raise InputError(str(error)) from None
    from rich.table import Table
    from rich.text import Text

    console = make_console(color=color)
    console.print(Text(f"config file: {printable(str(file)) if file else '(none: defaults)'}", style="bold"))
    table = Table(box=None, header_style="bold")
    for name in ("setting", "value", "from"):
        table.add_column(name, overflow="fold")
    for row in rows:
        style = "" if row.source == "default" else "bold"
        table.add_row(printable(row.key), printable(row.value), Text(printable(row.source), style=style))
    console.print(table)
    for warning in warnings:
        click.echo(f"gradcheck: warning: {printable(warning)}", err=True)
    raise SystemExit(EXIT_OK)


def warn_config(config: Config, params: tuple[str, ...]) -> None:
    """Warnings on stderr for config mistakes that would be silent: a near-miss [tool.*] name, dead globs."""
    for warning in near_miss_sections(Path.cwd()) + unmatched_globs(config, params):
        click.echo(f"gradcheck: warning: {printable(warning)}", err=True)
