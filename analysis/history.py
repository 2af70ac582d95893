"""A run across steps: step ranges, log10 ‖g‖ series per parameter, their trend, and the per-layer depth profile."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from operator import mul, sub
from typing import NamedTuple

import numpy as np

from .columns import Columns
from .errors import GradcheckError
from .layer_columns import kind_rows, layer_order, log10_cells, merge_layers
from .metrics import ParamStep
from .naming import layer_of
from .stats import TensorStats, merge_all

# A trend is a fitted change of at least a tenfold in ‖g‖ over the selected steps. The healthy sample runs drift
# by 0.3 to 1 decade over 360 steps as the loss falls (sample_runs/README.md); exploding_nan climbs 25 decades.
TREND_DECADES = 1.0
# Two points are a difference, not a trend: one noisy step would decide it.
TREND_MIN_POINTS = 3
# How near a threshold (in decades) a fit in numpy is redone with `trend`'s own sums. numpy sums pairwise, `trend`
# in order: the two differ by rounding, a few ulps of sums of step offset x log10 ‖g‖ difference, which stays
# below 1e-10 decades even for log10 ‖g‖ swinging by ±300 (the float64 range) around a one-decade trend.
_DIRECTION_MARGIN = 1e-6
# Sparkline cells per row: wide enough to show a spike's position, narrow enough for an 80-column table.
SPARK_WIDTH = 16

OK, ZERO, NONFINITE, MISSING = "ok", "zero", "nonfinite", "missing"
STATES = (OK, ZERO, NONFINITE, MISSING)  # GradHistory.state holds indexes into this
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
    return _fit(
        [p.step for p in series if p.log_norm is not None],
        [p.log_norm for p in series if p.log_norm is not None],
    )


def _fit(xs: list[int], ys: list[float]) -> Trend:
    """The least-squares fit of `trend`; C-level maps over lists do the same float operations as a loop, faster."""
    n = len(xs)
    if n < TREND_MIN_POINTS:
        return Trend(None, None, n)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    dx = list(map(sub, xs, repeat(mean_x)))
    spread = sum(map(pow, dx, repeat(2)))
    slope = sum(map(mul, dx, map(sub, ys, repeat(mean_y)))) / spread
    decades = slope * (xs[-1] - xs[0])
    direction = UP if decades >= TREND_DECADES else DOWN if decades <= -TREND_DECADES else FLAT
    return Trend(direction, decades, n)


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
    grads = [row.grad.stats for row in members if row.grad is not None]
    return _summary(layer, tuple(row.param for row in members), grads)


def _summary(layer: str, params: tuple[str, ...], grads: list[TensorStats]) -> LayerDepth:
    stats = merge_all(grads)
    return LayerDepth(
        layer=layer,
        params=params,
        mean_abs=stats.mean_abs if stats.finite else None,
        max_abs=stats.max_abs if stats.finite else None,
        nonfinite=stats.nan + stats.inf,
        count=stats.count,
    )


# The same, over a run's columns (analysis/columns.py): what the table, the depth view and the charts read.


@dataclass(frozen=True, eq=False)
class GradHistory:
    """`grad_series` of every parameter over chosen steps as arrays [step, param] (column p is params[p])."""

    steps: tuple[int, ...]
    log_norm: np.ndarray  # float64; NaN where the state is not ok
    state: np.ndarray  # int8 index into STATES

    def series(self, p: int) -> tuple[Point, ...]:
        """Parameter column `p` as Points: grad_series of that parameter."""
        return self._points(p, list(range(len(self.steps))))

    def _points(self, p: int, rows: Sequence[int]) -> tuple[Point, ...]:
        logs, states = self.log_norm[rows, p].tolist(), self.state[rows, p].tolist()
        return tuple(
            Point(self.steps[i], log if state == 0 else None, STATES[state])
            for i, log, state in zip(rows, logs, states, strict=True)
        )

    def trend(self, p: int) -> Trend:
        """trend(series(p)), without building the Points."""
        ok = self._ok[p]
        return _fit(self._step_array[ok].tolist(), self.log_norm[ok, p].tolist())

    def directions(self) -> list[str | None]:
        """trend(series(p)).direction of every parameter: the table's arrows.

        The fit in numpy sums in another order than `trend`, so it can differ in the last bits: a parameter
        whose change lies within _DIRECTION_MARGIN of a threshold is fitted again exactly.
        """
        ok = self.state == 0
        points = ok.sum(axis=0)
        x = np.where(ok, self._step_array[:, None].astype(np.float64), 0.0)
        y = np.where(ok, self.log_norm, 0.0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            dx = np.where(ok, x - x.sum(axis=0) / points, 0.0)
            dy = np.where(ok, y - y.sum(axis=0) / points, 0.0)
            slope = (dx * dy).sum(axis=0) / (dx * dx).sum(axis=0)
            last = len(self.steps) - 1 - np.argmax(ok[::-1], axis=0)
            decades = slope * (self._step_array[last] - self._step_array[np.argmax(ok, axis=0)])
        margin = np.abs(np.abs(decades) - TREND_DECADES)
        sure = (points >= TREND_MIN_POINTS) & np.isfinite(decades) & (margin > _DIRECTION_MARGIN)
        fitted = np.where(
            decades >= TREND_DECADES, UP, np.where(decades <= -TREND_DECADES, DOWN, FLAT)
        ).tolist()
        return [fitted[p] if sure else self.trend(p).direction for p, sure in enumerate(sure.tolist())]

    @cached_property
    def _step_array(self) -> np.ndarray:
        return np.asarray(self.steps, dtype=np.int64)

    @cached_property
    def _ok(self) -> np.ndarray:
        return np.ascontiguousarray((self.state == 0).T)

    def binned(self, width: int = SPARK_WIDTH) -> list[list[int]]:
        """For each parameter, the step rows bin_series keeps: all rows when they fit `width`."""
        count, params = self.state.shape
        if count <= width:
            return [list(range(count))] * params
        picks = np.empty((width, params), dtype=np.intp)
        filled = np.where(self.state == 0, self.log_norm, -np.inf)
        for b in range(width):
            lo, hi = b * count // width, (b + 1) * count // width
            picks[b] = lo + _pick(self.state[lo:hi], filled[lo:hi])
        return picks.T.tolist()

    def binned_series(self, p: int, rows: list[int]) -> tuple[Point, ...]:
        """The Points of parameter `p` at `rows` (from `binned`): bin_series(series(p), width)."""
        return self._points(p, rows)


def _pick(state: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Per column of one bin, the row history._binned keeps: first NaN/Inf, else first largest, else first zero,
    else the last."""
    nonfinite, ok, zero = state == 2, state == 0, state == 1
    last = np.full(state.shape[1], state.shape[0] - 1)
    pick = np.where(zero.any(axis=0), np.argmax(zero, axis=0), last)
    pick = np.where(ok.any(axis=0), np.argmax(filled, axis=0), pick)
    return np.where(nonfinite.any(axis=0), np.argmax(nonfinite, axis=0), pick)


