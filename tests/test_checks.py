"""Tests for the derived numbers and the checks, on synthetic runs shaped like real training.

`simulate` trains nothing but behaves like an Adam run of a tiny transformer-ish model: weights start at
N(0, 1/fan_in), biases and norm shifts at zero, norm scales at one; each step draws a gradient of a chosen
per-element scale and applies an Adam-normalised update. Pathologies are injected through `grad_scale` and
`edit`, one at a time, so that each test can say which check must and must not fire.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import pytest
from runs_builder import write_run, write_step
from st_files import bf16_bits, write_arrays

from gradcheck.analysis.checks import SEVERITY, Finding
from gradcheck.analysis.config import (
    CHECK_IDS,
    PARAM_CHECK_IDS,
    SIGNAL_CHECK_IDS,
    Config,
    config_from_mapping,
)
from gradcheck.analysis.errors import ConfigError
from gradcheck.analysis.inspection import Report, inspect_run
from gradcheck.analysis.metrics import derive, layer_gradients
from gradcheck.analysis.runs import load_run
from gradcheck.analysis.thresholds import Thresholds

# Model order: embedding, two blocks (projection + LayerNorm), head.
SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (50, 16),
    "layers.0.proj.weight": (16, 16),
    "layers.0.proj.bias": (16,),
    "layers.0.norm.weight": (16,),
    "layers.0.norm.bias": (16,),
    "layers.1.proj.weight": (16, 16),
    "layers.1.proj.bias": (16,),
    "layers.1.norm.weight": (16,),
    "layers.1.norm.bias": (16,),
    "head.weight": (10, 16),
    "head.bias": (10,),
}
ORDER = list(SHAPES)
RECORDED = (0, 100, 200, 300, 400, 500, 600, 700)
HEALTHY_GRAD = 1e-3  # per-element gradient scale of a healthy run
LR = 3e-4

GradScale = Callable[[str, int], float]
Edit = Callable[[str, int, np.ndarray], np.ndarray]


def initial_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Initial value as a framework would set it: zero biases and shifts, unit norm scales."""
    if name.endswith(".bias"):
        return np.zeros(shape)
    if name.endswith("norm.weight"):
        return np.ones(shape)
    return rng.standard_normal(shape) / math.sqrt(shape[-1])


