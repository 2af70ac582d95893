"""The reading options of `gradcheck inspect`: --jobs, the stats cache and --no-cache, --quiet."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from json_rows import per_step
from runs_builder import write_step

from gradcheck.analysis import scanning
from gradcheck.cli.main import cli


def cache_entries() -> list[Path]:
    return sorted(Path(os.environ["GRADCHECK_CACHE_DIR"]).glob("*.*"))


def inspect_json(runner: CliRunner, run: Path, *options: str, code: int = 0) -> dict:
    result = runner.invoke(cli, ["inspect", str(run), "--format", "json", *options])
    assert result.exit_code == code, result.stderr
    return per_step(json.loads(result.stdout))


def test_inspect_fills_the_cache_and_no_cache_leaves_it_alone(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(sample_runs / "healthy_mlp", run)
    files = sorted(run.glob("*.safetensors"))
    inspect_json(runner, run, "--no-cache")
    assert cache_entries() == []
    first = inspect_json(runner, run)
    (index,) = cache_entries()  # one index for the whole run
    assert index.suffix == ".run" and len(files) > 1
    assert inspect_json(runner, run) == first


def test_a_cached_run_is_not_read_again(
    runner: CliRunner, sample_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = sample_runs / "healthy_mlp"
    first = inspect_json(runner, run)

    def no_reading(*args: object, **kwargs: object) -> object:
        raise AssertionError("read a file the cache holds")

    monkeypatch.setattr(scanning, "scan_file", no_reading)
    assert inspect_json(runner, run) == first
    result = runner.invoke(cli, ["inspect", str(run), "--no-cache"], catch_exceptions=False)
    assert result.exit_code == 3  # the crash of no_reading, reported as an internal error
    assert "AssertionError: read a file the cache holds" in result.output


def test_a_rewritten_file_is_read_again(runner: CliRunner, tmp_path: Path) -> None:
    weights = np.full((4, 4), 1e-3, np.float32)
    write_step(tmp_path, 0, {"grad": {"w": weights}, "param": {"w": weights}})
    inspect_json(runner, tmp_path)
    write_step(tmp_path, 0, {"grad": {"w": weights * 0}, "param": {"w": weights}})
    (param,) = inspect_json(runner, tmp_path)["params"]
    assert param["steps"][0]["grad"]["max_abs"] == 0


def test_jobs_gives_the_same_document(
    runner: CliRunner, sample_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanning, "PARALLEL_MIN_BYTES", 0)  # worker processes even for a small run
    monkeypatch.setattr(scanning, "POOL_MIN_FILE_BYTES", 0)
    run = sample_runs / "exploding_nan"
    parallel = inspect_json(runner, run, "--jobs", "2", "--no-cache", code=1)
    assert parallel == inspect_json(runner, run, "--jobs", "1", "--no-cache", code=1)
    assert parallel["findings"]


def test_jobs_must_be_positive(runner: CliRunner, sample_runs: Path) -> None:
    result = runner.invoke(cli, ["inspect", str(sample_runs / "healthy_mlp"), "--jobs", "0"])
    assert result.exit_code == 2
    assert "--jobs" in result.stderr


def test_quiet_drops_notes_but_keeps_warnings(runner: CliRunner, tmp_path: Path) -> None:
    write_step(tmp_path, 0, {"grad": {"w": np.ones(3, np.float32), "ids": np.arange(3)}})
    (tmp_path / "step_00000001.safetensors").write_bytes(b"not a safetensors file")
    loud = runner.invoke(cli, ["inspect", str(tmp_path)])
    quiet = runner.invoke(cli, ["inspect", str(tmp_path), "--quiet"])
    assert "note:" in loud.stderr
    assert "note:" not in quiet.stderr
    assert "warning:" in quiet.stderr
    assert quiet.exit_code == loud.exit_code == 0