def grad_history(columns: Columns, steps: Sequence[int]) -> GradHistory:
    """log10 ‖g‖ and state of every parameter at each of `steps` (recorded or not), as grad_series gives them."""
    wanted = np.asarray(steps, dtype=np.int64)
    rows = np.clip(np.searchsorted(columns.steps, wanted), 0, max(len(columns.steps) - 1, 0))
    grad = columns.kinds["grad"]
    recorded = (columns.steps[rows] == wanted) if len(columns.steps) else np.zeros(len(wanted), bool)
    present = grad.present[rows] & recorded[:, None] & (grad.count[rows] > 0)
    sq, scale = grad.sq_sum[rows], grad.scale[rows]
    nonfinite = present & ((grad.nan[rows] > 0) | (grad.inf[rows] > 0) | ~np.isfinite(sq))
    ok = present & ~nonfinite & (sq > 0)
    state = np.full(sq.shape, 3, dtype=np.int8)
    state[present] = 1
    state[nonfinite] = 2
    state[ok] = 0
    log_norm = np.full(sq.shape, np.nan)
    # log10(‖g‖²) / 2 + log10(scale), as TensorStats.log10_norm computes it
    log_norm[ok] = log10_cells(sq[ok]) / 2 + _log10_scales(scale[ok])
    return GradHistory(steps=tuple(int(step) for step in steps), log_norm=log_norm, state=state)


