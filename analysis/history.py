"""A run across steps: step ranges, log10 ‖g‖ series per parameter, their trend, and the per-layer depth profile."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .errors import GradcheckError
from .metrics import ParamStep
from .stats import merge_all

# A trend is a fitted change of at least a tenfold in ‖g‖ over the selected steps. The healthy sample runs drift
# by 0.3 to 1 decade over 360 steps as the loss falls (sample_runs/README.md); exploding_nan climbs 25 decades.
TREND_DECADES = 1.0
# Two points are a difference, not a trend: one noisy step would decide it.
TREND_MIN_POINTS = 3
# Sparkline cells per row: wide enough to show a spike's position, narrow enough for an 80-column table.
SPARK_WIDTH = 16

OK, ZERO, NONFINITE, MISSING = "ok", "zero", "nonfinite", "missing"
UP, DOWN, FLAT = "up", "down", "flat"


class StepRangeError(GradcheckError):
    """A --steps range that cannot be parsed or selects no recorded step."""


@dataclass(frozen=True, slots=True)
class StepRange:
    """Inclusive bounds on recorded steps; None leaves that side open (`--steps all` is both None)."""

    first: int | None = None
    last: int | None = None

    def __str__(self) -> str:
        """The range as typed: `A:B`, `:B`, `A:`, or `all`."""
        if self.first is None and self.last is None:
            return "all"
        return f"{'' if self.first is None else self.first}:{'' if self.last is None else self.last}"


class Point(NamedTuple):
    """One step of a parameter's gradient history: log10 ‖g‖ when `state` is ok, else None.

    A named tuple, not a dataclass: a long run makes one per parameter and step, and tuples build 3x faster.
    """

    step: int
    log_norm: float | None
    state: str  # ok, zero (‖g‖ = 0), nonfinite (a NaN or Inf element), missing (no gradient recorded, or an empty one)


@dataclass(frozen=True, slots=True)
class Trend:
    """Direction of log10 ‖g‖ over a series: up, down, flat, or None with fewer than TREND_MIN_POINTS."""

    direction: str | None
    decades: float | None  # least-squares change of log10 ‖g‖ from the first to the last point used
    points: int  # finite, non-zero points the fit used


@dataclass(frozen=True, slots=True)
class LayerDepth:
    """One layer's gradient magnitude at one step, over the finite elements of its parameters' gradients."""

    layer: str
    params: tuple[str, ...]
    mean_abs: float | None  # None: no finite element (or no gradient at all)
    max_abs: float | None
    nonfinite: int  # NaN and Inf elements
    count: int  # gradient elements, finite or not


def parse_step_range(text: str) -> StepRange:
    """`all`, `A:B`, `A:` or `:B` (integers, inclusive) as a StepRange; raises StepRangeError otherwise."""
    text = text.strip()
    if text == "all":
        return StepRange()
    first, colon, last = text.partition(":")
    if not colon:
        raise StepRangeError(f"--steps {text!r}: expected A:B, A:, :B or all")
    try:
        bounds = StepRange(_bound(first), _bound(last))
    except ValueError:
        raise StepRangeError(f"--steps {text!r}: the bounds must be integers") from None
    if bounds.first is not None and bounds.last is not None and bounds.first > bounds.last:
        raise StepRangeError(f"--steps {text!r}: the first step is after the last")
    return bounds


def _bound(text: str) -> int | None:
    return int(text) if text.strip() else None


def select_steps(steps: Sequence[int], bounds: StepRange) -> tuple[int, ...]:
    """The recorded steps inside `bounds`; raises StepRangeError when there is none."""
    low = -math.inf if bounds.first is None else bounds.first
    high = math.inf if bounds.last is None else bounds.last
    chosen = tuple(step for step in steps if low <= step <= high)
    if not chosen:
        recorded = f"{steps[0]}-{steps[-1]}" if steps else "none"
        raise StepRangeError(f"--steps {bounds} selects no recorded step (recorded: {recorded})")
    return chosen


def steps_until(steps: Sequence[int], last: int | None) -> tuple[int, ...]:
    """The recorded steps up to `last`, inclusive: the history shown by default (none when `last` is None)."""
    return () if last is None else tuple(step for step in steps if step <= last)


def grad_series(
    rows: Mapping[tuple[int, str], ParamStep], param: str, steps: Sequence[int]
) -> tuple[Point, ...]:
    """log10 ‖g‖ of `param` at each of `steps`, with the steps where it is undefined marked by their state."""
    return tuple(_point(rows.get((step, param)), step) for step in steps)


def _point(row: ParamStep | None, step: int) -> Point:
    if row is None or row.grad is None or not row.grad.stats.count:
        return Point(step, None, MISSING)
    stats = row.grad.stats
    if stats.nan or stats.inf or not math.isfinite(stats.sq_sum):  # a NaN/Inf element, or the sum overflowed
        return Point(step, None, NONFINITE)
    log_norm = stats.log10_norm  # log10(‖g‖²) / 2, right also for scaled F64 sums (stats.py)
    return Point(step, log_norm, OK) if log_norm is not None else Point(step, None, ZERO)


def trend(series: Sequence[Point]) -> Trend:
    """Least-squares slope of log10 ‖g‖ against the step number, as the change over the points it fits."""
    used = [(p.step, p.log_norm) for p in series if p.log_norm is not None]
    if len(used) < TREND_MIN_POINTS:
        return Trend(None, None, len(used))
    mean_x = sum(x for x, _ in used) / len(used)
    mean_y = sum(y for _, y in used) / len(used)
    spread = sum((x - mean_x) ** 2 for x, _ in used)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in used) / spread
    decades = slope * (used[-1][0] - used[0][0])
    direction = UP if decades >= TREND_DECADES else DOWN if decades <= -TREND_DECADES else FLAT
    return Trend(direction, decades, len(used))


def bin_series(series: Sequence[Point], width: int = SPARK_WIDTH) -> tuple[Point, ...]:
    """At most `width` points: consecutive steps share a bin, which keeps its worst (NaN/Inf) or largest point."""
    if len(series) <= width:
        return tuple(series)
    bins = [series[i * len(series) // width : (i + 1) * len(series) // width] for i in range(width)]
    return tuple(_binned(chunk) for chunk in bins)


def _binned(chunk: Sequence[Point]) -> Point:
    """The bin's NaN/Inf if any (never hide one), else its largest ‖g‖ (a spike stays visible), else zero."""
    bad = next((p for p in chunk if p.state == NONFINITE), None)
    if bad is not None:
        return bad
    finite = [p for p in chunk if p.log_norm is not None]
    if finite:
        return max(finite, key=lambda p: p.log_norm if p.log_norm is not None else -math.inf)
    return next((p for p in chunk if p.state == ZERO), chunk[-1])


def depth_profile(
    rows: Mapping[tuple[int, str], ParamStep], params: Sequence[str], step: int
) -> list[LayerDepth]:
    """Mean and max |g| of each layer at `step`, layers in the model order of their first parameter."""
    layers: dict[str, list[ParamStep]] = {}
    for param in params:
        row = rows.get((step, param))
        if row is not None and row.grad is not None:
            layers.setdefault(row.layer, []).append(row)
    return [_layer_depth(layer, members) for layer, members in layers.items()]


def _layer_depth(layer: str, members: list[ParamStep]) -> LayerDepth:
    stats = merge_all(row.grad.stats for row in members if row.grad is not None)
    return LayerDepth(
        layer=layer,
        params=tuple(row.param for row in members),
        mean_abs=stats.mean_abs if stats.finite else None,
        max_abs=stats.max_abs if stats.finite else None,
        nonfinite=stats.nan + stats.inf,
        count=stats.count,
    )