def simulate(
    *,
    seed: int = 0,
    record: Iterable[int] = RECORDED,
    grad_scale: GradScale = lambda name, step: HEALTHY_GRAD,
    edit: Edit | None = None,
    lr: float = LR,
    shapes: dict[str, tuple[int, ...]] = SHAPES,
) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Run the optimizer and return {step: {"grad"|"param"|"update": {name: float32 array}}}.

    The param recorded at a step is the value the gradient was taken at; the update is what that step adds.
    """
    rng = np.random.default_rng(seed)
    record = set(record)
    value = {name: initial_value(name, shape, rng) for name, shape in shapes.items()}
    second = {name: np.zeros(shape) for name, shape in shapes.items()}
    steps: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for step in range(max(record) + 1):
        kinds: dict[str, dict[str, np.ndarray]] = {"grad": {}, "param": {}, "update": {}}
        for name, shape in shapes.items():
            grad = rng.standard_normal(shape) * grad_scale(name, step)
            if edit is not None:
                grad = edit(name, step, grad)
            finite = np.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            second[name] = 0.999 * second[name] + 0.001 * finite**2
            rms = np.sqrt(second[name] / (1 - 0.999 ** (step + 1)))
            update = -lr * finite / (rms + 1e-8 * grad_scale(name, step) + 1e-30)
            if step in record:
                kinds["grad"][name] = grad.astype(np.float32)
                kinds["param"][name] = value[name].astype(np.float32)
                kinds["update"][name] = update.astype(np.float32)
            value[name] = value[name] + update
        if step in record:
            steps[step] = kinds
    return steps


def inspect_steps(tmp_path, steps, config: Config | None = None, **kwargs) -> Report:
    """Write the steps as a run in the preferred layout and inspect it."""
    run_dir = tmp_path / "run"
    write_run(run_dir, steps, order=ORDER, **kwargs)
    return inspect_run(run_dir, config)


def found(report: Report, check: str) -> dict[str, Finding]:
    """Findings of one check, by parameter."""
    return {f.param: f for f in report.findings if f.check == check}


def errors(report: Report) -> list[tuple[str, str]]:
    """(check, param) of every error-level finding."""
    return [(f.check, f.param) for f in report.findings if f.severity == "error"]


def scaled(
    factors: dict[str, float], base: float = HEALTHY_GRAD, when: Callable[[int], bool] = lambda s: True
):
    """A grad_scale: `base` times the factor of the first key contained in the name, at the steps `when`."""

    def scale(name: str, step: int) -> float:
        for key, factor in factors.items():
            if key in name and when(step):
                return base * factor
        return base

    return scale


# --- the healthy baseline ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Report:
    return inspect_steps(tmp_path_factory.mktemp("healthy"), simulate())


def test_healthy_run_has_no_error(healthy: Report) -> None:
    assert errors(healthy) == []
    assert not healthy.failed


def test_healthy_run_warns_only_about_update_ratios_of_zero_initialised_parameters(healthy: Report) -> None:
    # Zero-initialised biases/shifts have |param| ~ k * lr after k Adam steps, so their update ratio sits above
    # -2 for the first hundreds of steps: a real (warning-level) property of the DL4J metric.
    warned = {(f.check, f.param) for f in healthy.findings}
    assert warned <= {("update-ratio-high", p) for p in ORDER if p.endswith(".bias")}
    assert all(f.severity == "warning" for f in healthy.findings)


def test_healthy_weights_sit_in_the_healthy_update_ratio_band(healthy: Report) -> None:
    for (step, param), row in healthy.rows.items():
        if param.endswith("proj.weight") or param == "embed.weight":
            assert row.update_ratio is not None
            assert -4.0 <= row.update_ratio <= -2.0, (step, param, row.update_ratio)


# --- derived numbers ---------------------------------------------------------------------------------


def test_derived_numbers_by_hand(tmp_path) -> None:
    rng = np.random.default_rng(1)
    weight, bias = rng.standard_normal((4, 3)), rng.standard_normal(4)
    grads = {"a.weight": weight * 1e-2, "a.bias": bias * 1e-2, "b.weight": rng.standard_normal((2, 4)) * 1e-4}
    params = {"a.weight": weight, "a.bias": np.zeros(4), "b.weight": rng.standard_normal((2, 4))}
    updates = {"a.weight": weight * 1e-3, "a.bias": bias * 1e-3, "b.weight": np.zeros((2, 4))}
    as32 = {
        kind: {k: v.astype(np.float32) for k, v in d.items()}
        for kind, d in (("grad", grads), ("param", params), ("update", updates))
    }
    write_run(tmp_path, {3: as32})
    run = load_run(tmp_path)
    rows = derive(run)

    a_norm = math.sqrt(
        np.sum(as32["grad"]["a.weight"].astype(np.float64) ** 2)
        + np.sum(as32["grad"]["a.bias"].astype(np.float64) ** 2)
    )
    b_norm = float(np.linalg.norm(as32["grad"]["b.weight"].astype(np.float64)))
    layers = layer_gradients(run, 3)
    np.testing.assert_allclose(layers["a"], (a_norm, a_norm / math.sqrt(16)), rtol=1e-12)  # 12 + 4 elements
    np.testing.assert_allclose(layers["b"], (b_norm, b_norm / math.sqrt(8)), rtol=1e-12)

    row = rows[(3, "a.weight")]
    assert (row.layer, row.step) == ("a", 3)
    np.testing.assert_allclose(row.update_ratio, -3.0, atol=1e-6)  # |update| = 1e-3 |param| exactly
    np.testing.assert_allclose(row.grad_param_ratio, 1e-2, rtol=1e-6)
    assert row.depth == 0.0  # "a" is the largest layer
    b_rms, a_rms = b_norm / math.sqrt(8), a_norm / math.sqrt(16)
    np.testing.assert_allclose(rows[(3, "b.weight")].depth, math.log10(b_rms / a_rms), rtol=1e-9)
    assert rows[(3, "a.weight")].layer_norm == rows[(3, "a.bias")].layer_norm

    assert rows[(3, "a.bias")].update_ratio is None  # zero-initialised: mean|param| = 0
    assert rows[(3, "a.bias")].grad_param_ratio is None
    assert rows[(3, "b.weight")].update_ratio is None  # mean|update| = 0


def test_missing_kinds_give_none(tmp_path) -> None:
    write_run(tmp_path, {1: {"grad": {"w": np.ones(3, np.float32)}}})
    row = derive(load_run(tmp_path))[(1, "w")]
    assert (row.value, row.update, row.update_ratio, row.grad_param_ratio) == (None, None, None, None)
    assert row.depth == 0.0


# --- nonfinite ---------------------------------------------------------------------------------------


def test_nonfinite_fires_per_kind_from_the_step_it_appears(tmp_path) -> None:
    def nan_from_500(name: str, step: int, grad: np.ndarray) -> np.ndarray:
        if name == "layers.1.proj.weight" and step >= 500:
            grad = grad.copy()
            grad[0, :3] = np.nan
            grad[1, 0] = np.inf
        return grad

    steps = simulate(edit=nan_from_500)
    steps[700]["param"]["head.bias"][2] = -np.inf
    report = inspect_steps(tmp_path, steps)
    by_kind = {(f.param, f.kind): f for f in report.findings if f.check == "nonfinite"}
    assert set(by_kind) == {("layers.1.proj.weight", "grad"), ("head.bias", "param")}
    grad = by_kind[("layers.1.proj.weight", "grad")]
    assert (grad.severity, grad.step, grad.last_step, grad.count, grad.steps) == (
        "error",
        500,
        700,
        3,
        (500, 600, 700),
    )
    assert grad.value == 4.0
    assert all(part in grad.message for part in ("3 NaN", "1 Inf", "256"))
    assert by_kind[("head.bias", "param")].steps == (700,)


def test_nonfinite_does_not_fire_on_finite_extremes(tmp_path) -> None:
    steps = simulate(record=(0, 100))
    steps[100]["grad"]["head.weight"][0, 0] = np.finfo(np.float32).max
    steps[100]["grad"]["head.weight"][0, 1] = np.finfo(np.float32).tiny
    assert "nonfinite" not in {f.check for f in inspect_steps(tmp_path, steps).findings}


# --- vanishing ---------------------------------------------------------------------------------------


def test_vanishing_fires_when_early_layers_get_almost_nothing(tmp_path) -> None:
    # Depth-wise decay: embedding and the first block get 1e-6 of the healthy gradient from step 200 on.
    scale = scaled({"embed": 1e-6, "layers.0": 1e-6}, when=lambda s: s >= 200)
    report = inspect_steps(tmp_path, simulate(grad_scale=scale))
    vanishing = found(report, "vanishing")
    assert set(vanishing) == {p for p in ORDER if p.startswith(("embed", "layers.0"))}
    f = vanishing["layers.0.proj.weight"]
    assert (f.severity, f.kind, f.step, f.last_step, f.count) == ("error", "grad", 200, 700, 6)
    assert f.value < 1e-7 and f.threshold == 1e-7
    assert report.failed


def test_vanishing_needs_the_absolute_bound(tmp_path) -> None:
    # The first block is 1e-4 of the others (relative condition met) but its mean|g| ~ 1e-6 is no vanishing.
    scale = scaled({"layers.0": 1e-4}, base=1e-2)
    report = inspect_steps(tmp_path, simulate(grad_scale=scale, record=(0, 100, 200)))
    rows = [report.rows[(s, "layers.0.proj.weight")] for s in (0, 100, 200)]
    assert all(row.depth < math.log10(1e-3) for row in rows)
    assert all(row.grad.stats.mean_abs > 1e-7 for row in rows)
    assert not found(report, "vanishing")


def test_small_gradients_everywhere_late_in_training_are_not_vanishing(tmp_path) -> None:
    # Loss near zero: every layer's gradient decays alike, from 1e-3 to ~1e-9 per element.
    report = inspect_steps(tmp_path, simulate(grad_scale=lambda name, step: 1e-3 * 10 ** (-step / 100)))
    late = [report.rows[(700, p)] for p in ORDER]
    assert all(row.grad.stats.mean_abs < 1e-7 for row in late)  # the absolute condition alone would fire
    assert all(row.depth > -1 for row in late)  # but every layer is within 10x of the largest
    assert errors(report) == []


def test_layernorm_like_1d_params_with_small_gradients_are_not_vanishing(tmp_path) -> None:
    # 1-D norm parameters get gradients ~30x smaller per element than the matrices, and the whole run is in
    # its small-gradient phase, so their mean|g| is below 1e-7 while their per-element scale is ordinary.
    scale = scaled({"norm": 1 / 30}, base=2e-6)
    report = inspect_steps(tmp_path, simulate(grad_scale=scale))
    norm_rows = [row for (_, p), row in report.rows.items() if ".norm." in p]
    assert all(row.grad.stats.mean_abs < 1e-7 for row in norm_rows)
    assert all(math.log10(1e-3) < row.depth < -1 for row in norm_rows)  # smaller, but not 1000x smaller
    assert errors(report) == []


def test_vanishing_bound_is_configurable(tmp_path) -> None:
    scale = scaled({"layers.0": 1e-6})
    steps = simulate(grad_scale=scale, record=(0, 100))
    assert found(inspect_steps(tmp_path, steps), "vanishing")
    config = config_from_mapping({"thresholds": {"vanishing-mean": 1e-12}})
    assert not found(inspect_steps(tmp_path / "b", steps, config), "vanishing")
    config = config_from_mapping({"thresholds": {"vanishing-relative": 1e-12}})
    assert not found(inspect_steps(tmp_path / "c", steps, config), "vanishing")


# --- exploding (absolute) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("per_element", "fires"), [(3e6, True), (3e5, False)])
def test_exploding_absolute(tmp_path, per_element: float, fires: bool) -> None:
    scale = scaled({"layers.1.proj.weight": per_element / HEALTHY_GRAD}, when=lambda s: s >= 600)
    report = inspect_steps(tmp_path, simulate(grad_scale=scale), Config(ignore=frozenset({"spike"})))
    exploding = found(report, "exploding")
    if fires:
        assert set(exploding) == {"layers.1.proj.weight"}
        f = exploding["layers.1.proj.weight"]
        assert (f.severity, f.problem, f.steps, f.threshold) == ("error", "exploding", (600, 700), 1e6)
        assert f.value > 1e6
    else:
        assert exploding == {}


# --- exploding-relative ------------------------------------------------------------------------------


@pytest.mark.parametrize(("factor", "fires"), [(300.0, True), (10.0, False)])
def test_exploding_relative_against_the_last_layer(tmp_path, factor: float, fires: bool) -> None:
    report = inspect_steps(tmp_path, simulate(grad_scale=scaled({"layers.0.proj": factor})))
    relative = found(report, "exploding-relative")
    if fires:
        assert set(relative) == {"layers.0.proj.weight", "layers.0.proj.bias"}  # the whole layer
        f = relative["layers.0.proj.weight"]
        assert (f.severity, f.problem, f.count) == ("warning", "exploding", len(RECORDED))
        assert f.value > 70 and "head" in f.message
        assert errors(report) == []
    else:
        assert relative == {}


def test_exploding_relative_bound_per_param(tmp_path) -> None:
    steps = simulate(grad_scale=scaled({"layers.0.proj": 300.0}), record=(0, 100))
    config = config_from_mapping(
        {"overrides": [{"params": "layers.0.*", "thresholds": {"exploding-relative": 1e4}}]}
    )
    assert not found(inspect_steps(tmp_path, steps, config), "exploding-relative")


# --- spike -------------------------------------------------------------------------------------------


def test_spike_fires_at_the_jump(tmp_path) -> None:
    # Sustained over two recorded steps (min-steps): the second is judged against the steps before the jump.
    scale = scaled({"layers.1.proj.weight": 1000.0}, when=lambda s: s in (500, 600))
    report = inspect_steps(tmp_path, simulate(grad_scale=scale))
    spikes = found(report, "spike")
    assert set(spikes) == {"layers.1.proj.weight"}
    f = spikes["layers.1.proj.weight"]
    assert (f.severity, f.steps, f.threshold) == ("error", (500, 600), 100.0)
    assert 300 < f.value < 3000  # about 1000x the median
    assert "× the median" in f.message


def test_a_spike_at_one_recorded_step_is_not_an_error(tmp_path) -> None:
    # Issue 11: no error from a single recorded step except nonfinite; -t min-steps=1 judges single steps.
    scale = scaled({"layers.1.proj.weight": 1000.0}, when=lambda s: s == 500)
    assert not found(inspect_steps(tmp_path / "a", simulate(grad_scale=scale)), "spike")
    config = config_from_mapping({"thresholds": {"min-steps": 1}})
    spikes = found(inspect_steps(tmp_path / "b", simulate(grad_scale=scale), config), "spike")
    assert spikes["layers.1.proj.weight"].steps == (500,)


def test_no_spike_against_a_median_that_collapsed_after_convergence(tmp_path) -> None:
    # Norms fall 1000x after step 100 (converged); at 600-700 an ordinary gradient half the early size is
    # 500x the median of the earlier steps, but below their maximum.
    def scale(name: str, step: int) -> float:
        if name != "layers.1.proj.weight":
            return HEALTHY_GRAD
        return HEALTHY_GRAD * (1.0 if step <= 100 else 0.5 if step >= 600 else 1e-3)

    record = (0, 100, 200, 300, 400, 500, 600, 700)
    assert not found(inspect_steps(tmp_path, simulate(grad_scale=scale, record=record)), "spike")


def test_spike_needs_enough_history(tmp_path) -> None:
    # The jump comes at the third recorded step: only two earlier steps, fewer than spike-history (3).
    scale = scaled({"layers.1.proj.weight": 1000.0}, when=lambda s: s in (200, 300))
    assert not found(inspect_steps(tmp_path, simulate(grad_scale=scale)), "spike")
    config = config_from_mapping({"thresholds": {"spike-history": 2}})
    assert found(inspect_steps(tmp_path / "b", simulate(grad_scale=scale), config), "spike")


def test_spike_ignores_ordinary_noise_and_moderate_jumps(tmp_path) -> None:
    scale = scaled({"layers.1.proj.weight": 30.0}, when=lambda s: s == 500)
    assert not found(inspect_steps(tmp_path, simulate(grad_scale=scale)), "spike")


# --- growth ------------------------------------------------------------------------------------------


def growing(factor: float, start: int) -> GradScale:
    """Gradient of layers.1.proj.weight multiplied by `factor` at every recorded step from `start` on."""

    def scale(name: str, step: int) -> float:
        if name == "layers.1.proj.weight" and step >= start:
            return HEALTHY_GRAD * factor ** ((step - start) // 100 + 1)
        return HEALTHY_GRAD

    return scale


def test_growth_fires_after_five_doublings_in_a_row(tmp_path) -> None:
    # Recorded 0..700; grows 3x at 200, 300, 400, 500, 600, 700: five in a row at 600, six at 700.
    report = inspect_steps(tmp_path, simulate(grad_scale=growing(3.0, 200)))
    growth = found(report, "growth")
    assert set(growth) == {"layers.1.proj.weight"}
    f = growth["layers.1.proj.weight"]
    assert (f.severity, f.problem, f.steps) == ("error", "exploding", (600, 700))
    assert "since step 100" in f.message


def test_growth_does_not_fire_after_four(tmp_path) -> None:
    assert not found(inspect_steps(tmp_path, simulate(grad_scale=growing(3.0, 400))), "growth")


def test_growth_does_not_fire_below_the_factor(tmp_path) -> None:
    assert not found(inspect_steps(tmp_path, simulate(grad_scale=growing(1.5, 100))), "growth")


def test_growth_window_is_configurable(tmp_path) -> None:
    config = config_from_mapping({"thresholds": {"growth-window": 3}})
    assert found(inspect_steps(tmp_path, simulate(grad_scale=growing(3.0, 400)), config), "growth")


def test_shrink_fires_after_five_halvings_in_a_row(tmp_path) -> None:
    # Recorded 0..700; shrinks to 1/3 at 200, 300, ..., 700: five in a row at 600, six at 700.
    report = inspect_steps(tmp_path, simulate(grad_scale=growing(1 / 3, 200)))
    shrink = found(report, "shrink")
    assert set(shrink) == {"layers.1.proj.weight"}
    f = shrink["layers.1.proj.weight"]
    assert (f.severity, f.problem, f.steps) == ("warning", "vanishing", (600, 700))
    assert "shrank <= 0.5× per" in f.message and "since step 100" in f.message
    assert not found(report, "growth")


def test_shrink_does_not_fire_after_four_or_above_the_factor(tmp_path) -> None:
    assert not found(inspect_steps(tmp_path / "a", simulate(grad_scale=growing(1 / 3, 400))), "shrink")
    assert not found(inspect_steps(tmp_path / "b", simulate(grad_scale=growing(0.6, 100))), "shrink")


def test_shrink_and_growth_factors_stay_on_their_side_of_one() -> None:
    with pytest.raises(ConfigError, match="shrink-factor must be below 1"):
        config_from_mapping({"thresholds": {"shrink-factor": 2}})
    with pytest.raises(ConfigError, match="growth-factor must be above 1"):
        config_from_mapping({"thresholds": {"growth-factor": 0.5}})


# --- dead --------------------------------------------------------------------------------------------


def zero_grad(param: str, steps: Callable[[int], bool] = lambda s: True) -> Edit:
    """An edit that makes the gradient of `param` exactly zero at the chosen steps."""
    return lambda name, step, grad: np.zeros_like(grad) if name == param and steps(step) else grad


def test_dead_fires_when_zero_at_every_recorded_step(tmp_path) -> None:
    # A dead ReLU unit layer: its projection never receives gradient.
    report = inspect_steps(tmp_path, simulate(edit=zero_grad("layers.1.proj.bias")))
    dead = found(report, "dead")
    assert set(dead) == {"layers.1.proj.bias"}
    f = dead["layers.1.proj.bias"]
    assert (f.severity, f.problem, f.step, f.last_step, f.count) == ("error", "dead", 0, 700, len(RECORDED))
    assert "all 8 recorded steps" in f.message


def test_not_dead_when_nonzero_at_one_recorded_step(tmp_path) -> None:
    edit = zero_grad("layers.1.proj.bias", lambda s: s != 300)
    assert not found(inspect_steps(tmp_path, simulate(edit=edit)), "dead")


LORA_SHAPES = {
    "attn.q_proj.lora_A.weight": (4, 16),
    "attn.q_proj.lora_B.weight": (16, 4),
    "head.weight": (10, 16),
}


def lora_b_zero_at_start(name: str, step: int, grad: np.ndarray) -> np.ndarray:
    """LoRA starts with B = 0, so A's gradient (which goes through B) is exactly zero at the first step."""
    return np.zeros_like(grad) if name.endswith("lora_A.weight") and step == 0 else grad