def _log10_scales(scales: np.ndarray) -> np.ndarray:
    """math.log10 of each scale: a power of two, almost always 1, so once per distinct value."""
    distinct, inverse = np.unique(scales, return_inverse=True)
    return log10_cells(distinct)[inverse.reshape(scales.shape)]


def layer_depths(columns: Columns, step: int) -> list[LayerDepth]:
    """depth_profile at `step`, from the run's columns (one step: a summary per parameter is cheap)."""
    s = columns.step_index(step)
    if s is None:
        return []
    grad = columns.kinds["grad"]
    layers: dict[str, tuple[list[str], list[TensorStats]]] = {}
    for p in np.flatnonzero(grad.present[s]).tolist():
        cell, param = grad.stats(s, p), columns.params[p]
        if cell is not None:
            names, grads = layers.setdefault(layer_of(param), ([], []))
            names.append(param)
            grads.append(cell)
    return [_summary(layer, tuple(names), grads) for layer, (names, grads) in layers.items()]


def depth_profiles(columns: Columns) -> Mapping[int, list[LayerDepth]]:
    """depth_profile at every recorded step (the charts' gradient flow): merged over all steps at once, each
    step's LayerDepth objects built when it is looked up (`gradcheck plot` draws one step of a long run)."""
    return _Profiles(columns.steps.tolist(), _Depths(columns, slice(None)))


class _Depths:
    """The merged gradients of every layer at the steps `rows`, and the order of the layers at each step."""

    def __init__(self, columns: Columns, rows: slice) -> None:
        grad = kind_rows(columns.kinds["grad"], rows)
        self.layers, self.groups = layer_order(columns)
        merged = merge_layers(grad, self.groups)
        steps, none = grad.present.shape[0], len(columns.params)
        first = np.full((steps, len(self.groups)), none)  # first member with a gradient, per step
        full = np.zeros((steps, len(self.groups)), dtype=bool)
        for i, group in enumerate(self.groups):
            has = grad.present[:, group]
            first[:, i] = np.where(has.any(axis=1), np.asarray(group)[np.argmax(has, axis=1)], none)
            full[:, i] = has.all(axis=1)
        # layers in the order of their first parameter with a gradient; those without one sort last
        self.order = np.argsort(first, axis=1, kind="stable").tolist()
        self.first, self.full, self.present, self.none = first.tolist(), full.tolist(), grad.present, none
        self.known = (merged.finite > 0).tolist()
        self.mean, self.top = merged.mean_abs.tolist(), merged.abs_max.tolist()
        self.bad, self.count = (merged.nan + merged.inf).tolist(), merged.count.tolist()
        self.params = columns.params
        self.names = [tuple(columns.params[p] for p in group) for group in self.groups]

    def at(self, s: int) -> list[LayerDepth]:
        """The depth profile at step row `s`."""
        depths = []
        for i in self.order[s]:
            if self.first[s][i] == self.none:
                break  # this layer and the rest have no gradient at the step
            params = self.names[i]
            if not self.full[s][i]:
                params = tuple(self.params[p] for p in self.groups[i] if self.present[s, p])
            known = self.known[s][i]
            depths.append(
                LayerDepth(
                    layer=self.layers[i],
                    params=params,
                    mean_abs=self.mean[s][i] if known else None,
                    max_abs=self.top[s][i] if known else None,
                    nonfinite=self.bad[s][i],
                    count=self.count[s][i],
                )
            )
        return depths


class _Profiles(Mapping[int, list[LayerDepth]]):
    """step -> depth profile, built on first look-up."""

    def __init__(self, steps: list[int], depths: _Depths) -> None:
        self._rows = {step: s for s, step in enumerate(steps)}
        self._depths = depths
        self._built: dict[int, list[LayerDepth]] = {}

    def __getitem__(self, step: int) -> list[LayerDepth]:
        if step not in self._built:
            self._built[step] = self._depths.at(self._rows[step])
        return self._built[step]

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
