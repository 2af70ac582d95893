"""heatmap.layer_values reads the run's columns; its cells equal the per-object measures (kept here) bit for bit."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from runs_builder import write_run
from test_history_columns import SAMPLES, _tricky_run

from gradcheck.analysis.heatmap import LAYER_METRICS, layer_values
from gradcheck.analysis.inspection import Report, inspect_run
from gradcheck.analysis.metrics import ParamStep, log10_ratio
from gradcheck.analysis.stats import TensorStats, merge_all

# The measures as they were computed from ParamStep objects before the columns (issue #14): the reference.


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
_MEASURES: dict[str, Callable[[list[ParamStep]], float | None]] = {
    "grad-norm": _grad_norm,
    "grad-mean": _grad_mean,
    "update-ratio": _update_ratio,
    "param-norm": _param_norm,
}


def _reference(report: Report, metric: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    layers = tuple(dict.fromkeys(row.layer for row in report.rows.values()))
    index = {layer: i for i, layer in enumerate(layers)}
    values = np.full((len(layers), len(report.run.steps)), np.nan)
    missing = np.ones(values.shape, dtype=bool)
    for col, step in enumerate(report.run.steps):
        groups: dict[str, list[ParamStep]] = {}
        for row in report.rows_at(step):
            groups.setdefault(row.layer, []).append(row)
        for layer, rows in groups.items():
            value = _MEASURES[metric](rows)
            if value is not None:
                values[index[layer], col] = value
                missing[index[layer], col] = False
    return layers, values, missing


def _optimizer_run(root: Path) -> Path:
    """Updates and parameters: zero and empty parameters, NaN updates, F64 norms beyond float64, a late layer."""
    rng = np.random.default_rng(3)
    steps = {}
    for step in range(12):
        param = {
            "enc.weight": np.full((4, 4), 1.5e308) if step % 3 == 0 else rng.normal(size=(4, 4)),
            "enc.bias": np.zeros(4) if step % 4 == 0 else rng.normal(size=4),
            "head.weight": np.zeros((0, 2)) if step == 5 else rng.normal(size=(2, 2)).astype(np.float32),
        }
        update = {name: value * 1e-3 for name, value in param.items() if step % 5 != 1 or name != "enc.bias"}
        if step == 7:
            update["enc.weight"] = update["enc.weight"].copy()
            update["enc.weight"][1, 1] = np.nan
        if step >= 6:
            param["late.weight"] = rng.normal(size=3).astype(np.float32) * 1e-30
            update["late.weight"] = param["late.weight"] * 1e-20
        steps[step] = {"param": param, "update": update, "grad": {"enc.weight": param["enc.weight"] * 1e-5}}
    write_run(root, steps)
    return root


@pytest.mark.parametrize("metric", LAYER_METRICS)
def test_layer_values_equal_the_per_object_measures(tmp_path: Path, metric: str) -> None:
    runs = [*SAMPLES, _tricky_run(tmp_path / "tricky"), _optimizer_run(tmp_path / "optimizer")]
    for path in runs:
        report = inspect_run(path)
        layers, values, missing = layer_values(report, metric)
        want_layers, want_values, want_missing = _reference(report, metric)
        assert layers == want_layers
        np.testing.assert_array_equal(missing, want_missing)
        assert values.tobytes() == want_values.tobytes(), (path.name, metric)  # NaN, -inf and the last bit


def test_the_optimizer_run_reaches_the_rare_branches(tmp_path: Path) -> None:
    report = inspect_run(_optimizer_run(tmp_path / "optimizer"))
    _, ratio, ratio_missing = layer_values(report, "update-ratio")
    _, norm, _ = layer_values(report, "param-norm")
    assert np.isnan(ratio[~ratio_missing]).any()  # the NaN update
    assert ratio_missing.any() and (~ratio_missing).any()  # zero or empty parameters have no ratio
    assert (norm > 300).any()  # a norm beyond float64, from log10 of the scaled sum of squares
