"""`gradcheck report`: one self-contained HTML file whose findings and series are the analysis results."""

from __future__ import annotations

import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runs_builder import write_run

from gradcheck.analysis.context import StepContext
from gradcheck.analysis.heatmap import build_heatmap
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.story import tell
from gradcheck.cli.main import cli
from gradcheck.cli.pictures.charts import MAX_HEATMAP_COLUMNS, chart_data, context_series, grouped_findings
from gradcheck.cli.pictures.page import PARAMS_SHOWN, read_zipped, report_html
from gradcheck.cli.pictures.specs import ALL_LAYERS, datasets, specs

SAMPLES = ("healthy_mlp", "exploding_nan", "dead_relu", "vanishing_sigmoid", "bf16_mlp", "plain_dumps")
BUDGET = 2_000_000  # bytes, issue #15


class _Page(HTMLParser):
    """The parts of the page the tests read: findings items, chart divs, script bodies, external references."""

    def __init__(self) -> None:
        super().__init__()
        self.findings: list[dict[str, str]] = []  # one per group of the story
        self.causes: list[str] = []
        self.links: list[dict[str, str]] = []
        self._cause: bool = False
        self.charts: list[str] = []
        self.scripts: dict[str, str] = {}
        self.references: list[str] = []
        self._script: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {key: value or "" for key, value in attrs}
        if tag == "li" and "data-problem" in named:
            self.findings.append(named)
        if tag == "p" and named.get("class") == "cause":
            self._cause = True
            self.causes.append("")
        if tag == "a" and "data-layer" in named:
            self.links.append(named)
        if tag == "div" and named.get("class") == "chart":
            self.charts.append(named["id"])
        if tag == "script":
            self._script = named.get("id", f"inline-{len(self.scripts)}")
            self.scripts[self._script] = ""
        for key in ("src", "href"):
            if key in named and not named[key].startswith("#"):
                self.references.append(named[key])

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts[self._script] += data
        if self._cause:
            self.causes[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None
        if tag == "p":
            self._cause = False


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.mark.parametrize("name", SAMPLES)
def test_report_of_each_sample_run_is_self_contained_and_tells_the_json_story(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, name: str
) -> None:
    target = tmp_path / "report.html"
    result = runner.invoke(cli, ["report", str(sample_runs / name), "-o", str(target), "-q"])
    inspected = runner.invoke(cli, ["inspect", str(sample_runs / name), "--format", "json"])
    assert result.exit_code == inspected.exit_code, result.output
    document = json.loads(inspected.stdout)
    page = _page(target)
    assert page.references == []  # no src= or href= leaves the file
    text = target.read_text(encoding="utf-8")
    assert not re.search(r"sourceMappingURL|@import|url\(\s*['\"]?https?:", text)
    assert target.stat().st_size < BUDGET
    story = document["story"]
    expected = [
        (g["severity"], g["problem"], str(g["first_step"]), str(g["last_step"]), g["params"])
        for g in story["groups"]
    ]
    assert [
        (
            g["data-severity"],
            g["data-problem"],
            g["data-first-step"],
            g["data-last-step"],
            json.loads(g["data-params"]),
        )
        for g in page.findings
    ] == expected
    assert [text.removeprefix("likely cause: ").removesuffix(" see the chart") for text in page.causes] == [
        c["text"] for c in story["causes"]
    ]
    assert set(json.loads(page.scripts["gradcheck-specs"])) == {c.removeprefix("chart-") for c in page.charts}
    assert {"norms", "flow"} <= {c.removeprefix("chart-") for c in page.charts}


def test_each_group_links_to_the_chart_of_its_check(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    target = tmp_path / "report.html"
    runner.invoke(cli, ["report", str(sample_runs / "exploding_nan"), "-o", str(target), "-q"])
    charts = {
        re.search(r'data-checks="([\w -]+)"', item)[1]: set(re.findall(r'data-chart="(\w+)"', item))  # type: ignore[index]
        for item in re.findall(r"<li .*?</li>", target.read_text())
    }
    assert charts["update-ratio-high"] == {"ratio"} and charts["nonfinite"] == {"norms"}
    assert all(
        chart == {"ratio" if checks.startswith("update-ratio") else "norms"}
        for checks, chart in charts.items()
    )


def test_the_likely_cause_comes_before_the_groups_and_its_hint_first(sample_runs: Path) -> None:
    report = inspect_run(sample_runs / "exploding_nan")
    page = report_html(report, chart_data(report))
    cause = page.index('<p class="cause"')
    assert cause < page.index('<ol id="findings">') < page.index("nonfinite</span>")
    assert "learning rate too high?" in page[cause : page.index("</p>", cause)]
    hints = re.findall(r'<p class="hint">hint \(([\w -]+)\)', page)
    assert hints == ["likely cause"]  # the cause explains every group: no per-problem hint repeats it


def test_a_group_links_every_layer_it_spans_and_each_of_its_parameters(sample_runs: Path) -> None:
    report = inspect_run(sample_runs / "exploding_nan")
    page = _Page()
    page.feed(report_html(report, chart_data(report)))
    nonfinite = next(g for g in page.findings if g["data-problem"] == "nonfinite")
    assert json.loads(nonfinite["data-params"]) == list(report.run.params)
    single = next(g for g in page.findings if g["data-params"] == '["4.weight"]')
    assert single["data-problem"] == "exploding"
    layers = [(a["data-chart"], a["data-layer"]) for a in page.links]
    # the cause, then per group: the who link (all layers when it spans several), then each parameter's own layer
    assert layers[:5] == [
        ("ratio", ALL_LAYERS),
        ("ratio", ALL_LAYERS),
        ("ratio", "0"),
        ("ratio", "2"),
        ("ratio", "4"),
    ]
    assert ("norms", "4") in layers


def test_a_group_of_many_parameters_folds_its_list(sample_runs: Path) -> None:
    report = inspect_run(sample_runs / "vanishing_sigmoid")
    page = report_html(report, chart_data(report))
    vanishing = re.search(r'<li [^>]*data-problem="vanishing"[^>]*data-params="([^"]*)".*?</li>', page)
    assert vanishing is not None and len(json.loads(html.unescape(vanishing[1]))) == 11 > PARAMS_SHOWN
    assert '<details class="params"><summary>the 11 parameters</summary>' in vanishing[0]


def test_series_are_the_json_history_and_the_heatmap_of_the_analysis(sample_runs: Path) -> None:
    """No second computation: the page's numbers are history.grad_series and heatmap.build_heatmap, rounded."""
    report = inspect_run(sample_runs / "vanishing_sigmoid")
    data = chart_data(report)
    tables = datasets(data)
    runner = CliRunner()
    document = json.loads(
        runner.invoke(cli, ["inspect", str(sample_runs / "vanishing_sigmoid"), "--format", "json"]).stdout
    )
    for row, param in zip(tables["series"], document["params"], strict=True):
        assert row["p"] == param["name"]
        wanted = param["history"]["log10_grad_norm"]
        assert row["g"] == [None if v is None else round(v, 3) for v in wanted]
    drawn = build_heatmap(report, "grad-norm", max_columns=MAX_HEATMAP_COLUMNS)
    first = tables["heat"][0]
    assert first["l"] == drawn.layers[0]
    assert first["v_grad_norm"] == [round(float(v), 3) for v in drawn.values[0]]


def test_nan_and_zero_gradients_are_marked(sample_runs: Path) -> None:
    marks = datasets(chart_data(inspect_run(sample_runs / "exploding_nan")))["marks"]
    assert {m["k"] for m in marks} == {"NaN/Inf"}
    assert min(m["s"] for m in marks) == 11  # the first NaN step, as the nonfinite finding says
    dead = datasets(chart_data(inspect_run(sample_runs / "dead_relu")))["marks"]
    assert {(m["p"], m["k"]) for m in dead} >= {("0.weight", "exactly zero")}


def test_a_parameter_name_cannot_close_the_data_script(tmp_path: Path) -> None:
    name = "</script><script>alert(1)</script>"
    rng = np.random.default_rng(0)
    write_run(tmp_path, {s: {"grad": {name: rng.normal(size=4).astype(np.float32)}} for s in range(3)})
    page = report_html(inspect_run(tmp_path), chart_data(inspect_run(tmp_path)))
    assert page.count("</script>") == page.count("<script")  # one closing tag per script element
    assert read_zipped(_page_text_script(page, "gradcheck-data"))["series"][0]["p"] == name
    options = json.loads(_page_text_script(page, "gradcheck-specs"))["norms"]["params"][0]["bind"]["options"]
    assert options[1].startswith("</script>")  # the layer name reaches the specs intact (escaped as \u003c)


def _page_text_script(page: str, element_id: str) -> str:
    parser = _Page()
    parser.feed(page)
    return parser.scripts[element_id]


def test_grads_only_run_leaves_out_the_ratio_and_param_charts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    write_run(
        tmp_path, {s: {"grad": {"fc.weight": rng.normal(size=(3, 3)).astype(np.float32)}} for s in range(4)}
    )
    charts = specs(chart_data(inspect_run(tmp_path)))
    assert list(charts) == ["norms", "flow", "heatmap"]
    assert set(charts["heatmap"]["params"][0]["bind"]["options"]) == {"grad_norm", "grad_mean"}


def test_context_series_take_the_recorded_context_and_scalars() -> None:
    contexts = {
        10: StepContext(lr={"a": 1e-3, "b": 1e-4}, loss_scale=1024.0, skipped_count=2),
        20: StepContext(lr={"a": 5e-4}, grad_norm=3.0, clip_coef=0.5),
    }
    series = context_series(contexts, {10: {"loss": 0.9, "acc": 0.5}, 20: {"loss": 0.5}})
    assert series["learning rate"] == ((10, 1e-3), (20, 5e-4))
    assert series["loss scale"] == ((10, 1024.0),)
    assert series["AMP-skipped steps"] == ((10, 2.0),)
    assert series["clip factor"] == ((20, 0.5),)
    assert series["acc"] == ((10, 0.5),)
    assert "loss" not in series  # the loss has a chart of its own


def test_without_context_the_page_says_none_was_recorded(sample_runs: Path) -> None:
    report = inspect_run(sample_runs / "plain_dumps")  # written by save_file, without the recorder's context
    page = report_html(report, chart_data(report))
    assert 'id="context-note"' in page and "chart-context" not in page


def test_grouping_is_the_story_the_terminal_and_json_tell(sample_runs: Path) -> None:
    report = inspect_run(sample_runs / "exploding_nan")
    assert grouped_findings(report) == tell(report.findings, report.run.params)
    assert grouped_findings(report).causes  # the sample's learning rate explains its explosion and NaN
    assert grouped_findings(inspect_run(sample_runs / "healthy_mlp")).groups == ()


def test_heatmap_metric_option_picks_the_first_metric(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    target = tmp_path / "r.html"
    runner.invoke(
        cli, ["report", str(sample_runs / "healthy_mlp"), "-o", str(target), "-m", "update-ratio", "-q"]
    )
    heat = json.loads(_page(target).scripts["gradcheck-specs"])["heatmap"]
    assert heat["params"][0]["value"] == "update_ratio"


def test_bad_input_and_unwritable_output_exit_2(runner: CliRunner, sample_runs: Path, tmp_path: Path) -> None:
    missing = runner.invoke(cli, ["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")])
    assert missing.exit_code == 2 and "gradcheck: error:" in missing.stderr
    blocked = runner.invoke(
        cli, ["report", str(sample_runs / "healthy_mlp"), "-o", str(tmp_path / "no" / "r.html")]
    )
    assert blocked.exit_code == 2 and "cannot write the report" in blocked.stderr
    assert len(blocked.stderr.strip().splitlines()) == 1


def test_fail_on_never_writes_and_exits_0(runner: CliRunner, sample_runs: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        cli, ["report", str(sample_runs / "dead_relu"), "-o", str(tmp_path / "r.html"), "--fail-on", "never"]
    )
    assert result.exit_code == 0
    assert "report written to" in result.stderr


def test_log_values_are_rounded_but_finite(sample_runs: Path) -> None:
    for row in datasets(chart_data(inspect_run(sample_runs / "exploding_nan")))["series"]:
        assert all(
            v is None or (math.isfinite(v) and round(v, 3) == v) for v in row["g"] + row["r"] + row["m"]
        )


def test_step_summary_says_where_the_report_artifact_is(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.example")
    monkeypatch.setenv("GITHUB_REPOSITORY", "org/repo")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    args = [
        "report",
        str(sample_runs / "dead_relu"),
        "-o",
        "out/gradcheck.html",
        "--artifact",
        "gradcheck-report",
    ]
    monkeypatch.chdir(tmp_path)
    Path("out").mkdir()
    assert runner.invoke(cli, [*args, "-q"]).exit_code == 1
    text = summary.read_text()
    assert (
        "artifact `gradcheck-report`" in text
        and "https://github.example/org/repo/actions/runs/42#artifacts" in text
    )
    assert "`out/gradcheck.html`" in text and "unhealthy" in text


def test_without_github_no_summary_is_written(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    result = runner.invoke(
        cli, ["report", str(sample_runs / "healthy_mlp"), "-o", str(tmp_path / "r.html"), "-q"]
    )
    assert result.exit_code == 0 and result.stderr == ""
