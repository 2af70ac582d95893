"""The layers x steps matrix behind `gradcheck heatmap`: one log10 value per layer and column of steps.

Cells hold log10 of the metric. Two values are markers rather than magnitudes: NaN means a NaN or Inf was
recorded in the cell (it wins over every number, so a single bad step stays visible in a wide bin), and -inf
means the metric is exactly zero (a dead layer; log10 is undefined). `missing` marks cells with nothing
recorded for the metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .activation_heatmap import ACT_METRIC_LABELS, ACT_METRICS, ACT_NEEDS, activation_values
from .errors import RunError
from .inspection import Report
from .metrics import ParamStep, log10_ratio
from .stats import TensorStats, merge_all

LAYER_METRICS = ("grad-norm", "grad-mean", "update-ratio", "param-norm")
METRICS = LAYER_METRICS + ACT_METRICS  # act-*: modules x steps, a share (analysis/activation_heatmap.py)
METRIC_LABELS = {
    "grad-norm": "log10 ‖g‖ of the layer",
    "grad-mean": "log10 mean|g| of the layer",
    "update-ratio": "log10 mean|update| / mean|param| of the layer",
    "param-norm": "log10 ‖param‖ of the layer",
} | ACT_METRIC_LABELS
# Level codes below 0 are markers; 0..levels-1 are magnitudes, low to high.
NONFINITE, ZERO, MISSING = -3, -2, -1


@dataclass(frozen=True, eq=False)
class Heatmap:
    """Layers (model order) x columns (bins of consecutive recorded steps), each cell the max of its bin."""

    metric: str
    layers: tuple[str, ...]
    columns: tuple[tuple[int, int], ...]  # first and last recorded step of each column
    steps_per_column: tuple[int, int]  # fewest and most recorded steps in one column
    values: np.ndarray  # (layers, columns) log10; NaN = NaN/Inf recorded, -inf = exactly zero
    missing: np.ndarray  # (layers, columns) bool: nothing recorded for the metric

    @property
    def finite(self) -> np.ndarray:
        """Mask of the cells that hold a magnitude."""
        return np.isfinite(self.values) & ~self.missing

    def extreme(self, highest: bool) -> tuple[float, str, tuple[int, int]] | None:
        """(value, layer, column steps) of the smallest or largest magnitude; None when there is none."""
        finite = self.finite
        if not finite.any():
            return None
        filled = np.where(finite, self.values, -np.inf if highest else np.inf)
        row, col = np.unravel_index(int(np.argmax(filled) if highest else np.argmin(filled)), filled.shape)
        return float(self.values[row, col]), self.layers[row], self.columns[col]


def build_heatmap(report: Report, metric: str, *, max_columns: int) -> Heatmap:
    """The heatmap of `metric` over a report's layers and recorded steps, in at most `max_columns` columns."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    if metric in ACT_METRICS:
        layers, values, missing = activation_values(report.run.signals, report.run.steps, metric)
    else:
        layers, values, missing = layer_values(report, metric)
    if missing.all():
        raise RunError(f"{report.run.path}: no layer has a value for --metric {metric} ({_NEEDS[metric]})")
    steps = report.run.steps
    starts = bin_starts(len(steps), max_columns)
    ends = [*starts[1:], len(steps)]
    sizes = [end - start for start, end in zip(starts, ends, strict=True)]
    binned, binned_missing = bin_columns(values, missing, starts)
    return Heatmap(
        metric=metric,
        layers=layers,
        columns=tuple((steps[start], steps[end - 1]) for start, end in zip(starts, ends, strict=True)),
        steps_per_column=(min(sizes), max(sizes)),
        values=binned,
        missing=binned_missing,
    )


