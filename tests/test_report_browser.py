"""The report of each sample run, opened in headless Chromium with the network off (marker `browser`).

CI: `apt-get install -y chromium` and `pip install websocket-client` (the test extra), then
`pytest -m browser`. Screenshots go to $GRADCHECK_TEST_ARTIFACTS (default `test-artifacts/` at the top of the
repository) for CI to keep. See docs/REPORT.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradcheck.cli.main import cli
from gradcheck.cli.pictures.specs import ALL_LAYERS

pytestmark = pytest.mark.browser

SAMPLES = sorted(
    p.name for p in (Path(__file__).resolve().parent.parent / "sample_runs").iterdir() if p.is_dir()
)
ARTIFACTS = Path(
    os.environ.get("GRADCHECK_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts")
)
QUERIES = {
    "charts": "document.querySelectorAll('div.chart').length",
    "drawn": "document.querySelectorAll('div.chart canvas, div.chart svg').length",
    "empty": "Array.from(document.querySelectorAll('div.chart')).filter(d => !d.querySelector('canvas, svg')).map(d => d.id)",
    "rendered": "Number(document.body.getAttribute('data-rendered'))",
    "groups": "Array.from(document.querySelectorAll('#findings li')).map(li => [li.dataset.severity, li.dataset.problem, Number(li.dataset.firstStep), Number(li.dataset.lastStep), JSON.parse(li.dataset.params)])",
    "causes": "Array.from(document.querySelectorAll('p.cause')).map(p => p.innerText)",
    "cause_first": "Array.from(document.querySelectorAll('p.cause, #findings')).map(e => e.tagName)",
    "verdict": "document.getElementById('verdict').className",
    "inked": "Array.from(document.querySelectorAll('div.chart canvas')).map(c => c.width * c.height > 0)",
}


@pytest.fixture(scope="module")
def chromium():  # type: ignore[no-untyped-def]
    pytest.importorskip(
        "websocket", reason="the browser test needs websocket-client (pip install -e '.[test]')"
    )
    from browser import Chromium, find_browser

    binary = find_browser()
    if binary is None:  # selected with -m browser on a machine without it: a failure, not a silent skip
        pytest.fail("no chromium on PATH: apt-get install -y chromium")
    with Chromium(binary) as browser:
        yield browser


@pytest.mark.parametrize("name", SAMPLES)
def test_report_renders_every_chart_without_errors(
    chromium, sample_runs: Path, tmp_path: Path, name: str
) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    target = tmp_path / f"{name}.html"
    result = runner.invoke(cli, ["report", str(sample_runs / name), "-o", str(target), "-q"])
    assert result.exit_code in (0, 1), result.output
    document = json.loads(runner.invoke(cli, ["inspect", str(sample_runs / name), "--format", "json"]).stdout)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = chromium.load(
        target.as_uri(), QUERIES, ready="document.body && document.body.getAttribute('data-rendered')",
        screenshot=ARTIFACTS / f"report_{name}.png",
    )  # fmt: skip
    assert page.errors == []
    values = page.values
    assert values["charts"] >= 3 and values["rendered"] == values["charts"]
    assert values["empty"] == [] and values["drawn"] >= values["charts"] and all(values["inked"])
    story = document["story"]
    assert values["groups"] == [
        [g["severity"], g["problem"], g["first_step"], g["last_step"], g["params"]] for g in story["groups"]
    ]
    assert values["causes"] == [f"likely cause: {c['text']} see the chart" for c in story["causes"]]
    assert values["cause_first"] == ["P"] * len(story["causes"]) + (["OL"] if story["groups"] else [])
    assert values["verdict"] == f"verdict {document['status']}"
    assert (ARTIFACTS / f"report_{name}.png").stat().st_size > 10_000


def test_a_page_that_fetches_is_caught(chromium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The harness itself: with the network off, a page loading a remote script logs an error we see."""
    page = tmp_path / "fetching.html"
    page.write_text(
        '<html><body><script src="https://cdn.example.invalid/x.js"></script>'
        "<script>document.body.setAttribute('data-rendered', '1')</script></body></html>"
    )
    result = chromium.load(
        page.as_uri(), {}, ready="document.body && document.body.getAttribute('data-rendered')"
    )
    assert result.errors, "a blocked request must show up as an error"


