"""One-line pictures of a parameter's gradient history: a sparkline of log10 ‖g‖ and a trend arrow."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from gradcheck.analysis.history import (
    DOWN,
    NONFINITE,
    SPARK_WIDTH,
    UP,
    ZERO,
    Point,
    Trend,
    bin_series,
    trend,
)

BLOCKS = "▁▂▃▄▅▆▇█"
NONFINITE_MARK, ZERO_MARK, MISSING_MARK = "!", "·", " "
ARROWS = {UP: "↑", DOWN: "↓"}
FLAT_ARROW, NO_TREND = "→", "-"
# Each row is scaled between its own min and max, but never to less than a decade: noise of a few percent
# between steps would otherwise fill the whole block range and look like a trend.
MIN_SPAN_DECADES = 1.0
_TREND_STYLE = {UP: "yellow", DOWN: "cyan"}


def sparkline(series: Sequence[Point], width: int = SPARK_WIDTH) -> Text:
    """At most `width` cells: a block per (binned) step, `!` NaN/Inf in red, `·` for ‖g‖ = 0, space if missing."""
    points = bin_series(series, width)
    finite = [p.log_norm for p in points if p.log_norm is not None]
    if not points:
        return Text()
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = max(high - low, MIN_SPAN_DECADES)
    base = (low + high - span) / 2
    cells = []
    for point in points:
        if point.log_norm is not None:
            level = min(len(BLOCKS) - 1, int((point.log_norm - base) / span * len(BLOCKS)))
            cells.append(BLOCKS[level])
        elif point.state == NONFINITE:
            cells.append(NONFINITE_MARK)
        else:
            cells.append(ZERO_MARK if point.state == ZERO else MISSING_MARK)
    text = Text("".join(cells))  # one string, then a style span per NaN/Inf cell: as appending cell by cell
    for i, point in enumerate(points):
        if point.log_norm is None and point.state == NONFINITE:
            text.stylize("bold red", i, i + 1)
    return text


def trend_mark(fitted: Trend) -> Text:
    """↑ growing, ↓ shrinking, → flat (analysis.history.TREND_DECADES), - when too few points."""
    return direction_mark(fitted.direction)


def direction_mark(direction: str | None) -> Text:
    """The arrow of a trend's direction (Trend.direction)."""
    if direction is None:
        return Text(NO_TREND, style="dim")
    return Text(ARROWS.get(direction, FLAT_ARROW), style=_TREND_STYLE.get(direction, ""))


def history_cell(series: Sequence[Point], width: int = SPARK_WIDTH) -> Text:
    """The table's history cell: the sparkline, a space, and the trend arrow."""
    return history_text(series, trend(series).direction, width)


def history_text(binned: Sequence[Point], direction: str | None, width: int = SPARK_WIDTH) -> Text:
    """history_cell of a series already binned (GradHistory.binned_series) with its trend's direction."""
    return sparkline(binned, width) + Text(" ") + direction_mark(direction)
