"""The per-parameter checks as vectorised masks over a run's columns (issue #14).

Each rule reads a `Frame` (the run's [step, param] arrays and each parameter's settings as vectors) and returns
`Fired` masks: where a check fired, and how to describe one cell. Python runs per cell only where a rule
fires, and per parameter only where a cheap necessary condition holds and the rule is sequential by nature
(`spike`'s baseline leaves out the steps that spiked; `dead-units` ORs Python-int bitmaps), so the cost grows
with the cells and not with the objects behind them. The numbers are the float64 operations of the per-object
rules in the same order (docs/CHECKS.md states each rule; tests/test_checks_columns.py compares with them).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .columns import Columns, DerivedColumns, KindColumns
from .formatting import beyond, bound, sci, times
from .metrics import log10_ratio
from .naming import layer_of
from .thresholds import Thresholds
from .units import dead_count, unit_count

KIND_WORDS = {"grad": "gradient", "param": "parameter", "update": "update"}
# How far numpy's log10 may stray from math.log10 (a few ulp of |log10| <= ~650, i.e. < 1e-12): a median update
# scale farther than this inside the band is inside it exactly too; nearer ones are recomputed with math.log10.
_LOG10_SLACK = 1e-9

Describe = Callable[[int, int], tuple[float, float, str]]  # (row, column) -> (value, threshold, message)


@dataclass(frozen=True, eq=False)
class Frame:
    """What the rules read: a run's columns and derived arrays, and each parameter's settings."""

    columns: Columns
    derived: DerivedColumns
    thresholds: tuple[Thresholds, ...]  # per parameter, after overrides and -t
    skip: tuple[frozenset[str], ...]  # per parameter: ignored checks and the exemptions of its layer role
    ordered: bool  # whether `columns.params` follows a recorded model order

    def setting(self, name: str) -> np.ndarray:
        """One threshold of every parameter, as a vector [P]."""
        if len(set(map(id, self.thresholds))) == 1:  # no overrides: one Thresholds for all
            return np.full(len(self.thresholds), getattr(self.thresholds[0], name))
        return np.array([getattr(t, name) for t in self.thresholds])

    def enabled(self, check: str) -> np.ndarray:
        """Whether `check` runs for each parameter, as a boolean vector [P]."""
        return np.array([check not in skip for skip in self.skip], dtype=bool)

    @cached_property
    def grad(self) -> KindColumns:
        """The gradients."""
        return self.columns.kinds["grad"]

    @cached_property
    def grad_mean(self) -> np.ndarray:
        """mean|g| where the gradient has a finite element, else NaN."""
        return self.grad.mean_abs

    @cached_property
    def grad_norm(self) -> np.ndarray:
        """‖g‖ where the gradient has a finite element, else NaN."""
        return self.grad.norm

    @cached_property
    def qualifying(self) -> np.ndarray:
        """Gradients entirely finite with ‖g‖ > 0: the steps `spike` and the streaks compare."""
        grad = self.grad
        with np.errstate(invalid="ignore"):
            return grad.present & (grad.finite == grad.count) & (self.grad_norm > 0)


@dataclass(frozen=True, eq=False)
class Fired:
    """Where one check fired for one kind of tensor: `mask` [S, P], and the event at any fired cell."""

    check: str
    kind: str
    mask: np.ndarray
    describe: Describe


def nonfinite(frame: Frame) -> Iterator[Fired]:
    """NaN or Inf anywhere in a gradient, parameter or update."""
    for kind, column in frame.columns.kinds.items():

        def describe(
            s: int, p: int, kind: str = kind, column: KindColumns = column
        ) -> tuple[float, float, str]:
            nan, inf, count = column.nan[s, p].item(), column.inf[s, p].item(), column.count[s, p].item()
            return float(nan + inf), 0.0, f"{KIND_WORDS[kind]}: {nan} NaN, {inf} Inf of {count} values"

        yield Fired("nonfinite", kind, column.present & (column.nan + column.inf != 0), describe)


def vanishing(frame: Frame) -> Iterator[Fired]:
    """Tiny mean|g| that is also far below the largest layer's gradient RMS at the same step (depth)."""
    mean, depth = frame.grad_mean, frame.derived.depth
    relative = np.array([math.log10(t.vanishing_relative) for t in frame.thresholds])
    with np.errstate(invalid="ignore"):  # NaN mean (none in practice) passes `mean >= bound` as the rows did
        fired = ~(mean >= frame.setting("vanishing_mean")) & (depth < relative)
    fired &= frame.grad.present & (frame.grad.finite > 0)  # a NaN depth (None) is never below the bound

    def describe(s: int, p: int) -> tuple[float, float, str]:
        value, limit = mean[s, p].item(), frame.thresholds[p].vanishing_mean
        message = (
            f"mean|g| {beyond(value, limit, scientific=True)} < {bound(limit)}; "
            f"layer RMS {sci(10 ** depth[s, p].item())} of the largest"
        )
        return value, limit, message

    yield Fired("vanishing", "grad", fired, describe)