def test_a_console_error_is_caught(chromium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = tmp_path / "erroring.html"
    page.write_text(
        "<html><body><script>console.error('boom'); document.body.setAttribute('data-rendered', '1')</script></body></html>"
    )
    result = chromium.load(
        page.as_uri(), {}, ready="document.body && document.body.getAttribute('data-rendered')"
    )
    assert any("boom" in error for error in result.errors)


def test_context_section_renders_when_recorded(chromium, sample_runs: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from gradcheck.analysis.inspection import inspect_run
    from gradcheck.cli.pictures.charts import chart_data
    from gradcheck.cli.pictures.page import report_html

    report = inspect_run(sample_runs / "healthy_mlp")
    context = {"learning rate": ((0, 1e-3), (60, 5e-4)), "loss": ((0, 2.3), (60, 0.4), (120, float("nan")))}
    target = tmp_path / "context.html"
    target.write_text(report_html(report, replace(chart_data(report), context=context)), encoding="utf-8")
    page = chromium.load(
        target.as_uri(), QUERIES, ready="document.body && document.body.getAttribute('data-rendered')"
    )
    assert page.errors == []
    assert page.values["empty"] == [] and page.values["rendered"] == page.values["charts"]
    assert "chart-context" in target.read_text() and "context-note" not in target.read_text()


def test_a_group_link_shows_its_layers_and_a_parameter_link_selects_its_own(
    chromium, sample_runs: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """dead_relu's one group is 0.weight, 0.bias, 2.weight: its link shows every layer, 0.bias's selects layer 0."""
    target = tmp_path / "dead.html"
    CliRunner().invoke(cli, ["report", str(sample_runs / "dead_relu"), "-o", str(target), "-q"])
    click = (
        "(selector) => new Promise(r => { const a = document.querySelector(selector); a.click();"
        " setTimeout(() => r([a.textContent, a.dataset.layer, gradcheckViews[a.dataset.chart].signal('layer'),"
        " location.hash]), 200); })"
    )
    page = chromium.load(
        target.as_uri(),
        {
            "group": f"({click})('#findings li > a[data-layer]')",
            "param": f"({click})('#findings li .params a:nth-of-type(2)')",
        },
        ready="document.body && document.body.getAttribute('data-rendered')",
    )
    assert page.values["group"] == ["3 parameters", ALL_LAYERS, ALL_LAYERS, "#norms"]
    assert page.values["param"] == ["0.bias", "0", "0", "#norms"]
    assert page.errors == []


def test_loss_and_activation_charts_render_and_a_nan_origin_link_selects_its_module(
    chromium, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A real torch run with a recorded loss and activations (issue #16): every chart drawn, no console error,
    the nan-origin group links to the activation chart and selects the module the NaN was born in."""
    pytest.importorskip("torch")
    from test_report_signals import nan_run

    nan_run(tmp_path / "run")
    target = tmp_path / "signals.html"
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "-o", str(target), "-q"])
    assert result.exit_code == 1, result.output
    click = (
        "(selector) => new Promise(r => { const a = document.querySelector(selector); a.click();"
        " setTimeout(() => r([a.dataset.layer, gradcheckViews[a.dataset.chart].signal('layer'),"
        " location.hash]), 200); })"
    )
    queries = {
        **QUERIES,
        "ids": "Array.from(document.querySelectorAll('div.chart')).map(d => d.id)",
        "origin": f"({click})('#findings li[data-checks~=\"nan-origin\"] > a[data-layer]')",
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = chromium.load(
        target.as_uri(), queries, ready="document.body && document.body.getAttribute('data-rendered')",
        screenshot=ARTIFACTS / "report_signals.png",
    )  # fmt: skip
    assert page.errors == []
    values = page.values
    assert values["rendered"] == values["charts"] and values["empty"] == [] and all(values["inked"])
    assert {"chart-loss", "chart-activations"} <= set(values["ids"])
    assert values["origin"] == ["norm", "norm", "#activations"]
