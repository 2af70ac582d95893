"""`gradcheck heatmap RUN_DIR`: layers x steps in the terminal, coloured by a log10 metric, with a legend."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from gradcheck.analysis.errors import GradcheckError
from gradcheck.analysis.heatmap import (
    METRIC_LABELS,
    METRICS,
    MISSING,
    NONFINITE,
    ZERO,
    Heatmap,
    build_heatmap,
    level_bounds,
    scale_levels,
)
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.layer_columns import layer_order

from .common import InputError, progress_bar, reading_options, scan_options, warn_unreadable
from .console import make_console, printable
from .names import fit, middle

RAMP = " .:-=+*#%@"  # one character per level, dim to bright, for terminals without colour
# matplotlib's "inferno" sampled at 0.1, 0.2, ..., 1.0: dark (vanishing) to bright (exploding), and its
# darkest colour is skipped so the lowest level still differs from an empty cell on a black terminal.
PALETTE = (
    "#160b39", "#420a68", "#6a176e", "#932667", "#bc3754",
    "#dd513a", "#f37819", "#fca50a", "#f6d746", "#fcffa4",
)  # fmt: skip
MARKERS = {NONFINITE: "!", ZERO: "0", MISSING: "?"}
MARKER_STYLES = {NONFINITE: "bold bright_white on blue", ZERO: "grey50", MISSING: "grey50"}
MARKER_NAMES = {NONFINITE: "NaN/Inf", ZERO: "exactly zero", MISSING: "not recorded"}
MAX_CELL_WIDTH = 12  # few steps get wider cells (the picture fills the width), but one step is no banner
_TICK_GAP = 2  # spaces at least between two step labels
MIN_NAME_WIDTH, NAME_SHARE = 6, 3  # layer names get a third of the width at least, more if the grid leaves it
GUTTER = " │ "
_LEGEND_NAME = 40  # names in the min/max lines are cut, so each line fits in 80 columns
EXIT_CODES_HELP = """\b
Exit codes:
  0  heatmap drawn (it shows, it does not judge: use
     gradcheck inspect to gate CI)
  2  usage error, missing run directory, no readable
     snapshot, or nothing recorded for the metric
  3  internal error (rerun with gradcheck --debug)
