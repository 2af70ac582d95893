"""The columnar history (grad_history, layer_depths, depth_profiles) equals the per-object functions bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from runs_builder import write_run

from gradcheck.analysis.history import (
    SPARK_WIDTH,
    TREND_DECADES,
    GradHistory,
    bin_series,
    depth_profile,
    depth_profiles,
    grad_history,
    grad_series,
    layer_depths,
    trend,
)
from gradcheck.analysis.inspection import Report, inspect_run

SAMPLES = sorted(p for p in (Path(__file__).parent.parent / "sample_runs").iterdir() if p.is_dir())


def _tricky_run(root: Path) -> Path:
    """Late layers, missing gradients, NaN/Inf, zeros, empty tensors and F64 values that need scaled sums."""
    rng = np.random.default_rng(7)
    steps = {}
    for step in range(0, 40, 2):
        grads = {
            "a.weight": rng.normal(size=(3, 4)).astype(np.float32) * 10.0 ** (step / 4 - 3),
            "a.bias": np.zeros(3, np.float32) if step % 6 == 0 else rng.normal(size=3).astype(np.float32),
            "big.weight": rng.normal(size=(2, 2)) * (1e300 if step % 4 else 1e-300),
        }
        if step in (10, 11, 12, 30):
            grads["a.weight"][0, 0] = np.nan if step != 30 else np.inf
        if step >= 20:
            grads["late.weight"] = rng.normal(size=5).astype(np.float32)
        if step % 5 == 0:
            del grads["a.bias"]
            grads["empty.weight"] = np.zeros((0, 3), np.float32)
        params = {name: rng.normal(size=array.shape).astype(array.dtype) for name, array in grads.items()}
        steps[step] = {"grad": grads, "param": params}
    write_run(root, steps)
    return root


def _reports(tmp_path: Path) -> list[Report]:
    return [inspect_run(path) for path in (*SAMPLES, _tricky_run(tmp_path / "tricky"))]


def test_grad_history_is_grad_series_trend_and_bins(tmp_path: Path) -> None:
    for report in _reports(tmp_path):
        steps = report.run.steps
        for chosen in (steps, steps[: len(steps) // 2 + 1], steps[1:4]):
            history = grad_history(report.run.columns, chosen)
            for width in (SPARK_WIDTH, 8, 3):
                bins = history.binned(width)
                for p, param in enumerate(report.run.params):
                    series = grad_series(report.rows, param, chosen)
                    assert history.series(p) == series
                    assert history.trend(p) == trend(series)
                    assert history.binned_series(p, bins[p]) == bin_series(series, width)


def test_layer_depths_are_the_depth_profile(tmp_path: Path) -> None:
    for report in _reports(tmp_path):
        every = depth_profiles(report.run.columns)
        for step in report.run.steps:
            wanted = depth_profile(report.rows, report.run.params, step)
            assert layer_depths(report.run.columns, step) == wanted
            assert every[step] == wanted
        assert layer_depths(report.run.columns, report.run.steps[-1] + 1) == []


def test_directions_are_the_trends_even_at_the_threshold(tmp_path: Path) -> None:
    for report in _reports(tmp_path):
        history = grad_history(report.run.columns, report.run.steps)
        wanted = [trend(history.series(p)).direction for p in range(len(report.run.params))]
        assert history.directions() == wanted
    # series whose fitted change is within a few ulps of ±TREND_DECADES: the exact fit decides
    rng = np.random.default_rng(11)
    steps = tuple(range(0, 500, 10))
    slopes = TREND_DECADES / (steps[-1] - steps[0]) * (1 + rng.integers(-4, 5, size=200) * 2.0**-52)
    logs = np.array(steps, dtype=np.float64)[:, None] * slopes * rng.choice([-1, 1], size=200) - 7.0
    state = np.zeros(logs.shape, dtype=np.int8)
    state[rng.random(logs.shape) < 0.1] = 3  # some steps missing
    near = GradHistory(steps=steps, log_norm=np.where(state == 0, logs, np.nan), state=state)
    directions = near.directions()
    assert directions == [trend(near.series(p)).direction for p in range(200)]
    assert {"up", "down", "flat"} <= set(directions)
