"""`gradcheck heatmap --metric act-zero|act-saturated`: modules x steps from recorded activations (issue #16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner

from gradcheck.analysis.activation_heatmap import activation_values
from gradcheck.analysis.activations import ModuleActivation, Signals
from gradcheck.analysis.heatmap import build_heatmap
from gradcheck.analysis.inspection import inspect_run
from gradcheck.cli.main import cli
from gradcheck.recording.torch import Recorder


def _train(run_dir: Path, *, activations: bool, steps: int = 12) -> None:
    """A ReLU MLP with a sigmoid output; its first bias pushed down so most ReLU units are silent."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Sigmoid()
    )  # fmt: skip
    with torch.no_grad():
        model[0].bias.fill_(-1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with Recorder(model, optimizer, run_dir, every=2, mode="stats", activations=activations):
        for _ in range(steps):
            torch.nn.functional.mse_loss(model(torch.randn(8, 6)), torch.rand(8, 3)).backward()
            optimizer.step()
            optimizer.zero_grad()


def test_act_zero_has_a_row_per_module_in_forward_order_with_the_recorded_share(tmp_path: Path) -> None:
    _train(tmp_path, activations=True)
    report = inspect_run(tmp_path)
    drawn = build_heatmap(report, "act-zero", max_columns=100)
    assert drawn.layers == ("0", "1", "2", "3", "<model>")
    assert drawn.columns == tuple((s, s) for s in report.run.steps) and not drawn.missing.any()
    relu = [report.run.signals.activations[s]["1"] for s in report.run.steps]
    assert np.array_equal(drawn.values[1], [a.zeros / a.count for a in relu])
    assert drawn.values[1].min() > 0.3 and drawn.values[0].max() == 0.0  # a Linear output is never exactly 0


def test_act_saturated_keeps_the_bounded_modules_only(tmp_path: Path) -> None:
    _train(tmp_path, activations=True)
    report = inspect_run(tmp_path)
    drawn = build_heatmap(report, "act-saturated", max_columns=3)
    assert drawn.layers == ("3",) and len(drawn.columns) == 3 and drawn.steps_per_column == (2, 2)
    shares = [report.run.signals.activations[s]["3"].saturated for s in report.run.steps]
    assert np.allclose(drawn.values[0], [max(shares[i : i + 2]) for i in (0, 2, 4)])  # the max of each bin


def test_heatmap_command_draws_modules_and_refuses_a_run_without_activations(tmp_path: Path) -> None:
    _train(tmp_path / "with", activations=True)
    _train(tmp_path / "without", activations=False)
    runner = CliRunner()
    shown = runner.invoke(cli, ["heatmap", str(tmp_path / "with"), "-m", "act-zero", "--width", "160"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "share of exact zeros in the module's output" in lines[0]
    assert "(5 module(s) × " in lines[0] and lines[1].split("│")[0].strip() == "module"
    assert [line.split("│")[0].strip() for line in lines[2:7]] == ["0", "1", "2", "3", "<model>"]
    assert any(line.startswith("max ") and " at module " in line for line in lines)
    refused = runner.invoke(cli, ["heatmap", str(tmp_path / "without"), "-m", "act-saturated"])
    assert refused.exit_code == 2 and "no module has a value for --metric act-saturated" in refused.output


def test_a_nonfinite_output_is_the_nan_marker_and_a_step_without_activations_is_missing() -> None:
    def act(nan: int) -> ModuleActivation:
        return ModuleActivation("s", "Sigmoid", 0, 10, nan, 0, 2, 0.5, 0.1, 0.0, 1.0, True, 1, "sigmoid", 0.4)

    signals = Signals(activations={0: {"s": act(0)}, 2: {"s": act(3)}})
    modules, values, missing = activation_values(signals, (0, 1, 2), "act-zero")
    assert modules == ("s",) and values[0, 0] == 0.2 and np.isnan(values[0, 2])
    assert missing.tolist() == [[False, True, False]]