def layer_values(report: Report, metric: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Layers in model order and, per layer and recorded step, the cell value and the missing mask."""
    # rows are keyed step by step in model order, so first appearances give the model order of the layers
    layers = tuple(dict.fromkeys(row.layer for row in report.rows.values()))
    index = {layer: i for i, layer in enumerate(layers)}
    values = np.full((len(layers), len(report.run.steps)), np.nan)
    missing = np.ones(values.shape, dtype=bool)
    measure = _MEASURES[metric]
    for col, step in enumerate(report.run.steps):
        groups: dict[str, list[ParamStep]] = {}
        for row in report.rows_at(step):
            groups.setdefault(row.layer, []).append(row)
        for layer, rows in groups.items():
            value = measure(rows)
            if value is not None:
                values[index[layer], col] = value
                missing[index[layer], col] = False
    return layers, values, missing


def bin_starts(count: int, max_columns: int) -> list[int]:
    """Start index of each bin: `count` items in min(count, max_columns) bins whose sizes differ by at most 1."""
    if max_columns < 1:
        raise ValueError("max_columns must be at least 1")
    bins = min(count, max_columns)
    return [i * count // bins for i in range(bins)]


def bin_columns(
    values: np.ndarray, missing: np.ndarray, starts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce columns into bins: NaN if any cell is NaN, else the max (-inf for zero); missing if all are."""
    if values.shape[0] == 0 or not starts:
        return np.empty((values.shape[0], len(starts))), np.ones((values.shape[0], len(starts)), dtype=bool)
    bad = np.isnan(values) & ~missing
    filled = np.where(missing | bad, -np.inf, values)
    binned = np.maximum.reduceat(filled, starts, axis=1)
    binned[np.logical_or.reduceat(bad, starts, axis=1)] = np.nan
    binned_missing = np.logical_and.reduceat(missing, starts, axis=1)
    binned[binned_missing] = np.nan
    return binned, binned_missing


def scale_levels(values: np.ndarray, missing: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    """Level 0..levels-1 of each magnitude on the linear scale lo..hi (middle level if lo == hi), or a marker."""
    finite = np.isfinite(values) & ~missing
    if hi > lo:
        position = (np.where(finite, values, lo) - lo) / (hi - lo) * levels
        scaled = np.clip(np.floor(position), 0, levels - 1).astype(int)
    else:
        scaled = np.full(values.shape, levels // 2)
    codes = np.where(finite, scaled, MISSING)
    codes = np.where(~missing & np.isnan(values), NONFINITE, codes)
    return np.where(~missing & np.isneginf(values), ZERO, codes)


def level_bounds(lo: float, hi: float, levels: int) -> list[float]:
    """The lower bound of each level, then the upper bound of the last: levels + 1 numbers."""
    return [lo + (hi - lo) * k / levels for k in range(levels + 1)]


def _log10(value: float | None) -> float | None:
    """log10 of a non-negative value: -inf for 0, NaN for NaN/Inf, None for missing."""
    if value is None:
        return None
    if not math.isfinite(value):
        return math.nan
    return math.log10(value) if value > 0 else -math.inf


def _any_nonfinite(stats: Sequence[TensorStats]) -> bool:
    return any(s.nan or s.inf for s in stats)


def _mean_abs(stats: Sequence[TensorStats]) -> float | None:
    merged = merge_all(stats)
    return merged.mean_abs if merged.finite else None


def _grad_norm(rows: list[ParamStep]) -> float | None:
    grads = [r.grad.stats for r in rows if r.grad]
    if not grads or _any_nonfinite(grads):
        return math.nan if grads else None
    return _log10(rows[0].layer_norm)


def _grad_mean(rows: list[ParamStep]) -> float | None:
    grads = [r.grad.stats for r in rows if r.grad]
    if not grads or _any_nonfinite(grads):
        return math.nan if grads else None
    return _log10(_mean_abs(grads))


def _param_norm(rows: list[ParamStep]) -> float | None:
    values = [r.value.stats for r in rows if r.value]
    if not values or _any_nonfinite(values):
        return math.nan if values else None
    merged = merge_all(values)
    if math.isfinite(merged.norm) or not merged.sq_sum > 0:
        return _log10(merged.norm)
    return merged.log10_norm  # a norm beyond float64 (F64 values near 1e308)


def _update_ratio(rows: list[ParamStep]) -> float | None:
    pairs = [(r.update.stats, r.value.stats) for r in rows if r.update and r.value]
    if not pairs or _any_nonfinite([s for pair in pairs for s in pair]):
        return math.nan if pairs else None
    update = _mean_abs([u for u, _ in pairs])
    value = _mean_abs([v for _, v in pairs])
    if update is None or not value:  # a zero or empty parameter has no ratio
        return None
    return log10_ratio(update, value) if update > 0 else -math.inf  # the quotient may underflow


_MEASURES: dict[str, Callable[[list[ParamStep]], float | None]] = {
    "grad-norm": _grad_norm,
    "grad-mean": _grad_mean,
    "update-ratio": _update_ratio,
    "param-norm": _param_norm,
}
_NEEDS = {
    "grad-norm": "needs grad tensors",
    "grad-mean": "needs grad tensors",
    "update-ratio": "needs update and param tensors",
    "param-norm": "needs param tensors",
} | ACT_NEEDS
