"""The vectorised checks (analysis/rules.py) against the per-row rules they replaced (tests/checks_reference.py).

On every sample run and on generated runs (NaN/Inf counts, zeros, overflowed sums, missing kinds, unit
bitmaps, trends that spike, grow, shrink and die, per-parameter overrides, ignores, pinned thresholds) both
must give the same findings, field for field and in the same order.
"""

from __future__ import annotations

import math
import os
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
from checks_reference import run_checks_rows
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gradcheck.analysis.checks import run_checks
from gradcheck.analysis.columns import Tensor, columns_from_tensors, derived_from_rows
from gradcheck.analysis.config import CHECK_IDS, Config, Override, config_from_mapping
from gradcheck.analysis.metrics import derive
from gradcheck.analysis.runs import Run, load_run
from gradcheck.analysis.stats import TensorStats
from gradcheck.analysis.thresholds import Thresholds

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"
SAMPLE_RUNS = sorted(p for p in SAMPLES.iterdir() if p.is_dir())
EXAMPLES = int(os.environ.get("CHECKS_EXAMPLES", "300"))
KINDS = ("grad", "param", "update")


def both(run: Run, config: Config) -> tuple[list, list]:
    """(vectorised findings, per-row findings) of one run."""
    rows = derive(run)
    return run_checks(run, derived_from_rows(run.columns, rows), config), run_checks_rows(run, rows, config)


def fields(findings: list) -> list[str]:
    """Each finding's fields with their types: NaN equals NaN, and a numpy float never passes for a float."""
    return [repr(astuple(f)) for f in findings]


