"""Class 1: a crash exits 3 with one line (never 1, the code for findings); --debug shows the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import healthy_run

from gradcheck.analysis import inspection, runs
from gradcheck.cli import diff as diff_command
from gradcheck.cli import heatmap as heatmap_command
from gradcheck.cli import watch as watch_command
from gradcheck.cli.main import cli


def _boom(*args: object, **kwargs: object) -> object:
    raise ZeroDivisionError("injected fault")


def _commands(run: Path) -> dict[str, list[str]]:
    return {
        "inspect": ["inspect", str(run)],
        "inspect-json": ["inspect", str(run), "--format", "json"],
        "heatmap": ["heatmap", str(run)],
        "diff": ["diff", str(run), str(run)],
        "watch": ["watch", str(run), "--timeout", "0", "--interval", "0.01"],
    }


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command reads through load_run: make it crash, wherever it was imported."""
    for module in (runs, inspection, diff_command, heatmap_command, watch_command):
        for name in ("load_run", "inspect_run"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _boom)
    from gradcheck.analysis import diff as diff_analysis
    from gradcheck.analysis import heatmap as heatmap_analysis

    for module in (diff_analysis, heatmap_analysis):
        for name in ("load_run", "inspect_run"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _boom)


@pytest.mark.parametrize("command", ["inspect", "inspect-json", "heatmap", "diff", "watch"])
def test_an_injected_crash_exits_3_with_one_line(tmp_path: Path, faulty: None, command: str) -> None:
    run = healthy_run(tmp_path / "run")
    result = CliRunner().invoke(cli, _commands(run)[command])
    assert result.exit_code == 3, (result.output, result.stderr)
    (line,) = result.stderr.splitlines()
    assert line.startswith("gradcheck: internal error: ZeroDivisionError: injected fault")
    assert line.endswith("(a bug; rerun as gradcheck --debug COMMAND ... for the traceback)")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("how", ["option", "option-after", "environment"])
def test_debug_shows_the_traceback_and_still_exits_3(
    tmp_path: Path, faulty: None, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = healthy_run(tmp_path / "run")
    arguments = ["inspect", str(run)]
    if how == "option":
        arguments = ["--debug", *arguments]
    elif how == "option-after":
        arguments = [*arguments, "--debug"]
    else:
        monkeypatch.setenv("GRADCHECK_DEBUG", "1")
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr and "_boom" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("gradcheck: internal error: ZeroDivisionError")


def test_without_a_fault_the_same_commands_exit_0(tmp_path: Path) -> None:
    run = healthy_run(tmp_path / "run")
    for name, arguments in _commands(run).items():
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 0, (name, result.stderr)


def test_exit_code_3_is_documented_in_every_help(tmp_path: Path) -> None:
    for arguments in (
        ["--help"],
        ["inspect", "--help"],
        ["heatmap", "--help"],
        ["diff", "--help"],
        ["watch", "--help"],
    ):
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 0 and "3" in result.output and "internal error" in result.output, arguments
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "| 3 | internal error" in readme


def test_ctrl_c_is_not_a_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(inspection, "load_run", interrupted)
    result = CliRunner().invoke(cli, ["inspect", str(healthy_run(tmp_path / "run"))])
    assert result.exit_code == 130 and result.stderr.strip() == "gradcheck: interrupted"


def test_a_real_crash_in_a_subprocess_exits_3(tmp_path: Path) -> None:
    """Through the installed entry point, not CliRunner: the exit status the shell sees."""
    run = healthy_run(tmp_path / "run")
    code = (
        "import gradcheck.analysis.inspection as i\n"
        "def boom(*a, **k): raise RuntimeError('injected')\n"
        "i.load_run = boom\n"
        "from gradcheck.cli.main import cli\n"
        f"cli(['inspect', {str(run)!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 3
    assert result.stderr.strip().startswith("gradcheck: internal error: RuntimeError: injected")
