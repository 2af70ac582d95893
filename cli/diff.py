"""`gradcheck diff RUN_A RUN_B`: which layers' gradient norms or update ratios moved between two runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradcheck.analysis import __version__
from gradcheck.analysis.baseline import baseline_document, load_baseline
from gradcheck.analysis.diff import (
    DEFAULT_FACTOR,
    DEFAULT_UPDATE_FACTOR,
    Change,
    LayerDiff,
    RunDiff,
    diff_runs,
    measure,
)
from gradcheck.analysis.errors import GradcheckError
from gradcheck.analysis.runs import load_run

from .ci_formats import write_atomically
from .common import EXIT_FINDINGS, EXIT_OK, InputError, reading_options, scan_options, warn_unreadable
from .console import make_console, printable
from .jsonout import SCHEMA_VERSION, dumps
from .jsonout import finite_values as dumps_ready
from .names import fit, middle, structural_width

DIFF_HELP = """\b
Exit codes:
  0  no layer moved more than the factors allow
  1  some layer moved more (flagged)
  2  usage error, unreadable run or baseline, no step
     in common, or no layer in common (unless
     --allow-disjoint)
  3  internal error (rerun with gradcheck --debug)

Per layer, at the steps both runs recorded: log10 of the gradient
norm ratio B/A and the change of log10 update ratio, each as the
median over those steps and the worst step. A layer is flagged when
a median moves more than its factor. Layers only in one run are
listed as added or removed and do not change the exit code.

\b
Either side may be a baseline file, not a run folder:
  gradcheck baseline RUN -o base.json  (a few KB)
  gradcheck inspect RUN --format json --output base.json

