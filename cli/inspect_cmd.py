"""`gradcheck inspect RUN_DIR`: read the run, render the table (or a --format), exit with the verdict.

Imported only when `inspect` runs (main.py loads each command on demand). The analysis, numpy and rich are
imported inside the command, and only the parts the chosen --view and --format need, so that `--help` and a
usage error stay quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import EXIT_FINDINGS, EXIT_INPUT, EXIT_OK, InputError, config_options, reading_options
from .console import printable

if TYPE_CHECKING:
    from gradcheck.analysis.config import Config
    from gradcheck.analysis.history import StepRange
    from gradcheck.analysis.inspection import Report

# The --format choices; ci_formats.FORMATS renders them (a test keeps the two equal: importing ci_formats here
# would load rich and the whole analysis before the options are even parsed).
FORMATS = ("table", "json", "github", "markdown", "junit")
EXIT_CODES_HELP = """\b
Exit codes:
  0  no finding at the --fail-on level (default: error)
  1  findings at the --fail-on level
  2  usage error, bad config, or no readable snapshot
     (with --strict: any unreadable file)
  3  internal error (a bug): one line on stderr; rerun
     with `gradcheck --debug ...` for the traceback

Config: [tool.gradcheck] in the nearest pyproject.toml (searched
from the current directory upwards) or --config FILE; command-line
options override it. Keys: fail-on, ignore, [thresholds], and
[[overrides]] with params globs. `gradcheck config` shows the
settings in force; more: gradcheck help config.
"""


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--step", type=int, help="Step to show in the table (default: the last recorded).")
@click.option(
    "--steps", "steps_range", metavar="A:B|all",
    help="Recorded steps A to B (inclusive, either side may be empty) for the history; the table shows the last.",
)  # fmt: skip
@click.option(
    "--view", type=click.Choice(["table", "depth", "activations"]), default="table", show_default=True,
    help="table: per parameter with history; depth: mean and max |g| per layer as bars; activations: per module "
    "output and the loss (Recorder(activations=True)).",
)  # fmt: skip
@click.option(
    "--format", "output_format", type=click.Choice(FORMATS), default="table", show_default=True,
    help="table for people, json for machines (gradcheck help json); github, markdown, junit for CI (gradcheck help ci).",
)  # fmt: skip
@click.option(
    "--output", type=click.Path(path_type=Path), metavar="FILE",
    help="Write the --format output to FILE (replaced atomically); stdout shows the table.",
)  # fmt: skip
@click.option(
    "--json-schema", type=click.IntRange(1, 2), default=2, show_default=True,
    help="JSON schema: 2 (per-parameter arrays, streamed) or 1 (one object per step; deprecated).",
)  # fmt: skip
@config_options
@click.option("--strict", is_flag=True, help="Exit 2 if any snapshot file is unreadable.")
@click.option(
    "--color/--no-color", default=None, help="Force colour on or off (default: auto, honours NO_COLOR)."
)
@reading_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no notes on stderr (warnings stay).")
@click.option("-v", "--verbose", is_flag=True, help="Findings in full: every parameter, no line cut short.")
def inspect(
    run_dir: Path,
    step: int | None,
    steps_range: str | None,
    view: str,
    output_format: str,
    output: Path | None,
    json_schema: int,
    fail_on: str | None,
    config_file: Path | None,
    thresholds: tuple[str, ...],
    ignore: tuple[str, ...],
    strict: bool,
    color: bool | None,
    jobs: int | None,
    no_cache: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Inspect RUN_DIR: per-parameter gradient table, findings and a verdict."""
    if step is not None and steps_range is not None:
        raise InputError("--step and --steps cannot be used together")
    source = click.get_current_context().get_parameter_source("json_schema")
    if output_format != "json" and source is click.core.ParameterSource.COMMANDLINE:
        raise InputError(f"--json-schema applies to --format json, not --format {output_format}")
    from gradcheck.analysis.errors import GradcheckError

    try:
        from .common import settle_config

        config = settle_config(config_file, thresholds, ignore, fail_on)
        report, selection = _read(run_dir, config, steps_range, step, color=color, quiet=quiet, jobs=jobs,
                                  no_cache=no_cache, progress_format="table" if output else output_format)  # fmt: skip
    except GradcheckError as error:
        raise InputError(str(error)) from None
    shown = selection[-1] if selection else None
    problem = None
    if shown is None:
        problem = f"{run_dir}: no readable snapshot file"
    elif strict and report.run.unreadable:
        problem = f"{run_dir}: {len(report.run.unreadable)} unreadable file(s) and --strict is set"
    code = EXIT_INPUT if problem else EXIT_FINDINGS if report.failed else EXIT_OK
    if output is not None:
        _emit(output_format, json_schema, report, selection, code, output)
    if output is None and output_format != "table":
        _emit(output_format, json_schema, report, selection, code, None)
    elif shown is not None:
        _render(view, report, selection, color=color, verbose=verbose)
    if output_format == "github":
        from .ci_formats import append_step_summary

        append_step_summary(report, shown)
    if problem:
        raise InputError(problem)
    raise SystemExit(code)