def exploding(frame: Frame) -> Iterator[Fired]:
    """mean|g| above an absolute bound."""
    mean = frame.grad_mean
    with np.errstate(invalid="ignore"):
        fired = frame.grad.present & (frame.grad.finite > 0) & (mean > frame.setting("exploding_mean"))

    def describe(s: int, p: int) -> tuple[float, float, str]:
        value, limit = mean[s, p].item(), frame.thresholds[p].exploding_mean
        return value, limit, f"mean|g| {beyond(value, limit, scientific=True)} > {bound(limit)}"

    yield Fired("exploding", "grad", fired, describe)


def spike(frame: Frame) -> Iterator[Fired]:
    """‖g‖ far above the median of the parameter's earlier qualifying steps, and above all of them.

    Before a parameter's first spike its baseline is all earlier qualifying steps, so that spike needs a new
    maximum that is also >= factor x the smallest earlier norm (the median is no smaller): only parameters with
    such a step run the sequential rule (`_spikes`), which leaves the steps that spiked out of the baseline.
    """
    q, norm = frame.qualifying, frame.grad_norm
    earlier = np.cumsum(q, axis=0) - q
    highest = _before(np.maximum.accumulate(np.where(q, norm, -np.inf), axis=0), -np.inf)
    lowest = _before(np.minimum.accumulate(np.where(q, norm, np.inf), axis=0), np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        possible = (norm > highest) & (norm >= frame.setting("spike_factor") * lowest)
    possible &= q & (earlier >= frame.setting("spike_history"))
    fired = np.zeros_like(q)
    baselines: dict[tuple[int, int], float] = {}
    for p in np.flatnonzero(possible.any(axis=0) & frame.enabled("spike")).tolist():
        rows = np.flatnonzero(q[:, p])
        t = frame.thresholds[p]
        for i, baseline in _spikes(norm[rows, p].tolist(), t.spike_history, t.spike_factor):
            fired[rows[i], p] = True
            baselines[(int(rows[i]), p)] = baseline

    def describe(s: int, p: int) -> tuple[float, float, str]:
        value, baseline = norm[s, p].item(), baselines[(s, p)]
        message = f"gradient norm {sci(value)} is {times(value / baseline)} the median of earlier steps"
        return value / baseline, frame.thresholds[p].spike_factor, message

    yield Fired("spike", "grad", fired, describe)


def _spikes(norms: list[float], history: int, factor: float) -> Iterator[tuple[int, float]]:
    """(index, baseline) of each spike in one parameter's qualifying norms: the sequential rule itself."""
    earlier: list[float] = []  # kept sorted, so each median is a lookup
    for i, norm in enumerate(norms):
        if len(earlier) >= history:
            middle = len(earlier) // 2
            baseline = earlier[middle] if len(earlier) % 2 else (earlier[middle - 1] + earlier[middle]) / 2
            if norm >= factor * baseline and norm > earlier[-1]:
                yield i, baseline
                continue
        bisect.insort(earlier, norm)


def growth(frame: Frame) -> Iterator[Fired]:
    """‖g‖ growing by at least growth_factor at each of growth_window qualifying steps in a row."""
    yield _streaks(frame, "growth", "growth_factor", "growth_window")


def shrink(frame: Frame) -> Iterator[Fired]:
    """‖g‖ shrinking to at most shrink_factor at each of shrink_window qualifying steps in a row."""
    yield _streaks(frame, "shrink", "shrink_factor", "shrink_window")


def _streaks(frame: Frame, check: str, factor_name: str, window_name: str) -> Fired:
    """Steps ending a run of `window` qualifying steps whose norm moved by `factor` or more, each from the last.

    A factor above 1 means growth (after >= factor x before), below 1 shrinking (after <= factor x before).
    """
    q, norm = frame.qualifying, frame.grad_norm
    rows = np.arange(q.shape[0])[:, None]
    previous = _before(np.maximum.accumulate(np.where(q, rows, -1), axis=0), -1)  # last qualifying row before
    before = np.take_along_axis(norm, np.maximum(previous, 0), axis=0)
    factor = frame.setting(factor_name)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = factor * before
        moved = np.where(factor > 1, norm >= scaled, norm <= scaled) & q & (previous >= 0)
    moves = np.cumsum(moved, axis=0)
    streak = moves - np.maximum.accumulate(np.where(q & ~moved, moves, 0), axis=0)
    fired = moved & (streak >= frame.setting(window_name))

    def describe(s: int, p: int) -> tuple[float, float, str]:
        after, ago = norm[s, p].item(), norm[previous[s, p], p].item()
        length, limit = streak[s, p].item(), getattr(frame.thresholds[p], factor_name)
        qualifying = np.flatnonzero(q[:, p])
        start = frame.columns.steps[qualifying[np.searchsorted(qualifying, s) - length]].item()
        grows = limit > 1
        message = (
            f"gradient norm {'grew' if grows else 'shrank'} {'>=' if grows else '<='} {bound(limit)}× per "
            f"recorded step for {length} steps since step {start}, to {sci(after)}"
        )
        return after / ago, limit, message

    return Fired(check, "grad", fired, describe)


def dead(frame: Frame) -> Iterator[Fired]:
    """A gradient exactly zero at every recorded step where it is not empty (at least dead_min_steps)."""
    grad = frame.grad
    graded = grad.present & (grad.count > 0)
    steps = graded.sum(axis=0)
    zero = ~(graded & (grad.zeros != grad.count)).any(axis=0)
    fired = graded & (zero & (steps >= frame.setting("dead_min_steps")))

    def describe(s: int, p: int) -> tuple[float, float, str]:
        return 0.0, 0.0, f"gradient exactly zero at all {steps[p].item()} recorded steps"

    yield Fired("dead", "grad", fired, describe)


def dead_units(frame: Frame) -> Iterator[Fired]:
    """Units whose gradient is exactly zero from some recorded step to the last one (docs/CHECKS.md).

    The fewest units are alive over the last dead_min_steps bitmaps (the OR of fewer bitmaps has fewer bits),
    so a parameter whose dead fraction there is below the bound cannot fire, and is judged from those alone.
    """
    grad = frame.grad
    fired = np.zeros_like(grad.present)
    found: dict[int, tuple[int, int, int]] = {}  # column -> (dead units, units, first step)
    for p in np.flatnonzero(frame.enabled("dead-units") & grad.present.any(axis=0)).tolist():
        t = frame.thresholds[p]
        rows = np.flatnonzero(grad.present[:, p])
        if not _may_have_dead_units(frame, rows, p, t):
            continue
        bitmaps = [(s, grad.alive.get((s, p))) for s in rows.tolist()]
        grads = [(s, alive) for s, alive in bitmaps if alive is not None]
        hit = _dead_units_from(grads, unit_count(frame.columns.shapes[grad.shape[grads[-1][0], p]]), t)
        if hit is not None:
            first, dead_units_, units = hit
            fired[[s for s, _ in grads[first:]], p] = True
            found[p] = (dead_units_, units, frame.columns.steps[grads[first][0]].item())

    def describe(s: int, p: int) -> tuple[float, float, str]:
        count, units, start = found[p]
        message = f"dead units {math.floor(100 * count / units)} % ({count}/{units}) from step {start} on"
        return count / units, frame.thresholds[p].dead_units, message

    yield Fired("dead-units", "grad", fired, describe)


def _may_have_dead_units(frame: Frame, rows: np.ndarray, p: int, t: Thresholds) -> bool:
    """Whether the last dead_min_steps unit bitmaps of column p leave at least dead_units of its units dead."""
    grad, last = frame.grad, []
    for s in map(int, rows[::-1]):  # from the end: usually dead_min_steps lookups
        alive = grad.alive.get((s, p))
        if alive is not None:
            last.append((s, alive))
            if len(last) == t.dead_min_steps:
                break
    if len(last) < t.dead_min_steps:
        return False
    units = unit_count(frame.columns.shapes[grad.shape[last[0][0], p]])  # of the last bitmap, as judged
    union = 0
    for _, alive in last:
        union |= alive
    return units >= 2 and dead_count(union, units) / units >= t.dead_units


def _dead_units_from(grads: list[tuple[int, int]], units: int, t: Thresholds) -> tuple[int, int, int] | None:
    """(first index, dead units, units) of one parameter's (row, bitmap) list, None when it does not fire."""
    if len(grads) < t.dead_min_steps or units < 2 or not any(alive for _, alive in grads):
        return None  # zero throughout: `dead`'s finding, not a fraction of units
    alive, suffix = 0, []
    for _, bitmap in reversed(grads):
        alive |= bitmap
        suffix.append(dead_count(alive, units))
    suffix.reverse()  # suffix[i]: units zero at every recorded step from grads[i] on
    judged = len(grads) - t.dead_min_steps + 1
    first = next((i for i in range(judged) if suffix[i] / units >= t.dead_units), None)
    return None if first is None else (first, suffix[first], units)


def update_ratio(frame: Frame) -> Iterator[Fired]:
    """Median of log10(mean|update| / the weight's first mean|param|) outside [low, high], for weights.

    Judged on the median over the recorded steps; the events mark the steps that were themselves outside.
    numpy's log10 screens the parameters: those clearly inside the band are done, the others are judged with
    math.log10 as the per-object rule did.
    """
    value, update = frame.columns.kinds["param"], frame.columns.kinds["update"]
    dims = np.array([len(shape) for shape in frame.columns.shapes] + [0])  # index -1 (absent): no dimension
    matrix = np.where(value.present, dims[value.shape], dims[update.shape]) >= 2
    mean, moved = value.mean_abs, update.mean_abs
    with np.errstate(invalid="ignore"):
        scaled = matrix & value.present & np.isfinite(mean) & (mean > 0)
        cells = update.present & matrix & np.isfinite(moved) & (moved > 0) & scaled.any(axis=0)
    scale = mean[scaled.argmax(axis=0), np.arange(mean.shape[1])]
    low, high = frame.setting("update_ratio_low"), frame.setting("update_ratio_high")
    median = _column_medians(_log10_ratios(moved, scale), cells)
    unclear = cells.any(axis=0) & ~((median > low + _LOG10_SLACK) & (median < high - _LOG10_SLACK))
    fired = {check: np.zeros_like(cells) for check in ("update-ratio-high", "update-ratio-low")}
    found: dict[int, tuple[float, int]] = {}
    for p in np.flatnonzero(unclear).tolist():
        rows, bottom = np.flatnonzero(cells[:, p]), scale[p].item()
        ratios = [log10_ratio(top, bottom) for top in moved[rows, p].tolist()]
        found[p] = (statistics.median(ratios), len(ratios))
        t = frame.thresholds[p]
        if found[p][0] > t.update_ratio_high:
            fired["update-ratio-high"][rows[[r > t.update_ratio_high for r in ratios]], p] = True
        elif found[p][0] < t.update_ratio_low:
            fired["update-ratio-low"][rows[[r < t.update_ratio_low for r in ratios]], p] = True

    def describe(s: int, p: int) -> tuple[float, float, str]:
        (value, count), t = found[p], frame.thresholds[p]
        limit, sign = (t.update_ratio_high, ">") if value > t.update_ratio_high else (t.update_ratio_low, "<")
        return (
            value,
            limit,
            f"median update ratio {beyond(value, limit)} {sign} {bound(limit)} over {count} step(s)",
        )

    for check, mask in fired.items():
        yield Fired(check, "update", mask, describe)


def _log10_ratios(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """metrics.log10_ratio of arrays (numpy's log10, within _LOG10_SLACK of math.log10); NaN where undefined."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        quotient = top / bottom
        direct = (quotient > 0) & (quotient < np.inf)
        return np.where(direct, np.log10(quotient), np.log10(top) - np.log10(bottom))


def _column_medians(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The median of each column's `cells` (NaN for none), as statistics.median takes it."""
    ordered = np.sort(np.where(cells, values, np.inf), axis=0)
    count = cells.sum(axis=0)
    columns = np.arange(values.shape[1])
    low, high = ordered[np.maximum(count - 1, 0) // 2, columns], ordered[count // 2 - (count == 0), columns]
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, np.where(count % 2, high, (low + high) / 2), np.nan)


def relative_exploding(frame: Frame) -> Iterator[Fired]:
    """A layer whose gradient RMS is far above the last layer's at the same step (AutoTrainer).

    The last layer is the output-most by the recorded model order; without one (plain dumps, no `order`
    metadata) there is no telling which layer is last, so the check does not run.
    """
    if not frame.ordered:
        return
    graded, derived = frame.grad.present, frame.derived
    last = graded.shape[1] - 1 - graded[:, ::-1].argmax(axis=1)  # the last parameter with a gradient
    last_rms = derived.layer_rms[np.arange(graded.shape[0]), last]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        usable = graded.any(axis=1) & np.isfinite(last_rms) & (last_rms != 0)
        ratio = np.where(derived.layer_known, derived.layer_rms, 0.0) / last_rms[:, None]
        fired = graded & usable[:, None] & np.isfinite(ratio) & (ratio > frame.setting("exploding_relative"))

    def describe(s: int, p: int) -> tuple[float, float, str]:
        layer = layer_of(frame.columns.params[last[s]])
        value = ratio[s, p].item()
        return (
            value,
            frame.thresholds[p].exploding_relative,
            f"layer gradient RMS {times(value)} the last layer's ({layer})",
        )

    yield Fired("exploding-relative", "grad", fired, describe)


def _before(values: np.ndarray, first: float) -> np.ndarray:
    """`values` moved one row down: each row sees the row above (the first row sees `first`)."""
    out = np.empty_like(values)
    out[0], out[1:] = first, values[:-1]
    return out


RULES: tuple[Callable[[Frame], Iterator[Fired]], ...] = (
    nonfinite,
    vanishing,
    exploding,
    spike,
    growth,
    shrink,
    dead,
    dead_units,
    update_ratio,
    relative_exploding,
)