More: gradcheck help diff.
"""
_FACTOR = click.FloatRange(min=1.0, min_open=True)
_STATUS_STYLE = {"changed": "bold red", "ok": "green", "added": "yellow", "removed": "yellow"}


@click.command(epilog=DIFF_HELP)
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--allow-disjoint", is_flag=True, help="Compare runs that share no layer (else exit 2).")
@click.option(
    "--factor", type=_FACTOR, default=DEFAULT_FACTOR, show_default=True,
    help="Flag a layer whose gradient norm moved more than this many times, up or down.",
)  # fmt: skip
@click.option(
    "--update-factor", type=_FACTOR, default=DEFAULT_UPDATE_FACTOR, show_default=True,
    help="Flag a layer whose update ratio moved more than this many times.",
)  # fmt: skip
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option("--color/--no-color", default=None, help="Force colour on or off (default: auto).")
@reading_options
def diff(
    run_a: Path,
    run_b: Path,
    allow_disjoint: bool,
    factor: float,
    update_factor: float,
    output_format: str,
    color: bool | None,
    jobs: int | None,
    no_cache: bool,
) -> None:
    """Compare RUN_A with RUN_B layer by layer: gradient norms and update ratios at matching steps."""
    scan = scan_options(jobs, no_cache)
    try:
        a, b = (load_baseline(side) if _is_baseline(side) else side for side in (run_a, run_b))
        result = diff_runs(
            a, b, factor=factor, update_factor=update_factor, scan=scan, allow_disjoint=allow_disjoint
        )
    except GradcheckError as error:
        raise InputError(str(error)) from None
    for run in (result.run_a, result.run_b):
        warn_unreadable(run.unreadable)
    code = EXIT_FINDINGS if result.changed else EXIT_OK
    if output_format == "json":
        click.echo(dumps(diff_document(result, code)))
    else:
        render_diff(make_console(color=color), result)
    raise SystemExit(code)


def render_diff(console: Console, result: RunDiff) -> None:
    """Print the title, the per-layer table (as many columns as fit, names shortened by structure), a verdict."""
    steps = result.steps
    what = f": {len(steps)} matching step(s) {steps[0]}-{steps[-1]}"
    sides = _sides(printable(result.run_a.path), printable(result.run_b.path), console.width - len(what) - 3)
    console.print(Text(" → ".join(sides) + what), no_wrap=True, overflow="ellipsis")
    cells = {layer.layer: _cells(layer) for layer in result.layers}
    widths = {n: max([len(n), *(len(row[i]) for row in cells.values())]) for i, n in enumerate(_DIFF_COLUMNS)}
    names = list(_DIFF_COLUMNS)
    longest = max((len(printable(layer.layer)) for layer in result.layers), default=5)
    enough = min(longest, max(structural_width([layer.layer for layer in result.layers]), 12))
    for dropped in (None, *_DIFF_DROP):
        if dropped is not None:
            names.remove(dropped)
        room = console.width - sum(widths[n] + 3 for n in names) - 4
        if room >= enough:
            break
    table = Table(header_style="bold")
    table.add_column("layer", no_wrap=True)
    for name in names:
        table.add_column(name.rstrip("²"), justify="left" if name == "status" else "right", no_wrap=True)
    status_of = {layer.layer: layer.status for layer in result.layers}
    for layer, shown in fit([layer.layer for layer in result.layers], max(5, min(longest, room))):
        if layer is None:
            table.add_row(Text(shown, style="bold"), *("" for _ in names))
            continue
        row = dict(zip(_DIFF_COLUMNS, cells[layer], strict=True))
        values = [
            Text(row[n], style=_STATUS_STYLE[status_of[layer]]) if n == "status" else row[n] for n in names
        ]
        table.add_row(Text(shown), *values)
    console.print(table)
    console.print()
    console.print(diff_verdict(result))


_DIFF_COLUMNS = ("‖g‖ B/A", "worst (step)", "upd ratio Δlog10", "worst (step)²", "status")
_DIFF_DROP = ("worst (step)²", "worst (step)", "upd ratio Δlog10")  # the layer and status columns always stay


def _cells(layer: LayerDiff) -> tuple[str, ...]:
    status = layer.status if not layer.flags else f"changed {', '.join(layer.flags)}"
    return (
        _times(layer.grad_norm.median if layer.grad_norm else None),
        _worst(layer.grad_norm, _times),
        _log(layer.update_ratio.median if layer.update_ratio else None),
        _worst(layer.update_ratio, _log),
        status,
    )


def _sides(a: str, b: str, room: int) -> tuple[str, str]:
    """Both run paths in `room` cells: a short side lends the long one what it does not use.

    Halving the room alone cut `base.json (baseline of lora_ok)` to `base.json (ba… of lora_ok)` at 80 columns
    next to a 7-letter run B, with 30 columns unused.
    """
    if len(a) + len(b) <= room:
        return a, b
    half = max(8, room // 2)
    if len(a) <= half:
        return a, middle(b, max(8, room - len(a)))
    if len(b) <= half:
        return middle(a, max(8, room - len(b))), b
    return middle(a, half), middle(b, half)


def diff_verdict(result: RunDiff) -> Text:
    """One line: which layers moved more than the factors allow, or none."""
    limits = f"gradient norm {result.factor:g}×, update ratio {result.update_factor:g}×"
    scope = f"{len(result.layers)} layers, {len(result.steps)} matching steps"
    changed = result.changed
    if not changed:
        return Text(f"✓ no layer moved more than {limits} ({scope})", style="bold green")
    names = ", ".join(printable(layer.layer) for layer in changed)
    return Text(f"✗ {len(changed)} layer(s) moved more than {limits}: {names} ({scope})", style="bold red")


def _times(log_ratio: float | None) -> str:
    """A log10 ratio as a factor: ×31.6, ×0.055; - when missing."""
    if log_ratio is None or math.isnan(log_ratio):
        return "-"
    if math.isinf(log_ratio):
        return "×inf" if log_ratio > 0 else "×0"
    return f"×{10**log_ratio:.2g}"


def _log(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.2f}"


def _worst(change: Change | None, show: Any) -> str:
    return "-" if change is None else f"{show(change.worst)} ({change.worst_step})"


def diff_document(result: RunDiff, exit_code: int) -> dict[str, Any]:
    """The JSON-ready dict of a comparison (docs/DIFF_WATCH.md); infinities become null through `dumps`."""
    return {
        "schema": SCHEMA_VERSION,
        "gradcheck_version": __version__,
        "run_a": result.run_a.path,
        "run_b": result.run_b.path,
        "steps": list(result.steps),
        "factor": result.factor,
        "update_factor": result.update_factor,
        "changed": [layer.layer for layer in result.changed],
        "exit_code": exit_code,
        "layers": [
            {
                "layer": layer.layer,
                "status": layer.status,
                "flags": list(layer.flags),
                "grad_norm_log10_ratio": _change_document(layer.grad_norm),
                "update_ratio_log10_diff": _change_document(layer.update_ratio),
            }
            for layer in result.layers
        ],
    }


def _change_document(change: Change | None) -> dict[str, Any] | None:
    if change is None:
        return None
    return {
        "median": change.median,
        "worst": change.worst,
        "worst_step": change.worst_step,
        "steps": change.steps,
    }


@click.command(epilog="\b\nExit codes:\n  0  baseline written\n  2  usage error or no readable snapshot")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), metavar="FILE", required=True,
    help="Where to write the baseline (JSON, replaced atomically).",
)  # fmt: skip
@reading_options
def baseline(run_dir: Path, output: Path, jobs: int | None, no_cache: bool) -> None:
    """Write RUN_DIR's per-layer measures to FILE, which `gradcheck diff` takes in place of the run."""
    try:
        run = load_run(run_dir, scan_options(jobs, no_cache))
    except GradcheckError as error:
        raise InputError(str(error)) from None
    warn_unreadable(run.unreadable)
    if not run.steps:
        raise InputError(f"{run_dir}: no readable snapshot file")
    text = json.dumps(
        dumps_ready(baseline_document(measure(run), __version__)), separators=(",", ":")
    ).replace("##[", "#\\u0023[")  # as in --format json: the file may be printed to a CI log; reads the same
    try:
        write_atomically(output, text + "\n")
    except OSError as error:
        raise InputError(f"{output}: cannot write the baseline file: {error.strerror or error}") from None
    raise SystemExit(EXIT_OK)


def _is_baseline(path: Path) -> bool:
    """A file stands in for a run (a run is a folder); a lone snapshot file is left to the run reader's message."""
    return path.is_file() and not path.name.endswith(".safetensors")