@pytest.mark.parametrize("record", [(0,), (0, 100), (0, 100, 200)])
def test_lora_a_zero_at_the_first_step_is_not_dead(tmp_path, record: tuple[int, ...]) -> None:
    steps = simulate(shapes=LORA_SHAPES, record=record, edit=lora_b_zero_at_start)
    run_dir = tmp_path / "run"
    write_run(run_dir, steps, order=list(LORA_SHAPES))
    report = inspect_run(run_dir)
    assert report.rows[(0, "attn.q_proj.lora_A.weight")].grad.stats.zeros == 4 * 16
    assert not found(report, "dead")


def test_dead_needs_dead_min_steps_recorded_steps(tmp_path) -> None:
    steps = simulate(shapes=LORA_SHAPES, record=(0,), edit=lora_b_zero_at_start)
    run_dir = tmp_path / "run"
    write_run(run_dir, steps)
    assert not found(inspect_run(run_dir), "dead")  # one snapshot cannot tell dead from zero-initialised
    config = config_from_mapping({"thresholds": {"dead-min-steps": 1}})
    assert set(found(inspect_run(run_dir, config), "dead")) == {"attn.q_proj.lora_A.weight"}


def test_dead_with_two_recorded_steps(tmp_path) -> None:
    steps = simulate(record=(0, 100), edit=zero_grad("layers.1.proj.bias"))
    assert found(inspect_steps(tmp_path, steps), "dead")["layers.1.proj.bias"].count == 2


