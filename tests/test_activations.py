"""Recording forward activations and the loss with the torch Recorder, and reading them back (issue #16)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner

from gradcheck.analysis.activations import (
    ACTIVATIONS_KEY,
    Signals,
    activations_metadata,
    merge_alive,
    parse_activations,
)
from gradcheck.analysis.config import load_config
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.reader import read_header
from gradcheck.analysis.runs import load_run
from gradcheck.analysis.signal_checks import SIGNAL_CHECK_IDS
from gradcheck.cli.main import cli
from gradcheck.recording.torch import Recorder


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


def _mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Sigmoid()
    )  # fmt: skip


@pytest.mark.parametrize("activations", [True, False])
def test_hooks_are_attached_only_for_recorded_steps(tmp_path: Path, activations: bool) -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with Recorder(model, optimizer, tmp_path, every=3, activations=activations) as recorder:
        for _ in range(8):
            seen.append(_hook_count(model))
            model(torch.randn(5, 6)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        during = _hook_count(model)
    hooked = len(list(model.modules())) if activations else 0  # the root and its 4 children
    assert seen == [hooked, 0, 0, hooked, 0, 0, hooked, 0]
    assert during == 0 and _hook_count(model) == 0
    assert recorder.run_dir == tmp_path


@pytest.mark.parametrize("mode", ["full", "stats"])
def test_recorded_statistics_match_the_module_outputs(tmp_path: Path, mode: str) -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(20.0)  # push some sigmoid outputs to the bounds
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.randn(32, 6)
    with Recorder(model, optimizer, tmp_path, mode=mode, activations=True) as recorder:
        out = model(x)
        loss = out.sum()
        loss.backward()
        recorder.log(loss=loss.item(), accuracy=0.5)
        optimizer.step()
    hidden = torch.relu(model[0](x)).detach()
    probs = out.detach()
    metadata = read_header(tmp_path / "step_00000000.safetensors").metadata
    acts, problems = parse_activations(metadata[ACTIVATIONS_KEY])
    assert problems == [] and list(acts) == ["0", "1", "2", "3", "<model>"]
    assert [acts[name].order for name in ("0", "1", "2", "3", "<model>")] == [0, 1, 2, 3, 4]
    relu = acts["1"]
    assert (relu.count, relu.zeros, relu.nan, relu.inf) == (hidden.numel(), int((hidden == 0).sum()), 0, 0)
    assert relu.mean == pytest.approx(float(hidden.mean()), rel=1e-5)
    assert relu.std == pytest.approx(float(hidden.std(unbiased=False)), rel=1e-4)
    assert (relu.min, relu.max) == (0.0, pytest.approx(float(hidden.max())))
    alive = (hidden != 0).any(dim=0).tolist()
    assert relu.units == 16 and relu.dead_units() == alive.count(False)
    assert relu.bound is None and relu.saturated is None and relu.inputs_finite
    sigmoid = acts["3"]
    at_bounds = float(((probs < 0.01) | (probs > 0.99)).float().mean())
    assert sigmoid.bound == "sigmoid" and sigmoid.saturated == pytest.approx(at_bounds) and 0 < at_bounds < 1
    assert acts["0"].units is None and acts["0"].type == "Linear"
    scalars = json.loads(metadata["gradcheck.scalars"])
    assert scalars == {"loss": pytest.approx(loss.item()), "accuracy": 0.5}


def test_values_logged_for_unrecorded_steps_are_dropped(tmp_path: Path) -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, optimizer, tmp_path, every=2) as recorder:
        for step in range(4):
            model(torch.randn(4, 6)).sum().backward()
            recorder.log(loss=float(step))
            optimizer.step()
            optimizer.zero_grad()
    run = load_run(tmp_path)
    assert run.signals.scalars == {0: {"loss": 0.0}, 2: {"loss": 2.0}}
    assert run.signals.activations == {}  # not asked for


class Normalize(torch.nn.Module):
    """Scale each row to unit length: 0/0 for a row of zeros."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)