CONFIGS = {
    "default": Config(),
    "single steps": config_from_mapping({"thresholds": {"min-steps": 1, "dead-min-steps": 1}}),
    "tight": config_from_mapping(
        {
            "ignore": ["shrink"],
            "thresholds": {"spike-factor": 3, "growth-factor": 1.2, "growth-window": 2, "dead-units": 0.2},
            "overrides": [{"params": ["*.bias"], "ignore": ["nonfinite"], "thresholds": {"min-steps": 3}}],
        }
    ),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("sample", SAMPLE_RUNS, ids=[p.name for p in SAMPLE_RUNS])
def test_sample_runs_same_findings(sample: Path, config: Config) -> None:
    new, old = both(load_run(sample), config)
    assert fields(new) == fields(old)


def test_sample_runs_exercise_the_checks() -> None:
    """The comparison above is not vacuous: the sample runs fire most checks."""
    fired = {f.check for sample in SAMPLE_RUNS for f in both(load_run(sample), CONFIGS["tight"])[0]}
    assert {"nonfinite", "spike", "growth", "dead", "dead-units", "update-ratio-high"} <= fired


def test_checks_read_only_the_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks never ask for the per-object view of the run (Run.tensors, Run.get): only its columns."""
    run = load_run(SAMPLES / "exploding_nan")
    rows = derive(run)
    derived = derived_from_rows(run.columns, rows)
    expected = fields(run_checks_rows(run, rows, Config()))
    hollow = load_run(SAMPLES / "exploding_nan")

    def refuse(*_: object) -> None:
        raise AssertionError("the checks read a per-object tensor")

    monkeypatch.setattr(Run, "get", refuse)
    hollow.__dict__["tensors"] = None  # the cached per-object view: any use of it fails
    findings = run_checks(hollow, derived, Config())
    assert findings and fields(findings) == expected


@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("bound", [-1.2, -3.4])
def test_update_ratio_median_at_the_bound(offset: int, bound: float) -> None:
    """A median update scale within an ulp of a bound is judged with math.log10, exactly as per row."""
    target = math.nextafter(bound, math.inf) if offset > 0 else bound
    for _ in range(abs(offset)):
        target = math.nextafter(target, math.inf if offset > 0 else -math.inf)
    update = 10.0**target
    tensors = {}
    for step in range(4):
        tensors[(step, "fc.weight", "param")] = _tensor(1.0, (4, 4))
        tensors[(step, "fc.weight", "update")] = _tensor(update, (4, 4))
    run = Run(
        "run",
        tuple(range(4)),
        ("fc.weight",),
        columns_from_tensors(range(4), ("fc.weight",), tensors),
        (),
        (),
    )
    new, old = both(run, Config())
    assert fields(new) == fields(old)


def _tensor(mean: float, shape: tuple[int, ...]) -> Tensor:
    count = math.prod(shape)
    stats = TensorStats(count, 0, 0, 0, mean, mean, mean * count, mean * mean * count, 1.0)
    return Tensor(stats, shape, "F32", "f.safetensors")


# Generated runs. Parameter names cover the layer roles (embedding and norm exemptions) and the override glob.
NAMES = ("embed.weight", "l0.proj.weight", "l0.proj.bias", "l0.norm.weight", "l1.fc.weight", "head.weight")
SHAPES = [(), (1,), (3,), (4, 2), (6, 3), (2, 2, 2), (0, 3)]
MAGNITUDES = [1e-12, 1e-8, 1e-4, 1e-2, 1.0, 30.0, 1e4, 1e7, 1e300]
# Per-step factors of a series' magnitude (i: its index): flat, growing, shrinking, a jump, noise, or zero.
TRENDS = {
    "flat": lambda i, jump, rng: 1.0,
    "grow": lambda i, jump, rng: 3.0**i,
    "shrink": lambda i, jump, rng: 0.3**i,
    "jump": lambda i, jump, rng: 1e4 if i >= jump else 1.0,
    "noise": lambda i, jump, rng: rng.choice([0.5, 1.0, 2.0, 300.0]),
    "dead": lambda i, jump, rng: 0.0,
}


def stats(rng: np.random.Generator, shape: tuple[int, ...], mean: float, kind: str) -> TensorStats:
    """One tensor's summary: mostly consistent with `mean`, with NaN/Inf, zeros, overflow and odd scales."""
    count = math.prod(shape) if shape else 1
    nan = int(rng.choice([0, 0, 0, 0, 0, min(1, count), count]))
    inf = int(rng.choice([0, 0, 0, 0, min(1, count - nan)]))
    finite = count - nan - inf
    zeros = int(rng.choice([0, 0, 0, finite, min(1, finite)]))
    mean = 0.0 if zeros == finite else float(mean)  # Python floats, as the reader makes them
    scale = float(rng.choice([1.0, 1.0, 1.0, 2.0**500, 2.0**-500]))
    abs_sum = mean * finite / scale
    sq_sum = float(rng.choice([abs_sum * abs_sum / max(finite, 1), math.inf, abs_sum * abs_sum]))
    if not finite:
        return TensorStats(count, nan, inf)
    units = shape[0] if shape else 1
    alive = None
    if kind == "grad" and rng.random() < 0.6:
        alive = 0 if mean == 0 else int(rng.integers(0, 1 << units)) | int(rng.random() < 0.5)
    return TensorStats(count, nan, inf, zeros, mean, mean * 2, abs_sum, sq_sum, scale, alive)


@st.composite
def runs(draw: st.DrawFn) -> Run:
    """A run of a few steps and parameters, as load_run would return it; the cells from a drawn seed."""
    steps = tuple(sorted(draw(st.sets(st.integers(0, 60), min_size=1, max_size=12))))
    params = tuple(draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True)))
    recorded = sorted(draw(st.sets(st.sampled_from(KINDS), min_size=1)))  # a kind may be missing throughout
    gaps = draw(st.sampled_from([0.0, 0.2]))  # share of cells not recorded
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tensors = {}
    for param in params:
        shape = SHAPES[rng.integers(len(SHAPES))]
        for kind in recorded:
            trend = TRENDS[rng.choice(list(TRENDS))]
            base, jump = float(rng.choice(MAGNITUDES)), int(rng.integers(0, len(steps) + 1))
            for i, step in enumerate(steps):
                if rng.random() >= gaps:
                    cell = stats(rng, shape, base * trend(i, jump, rng), kind)
                    tensors[(step, param, kind)] = Tensor(cell, shape, "F32", f"{step}.safetensors")
    params = tuple(p for p in params if any(key[1] == p for key in tensors))
    steps = tuple(s for s in steps if any(key[0] == s for key in tensors))
    modules = {p: "Embedding" for p in params if p.startswith("l1") and draw(st.booleans())}
    columns = columns_from_tensors(steps, params, tensors)
    return Run("run", steps, params, columns, (), (), draw(st.booleans()), modules)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    """Thresholds near the generated magnitudes, ignores, an override for biases, pinned thresholds."""
    low = draw(st.sampled_from([-6.0, -3.4, -1.0]))
    high = low + draw(st.sampled_from([0.0, 0.2, 2.2, 5.0]))
    thresholds = Thresholds(
        vanishing_mean=draw(st.sampled_from([1e-7, 1e-3])),
        vanishing_relative=draw(st.sampled_from([1e-3, 0.5])),
        exploding_mean=draw(st.sampled_from([1e6, 10.0])),
        exploding_relative=draw(st.sampled_from([70.0, 2.0])),
        spike_factor=draw(st.sampled_from([100.0, 3.0])),
        spike_history=draw(st.integers(1, 4)),
        growth_window=draw(st.integers(1, 5)),
        shrink_window=draw(st.integers(1, 5)),
        dead_min_steps=draw(st.integers(1, 3)),
        dead_units=draw(st.sampled_from([0.7, 0.3, 1.0])),
        min_steps=draw(st.integers(1, 3)),
        update_ratio_low=low,
        update_ratio_high=high,
    )
    ignore = frozenset(draw(st.sets(st.sampled_from(CHECK_IDS), max_size=2)))
    overrides = ()
    if draw(st.booleans()):
        override = Override(("*.bias", "l1.*"), frozenset({"spike"}), {"min_steps": 1, "spike_factor": 2.0})
        overrides = (override,)
    pinned = {"dead_units": 0.5} if draw(st.booleans()) else {}
    return Config(thresholds=thresholds, ignore=ignore, overrides=overrides, pinned=pinned)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    print_blob=True,
)
@given(run=runs(), config=configs())
def test_generated_runs_same_findings(run: Run, config: Config) -> None:
    new, old = both(run, config)
    for finding in old:
        event(finding.check)  # `pytest --hypothesis-show-statistics` shows which checks the runs reach
    assert fields(new) == fields(old)
