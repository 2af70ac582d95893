"""The pure history functions: step ranges, log10 ‖g‖ series, trends, binning, and the depth profile."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gradcheck.analysis.errors import GradcheckError
from gradcheck.analysis.history import (
    MISSING,
    NONFINITE,
    OK,
    SPARK_WIDTH,
    TREND_DECADES,
    ZERO,
    Point,
    StepRange,
    StepRangeError,
    bin_series,
    depth_profile,
    grad_series,
    parse_step_range,
    select_steps,
    trend,
)
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.metrics import ParamStep
from gradcheck.analysis.runs import Tensor
from gradcheck.analysis.stats import summarize_array


def _row(param: str, step: int, grad: np.ndarray | None, layer: str = "fc") -> ParamStep:
    tensor = None
    if grad is not None:
        tensor = Tensor(summarize_array(grad.astype(np.float32)), grad.shape, "F32", f"step_{step}")
    return ParamStep(param, layer, step, tensor, None, None, None, None, None, None, None)


def _series(*logs: float) -> list[Point]:
    return [Point(step * 10, log, OK) for step, log in enumerate(logs)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", StepRange()),
        ("100:500", StepRange(100, 500)),
        (":500", StepRange(None, 500)),
        ("100:", StepRange(100, None)),
        (" 7 : 7 ", StepRange(7, 7)),
        ("-5:3", StepRange(-5, 3)),
    ],
)
def test_parse_step_range(text: str, expected: StepRange) -> None:
    assert parse_step_range(text) == expected


@pytest.mark.parametrize("text", ["", "5", "a:b", "1.5:3", "1:2:3", "9:3", "ALL"])
def test_parse_step_range_rejects(text: str) -> None:
    with pytest.raises(StepRangeError, match="--steps"):
        parse_step_range(text)
    assert issubclass(StepRangeError, GradcheckError)  # the CLI turns it into exit 2


def test_step_range_prints_as_typed() -> None:
    assert [str(parse_step_range(t)) for t in ("all", "1:2", ":2", "1:")] == ["all", "1:2", ":2", "1:"]


def test_select_steps_is_inclusive_and_open_ended() -> None:
    steps = (0, 60, 120, 180)
    assert select_steps(steps, StepRange(60, 120)) == (60, 120)
    assert select_steps(steps, StepRange(None, 100)) == (0, 60)
    assert select_steps(steps, StepRange(61, None)) == (120, 180)
    assert select_steps(steps, StepRange()) == steps


def test_select_steps_without_a_recorded_step_raises() -> None:
    with pytest.raises(StepRangeError, match=r"--steps 61:119 selects no recorded step \(recorded: 0-180\)"):
        select_steps((0, 60, 120, 180), StepRange(61, 119))


def test_grad_series_states() -> None:
    rows = {
        (0, "w"): _row("w", 0, np.array([3.0, 4.0])),
        (1, "w"): _row("w", 1, np.array([np.nan, 1.0])),
        (2, "w"): _row("w", 2, np.zeros(3)),
        (3, "w"): _row("w", 3, None),
        (5, "w"): _row("w", 5, np.array([np.inf])),
    }
    series = grad_series(rows, "w", [0, 1, 2, 3, 4, 5])
    assert [p.state for p in series] == [OK, NONFINITE, ZERO, MISSING, MISSING, NONFINITE]
    assert [p.step for p in series] == [0, 1, 2, 3, 4, 5]
    assert series[0].log_norm == pytest.approx(math.log10(5.0))
    assert all(p.log_norm is None for p in series[1:])


def test_trend_directions_and_threshold() -> None:
    assert trend(_series(0, 1, 2, 3)).direction == "up"
    assert trend(_series(3, 2, 1, 0)).direction == "down"
    assert trend(_series(0, 0.3, -0.2, 0.1)).direction == "flat"
    just = trend(_series(0, TREND_DECADES / 2, TREND_DECADES))
    assert just.decades == pytest.approx(TREND_DECADES) and just.direction == "up"
    below = trend(_series(0, 0.49 * TREND_DECADES, 0.98 * TREND_DECADES))
    assert below.direction == "flat"


def test_trend_fits_against_the_step_number() -> None:
    # Uneven spacing: the late jump is one step of 100, so the fitted change is over 100 steps, not 2 points.
    series = [Point(0, 0.0, OK), Point(1, 0.0, OK), Point(101, 2.0, OK)]
    fitted = trend(series)
    xs, ys = np.array([0, 1, 101.0]), np.array([0, 0, 2.0])
    slope = np.polyfit(xs, ys, 1)[0]
    assert fitted.decades == pytest.approx(slope * 101)
    assert fitted.points == 3


def test_trend_skips_undefined_points_and_needs_three() -> None:
    series = [*_series(0, 1), Point(20, None, NONFINITE), Point(30, None, ZERO), Point(40, None, MISSING)]
    assert trend(series).direction is None and trend(series).decades is None and trend(series).points == 2
    series.append(Point(50, 5.0, OK))
    assert trend(series).direction == "up" and trend(series).points == 3


def test_bin_series_keeps_short_series_and_squeezes_long_ones() -> None:
    short = _series(*range(SPARK_WIDTH))
    assert bin_series(short) == tuple(short)
    long = _series(*([0.0] * 100))
    long[37] = Point(370, 9.0, OK)  # a spike
    long[80] = Point(800, None, NONFINITE)
    binned = bin_series(long)
    assert len(binned) == SPARK_WIDTH
    assert sum(p.log_norm == 9.0 for p in binned) == 1  # the bin holding the spike keeps its maximum
    assert [p.state for p in binned].count(NONFINITE) == 1  # a NaN is never averaged away
    assert bin_series(long, 100) == tuple(long)


def test_bin_series_of_zero_and_missing() -> None:
    series = [Point(0, None, MISSING), Point(1, None, ZERO), Point(2, None, MISSING), Point(3, None, MISSING)]
    assert [p.state for p in bin_series(series, 2)] == [ZERO, MISSING]


def test_depth_profile_weights_by_finite_elements() -> None:
    rows = {
        (0, "a.weight"): _row("a.weight", 0, np.array([1.0, 3.0, np.nan]), layer="a"),
        (0, "a.bias"): _row("a.bias", 0, np.array([8.0]), layer="a"),
        (0, "b.weight"): _row("b.weight", 0, np.zeros(4), layer="b"),
        (1, "b.weight"): _row("b.weight", 1, np.ones(4), layer="b"),
    }
    profile = depth_profile(rows, ["a.weight", "a.bias", "b.weight"], 0)
    assert [d.layer for d in profile] == ["a", "b"]
    a, b = profile
    assert a.params == ("a.weight", "a.bias")
    np.testing.assert_allclose([a.mean_abs, a.max_abs], [(1 + 3 + 8) / 3, 8.0])
    assert (a.nonfinite, a.count) == (1, 4)
    assert (b.mean_abs, b.max_abs, b.nonfinite) == (0.0, 0.0, 0)


def test_depth_profile_of_an_all_nan_layer() -> None:
    rows = {(0, "w"): _row("w", 0, np.full(3, np.nan))}
    (layer,) = depth_profile(rows, ["w"], 0)
    assert layer.mean_abs is None and layer.max_abs is None and layer.nonfinite == 3


def test_series_and_trend_on_exploding_nan(sample_runs: Path) -> None:
    report = inspect_run(sample_runs / "exploding_nan")
    series = grad_series(report.rows, "0.weight", report.run.steps)
    assert [p.step for p in series if p.state == NONFINITE] == [11, 12, 13, 14]  # sample_runs/README.md
    assert trend(series).direction == "up"
    assert trend(grad_series(report.rows, "0.weight", report.run.steps[:4])).direction == "flat"


@pytest.mark.parametrize("run", ["healthy_mlp", "healthy_gru", "bf16_mlp"])
def test_healthy_runs_do_not_grow(sample_runs: Path, run: str) -> None:
    report = inspect_run(sample_runs / run)
    for param in report.run.params:
        assert trend(grad_series(report.rows, param, report.run.steps)).direction in ("flat", "down")


def test_depth_profile_matches_numpy_on_vanishing_sigmoid(sample_runs: Path) -> None:
    from safetensors.numpy import load_file

    report = inspect_run(sample_runs / "vanishing_sigmoid")
    profile = depth_profile(report.rows, report.run.params, 400)
    tensors = load_file(str(sample_runs / "vanishing_sigmoid" / "step_00000400.safetensors"))
    assert [d.layer for d in profile] == [str(i) for i in range(0, 24, 2)]
    for layer in profile:
        grads = np.concatenate(
            [np.abs(tensors[f"grad/{p}"].astype(np.float64)).ravel() for p in layer.params]
        )
        np.testing.assert_allclose([layer.mean_abs, layer.max_abs], [grads.mean(), grads.max()], rtol=1e-6)
