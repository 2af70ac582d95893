"""A pipe whose reader went away (`gradcheck inspect RUN | head -1`): exit 141 without a word, never 0/1/2.

The pipe's read end is closed before gradcheck starts, so every write fails with EPIPE: no race with `head`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runs_builder import write_step

ENTRY = [sys.executable, "-c", "from gradcheck.cli.main import cli; cli()"]


def _run(root: Path, nan: bool) -> Path:
    """Three steps of one healthy 4x4 weight, or (`nan`) one whose gradient holds a NaN: an error finding."""
    for step in (0, 10, 20):
        grad = np.linspace(0.01, 0.02, 16, dtype=np.float32).reshape(4, 4)
        grad[0, 0] = np.nan if nan else grad[0, 0]
        kinds = {"grad": {"w": grad}, "param": {"w": np.full_like(grad, 0.5)}, "update": {"w": grad * 1e-3}}
        write_step(root, step, kinds, order=["w"])
    return root


def closed_pipe(*args: str, both: bool = False) -> subprocess.CompletedProcess[str]:
    """Run gradcheck with stdout (and stderr too if `both`) on a pipe nobody reads any more."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [*ENTRY, *args],
            stdout=write,
            stderr=write if both else subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("nan", [False, True], ids=["healthy", "findings"])
@pytest.mark.parametrize("output_format", ["table", "json", "github"])
def test_a_closed_pipe_is_141_and_silent_whatever_the_verdict(
    tmp_path: Path, nan: bool, output_format: str
) -> None:
    run = _run(tmp_path / "run", nan)
    result = closed_pipe("inspect", str(run), "--format", output_format)
    assert result.returncode == 141 and result.stderr == ""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["help", "checks"], ["inspect", "--help"]])
def test_help_into_a_closed_pipe_is_141_not_1(args: list[str]) -> None:
    result = closed_pipe(*args)
    assert result.returncode == 141 and result.stderr == ""


def test_stderr_on_the_same_closed_pipe_is_141(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", nan=True)
    assert closed_pipe("inspect", str(run), both=True).returncode == 141


def test_an_open_pipe_still_gets_the_verdict(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", nan=True)
    result = subprocess.run([*ENTRY, "inspect", str(run)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "nonfinite" in result.stdout