def sparse_embedding(rows_used: int = 5) -> Edit:
    """Embedding gradient with only the rows of the tokens in the batch non-zero (different each step)."""

    def edit(name: str, step: int, grad: np.ndarray) -> np.ndarray:
        if name != "embed.weight":
            return grad
        keep = np.random.default_rng(step).choice(grad.shape[0], rows_used, replace=False)
        sparse = np.zeros_like(grad)
        sparse[keep] = grad[keep]
        return sparse

    return edit


def test_sparse_embedding_gradients_are_not_an_error(tmp_path) -> None:
    report = inspect_steps(tmp_path, simulate(edit=sparse_embedding()))
    row = report.rows[(700, "embed.weight")]
    assert row.grad.stats.zeros / row.grad.stats.count == pytest.approx(0.9)
    assert errors(report) == []


def test_an_unused_embedding_is_never_dead(tmp_path) -> None:
    # An embedding table with a zero gradient throughout (frozen, or its tokens never seen) next to a
    # genuinely dead layer: embeddings are exempt from dead by their name (no module types recorded here).
    def edit(name: str, step: int, grad: np.ndarray) -> np.ndarray:
        return np.zeros_like(grad) if name in ("embed.weight", "layers.1.proj.bias") else grad

    steps = simulate(edit=edit, record=(0, 100, 200))
    assert set(found(inspect_steps(tmp_path, steps), "dead")) == {"layers.1.proj.bias"}
    config = config_from_mapping({"overrides": [{"params": ["layers.*.bias"], "ignore": ["dead"]}]})
    assert found(inspect_steps(tmp_path / "b", steps, config), "dead") == {}


