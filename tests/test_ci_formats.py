"""CI dialects of `gradcheck inspect`: --format github | markdown | junit, GITHUB_STEP_SUMMARY, --output FILE.

Golden files live in tests/golden/formats/<run>.<format>; each is the exact stdout of
`gradcheck inspect <run> --format <format>` run from the directory that holds the run, so no absolute path
appears. After a deliberate change of a format, regenerate them all and review the diff:

    cd tests && python -c "import test_ci_formats as t; t.regenerate_golden()"
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from runs_builder import write_step

from gradcheck.analysis.config import PARAM_CHECK_IDS
from gradcheck.analysis.context import SCALARS_KEY
from gradcheck.cli.ci_formats import escape_data, escape_markdown, escape_property
from gradcheck.cli.console import printable
from gradcheck.cli.main import cli
from gradcheck.recording.writer import save_snapshot

GOLDEN = Path(__file__).resolve().parent / "golden" / "formats"
SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"
CI_FORMATS = ("github", "markdown", "junit")
SUFFIX = {"github": "github.txt", "markdown": "md", "junit": "xml"}
# A parameter name with every character some format must escape, and one that tries to start a new
# workflow command on a line of its own.
ODD_NAME = "attn`q|k:v,50%<b>.weight"
INJECTION_NAME = "head\n::error::x.bias"
ODD_RUN = "odd_run"
GOLDEN_RUNS = {"healthy_mlp": 0, "exploding_nan": 1, ODD_RUN: 1}
COMMAND = re.compile(
    r"^::(?P<severity>error|warning) title=gradcheck%3A (?P<problem>\S+)(?: \((?P<detail>[^)]*)\))? "
    r"in (?P<param>.+?)::(?P<message>.*) \(first at step (?P<step>\d+), (?P<count>\d+) steps?\)$"
)
UNREADABLE = re.compile(r"^::warning title=gradcheck%3A unreadable file::(?P<file>[^:]+): (?P<reason>.+)$")


def build_odd_run(root: Path) -> Path:
    """Two readable steps (a dead parameter with an odd name, a NaN one with a newline) and a broken file."""
    rng = np.random.default_rng(0)
    order = ["embed.weight", ODD_NAME, INJECTION_NAME]
    for step in (0, 1):
        grads = {
            "embed.weight": rng.normal(0, 1e-2, (4, 3)).astype(np.float32),
            ODD_NAME: np.zeros((3, 3), np.float32),
            INJECTION_NAME: np.array([np.nan, 1e-2, -1e-2], np.float32),
        }
        params = {name: rng.normal(0, 1, grad.shape).astype(np.float32) for name, grad in grads.items()}
        write_step(root / ODD_RUN, step, {"grad": grads, "param": params}, order=order)
    (root / ODD_RUN / "step_00000002.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return root / ODD_RUN


@pytest.fixture
def runs_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the odd run and links to the sample runs, so paths are relative."""
    build_odd_run(tmp_path)
    for name in GOLDEN_RUNS:
        if name != ODD_RUN:
            (tmp_path / name).symlink_to(SAMPLE_RUNS / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return tmp_path


def inspect(runner: CliRunner, *args: str) -> Result:
    """Run `gradcheck inspect` without the stats cache, so every run reads its files."""
    return runner.invoke(cli, ["inspect", *args, "--no-cache", "--quiet"])


def document(runner: CliRunner, run: str) -> dict[str, Any]:
    """The --format json document of a run: the reference the CI formats are checked against."""
    return json.loads(inspect(runner, run, "--format", "json").stdout)


@pytest.mark.parametrize("output_format", CI_FORMATS)
@pytest.mark.parametrize("run", GOLDEN_RUNS)
def test_golden(runner: CliRunner, runs_here: Path, run: str, output_format: str) -> None:
    result = inspect(runner, run, "--format", output_format)
    assert GOLDEN_RUNS[run] == result.exit_code, result.stderr
    assert (GOLDEN / f"{run}.{SUFFIX[output_format]}").read_text(encoding="utf-8") == result.stdout


@pytest.mark.parametrize("output_format", ["table", "json", *CI_FORMATS])
@pytest.mark.parametrize("run", GOLDEN_RUNS)
def test_exit_code_does_not_depend_on_the_format(
    runner: CliRunner, runs_here: Path, run: str, output_format: str
) -> None:
    assert GOLDEN_RUNS[run] == inspect(runner, run, "--format", output_format).exit_code


@pytest.mark.parametrize("run", GOLDEN_RUNS)
def test_github_lines_match_the_findings(runner: CliRunner, runs_here: Path, run: str) -> None:
    doc = document(runner, run)
    lines = inspect(runner, run, "--format", "github").stdout.splitlines()
    # errors first, then by first step (GitHub shows 10 of each kind): the report's order within a step
    findings = sorted(doc["findings"], key=lambda f: (f["severity"] != "error", f["step"]))
    unreadable = doc["unreadable"]
    assert len(lines) == len(findings) + len(unreadable) + 1
    for line, finding in zip(lines, findings, strict=False):  # lines holds more: unreadable files, verdict
        match = COMMAND.match(line)
        assert match, line
        assert match["severity"] == finding["severity"]
        assert match["problem"] == finding["problem"]
        assert (int(match["step"]), int(match["count"])) == (finding["step"], finding["count"])
    for line, note in zip(lines[len(findings) : -1], unreadable, strict=True):
        match = UNREADABLE.match(line)
        assert match and match["file"] == note["file"], line
    assert not lines[-1].startswith("::")
    assert lines[-1][0] in "✓!✗"


def test_github_escapes_names_in_titles_and_never_breaks_a_line(runner: CliRunner, runs_here: Path) -> None:
    lines = inspect(runner, ODD_RUN, "--format", "github").stdout.splitlines()
    params = [match["param"] for match in map(COMMAND.match, lines) if match]
    assert "attn`q|k%3Av%2C50%25<b>.weight" in params
    # the newline in the name is shown as the two characters \n, so no line starts a command of its own
    # and `::` in a name is printed `:\x3a` (then %3A-escaped as a property) in every format (#13)
    assert any(param.startswith("head\\n%3A\\x3aerror%3A\\x3ax.bias") for param in params)
    assert all(line.startswith(("::error title=", "::warning title=")) for line in lines[:-1])


def test_escape_rules_are_those_of_actions_toolkit() -> None:
    assert escape_data("50% done\r\nnext: a, b") == "50%25 done%0D%0Anext: a, b"
    assert escape_property("50% done\r\nnext: a, b") == "50%25 done%0D%0Anext%3A a%2C b"


def test_markdown_escapes_pipes_and_backticks() -> None:
    assert escape_markdown("a|b`c") == "a\\|b\\`c"
    assert escape_markdown("0.weight") == "0.weight"


def test_markdown_table_rows_keep_their_column_count(runner: CliRunner, runs_here: Path) -> None:
    text = inspect(runner, ODD_RUN, "--format", "markdown").stdout
    tables = [block.splitlines() for block in text.split("\n\n") if block.startswith("| ")]
    columns = [{len(re.findall(r"(?<!\\)\|", row)) - 1 for row in table} for table in tables]
    assert [{6}, {8}] == columns
    assert "attn\\`q\\|k:v,50%\\<b\\>.weight" in text


@pytest.mark.parametrize("run", GOLDEN_RUNS)
def test_junit_counts_match_the_report(runner: CliRunner, runs_here: Path, run: str) -> None:
    doc = document(runner, run)
    root = ET.fromstring(inspect(runner, run, "--format", "junit").stdout)
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    # names are shown as `printable` makes them: a newline in a name becomes the two characters \n
    failed = {(printable(f["param"]), f["check"]) for f in doc["findings"] if f["severity"] == "error"}
    expected = {
        "tests": len(doc["params"]) * len(PARAM_CHECK_IDS) + len(doc["unreadable"]),
        "failures": len(failed),
        "errors": len(doc["unreadable"]),
        "skipped": 0,
    }
    for element in (root, suite):
        assert {key: int(element.attrib[key]) for key in expected} == expected
    assert expected["tests"] == len(cases)
    assert failed == {
        (c.attrib["classname"], c.attrib["name"]) for c in cases if c.find("failure") is not None
    }
    errored = [c.attrib["name"] for c in cases if c.find("error") is not None]
    assert [note["file"] for note in doc["unreadable"]] == errored


def test_junit_warnings_pass_with_their_text_in_system_out(runner: CliRunner, runs_here: Path) -> None:
    root = ET.fromstring(inspect(runner, "exploding_nan", "--format", "junit").stdout)
    case = root.find(".//testcase[@classname='0.weight'][@name='update-ratio-high']")
    assert case is not None and case.find("failure") is None
    assert "median update ratio" in (case.findtext("system-out") or "")


def test_junit_fails_on_a_signal_finding_as_the_exit_code_does(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN loss (loss-nonfinite, an error of the signal checks, on no parameter) fails a testcase of its own."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for step, loss in enumerate([2.0, 1.5, 1.2, float("nan")]):
        grads = {"fc.weight": rng.normal(0, 1e-2, (4, 4)).astype(np.float32)}
        params = {"fc.weight": rng.normal(0, 0.1, (4, 4)).astype(np.float32)}
        scalars = {SCALARS_KEY: json.dumps({"loss": loss})}
        save_snapshot(tmp_path / "run", step, grads=grads, params=params, metadata=scalars)
    doc = json.loads(inspect(runner, "run", "--format", "json").stdout)
    assert [(f["param"], f["check"], f["severity"]) for f in doc["findings"]] == [
        ("loss", "loss-nonfinite", "error")
    ]
    result = inspect(runner, "run", "--format", "junit")
    assert result.exit_code == 1
    root = ET.fromstring(result.stdout)
    failed = [
        (c.attrib["classname"], c.attrib["name"])
        for c in root.iter("testcase")
        if c.find("failure") is not None
    ]
    assert failed == [("loss", "loss-nonfinite")]
    assert int(root.attrib["tests"]) == len(PARAM_CHECK_IDS) + 1 and root.attrib["failures"] == "1"


def test_junit_is_valid_xml_for_control_characters_in_names(runner: CliRunner, runs_here: Path) -> None:
    root = ET.fromstring(inspect(runner, ODD_RUN, "--format", "junit").stdout)
    classnames = {case.attrib["classname"] for case in root.iter("testcase")}
    assert {ODD_NAME, "head\\n:\\x3aerror:\\x3ax.bias"} <= classnames


def test_junit_with_nothing_readable_reports_each_file_as_an_error(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken").mkdir()
    for step in (0, 1):
        (tmp_path / "broken" / f"step_{step:08d}.safetensors").write_bytes(b"\x00" * 4)
    result = inspect(runner, "broken", "--format", "junit")
    assert 2 == result.exit_code
    root = ET.fromstring(result.stdout)
    assert (root.attrib["tests"], root.attrib["errors"], root.attrib["failures"]) == ("2", "2", "0")


def test_github_appends_the_markdown_summary(
    runner: CliRunner, runs_here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = runs_here / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    markdown = inspect(runner, "exploding_nan", "--format", "markdown").stdout
    for _ in range(2):
        assert 1 == inspect(runner, "exploding_nan", "--format", "github").exit_code
    assert "earlier step\n" + markdown + markdown == summary.read_text(encoding="utf-8")


def test_an_unwritable_step_summary_is_a_warning_only(
    runner: CliRunner, runs_here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(runs_here / "missing" / "summary.md"))
    result = inspect(runner, "healthy_mlp", "--format", "github")
    assert 0 == result.exit_code
    assert "step summary not written" in result.stderr


def test_other_formats_leave_the_step_summary_alone(
    runner: CliRunner, runs_here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = runs_here / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert 0 == inspect(runner, "healthy_mlp", "--format", "junit").exit_code
    assert not summary.exists()


@pytest.mark.parametrize("output_format", ["table", "json", *CI_FORMATS])
@pytest.mark.parametrize("run", ["exploding_nan", ODD_RUN])
def test_output_file_holds_what_stdout_would_have(
    runner: CliRunner, runs_here: Path, run: str, output_format: str
) -> None:
    alone = inspect(runner, run, "--format", output_format)
    table = inspect(runner, run)
    result = inspect(runner, run, "--format", output_format, "--output", "report.out")
    assert alone.exit_code == result.exit_code == table.exit_code
    assert alone.stdout == (runs_here / "report.out").read_text(encoding="utf-8")
    assert table.stdout == result.stdout
    assert "\x1b" not in (runs_here / "report.out").read_text(encoding="utf-8")


def test_output_replaces_a_file_and_leaves_no_temporary(runner: CliRunner, runs_here: Path) -> None:
    target = runs_here / "out"
    target.mkdir()
    (target / "gradcheck.xml").write_text("old", encoding="utf-8")
    assert 0 == inspect(runner, "healthy_mlp", "--format", "junit", "--output", "out/gradcheck.xml").exit_code
    assert ET.parse(target / "gradcheck.xml").getroot().tag == "testsuites"
    assert ["gradcheck.xml"] == os.listdir(target)


@pytest.mark.parametrize("target", ["missing/report.xml", "."])
def test_unwritable_output_is_exit_2_with_one_line(runner: CliRunner, runs_here: Path, target: str) -> None:
    before = sorted(os.listdir(runs_here))
    result = inspect(runner, "healthy_mlp", "--format", "junit", "--output", target)
    assert 2 == result.exit_code
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"gradcheck: error: {target}: cannot write --output file: "), line
    assert before == sorted(os.listdir(runs_here))


def regenerate_golden() -> None:
    """Rewrite every golden file from the current code (see the module docstring)."""
    import tempfile

    runner = CliRunner()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        build_odd_run(root)
        for name in GOLDEN_RUNS:
            if name != ODD_RUN:
                (root / name).symlink_to(SAMPLE_RUNS / name)
        os.chdir(root)
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for run in GOLDEN_RUNS:
            for output_format in CI_FORMATS:
                text = inspect(runner, run, "--format", output_format).stdout
                (GOLDEN / f"{run}.{SUFFIX[output_format]}").write_text(text, encoding="utf-8")
