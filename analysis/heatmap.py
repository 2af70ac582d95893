"""The layers x steps matrix behind `gradcheck heatmap`: one log10 value per layer and column of steps.

Cells hold log10 of the metric. Two values are markers rather than magnitudes: NaN means a NaN or Inf was
recorded in the cell (it wins over every number, so a single bad step stays visible in a wide bin), and -inf
means the metric is exactly zero (a dead layer; log10 is undefined). `missing` marks cells with nothing
recorded for the metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .activation_heatmap import ACT_METRIC_LABELS, ACT_METRICS, ACT_NEEDS, activation_values
from .columns import Columns
from .errors import RunError
from .inspection import Report
from .layer_columns import Merged, layer_order, log10_cells, merge_layers

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
    def row_noun(self) -> str:
        """What a row is: a layer, or for the activation metrics a module."""
        return row_noun(self.metric)

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


def row_noun(metric: str) -> str:
    """What the rows of `metric`'s heatmap are: layers, or modules for the activation metrics."""
    return "module" if metric in ACT_METRICS else "layer"


def build_heatmap(report: Report, metric: str, *, max_columns: int) -> Heatmap:
    """The heatmap of `metric` over a report's layers and recorded steps, in at most `max_columns` columns."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    if metric in ACT_METRICS:
        layers, values, missing = activation_values(report.run.signals, report.run.steps, metric)
    else:
        layers, values, missing = layer_values(report, metric)
    if missing.all():
        noun = row_noun(metric)
        raise RunError(f"{report.run.path}: no {noun} has a value for --metric {metric} ({_NEEDS[metric]})")
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
    layers, groups = layer_order(report.run.columns)
    values, missing = _MEASURES[metric](report, groups)
    return layers, values.T, missing.T


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


def _any(mask: np.ndarray, groups: Groups) -> np.ndarray:
    """[S, L]: whether any parameter of the layer has `mask` set at the step."""
    return np.stack([mask[:, group].any(axis=1) for group in groups], axis=1) if groups else mask[:, :0]


def _log10(values: np.ndarray) -> np.ndarray:
    """log10 of non-negative values as the heatmap marks them: NaN for NaN/Inf, -inf for 0 (math.log10 elsewhere)."""
    out = np.where(np.isfinite(values), -np.inf, np.nan)
    positive = np.isfinite(values) & (values > 0)
    out[positive] = log10_cells(values[positive])
    return out


def _cells(
    has: np.ndarray, bad: np.ndarray, value: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(values, missing): NaN where a NaN/Inf was recorded, `value` where `known`, missing where neither."""
    missing = ~has | (~bad & ~known)
    return np.where(has & bad, np.nan, np.where(missing, np.nan, value)), missing


def _grads(columns: Columns, groups: Groups) -> tuple[Merged, np.ndarray, np.ndarray]:
    grad = columns.kinds["grad"]
    merged = merge_layers(grad, groups)
    return merged, _any(grad.present, groups), merged.nan + merged.inf > 0


def _grad_norm(report: Report, groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    columns = report.run.columns
    merged, has, bad = _grads(columns, groups)  # the layer's ‖g‖, as derive's layer_norm merges it
    return _cells(has, bad, _log10(merged.norm), np.ones_like(has))


def _grad_mean(report: Report, groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    columns = report.run.columns
    merged, has, bad = _grads(columns, groups)
    return _cells(has, bad, _log10(merged.mean_abs), merged.finite > 0)


def _param_norm(report: Report, groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    columns = report.run.columns
    values = columns.kinds["param"]
    merged = merge_layers(values, groups)
    norm = merged.norm
    # a norm beyond float64 (F64 values near 1e308): log10 of the sum of squares, as TensorStats.log10_norm
    beyond = ~np.isfinite(norm) & (merged.sq_sum > 0)
    value = _log10(norm)
    huge = beyond & np.isfinite(merged.sq_sum)
    value[huge] = log10_cells(merged.sq_sum[huge]) / 2 + log10_cells(merged.scale[huge])
    value[beyond & np.isinf(merged.sq_sum)] = np.inf
    return _cells(_any(values.present, groups), merged.nan + merged.inf > 0, value, np.ones(norm.shape, bool))


def _update_ratio(report: Report, groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    columns = report.run.columns
    update, value = columns.kinds["update"], columns.kinds["param"]
    pairs = update.present & value.present
    top, bottom = merge_layers(update, groups, pairs), merge_layers(value, groups, pairs)
    bad = top.nan + top.inf + bottom.nan + bottom.inf > 0
    up, down = top.mean_abs, bottom.mean_abs
    # no ratio for an empty update or a zero or empty parameter; the quotient may underflow
    known = (top.finite > 0) & (bottom.finite > 0) & (down != 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quotient = np.where(known, up / down, np.nan)
    ratio = np.where(known & (up > 0), np.nan, -np.inf)
    direct = known & (up > 0) & (quotient > 0) & (quotient < np.inf)
    ratio[direct] = log10_cells(quotient[direct])
    apart = (
        known & (up > 0) & ~direct
    )  # metrics.log10_ratio: the logs apart where the quotient leaves float64
    ratio[apart] = log10_cells(up[apart]) - log10_cells(down[apart])
    return _cells(_any(pairs, groups), bad, ratio, known)


Groups = list[list[int]]  # parameter columns of each layer (layer_columns.layer_order)
# metric -> (values, missing), each [step, layer] over the layers of layer_order
_MEASURES: dict[str, Callable[[Report, Groups], tuple[np.ndarray, np.ndarray]]] = {
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