def test_ignore_dead_by_glob_with_a_dotted_prefix(tmp_path) -> None:
    # `model.` is a wrapper prefix here (every name has it), so overrides match the names without it.
    shapes = {"model.enc.frozen.weight": (50, 16), "model.layers.0.weight": (16, 16)}
    steps = simulate(shapes=shapes, record=(0, 100), edit=zero_grad("model.enc.frozen.weight"))
    run_dir = tmp_path / "run"
    write_run(run_dir, steps)
    assert set(found(inspect_run(run_dir), "dead")) == {"enc.frozen.weight"}
    config = config_from_mapping({"overrides": [{"params": "*.frozen*", "ignore": "dead"}]})
    assert found(inspect_run(run_dir, config), "dead") == {}


# --- update ratio ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lr", "check"), [(1e-1, "update-ratio-high"), (1e-6, "update-ratio-low")])
def test_update_ratio_out_of_band(tmp_path, lr: float, check: str) -> None:
    report = inspect_steps(tmp_path, simulate(lr=lr, record=(0, 100, 200)))
    f = found(report, check)["layers.0.proj.weight"]
    assert (f.severity, f.kind, f.count) == ("warning", "update", 3)
    assert errors(report) == []
    assert not report.failed
    assert replace(report, config=Config(fail_on="warning")).failed


