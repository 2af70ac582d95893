"""Class 6: no name can become a GitHub workflow command, in any format, width or stream."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runs_builder import write_step
from st_files import entry, file_bytes

from gradcheck.cli.console import printable
from gradcheck.cli.main import cli

HOSTILE = [
    "::error::boom",
    "x" * 90 + "::error file=a.py,line=1::wrapped",
    "a##[error]b",
    " ::warning::leading space",
    "\u2003::notice::em space",
    "::add-mask::secret",
    "::stop-commands::token",
]
# Our own annotations are the only lines that may start with `::`
OURS = re.compile(r"^::(error|warning) title=gradcheck")


def _hostile_run(root: Path) -> Path:
    for step in range(3):
        grads = {name: np.full(4, 1e-12, np.float32) for name in HOSTILE}
        grads["ok.w"] = np.ones(4, np.float32)
        write_step(root, step, {"grad": grads, "param": {n: np.ones(4, np.float32) for n in grads}})
    # an unreadable file whose tensor name is hostile: the warning on stderr quotes it
    (root / "grads_9.safetensors").write_bytes(
        file_bytes({"::error::x##[y": entry("F99", [1], 0, 4)}, bytes(4))
    )
    return root


def _check(text: str) -> None:
    for line in text.splitlines():
        assert not line.lstrip().startswith("::") or OURS.match(line), line
        assert "##[" not in line, line


@pytest.mark.parametrize("output_format", ["table", "json", "github", "markdown", "junit"])
@pytest.mark.parametrize("columns", ["40", "60", "80", "140", "200"])
def test_no_output_line_is_a_workflow_command(tmp_path: Path, output_format: str, columns: str) -> None:
    run = _hostile_run(tmp_path / "a run ::error::title ##[x]")
    result = CliRunner().invoke(
        cli, ["inspect", str(run), "--format", output_format], env={"COLUMNS": columns}
    )
    assert result.exit_code == 1, result.stderr
    _check(result.stdout)
    _check(result.stderr)
    if output_format == "github":
        assert sum(bool(OURS.match(line)) for line in result.stdout.splitlines()) >= len(HOSTILE)


@pytest.mark.parametrize(
    "arguments",
    [["--view", "depth"], ["--steps", "all"]],
)
def test_other_views_are_defused_too(tmp_path: Path, arguments: list[str]) -> None:
    run = _hostile_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["inspect", str(run), *arguments], env={"COLUMNS": "60"})
    _check(result.stdout)
    _check(result.stderr)


@pytest.mark.parametrize("command", [["heatmap"], ["diff"], ["watch", "--timeout", "0"]])
def test_every_command_is_defused(tmp_path: Path, command: list[str]) -> None:
    run = _hostile_run(tmp_path / "run")
    arguments = [command[0], str(run), *([str(run)] if command[0] == "diff" else []), *command[1:]]
    result = CliRunner().invoke(cli, arguments, env={"COLUMNS": "50"})
    assert "Traceback" not in result.stderr
    _check(result.stdout)
    _check(result.stderr)


def test_the_escape_is_visible_and_reversible() -> None:
    assert printable("a::b") == "a:\\x3ab"
    assert printable("x##[y") == "x#\\x23[y"
    assert printable("plain.name") == "plain.name"
