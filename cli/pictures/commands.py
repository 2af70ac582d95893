"""`gradcheck report` (one self-contained HTML file) and `gradcheck plot` (PNG or SVG of one chart)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from gradcheck.analysis.atomic import append_regular
from gradcheck.analysis.errors import GradcheckError
from gradcheck.analysis.heatmap import LAYER_METRICS as METRICS  # the page's heatmap has layers for rows
from gradcheck.analysis.inspection import Report, inspect_run, resolve_step

from ..ci_formats import escape_markdown, verdict_line, write_atomically
from ..common import (
    EXIT_FINDINGS,
    EXIT_OK,
    InputError,
    config_options,
    progress_bar,
    reading_options,
    scan_options,
    settle_config,
    warn_unreadable,
)
from ..console import printable
from .charts import chart_data
from .page import report_html
from .static import CHARTS, figure, image_bytes

REPORT_EXIT_HELP = """\b
Exit codes:
  0  report written, no finding at the --fail-on level
  1  report written, findings at the --fail-on level
  2  usage error, bad config, no readable snapshot, or the
     file cannot be written
"""
PLOT_EXIT_HELP = """\b
Exit codes:
  0  image written (it shows, it does not judge: use
     gradcheck inspect or report to gate CI)
  2  usage error, no readable snapshot, matplotlib missing
     (pip install 'gradcheck[report]'), or the file cannot
     be written
"""


@click.command(epilog=REPORT_EXIT_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, metavar="FILE.html", help="Where to write the report (replaced atomically).")  # fmt: skip
@click.option("-m", "--metric", type=click.Choice(METRICS), default="grad-norm", show_default=True, help="The heatmap's first metric (the page can switch).")  # fmt: skip
@click.option("--artifact", metavar="NAME", help="The CI artifact the report is uploaded as, for the step summary's link.")  # fmt: skip
@config_options
@reading_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on stderr (warnings stay).")
def report(
    run_dir: Path,
    output: Path,
    metric: str,
    artifact: str | None,
    fail_on: str | None,
    config_file: Path | None,
    thresholds: tuple[str, ...],
    ignore: tuple[str, ...],
    jobs: int | None,
    no_cache: bool,
    quiet: bool,
) -> None:
    """Write RUN_DIR's verdict, findings and charts as one HTML file that opens offline."""
    config = settle_config(config_file, thresholds, ignore, fail_on)
    result = _read(run_dir, config, jobs, no_cache, quiet)
    page = report_html(result, chart_data(result), heatmap_metric=metric)
    try:
        write_atomically(output, page)
    except OSError as error:
        raise InputError(f"{output}: cannot write the report: {error.strerror or error}") from None
    if not quiet:
        click.echo(
            f"gradcheck: report written to {printable(str(output))} ({len(page.encode()) / 1e6:.2f} MB)",
            err=True,
        )
    _note_in_step_summary(result, output, artifact)
    raise SystemExit(EXIT_FINDINGS if result.failed else EXIT_OK)


@click.command(epilog=PLOT_EXIT_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--chart", type=click.Choice(CHARTS), required=True, help="flow: mean/max |g| per layer at --step; norms, ratio, param: per parameter over the steps; heatmap: layers x steps.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, metavar="FILE.png|FILE.svg", help="The image; its suffix picks the format.")  # fmt: skip
@click.option("--step", type=int, help="The step of --chart flow (default: the last recorded).")
@click.option("-m", "--metric", type=click.Choice(METRICS), default="grad-norm", show_default=True, help="The metric of --chart heatmap.")  # fmt: skip
@reading_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on stderr (warnings stay).")
def plot(
    run_dir: Path,
    chart: str,
    output: Path,
    step: int | None,
    metric: str,
    jobs: int | None,
    no_cache: bool,
    quiet: bool,
) -> None:
    """Draw one chart of RUN_DIR as a PNG or SVG (for papers, READMEs and PR comments)."""
    if output.suffix.lower() not in (".png", ".svg"):
        raise InputError(f"{output}: --output must end in .png or .svg")
    result = _read(run_dir, None, jobs, no_cache, quiet)
    try:
        shown = resolve_step(result, step)
        drawn = figure(chart_data(result), chart, step=shown, metric=metric)
    except GradcheckError as error:
        raise InputError(str(error)) from None
    except ModuleNotFoundError as error:
        raise InputError(
            f"gradcheck plot needs {(error.name or 'matplotlib').split('.')[0]}: pip install 'gradcheck[report]'"
        ) from None
    image = image_bytes(drawn, output.suffix.lstrip(".").lower())
    try:
        write_atomically(output, image)  # the same writer as inspect --output: FIFOs, devices, symlinks
    except OSError as error:
        raise InputError(f"{output}: cannot write the image: {error.strerror or error}") from None


def _note_in_step_summary(result: Report, output: Path, artifact: str | None) -> None:
    """On GitHub Actions, tell the job summary where the report is: the file, its artifact, the run's page."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    where = f"artifact `{escape_markdown(printable(artifact))}`" if artifact else "the artifacts"
    run_page = _run_page()
    link = f" of [this run]({run_page}#artifacts)" if run_page else " of this run"
    text = (
        f"### gradcheck report\n\n{escape_markdown(verdict_line(result))}\n\n"
        f"Charts of every layer: `{escape_markdown(printable(str(output)))}`, in {where}{link} "
        "(one HTML file, opens offline).\n\n"
    )
    try:  # as inspect's summary: a regular file only, so a FIFO or /dev/zero there cannot hang the command
        append_regular(target, text.encode("utf-8"))
    except OSError as error:
        click.echo(
            f"gradcheck: warning: {printable(target)}: step summary not written: {error.strerror or error}",
            err=True,
        )


def _run_page() -> str | None:
    """The Actions run's page (its artifacts are listed there), from the variables GitHub sets in every step."""
    parts = [os.environ.get(name, "") for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    return "{}/{}/actions/runs/{}".format(*parts) if all(parts) else None


def _read(run_dir: Path, config, jobs: int | None, no_cache: bool, quiet: bool) -> Report:  # type: ignore[no-untyped-def]
    """inspect_run with the progress bar and the unreadable-file warnings; exit 2 when nothing is readable."""
    progress = progress_bar(color=None, quiet=quiet, output_format="table")
    try:
        try:
            result = inspect_run(run_dir, config, scan_options(jobs, no_cache, progress))
        finally:
            if progress is not None:
                progress.close()
    except GradcheckError as error:
        raise InputError(str(error)) from None
    warn_unreadable(result.run.unreadable)
    if not result.readable:
        raise InputError(f"{run_dir}: no readable snapshot file")
    return result