def test_zero_initialised_biases_at_the_first_step_are_not_flagged(tmp_path) -> None:
    report = inspect_steps(tmp_path, simulate(record=(0,)))
    for param in ORDER:
        if param.endswith(".bias"):
            row = report.rows[(0, param)]
            assert row.value.stats.zeros == row.value.stats.count
            assert row.update_ratio is None
    assert report.findings == []


def test_exactly_zero_bf16_updates_are_not_flagged(tmp_path) -> None:
    # bf16 weights near 1: an Adam step of 3e-4 is below half a bf16 ulp (2**-8), so w + u rounds back to w.
    rng = np.random.default_rng(7)
    for step in (0, 100, 200, 300):
        weight = 1.0 + rng.standard_normal((16, 16)).astype(np.float32) * 1e-2
        grad = rng.standard_normal((16, 16)).astype(np.float32) * 1e-3
        before = bf16_bits(weight)
        stored = (before.astype(np.uint32) << 16).view(np.float32)
        after = bf16_bits(stored - LR * np.sign(grad))  # what a bf16 optimizer step writes back
        update = bf16_bits((after.astype(np.uint32) << 16).view(np.float32) - stored)
        head_grad = rng.standard_normal((10, 16)).astype(np.float32) * 1e-3
        write_arrays(
            tmp_path / f"step_{step:08d}.safetensors",
            {
                "grad/norm.weight": ("BF16", bf16_bits(grad)),
                "param/norm.weight": ("BF16", before),
                "update/norm.weight": ("BF16", update),
                "grad/head.weight": ("BF16", bf16_bits(head_grad)),
            },
            {"gradcheck.format": "1", "step": str(step)},
        )
    report = inspect_run(tmp_path)
    rows = [report.rows[(s, "norm.weight")] for s in (0, 100, 200, 300)]
    assert all(row.update.stats.zeros == row.update.stats.count for row in rows)
    assert all(row.update_ratio is None for row in rows)
    assert report.findings == []