"""


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-m", "--metric", type=click.Choice(METRICS), default="grad-norm", show_default=True, metavar="METRIC",
    help=f"What colours a cell: {', '.join(METRICS)} (log10; update-ratio is log10 mean|update|/mean|param|; "
    "act-*: a share 0-1 per module, from recorded activations).",
)  # fmt: skip
@click.option("--width", type=click.IntRange(min=40), help="Columns to draw in (default: the terminal's).")
@click.option(
    "--color/--no-color", default=None, help="Force colour on or off (default: auto, honours NO_COLOR)."
)
@reading_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on stderr (warnings stay).")
def heatmap(
    run_dir: Path,
    metric: str,
    width: int | None,
    color: bool | None,
    jobs: int | None,
    no_cache: bool,
    quiet: bool,
) -> None:
    """Draw RUN_DIR as layers x steps, coloured by a log10 metric: dim early layers = vanishing."""
    console = make_console(color=color)
    if width:
        console.width = width
    progress = progress_bar(color=color, quiet=quiet, output_format="table")
    try:
        try:
            report = inspect_run(run_dir, scan=scan_options(jobs, no_cache, progress))
        finally:
            if progress is not None:
                progress.close()
        warn_unreadable(report.run.unreadable)
        if not report.readable:
            raise InputError(f"{run_dir}: no readable snapshot file")
        layers = layer_order(report.run.columns)[0]
        drawn = build_heatmap(report, metric, max_columns=_grid_width(layers, console.width))
    except GradcheckError as error:
        raise InputError(str(error)) from None
    shape = f"{len(drawn.layers)} {drawn.row_noun}(s) × {len(report.run.steps)} recorded step(s)"
    what = f" ({shape}): {METRIC_LABELS[drawn.metric]}"
    render_heatmap(
        console, drawn, title=middle(printable(report.run.path), max(8, console.width - len(what))) + what
    )


def render_heatmap(console: Console, drawn: Heatmap, *, title: str) -> None:
    """Print the title, one row per layer, the step axis and the legend."""
    colour = console.color_system is not None and not console.no_color
    cell = max(1, min(MAX_CELL_WIDTH, _grid_width(drawn.layers, console.width) // len(drawn.columns)))
    # the name column takes what the grid leaves, never cutting a name while columns stay unused
    longest = max((len(printable(n)) for n in drawn.layers), default=MIN_NAME_WIDTH)
    names = max(
        _name_width(drawn.layers, console.width),
        min(longest, console.width - len(GUTTER) - cell * len(drawn.columns)),
    )
    rows = fit(drawn.layers, names)
    low, high = drawn.extreme(highest=False), drawn.extreme(highest=True)
    lo, hi = (low[0], high[0]) if low and high else (0.0, 0.0)
    codes = scale_levels(drawn.values, drawn.missing, lo, hi, len(RAMP))
    console.print(Text(title), no_wrap=True, overflow="ellipsis")
    align = "<" if len(rows) > len(drawn.layers) else ">"  # indented rows under headers keep their indent
    console.print(Text(f"{drawn.row_noun:{align}{names}}{GUTTER}steps", style="bold"), no_wrap=True)
    by_layer = dict(zip(drawn.layers, codes, strict=True))
    for layer, shown in rows:
        if layer is None:
            console.print(Text(f"{shown:<{names}}", style="bold") + Text(GUTTER.rstrip()), no_wrap=True)
            continue
        line = Text(
            f"{shown:<{names}}{GUTTER}" if len(rows) > len(drawn.layers) else f"{shown:>{names}}{GUTTER}"
        )
        for code in by_layer[layer]:
            line.append_text(_cell(int(code), cell, colour))
        console.print(line, no_wrap=True, overflow="crop")
    span = cell * len(drawn.columns)
    console.print(" " * names + " └" + "─" * span, no_wrap=True, overflow="crop")
    axis = _axis(drawn.columns, cell, _grid_width(drawn.layers, console.width))
    console.print(" " * (names + len(GUTTER)) + axis, no_wrap=True, overflow="crop")
    for line in _legend(drawn, lo, hi, colour):
        console.print(line)


def shorten(name: str, width: int) -> str:
    """`name` cut in the middle with an ellipsis to fit `width` characters (`enc…q`)."""
    return middle(name, width)


def _name_width(names: tuple[str, ...], width: int) -> int:
    longest = max((len(printable(n)) for n in names), default=MIN_NAME_WIDTH)
    return max(MIN_NAME_WIDTH, min(longest, width // NAME_SHARE))


def _grid_width(layers: tuple[str, ...], width: int) -> int:
    return width - _name_width(layers, width) - len(GUTTER)


def _cell(code: int, width: int, colour: bool) -> Text:
    if code < 0:
        return Text(MARKERS[code] * width, style=MARKER_STYLES[code] if colour else "")
    if colour:
        return Text("█" * width, style=PALETTE[code])
    return Text(RAMP[code] * width)


def _axis(columns: tuple[tuple[int, int], ...], cell: int, room: int) -> str:
    """Step labels under the grid: the first step of a column at its left edge, as many as fit, the last always."""
    ticks = [(i * cell, str(first)) for i, (first, _) in enumerate(columns)]
    last_at, last = ticks[-1]
    last_at = max(0, min(last_at, room - len(last)))
    chosen, free = [], 0
    for at, label in ticks[:-1]:
        if at >= free and at + len(label) + _TICK_GAP <= last_at:
            chosen.append((at, label))
            free = at + len(label) + _TICK_GAP
    line = ""
    for at, label in [*chosen, (last_at, last)]:
        line += " " * (at - len(line)) + label
    return line


def _steps(column: tuple[int, int]) -> str:
    return str(column[0]) if column[0] == column[1] else f"{column[0]}-{column[1]}"


def _named_steps(column: tuple[int, int]) -> str:
    return f"step {column[0]}" if column[0] == column[1] else f"steps {column[0]}-{column[1]}"


def _legend(drawn: Heatmap, lo: float, hi: float, colour: bool) -> list[Text]:
    keys = [_key(level, colour) for level in range(len(RAMP))]
    digits = _digits(lo, hi)
    entries = [
        key.append(f" ≥ {bound:.{digits}f}")
        for key, bound in zip(keys, level_bounds(lo, hi, len(RAMP))[:-1], strict=True)
    ]
    half = len(entries) // 2
    lines = [Text(f"scale: {METRIC_LABELS[drawn.metric]}, the max of each column", style="bold")]
    lines += [Text("  ") + Text("   ").join(chunk) for chunk in (entries[:half], entries[half:])]
    low, high = drawn.extreme(highest=False), drawn.extreme(highest=True)
    if low and high:
        lines.append(Text(f"min {low[0]:.2f} at {_where(low, drawn.row_noun)}"))
        lines.append(Text(f"max {high[0]:.2f} at {_where(high, drawn.row_noun)}"))
    fewest, most = drawn.steps_per_column
    per = str(fewest) if fewest == most else f"{fewest}-{most}"
    first, last = _named_steps(drawn.columns[0]), _named_steps(drawn.columns[-1])
    lines.append(Text(f"columns: first {first}, last {last}; {per} recorded step(s) each"))
    markers = [_key(code, colour).append(f" {MARKER_NAMES[code]}") for code in (NONFINITE, ZERO, MISSING)]
    lines.append(Text("markers: ") + Text("   ").join(markers))
    return lines


def _digits(lo: float, hi: float) -> int:
    """Decimals that tell neighbouring level bounds apart (one at least, four at most)."""
    step = (hi - lo) / len(RAMP)
    return 1 if step <= 0 else min(4, max(1, -math.floor(math.log10(step))))


def _key(code: int, colour: bool) -> Text:
    """A legend swatch: the coloured cell, or the quoted ramp character (a space must show)."""
    cell = _cell(code, 2 if colour and code >= 0 else 1, colour)
    return cell if colour else Text.assemble("'", cell, "'")


def _where(extreme: tuple[float, str, tuple[int, int]], noun: str) -> str:
    return f"{noun} {shorten(printable(extreme[1]), _LEGEND_NAME)}, {_named_steps(extreme[2])}"
