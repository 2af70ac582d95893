"""The loss and activation checks (analysis/signal_checks.py) firing on real buggy runs and silent on their twins.

The runs are the programs of benchmarks/detection_activations, trained shorter (150 steps, every 10).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks" / "detection_activations"))

import programs

from gradcheck.analysis.activations import ModuleActivation, Signals
from gradcheck.analysis.config import config_from_mapping
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.signal_checks import (
    SIGNAL_CHECK_IDS,
    dead_activations,
    loss_stuck,
    saturation,
)
from gradcheck.cli.ci_formats import comparison

CASES = [
    ("dying_relu", "dead-activations", "1", "error"),
    ("nan_in_layer", "nan-origin", "2", "error"),
    ("lr_far_too_low", "loss-stuck", "loss", "warning"),
    ("softmax_binary", "loss-stuck", "loss", "warning"),
    ("saturated_hidden", "saturation", "1", "error"),  # hidden, held from the start to the end
    ("saturated_output", "saturation", "3", "error"),  # output pinned at 0 whatever the input
]


@pytest.fixture(autouse=True)
def _short_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(programs, "STEPS", 150)
    torch.set_num_threads(1)


def _program(name: str) -> programs.Program:
    return next(p for p in programs.PROGRAMS if p.name == name)


@pytest.mark.parametrize(("name", "check", "who", "severity"), CASES)
def test_check_fires_on_the_buggy_run_and_not_on_its_twin(
    tmp_path: Path, name: str, check: str, who: str, severity: str
) -> None:
    program = _program(name)
    program.train(tmp_path / "buggy", True)
    found = [f for f in inspect_run(tmp_path / "buggy").findings if f.check == check]
    assert [(f.param, f.severity) for f in found] == [(who, severity)]
    program.train(tmp_path / "healthy", False)
    healthy = inspect_run(tmp_path / "healthy").findings
    assert [f for f in healthy if f.check in SIGNAL_CHECK_IDS] == []


def _act(step: int, **fields: object) -> ModuleActivation:
    base = {"module": "out", "type": "Sigmoid", "order": 1, "count": 10, "nan": 0, "inf": 0, "zeros": 0}
    base |= {"mean": 0.5, "std": 0.1, "min": 0.0, "max": 1.0, "inputs_finite": True}
    return ModuleActivation(**(base | fields))  # type: ignore[arg-type]


def test_late_plateau_is_not_a_stuck_loss() -> None:
    falling = [2.0 * 0.8**i for i in range(10)] + [0.2, 0.21, 0.2, 0.19, 0.2, 0.2, 0.21, 0.2, 0.2, 0.2]
    assert list(loss_stuck(Signals(scalars={10 * i: {"loss": v} for i, v in enumerate(falling)}))) == []
    converged_at_once = [30.0] + [0.3, 0.31, 0.29] * 6
    assert list(loss_stuck(Signals(scalars={i: {"loss": v} for i, v in enumerate(converged_at_once)}))) == []
    flat = [2.3, 2.31, 2.29, 2.3] * 5
    (finding,) = loss_stuck(Signals(scalars={i: {"loss": v} for i, v in enumerate(flat)}))
    assert finding.check == "loss-stuck" and finding.value < 0.02
    assert list(loss_stuck(Signals(scalars={i: {"loss": 2.3} for i in range(5)}))) == []  # too few


def test_an_output_layer_confident_late_is_not_saturated() -> None:
    def run(shares: list[float], order: int) -> Signals:
        hidden = _act(0, module="hidden", type="Tanh", order=0, bound="tanh", saturated=0.0)
        return Signals(
            activations={
                s: {"hidden": hidden, "out": _act(s, order=order, bound="sigmoid", saturated=share)}
                for s, share in enumerate(shares)
            }
        )

    late = [0.1, 0.2, 0.5, 0.95, 0.97, 0.99, 0.99]
    assert list(saturation(run(late, order=1))) == []  # output layer: confident late
    (hidden,) = saturation(Signals(activations={
        s: {"out": _act(s, order=0, bound="sigmoid", saturated=v), "later": _act(s, module="later", order=1)}
        for s, v in enumerate(late)
    }))  # fmt: skip
    assert (hidden.param, hidden.step, hidden.last_step) == ("out", 3, 6)
    (early,) = saturation(run([0.97, 0.98, 0.99, 0.99], order=1))
    assert early.step == 0 and early.severity == "warning"


def test_saturation_is_an_error_only_when_held_to_the_end_by_a_hidden_or_pinned_module() -> None:
    def run(shares: list[float], *, output: bool, spread: float = 1.0) -> Signals:
        later = {} if output else {"later": _act(0, module="later", type="Linear", order=2)}
        return Signals(
            activations={
                s: {**later, "out": _act(s, bound="sigmoid", saturated=v, min=0.0, max=spread)}
                for s, v in enumerate(shares)
            }
        )

    held = [0.95] * 12
    # a resumed, confident classifier: its output layer at the bounds throughout, but spread over [0, 1]
    (confident,) = saturation(run(held, output=True))
    assert confident.severity == "warning"
    (pinned,) = saturation(run(held, output=True, spread=1e-26))
    assert pinned.severity == "error" and "to the last step: every output within 0.01" in pinned.message
    (hidden,) = saturation(run(held, output=False))
    assert hidden.severity == "error" and hidden.count == 12
    (recovered,) = saturation(run([*held[:11], 0.5], output=False))  # not held to the last step
    assert recovered.severity == "warning"
    (short,) = saturation(run(held[:9], output=False))  # fewer than SATURATION_HELD recorded steps
    assert short.severity == "warning"


def test_dead_units_need_the_whole_window() -> None:
    def relu(step: int, alive: int) -> dict[str, ModuleActivation]:
        return {"r": _act(step, module="r", type="ReLU", units=8, alive=bytes([alive]))}

    once = Signals(activations={0: relu(0, 0xFF), 1: relu(1, 0x01), 2: relu(2, 0xFE), 3: relu(3, 0xFF)})
    assert list(dead_activations(once)) == []  # silent at one step, firing at the next
    dying = Signals(activations={s: relu(s, 0x01 if s else 0xFF) for s in range(5)})
    (finding,) = dead_activations(dying)
    assert finding.steps == (3, 4) and finding.message == "7 of 8 units of r never fired over steps 1-3"
    assert comparison(finding) == "87 % ≥ 50 %"  # as the gradient-based dead-units in CI outputs


def test_the_signal_thresholds_come_from_the_config_and_its_overrides_by_module() -> None:
    """-t / [tool.gradcheck.thresholds] reach the signal checks; an override's params glob matches a module."""
    held = Signals(activations={s: {"out": _act(s, bound="sigmoid", saturated=0.95)} for s in range(4)})
    assert [f.threshold for f in saturation(held)] == [0.9]
    assert list(saturation(held, config_from_mapping({"thresholds": {"saturation-share": 0.97}}))) == []
    by_module = {"overrides": [{"params": "o*", "thresholds": {"saturation-share": 0.97}}]}
    assert list(saturation(held, config_from_mapping(by_module))) == []
    other = {"overrides": [{"params": "hidden*", "thresholds": {"saturation-share": 0.97}}]}
    assert len(list(saturation(held, config_from_mapping(other)))) == 1

    flat = [2.3, 2.2, 2.25, 2.2] * 5  # the last third is ~3 % below the first: not stuck at the default
    losses = Signals(scalars={i: {"loss": v} for i, v in enumerate(flat)})
    assert list(loss_stuck(losses)) == []
    (stuck,) = loss_stuck(losses, config_from_mapping({"thresholds": {"loss-stuck-drop": 0.5}}))
    assert stuck.threshold == 0.5 and "below 50%" in stuck.message

    def relu(step: int) -> dict[str, ModuleActivation]:
        return {"r": _act(step, module="r", type="ReLU", units=8, alive=bytes([0x0F]))}  # 4 of 8 dead

    half_dead = Signals(activations={s: relu(s) for s in range(4)})
    assert len(list(dead_activations(half_dead))) == 1
    stricter = config_from_mapping({"thresholds": {"dead-activations-share": 0.75}})
    assert list(dead_activations(half_dead, stricter)) == []


def test_shares_compare_as_percentages_that_never_read_below_their_threshold() -> None:
    held = Signals(activations={s: {"out": _act(s, bound="sigmoid", saturated=1.0)} for s in range(4)})
    (saturated,) = saturation(held)
    assert comparison(saturated) == "100 % ≥ 90 %"
    near = Signals(activations={s: {"out": _act(s, bound="sigmoid", saturated=0.996)} for s in range(4)})
    (fine,) = saturation(near, config_from_mapping({"thresholds": {"saturation-share": 0.995}}))
    assert comparison(fine) == "99.6 % ≥ 99.5 %"  # not "99 % ≥ 99.5 %"