def _read(
    run_dir: Path,
    config: Config,
    steps_range: str | None,
    step: int | None,
    *,
    color: bool | None,
    quiet: bool,
    jobs: int | None,
    no_cache: bool,
    progress_format: str,
) -> tuple[Report, tuple[int, ...]]:
    """Read and check the run, warn about what could not be read; the report and the --steps selection."""
    from gradcheck.analysis.history import parse_step_range
    from gradcheck.analysis.inspection import inspect_run

    from .common import progress_bar, scan_options, warn_unreadable
    from .config_cmd import warn_config

    bounds = parse_step_range(steps_range) if steps_range is not None else None
    progress = progress_bar(color=color, quiet=quiet, output_format=progress_format)
    try:
        report = inspect_run(run_dir, config, scan_options(jobs, no_cache, progress))
    finally:
        if progress is not None:
            progress.close()
    warn_unreadable(report.run.unreadable)
    warn_config(config, report.run.params)
    if not quiet:
        _note_skipped(report)
    return report, _selection(report, step, bounds) if report.readable else ()


def _render(
    view: str, report: Report, selection: tuple[int, ...], *, color: bool | None, verbose: bool
) -> None:
    """Draw the --view on stdout: rich and the view's module are imported here, for table output only."""
    from gradcheck.analysis.errors import GradcheckError

    from .console import make_console

    console, shown = make_console(color=color), selection[-1]
    if view == "depth":
        from .depth import render_depth

        render_depth(console, report, shown)
    elif view == "activations":
        from .activations_view import render_activations

        try:
            render_activations(console, report, shown, selection)
        except GradcheckError as error:
            raise InputError(str(error)) from None
    else:
        from .render import render_report

        render_report(console, report, shown, selection, verbose=verbose)


def _selection(report: Report, step: int | None, bounds: StepRange | None) -> tuple[int, ...]:
    """The steps the history covers: --steps, else every recorded step up to --step (default: the last)."""
    from gradcheck.analysis.history import select_steps, steps_until
    from gradcheck.analysis.inspection import resolve_step

    if bounds is not None:
        return select_steps(report.run.steps, bounds)
    return steps_until(report.run.steps, resolve_step(report, step))


def _formatted(output_format: str, report: Report, selection: tuple[int, ...], code: int) -> str:
    """The --format text of the report, over the --steps selection."""
    from .ci_formats import format_report

    shown = selection[-1] if selection else None
    return format_report(output_format, report, shown, code, selection=selection or None)


def _emit(
    output_format: str,
    schema: int,
    report: Report,
    selection: tuple[int, ...],
    code: int,
    output: Path | None,
) -> None:
    """The --format text to `output` (atomically) or stdout; JSON schema 2 is streamed, never held whole."""
    if output_format == "json" and schema == 2:
        from .jsonstream import stream_json  # numpy-heavy: imported only when the document is written

        stream_json(report, selection, code, output)
    elif output is not None:
        _write_output(output, _formatted(output_format, report, selection, code))
    else:
        click.echo(_formatted(output_format, report, selection, code), nl=False)


def _write_output(path: Path, text: str) -> None:
    from .ci_formats import write_atomically

    try:
        write_atomically(path, text)
    except OSError as error:
        raise InputError(f"{path}: cannot write --output file: {error.strerror or error}") from None


def _note_skipped(report: Report) -> None:
    skipped = report.run.skipped
    if skipped:
        first = skipped[0]
        click.echo(
            f"gradcheck: note: {len(skipped)} non-float tensor(s) skipped, e.g. {printable(first.tensor or '')!r} "
            f"in {printable(first.file)} ({first.reason})",
            err=True,
        )
