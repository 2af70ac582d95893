"""The HTML report of a run with a recorded loss and activations: a loss chart, a per-module activation chart,
and the new findings grouped and linked like the others (issue #16)."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from gradcheck.analysis.inspection import inspect_run
from gradcheck.cli.pictures.charts import chart_data, grouped_findings
from gradcheck.cli.pictures.page import report_html
from gradcheck.cli.pictures.specs import datasets, specs
from gradcheck.recording.torch import Recorder


class Normalize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)  # 0/0 for an all-zero row


def nan_run(run_dir: Path, *, signals: bool = True) -> None:
    """A real run whose NaN is born in `norm` at step 20 (a batch with an all-zero row)."""
    torch.manual_seed(0)
    layers = OrderedDict(
        norm=Normalize(), fc=torch.nn.Linear(8, 16), act=torch.nn.ReLU(), out=torch.nn.Linear(16, 3)
    )
    model = torch.nn.Sequential(layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, optimizer, run_dir, every=5, mode="stats", activations=signals) as recorder:
        for step in range(30):
            x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
            if step == 20:
                x[3] = 0.0
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if signals:
                recorder.log(loss=loss.item())
            optimizer.step()
            optimizer.zero_grad()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report_signals")
    torch.set_num_threads(1)
    nan_run(root / "signals")
    nan_run(root / "plain", signals=False)
    return root


def test_loss_and_activation_charts_hold_the_recorded_numbers(runs: Path) -> None:
    report = inspect_run(runs / "signals")
    data = chart_data(report)
    charts, tables = specs(data), datasets(data)
    assert (
        list(charts)[-3:] == ["loss", "activations", "context"]
        and charts["loss"]["layer"][0]["encoding"]["y"]["title"] == "loss"
    )
    losses = report.run.signals.losses()
    assert [(row["s"], row["v"], row["bad"]) for row in tables["loss"]] == [
        (step, None if math.isnan(value) else value, math.isnan(value)) for step, value in losses
    ]
    assert any(row["bad"] for row in tables["loss"])  # the NaN loss of step 20 is marked, not dropped
    assert [row["m"] for row in tables["acts"]] == ["norm", "fc", "act", "out", "<model>"]
    relu = next(row for row in tables["acts"] if row["m"] == "act")
    acts = [report.run.signals.activations[s]["act"] for s in relu["s"]]
    assert relu["t"] == "ReLU" and relu["a"] == [None] * len(acts)
    assert (
        relu["z"][:4] == [round(a.zeros / a.count, 3) for a in acts[:4]] and relu["z"][4] is None
    )  # NaN step
    assert charts["activations"]["params"][1]["bind"]["options"][1:] == [row["m"] for row in tables["acts"]]


def test_the_new_findings_are_grouped_and_link_to_their_charts(runs: Path) -> None:
    report = inspect_run(runs / "signals")
    page = report_html(report, chart_data(report))
    story = grouped_findings(report)
    origin = next(g for g in story.groups if "nan-origin" in g.checks)
    assert origin.params == ("norm",) and origin.first_step == 20
    assert f'data-checks="{" ".join(origin.checks)}"' in page
    assert 'href="#activations" data-chart="activations" data-layer="norm"' in page
    assert (
        '<div class="chart" id="chart-loss">' in page and '<div class="chart" id="chart-activations">' in page
    )


def test_a_run_without_loss_or_activations_has_neither_chart(runs: Path) -> None:
    report = inspect_run(runs / "plain")
    data = chart_data(report)
    assert "loss" not in specs(data) and "activations" not in specs(data)
    assert datasets(data)["loss"] == [] and datasets(data)["acts"] == []
    assert "chart-activations" not in report_html(report, data)
