"""`gradcheck config`: every setting with its source (defaults, a file in a parent folder, --config, flags),
and the warnings for a misspelt [tool.*] table and override globs that match no parameter."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gradcheck.analysis.config_report import one_edit_away
from gradcheck.cli.main import cli

PYPROJECT = """\
[tool.gradcheck]
fail-on = "warning"
[tool.gradcheck.thresholds]
spike-factor = 50
[[tool.gradcheck.overrides]]
params = ["*.bias", "nothing.*"]
ignore = ["dead"]
"""


def _rows(out: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in out.splitlines()[2:]:
        key, value, source = (
            line.split(None, 2) if not line.strip().startswith("overrides") else (line, "", "")
        )
        rows[key] = (value, source.strip())
    return rows


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/pyproject.toml with [tool.gradcheck]; tmp/a/pyproject.toml with a misspelt table; cwd tmp/a/b."""
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.gradchek]\nfail-on = "never"\n'
    )
    monkeypatch.chdir(tmp_path / "a" / "b")
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def test_file_in_a_parent_folder(runner: CliRunner, tree: Path) -> None:
    result = runner.invoke(cli, ["config"])
    assert 0 == result.exit_code
    where = str(tree / "pyproject.toml")
    assert result.stdout.splitlines()[0] == f"config file: {where}"
    rows = _rows(result.stdout)
    assert rows["fail-on"] == ("warning", where)
    assert rows["thresholds.spike-factor"] == ("50", where)
    assert rows["thresholds.growth-factor"] == ("2", "default")
    assert "[tool.gradchek] is ignored; did you mean [tool.gradcheck]?" in result.stderr
    assert str(tree / "a" / "pyproject.toml") in result.stderr


def test_command_line_beats_the_file(runner: CliRunner, tree: Path) -> None:
    args = ["config", "-t", "spike-factor=20", "--fail-on", "error", "--ignore", "shrink"]
    rows = _rows(runner.invoke(cli, args).stdout)
    assert rows["thresholds.spike-factor"] == ("20", "--threshold")
    assert rows["fail-on"] == ("error", "--fail-on")
    assert rows["ignore"] == ("shrink", "--ignore")


def test_explicit_config_file_replaces_the_search(runner: CliRunner, tree: Path) -> None:
    own = tree / "own.toml"
    own.write_text("[thresholds]\nexploding-mean = 1e5\n")
    result = runner.invoke(cli, ["config", "--config", str(own)])
    rows = _rows(result.stdout)
    assert rows["thresholds.exploding-mean"] == ("100000", str(own))
    assert (
        rows["thresholds.spike-factor"] == ("50", "default")
        or rows["thresholds.spike-factor"][1] == "default"
    )
    assert rows["fail-on"] == ("error", "default")


def test_no_file_means_defaults(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["config"])
    assert result.stdout.splitlines()[0] == "config file: (none: defaults)"
    assert all(source == "default" for _, source in _rows(result.stdout).values())


def test_glob_matching_no_parameter_warns(runner: CliRunner, tree: Path, sample_runs: Path) -> None:
    result = runner.invoke(cli, ["config", str(sample_runs / "healthy_mlp")])
    assert 0 == result.exit_code
    assert "overrides[0] params 'nothing.*' matches no parameter of the run" in result.stderr
    assert "'*.bias'" not in result.stderr  # it matches 0.bias, 2.bias, 4.bias
    inspected = runner.invoke(cli, ["inspect", str(sample_runs / "healthy_mlp")])
    assert "'nothing.*' matches no parameter" in inspected.stderr  # inspect warns too


def test_bad_config_is_exit_2(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.gradcheck]\nfail-on = 3\n")
    result = runner.invoke(cli, ["config"])
    assert 2 == result.exit_code and result.stderr.startswith("gradcheck: error: ")


@pytest.mark.parametrize(
    ("name", "near"),
    [("gradchek", True), ("gradchecks", True), ("grdacheck", True), ("gradcheck", False), ("ruff", False),
     ("gradcheckers", False), ("Gradcheck", True)],
)  # fmt: skip
def test_one_edit_away(name: str, near: bool) -> None:
    assert one_edit_away(name, "gradcheck") is near