# --- findings, overrides and reports -----------------------------------------------------------------


def test_different_vanishing_bound_for_biases(tmp_path) -> None:
    # The first block gets ~1e-8 per element; biases get a looser (smaller) bound by override.
    steps = simulate(grad_scale=scaled({"layers.0.proj": 1e-5}), record=(0, 100, 200))
    vanishing = found(inspect_steps(tmp_path, steps), "vanishing")
    assert set(vanishing) == {"layers.0.proj.weight", "layers.0.proj.bias"}
    config = config_from_mapping(
        {"overrides": [{"params": "*.bias", "thresholds": {"vanishing-mean": 1e-10}}]}
    )
    assert set(found(inspect_steps(tmp_path / "b", steps, config), "vanishing")) == {"layers.0.proj.weight"}


def test_ignored_checks_produce_no_finding(tmp_path) -> None:
    steps = simulate(edit=zero_grad("layers.1.proj.bias"), record=(0, 100))
    # A bias zero throughout is `dead`, not also 100 % dead units.
    assert not found(inspect_steps(tmp_path / "a", steps), "dead-units")
    report = inspect_steps(tmp_path, steps, Config(ignore=frozenset({"dead"})))
    assert not found(report, "dead") and not found(report, "dead-units")
    assert report.status == "ok"  # dead was the only problem (bias update ratios are not judged)


