"""The inspect table with ‖g‖ history, the depth view, and `--steps`/`--view` on the command line.

Golden files: tests/golden/history/<view>-<run>-<width>-<color|plain>.txt, compared exactly. After an intended
change of the output, regenerate them all from the repository root with
`python -c "import sys; sys.path.insert(0, 'tests'); import test_render_history as t; t.regenerate()"`
and review the diff.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from json_rows import per_step
from rich.console import Console

from gradcheck.analysis.inspection import Report, inspect_run
from gradcheck.cli.depth import render_depth
from gradcheck.cli.main import cli
from gradcheck.cli.render import header_lines, parameter_table

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "history"
RUNS = ("exploding_nan", "vanishing_sigmoid", "healthy_mlp")
CASES = [(view, run, width, color) for view in ("table", "depth") for run in RUNS for width in (80, 200)
         for color in (True, False)]  # fmt: skip


def render(view: str, run: str, width: int, color: bool) -> str:
    """What the view prints for the last step of a sample run, on a console of that width and colour."""
    report = inspect_run(Path("sample_runs") / run)
    console = Console(
        file=io.StringIO(),
        width=width,
        force_terminal=color,
        color_system="truecolor" if color else None,
        no_color=not color,  # the tests' NO_COLOR=1 must not strip the colours of the coloured snapshots
        highlight=False,
        legacy_windows=False,
    )
    step = report.run.steps[-1]
    if view == "depth":
        render_depth(console, report, step)
    else:
        for line in header_lines(report, step, width):
            console.print(line)
        console.print(parameter_table(console, report, step, report.run.steps))
    return console.file.getvalue()  # type: ignore[attr-defined]


def _golden(view: str, run: str, width: int, color: bool) -> Path:
    return GOLDEN / f"{view}-{run}-{width}-{'color' if color else 'plain'}.txt"


def regenerate() -> None:
    """Rewrite every golden file from the current output (run from the repository root)."""
    os.chdir(ROOT)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        _golden(*case).write_text(render(*case), encoding="utf-8")


@pytest.fixture(autouse=True)
def _in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # titles show the run path as given: sample_runs/<run>


@pytest.mark.parametrize(("view", "run", "width", "color"), CASES)
def test_snapshot(view: str, run: str, width: int, color: bool) -> None:
    out = render(view, run, width, color)
    assert out == _golden(view, run, width, color).read_text(encoding="utf-8")
    assert ("\x1b[" in out) is color
    assert max(len(line) for line in _plain(out).splitlines()) <= width


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _report(run: str) -> Report:
    return inspect_run(ROOT / "sample_runs" / run)


def test_narrow_table_drops_columns_but_keeps_the_essentials() -> None:
    wide, narrow = render("table", "healthy_mlp", 200, False), render("table", "healthy_mlp", 80, False)
    header = narrow.splitlines()[2]
    for kept in ("parameter", "mean|g|", "‖g‖ history", "status"):
        assert kept in header
    assert "shape" not in header and "min|g|" not in header
    assert "shape" in wide.splitlines()[2] and "upd ratio" in wide.splitlines()[2]


def test_nan_steps_are_red_marks() -> None:
    out = render("table", "exploding_nan", 200, True)
    row = next(line for line in out.splitlines() if "0.weight" in line)
    assert row.count("\x1b[1;31m!") == 4  # steps 11-14: NaN gradients, bold red
    plain = _plain(row)
    assert "!!!!" in plain and "↑" in plain


def test_dead_parameters_show_zero_marks() -> None:
    report = _report("dead_relu")
    console = Console(file=io.StringIO(), width=200, color_system=None, highlight=False)
    console.print(parameter_table(console, report, 360, report.run.steps))
    rows = {line.split()[1]: line for line in console.file.getvalue().splitlines() if "│ " in line[:2]}  # type: ignore[attr-defined]
    assert "······· -" in rows["0.weight"]  # ‖g‖ = 0 at all 7 steps: no trend
    assert "·" not in rows["4.bias"]


def test_depth_view_without_colour_is_ascii() -> None:
    out = render("depth", "vanishing_sigmoid", 80, False)
    bars = out.splitlines()[2:-3]
    assert all(line.isascii() for line in bars)
    assert all("#" in line for line in bars)
    assert "ERROR vanishing" in bars[0] and "ERROR" not in bars[-3]


def test_depth_view_marks_the_thresholds_on_the_axis() -> None:
    out = render("depth", "healthy_mlp", 200, False)
    axis = out.splitlines()[-3]
    labels = out.splitlines()[-2]
    assert axis.count("V") == 1 and axis.count("E") == 1
    assert labels[axis.index("E") :].startswith("6")  # exploding-mean 1e6
    assert "vanishing-mean 1.0e-7" in out.splitlines()[-1]


# --- the command line ---------------------------------------------------------------------------------------


def _inspect(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(cli, ["inspect", "sample_runs/exploding_nan", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "x"], "expected A:B, A:, :B or all"),
        (["--steps", "5"], "expected A:B, A:, :B or all"),
        (["--steps", "a:3"], "the bounds must be integers"),
        (["--steps", "9:3"], "the first step is after the last"),
        (["--steps", "100:"], "--steps 100: selects no recorded step (recorded: 0-14)"),
        (["--steps", "1:2", "--step", "2"], "--step and --steps cannot be used together"),
    ],
)
def test_bad_steps_exit_2_with_one_line(runner: CliRunner, args: list[str], message: str) -> None:
    code, out, err = _inspect(runner, *args)
    assert 2 == code
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("gradcheck: error: ") and message in err


def test_steps_selects_the_history_and_the_shown_step(runner: CliRunner) -> None:
    code, out, _ = _inspect(runner, "--steps", "3:5", "--format", "json")
    doc = per_step(json.loads(out))
    assert 1 == code  # findings are judged over the whole run whatever the selection
    assert doc["selected_steps"] == [3, 4, 5] and doc["shown_step"] == 5
    assert len(doc["findings"]) == len(json.loads(_inspect(runner, "--format", "json")[1])["findings"])
    history = doc["params"][0]["history"]
    assert len(history["log10_grad_norm"]) == 3 and history["state"] == ["ok"] * 3
    assert len(doc["params"][0]["steps"]) == 15  # the per-step statistics stay complete


@pytest.mark.parametrize(
    ("args", "selected"),
    [
        ([], list(range(15))),
        (["--steps", "all"], list(range(15))),
        (["--steps", ":4"], [0, 1, 2, 3, 4]),
        (["--steps", "12:"], [12, 13, 14]),
        (["--step", "6"], [0, 1, 2, 3, 4, 5, 6]),
    ],
)
def test_selected_steps(runner: CliRunner, args: list[str], selected: list[int]) -> None:
    doc = json.loads(_inspect(runner, *args, "--format", "json")[1])
    assert doc["selected_steps"] == selected and doc["shown_step"] == selected[-1]


def test_json_trend_over_the_whole_run(runner: CliRunner) -> None:
    doc = json.loads(_inspect(runner, "--format", "json")[1])
    weight = doc["params"][0]["history"]
    assert weight["trend"] == "up" and weight["trend_decades"] > 10
    assert weight["state"][11:] == ["nonfinite"] * 4 and weight["log10_grad_norm"][11:] == [None] * 4


def test_json_is_the_same_for_every_view(runner: CliRunner) -> None:
    table = _inspect(runner, "--format", "json", "--view", "table")
    depth = _inspect(runner, "--format", "json", "--view", "depth")
    assert table == depth


def test_findings_outside_the_range_are_marked(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = _inspect(runner, "--steps", ":5")
    assert 1 == code
    lines = out.splitlines()
    assert "step 5 (15 recorded steps)" in lines[0]
    nonfinite = [line for line in lines if line.startswith(" ERROR nonfinite ")]
    assert nonfinite and all("steps 11-14, outside" in line for line in nonfinite)
    update = [line for line in lines if "update-ratio-high" in line and "median" in line]
    assert update and not any("outside" in line for line in update)  # steps 0-10 meet 0-5


def test_no_finding_is_outside_without_a_range(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert "outside" not in _inspect(runner)[1]


def test_depth_view_on_the_command_line(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = _inspect(runner, "--view", "depth", "--step", "9")
    assert 1 == code
    assert "step 9: mean, max |g| per layer" in out.splitlines()[0]
    assert sum("ERROR exploding" in line for line in out.splitlines()) == 3
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.parametrize(
    "run", ["healthy_mlp", "healthy_gru", "vanishing_sigmoid", "exploding_nan", "dead_relu"]
)
def test_inspect_table_fits_80_columns(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, run: str) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(cli, ["inspect", f"sample_runs/{run}"])
    table = result.stdout.split("\n\n")[0].splitlines()
    assert max(len(line) for line in table) <= 80
    assert "‖g‖ history" in table[2]
