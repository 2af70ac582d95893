"""Trend checks on the real sample runs, against the rules recomputed here from the raw tensors with numpy."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from statistics import median

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from gradcheck.cli.main import cli

TREND_CHECKS = {"spike", "growth", "shrink"}


def grad_norms(run: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, ‖g‖) per parameter, from the step files read with safetensors and numpy alone."""
    norms: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run.glob("step_*.safetensors")):
        step = int(path.stem.split("_")[1])
        for key, array in load_file(str(path)).items():
            kind, _, param = key.partition("/")
            if kind == "grad" and np.isfinite(array).all():
                norm = float(np.linalg.norm(array.astype(np.float64)))
                if norm > 0:
                    norms.setdefault(param, []).append((step, norm))
    return norms


def first_spike(series: list[tuple[int, float]], factor: float = 100, history: int = 3) -> int | None:
    for i, (step, norm) in enumerate(series):
        if i >= history and norm >= factor * median(n for _, n in series[:i]):
            return step
    return None


def first_streak(series: list[tuple[int, float]], factor: float, window: int = 5) -> int | None:
    streak = 0
    for (_, before), (step, after) in itertools.pairwise(series):
        moved = after >= factor * before if factor > 1 else after <= factor * before
        streak = streak + 1 if moved else 0
        if streak >= window:
            return step
    return None


def findings(runner: CliRunner, run: Path) -> list[dict]:
    result = runner.invoke(cli, ["inspect", str(run), "--format", "json"])
    assert result.exit_code in (0, 1), result.stderr
    return json.loads(result.stdout)["findings"]


def test_trend_checks_fire_at_the_first_bad_step_of_the_exploding_run(
    runner: CliRunner, sample_runs: Path
) -> None:
    run = sample_runs / "exploding_nan"
    first = {(f["check"], f["param"]): f["step"] for f in findings(runner, run) if f["check"] in TREND_CHECKS}
    expected = {}
    for param, series in grad_norms(run).items():
        for check, step in (
            ("spike", first_spike(series)),
            ("growth", first_streak(series, 2.0)),
            ("shrink", first_streak(series, 0.5)),
        ):
            if step is not None:
                expected[(check, param)] = step
    assert first == expected
    assert first[("spike", "0.weight")] == 6  # "exploding from step 6" (sample_runs/README.md)
    assert min(step for (check, _), step in first.items() if check == "growth") == 8


@pytest.mark.parametrize("name", ["healthy_mlp", "healthy_gru", "bf16_mlp", "plain_dumps"])
def test_trend_checks_stay_quiet_on_healthy_runs(runner: CliRunner, sample_runs: Path, name: str) -> None:
    assert not [f for f in findings(runner, sample_runs / name) if f["check"] in TREND_CHECKS]