def test_findings_are_errors_first_then_model_order(tmp_path) -> None:
    def edit(name: str, step: int, grad: np.ndarray) -> np.ndarray:
        if name == "head.weight" and step == 100:
            return np.full_like(grad, np.nan)
        return np.zeros_like(grad) if name == "layers.0.norm.bias" else grad

    report = inspect_steps(tmp_path, simulate(edit=edit, record=(0, 100)))
    severities = [f.severity for f in report.findings]
    assert severities == sorted(severities, key=lambda s: s != "error")
    assert errors(report) == [("dead", "layers.0.norm.bias"), ("nonfinite", "head.weight")]
    assert (report.errors, report.status, report.failed) == (2, "error", True)
    assert not replace(report, config=Config(fail_on="never")).failed


def test_every_check_has_a_severity_and_the_documented_levels() -> None:
    assert set(SEVERITY) == set(PARAM_CHECK_IDS) and set(CHECK_IDS) == set(PARAM_CHECK_IDS) | set(
        SIGNAL_CHECK_IDS
    )
    warnings = {c for c, s in SEVERITY.items() if s == "warning"}
    assert warnings == {"exploding-relative", "shrink", "update-ratio-high", "update-ratio-low"}


def test_thresholds_appear_in_findings(tmp_path) -> None:
    steps = simulate(edit=zero_grad("head.bias"), record=(0, 100), lr=1e-1)
    config = Config(thresholds=Thresholds(update_ratio_high=-1.5))
    f = found(inspect_steps(tmp_path, steps, config), "update-ratio-high")["layers.0.proj.weight"]
    assert f.threshold == -1.5


def test_a_run_with_a_single_param_and_step(tmp_path) -> None:
    write_step(tmp_path, 0, {"grad": {"w": np.random.default_rng(0).standard_normal(5).astype(np.float32)}})
    report = inspect_run(tmp_path)
    assert report.findings == [] and report.status == "ok" and report.readable


def test_small_gradients_alike_on_a_scalar_parameter_are_not_vanishing(tmp_path) -> None:
    rng = np.random.default_rng(11)

    def grads() -> dict[str, np.ndarray]:
        shapes = {"logit_scale": (), "text.proj.weight": (512, 512), "visual.proj.weight": (1024, 1024)}
        return {
            name: (rng.standard_normal(shape) * 5e-8).astype(np.float32) for name, shape in shapes.items()
        }

    write_run(tmp_path, {step: {"grad": grads()} for step in (900, 1000)})
    report = inspect_run(tmp_path)
    assert all(row.grad.stats.mean_abs < 1e-7 for row in report.rows.values())  # small everywhere, alike
    assert errors(report) == []