def _nan_run(run_dir: Path, bad_step: int = 25, *, signals: bool = True) -> None:
    """A real run whose NaN is born in the `norm` module at `bad_step` (a batch with an all-zero row)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        OrderedDict(
            norm=Normalize(), fc=torch.nn.Linear(8, 16), act=torch.nn.ReLU(), head=torch.nn.Linear(16, 3)
        )
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, optimizer, run_dir, every=5, mode="stats", activations=signals) as recorder:
        for step in range(40):
            x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
            if step == bad_step:
                x[3] = 0.0
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if signals:
                recorder.log(loss=loss.item())
            optimizer.step()
            optimizer.zero_grad()


def test_nan_born_in_a_known_module_is_named_with_its_step(tmp_path: Path) -> None:
    _nan_run(tmp_path)
    report = inspect_run(tmp_path)
    origin = [f for f in report.findings if f.check == "nan-origin"]
    assert len(origin) == 1
    assert (origin[0].param, origin[0].step, origin[0].severity) == ("norm", 25, "error")
    assert origin[0].message.startswith("NaN born in norm (Normalize) at step 25")
    assert {f.check for f in report.findings} >= {"nan-origin", "loss-nonfinite", "nonfinite"}
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)], terminal_width=160)
    assert result.exit_code == 1
    verdict = " ".join(result.output.split("✗ unhealthy:")[1].split())
    assert (
        "nan-origin, loss-nonfinite in 4 parameter(s), first at step 25; NaN born in norm at step 25"
        in verdict
    )
    document = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"]).output)
    assert [s["step"] for s in document["scalars"]] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert math.isnan(float("nan")) and document["scalars"][5]["loss"] is None  # NaN -> null in JSON
    assert document["activations"]["norm"][5]["nan"] > 0 and document["activations"]["norm"][4]["nan"] == 0


def test_ignore_and_config_reach_the_signal_checks(tmp_path: Path) -> None:
    """--ignore, a config's `ignore` and an override's module glob each drop a signal check (issue #16)."""
    _nan_run(tmp_path / "run")
    checks = {f.check for f in inspect_run(tmp_path / "run").findings}
    assert {"nan-origin", "loss-nonfinite"} <= checks
    args = ["inspect", str(tmp_path / "run"), "--format", "json"]
    ignored = CliRunner().invoke(cli, [*args, "--ignore", "nan-origin", "--ignore", "loss-nonfinite"])
    found = {f["check"] for f in json.loads(ignored.output)["findings"]}
    assert ignored.exit_code == 1 and "nonfinite" in found and not found & {"nan-origin", "loss-nonfinite"}
    config = tmp_path / "gradcheck.toml"
    config.write_text(
        'ignore = ["loss-nonfinite"]\n[[overrides]]\nparams = ["no*"]\nignore = ["nan-origin"]\n'
    )
    found = {f.check for f in inspect_run(tmp_path / "run", load_config(config)).findings}
    assert "nonfinite" in found and not found & {"nan-origin", "loss-nonfinite"}
    unknown = CliRunner().invoke(cli, [*args, "--ignore", "dead-unit"])
    assert unknown.exit_code == 2 and "dead-activations" in unknown.output


def test_a_finite_run_has_no_nan_origin(tmp_path: Path) -> None:
    _nan_run(tmp_path, bad_step=-1)
    report = inspect_run(tmp_path)
    assert not [f for f in report.findings if f.severity == "error"]


def test_a_run_without_activations_or_loss_judges_as_before(tmp_path: Path) -> None:
    """The same seeded training recorded with and without the new signals: the gradient findings are equal."""
    plain = tmp_path / "plain"
    _nan_run(plain, signals=False)
    _nan_run(tmp_path / "signals")
    before, after = inspect_run(plain), inspect_run(tmp_path / "signals")
    assert before.run.signals == Signals() and before.run.skipped == ()
    old = [f for f in after.findings if f.check not in SIGNAL_CHECK_IDS]
    assert [(f.check, f.param, f.kind, f.steps) for f in before.findings] == [
        (f.check, f.param, f.kind, f.steps) for f in old
    ]
    document = json.loads(CliRunner().invoke(cli, ["inspect", str(plain), "--format", "json"]).output)
    assert "scalars" not in document and "activations" not in document


def test_malformed_entries_are_dropped_and_named(tmp_path: Path) -> None:
    good = {"type": "ReLU", "order": 0, "count": 4, "nan": 0, "inf": 0, "zeros": 1, "mean": 0.5, "std": 0.1}
    good |= {"min": 0.0, "max": 1.0, "inputs_finite": True, "units": 4, "alive": bytes([0b0111])}
    text = activations_metadata({"a": good, "b": {**good, "nan": 9}, "c": {**good, "alive": None}})
    acts, problems = parse_activations(text)
    assert list(acts) == ["a"] and acts["a"].dead_units() == 1
    assert problems == [
        f"{ACTIVATIONS_KEY}: entry 'act/b' is malformed and was ignored",
        f"{ACTIVATIONS_KEY}: entry 'act/c' is malformed and was ignored",
    ]
    assert parse_activations("[")[1] == [f"{ACTIVATIONS_KEY} is not valid JSON"]
    assert merge_alive([bytes([0b0101]), bytes([0b0010])]) == bytes([0b0111])


def test_sample_runs_have_no_signals() -> None:
    root = Path(__file__).parent.parent / "sample_runs"
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        run = load_run(run_dir)
        assert run.signals == Signals(), run_dir


def test_view_activations_shows_modules_in_forward_order_and_where_the_nan_was_born(tmp_path: Path) -> None:
    _nan_run(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["inspect", str(tmp_path), "--view", "activations", "--step", "25"], terminal_width=140
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    rows = [line.split()[0] for line in lines[2:7]]
    assert rows == ["norm", "fc", "act", "head", "<model>"]
    assert [line.split()[0] for line in lines if "born here" in line] == ["norm"]
    assert any(line.startswith("loss ") and line.rstrip().endswith("!") for line in lines)
    before = runner.invoke(cli, ["inspect", str(tmp_path), "--view", "activations", "--step", "20"])
    assert "born here" not in before.output and "step 20: module outputs" in before.output


def test_view_activations_refuses_a_run_without_them() -> None:
    run_dir = Path(__file__).parent.parent / "sample_runs" / "healthy_mlp"
    result = CliRunner().invoke(cli, ["inspect", str(run_dir), "--view", "activations"])
    assert result.exit_code == 2
    assert "no loss or activations recorded" in result.output


def test_a_compiled_model_is_not_recompiled_at_every_recorded_step(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = _mlp()
    compiled = torch.compile(model, backend="eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    graphs = []
    with Recorder(model, optimizer, tmp_path, every=3, mode="stats", activations=True):
        for _ in range(10):
            compiled(torch.randn(4, 6)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == [graphs[0]] * 9  # hooks at steps 0, 3, 6, 9: no graph after the first step's
    run = load_run(tmp_path)
    assert sorted(run.signals.activations) == [0, 3, 6, 9]
    assert list(run.signals.activations[9]) == ["0", "1", "2", "3", "<model>"]
