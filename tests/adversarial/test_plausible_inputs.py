"""Class 2: input a careless user or a real training run produces ends in a clear line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import good_summary, healthy_run, no_traceback, summary_file
from json_rows import per_step
from runs_builder import write_step

from gradcheck.analysis import scanning
from gradcheck.analysis.reader import scan_file
from gradcheck.analysis.scanning import ScanOptions, scan_files
from gradcheck.cli.main import cli


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sq_sum": -1.0}, "'sq_sum' is -1.0, not a number >= 0"),
        ({"nan": 9}, "nan + inf + zeros exceed count"),
        ({"abs_sum": "nan"}, "'abs_sum' is 'nan', not a number >= 0"),
        ({"count": 10**30, "shape": [10**30]}, "is a 100-bit integer, not an integer from 0 to 2^63-1"),
    ],
)
def test_an_impossible_summary_makes_that_file_unreadable_not_the_run(
    tmp_path: Path, change: dict, problem: str
) -> None:
    summary_file(tmp_path / "grads_1.safetensors", 1, {"grad/w": good_summary()})
    summary_file(tmp_path / "grads_2.safetensors", 2, {"grad/w": good_summary(**change)})
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    (note,) = json.loads(result.stdout)["unreadable"]
    assert note["file"].endswith("grads_2.safetensors") and problem in note["reason"]
    assert no_traceback(result.stderr)


def test_an_update_ratio_that_underflows_is_its_log_not_a_crash(tmp_path: Path) -> None:
    values = {"w": np.full((4, 4), 1e200)}
    write_step(
        tmp_path,
        0,
        {"grad": {"w": np.full((4, 4), 1.0)}, "param": values, "update": {"w": np.full((4, 4), 1e-200)}},
    )
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"])
    assert result.exit_code in (0, 1) and no_traceback(result.stderr)
    row = per_step(json.loads(result.stdout))["params"][0]["steps"][0]
    assert row["update_ratio"] == pytest.approx(-400.0)


@pytest.mark.parametrize("view", ["table", "depth"])
def test_f64_values_near_the_float64_limit_are_shown(tmp_path: Path, view: str) -> None:
    for step in range(2):
        write_step(tmp_path, step, {"grad": {"a": np.full(8, 1.7e308), "b": np.full(8, 1e-300)}})
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--view", view])
    assert result.exit_code in (0, 1) and no_traceback(result.stderr), result.stderr


def test_a_latin1_pyproject_in_a_parent_folder_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_bytes(
        '[tool.gradcheck]\n# café\nfail-on = "error"\n'.encode("latin-1")
    )
    run = healthy_run(tmp_path / "work" / "run")
    monkeypatch.chdir(tmp_path / "work")
    result = CliRunner().invoke(cli, ["inspect", str(run)])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == f"gradcheck: error: {tmp_path / 'pyproject.toml'}: not valid TOML (not UTF-8 text: byte 22)"
    )


@pytest.mark.parametrize("digits", [400, 5000])
def test_a_huge_integer_threshold_is_a_config_error(tmp_path: Path, digits: int) -> None:
    config = tmp_path / "gradcheck.toml"
    config.write_text(f"[thresholds]\nvanishing-mean = {'1' * digits}\n")
    run = healthy_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["inspect", str(run), "--config", str(config)])
    assert result.exit_code == 2 and no_traceback(result.stderr)
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"gradcheck: error: {config}:") and len(line) < 300
    option = CliRunner().invoke(cli, ["inspect", str(run), "-t", f"growth-window={'1' * 400}"])
    assert option.exit_code == 2 and "is not a finite number" in option.stderr and len(option.stderr) < 300


def _shell(
    command: str, env: dict[str, str] | None = None, encoding: str = "utf-8"
) -> subprocess.CompletedProcess[str]:
    entry = f"{sys.executable} -c 'from gradcheck.cli.main import cli; cli()'"
    return subprocess.run(
        ["bash", "-c", command.replace("GRADCHECK", entry)],
        capture_output=True,
        encoding=encoding,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_a_non_utf8_stdout_encoding_prints_escapes(tmp_path: Path) -> None:
    run = healthy_run(tmp_path / "run")
    result = _shell(f"GRADCHECK inspect {run}", {"PYTHONIOENCODING": "cp1252"}, encoding="cp1252")
    assert result.returncode == 0 and no_traceback(result.stderr), result.stderr
    assert "\\u2016g\\u2016" in result.stdout  # ‖g‖, which cp1252 lacks


def test_a_closed_stdout_keeps_the_verdict(tmp_path: Path) -> None:
    run = healthy_run(tmp_path / "run")
    result = _shell(f"GRADCHECK inspect {run} >&-")
    assert result.returncode == 0 and result.stderr == ""


def test_a_full_stdout_is_exit_2_with_one_line(tmp_path: Path) -> None:
    run = healthy_run(tmp_path / "run")
    result = _shell(f"GRADCHECK inspect {run} > /dev/full")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "gradcheck: error: cannot write to standard output: No space left on device"
    )


class _BrokenPool:
    """A process pool whose workers have all been killed."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def submit(self, *args: object, **kwargs: object) -> object:
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    def shutdown(self, *args: object, **kwargs: object) -> None:
        pass


def test_a_killed_scan_worker_does_not_end_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for step in range(2):
        write_step(tmp_path, step, {"grad": {"w": np.random.default_rng(step).standard_normal(1 << 16)}})
    paths = sorted(str(p) for p in tmp_path.iterdir())
    monkeypatch.setattr(scanning, "ProcessPoolExecutor", _BrokenPool)
    monkeypatch.setattr(scanning, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(scanning, "POOL_MIN_FILE_BYTES", 0)
    results = dict(scan_files(paths, ScanOptions(jobs=2)))
    assert all(results[path] == scan_file(path) for path in paths)
