"""Class 3: no wrong number without a warning: scaled F64 sums, one version of a file replaced mid-scan."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from json_rows import per_step
from runs_builder import write_step

from gradcheck.analysis import reader, scanning
from gradcheck.analysis.errors import FileChangedError
from gradcheck.analysis.reader import scan_file
from gradcheck.analysis.scanning import ScanOptions, scan_files
from gradcheck.analysis.stats import summarize_array
from gradcheck.cli.main import cli


@pytest.mark.parametrize("value", [1e-170, 1e-300, 5e-324, 1e200, 1e308, 1.7976931348623157e308])
def test_f64_norms_and_means_are_right_where_squares_leave_float64(value: float) -> None:
    x = np.full(1000, value)
    stats = summarize_array(x)
    true_norm = value * math.sqrt(1000)  # may itself exceed float64: compare logarithms
    assert stats.log10_norm == pytest.approx(math.log10(value) + 1.5, abs=1e-12)
    assert stats.mean_abs == pytest.approx(value, rel=1e-14) and stats.rms == pytest.approx(value, rel=1e-14)
    if true_norm < 1.7e308:
        assert stats.norm == pytest.approx(true_norm, rel=1e-12)


def test_a_vanishing_f64_layer_is_not_called_healthy(tmp_path: Path) -> None:
    for step in range(3):
        grads = {"first.weight": np.full((4, 4), 1e-170), "last.weight": np.full((4, 4), 1e-2)}
        write_step(tmp_path, step, {"grad": grads})
    document = per_step(
        json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"]).stdout)
    )
    grad = document["params"][0]["steps"][-1]["grad"]
    assert grad["norm"] == pytest.approx(4e-170) and grad["mean_abs"] == pytest.approx(1e-170)
    assert any(f["check"] == "vanishing" and f["param"] == "first.weight" for f in document["findings"])


def test_huge_f64_values_keep_their_mean(tmp_path: Path) -> None:
    write_step(tmp_path, 0, {"grad": {"w": np.array([1e308, -1e308, 1e308])}})
    document = per_step(
        json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"]).stdout)
    )
    grad = document["params"][0]["steps"][-1]["grad"]
    assert grad["mean_abs"] == pytest.approx(1e308) and grad["max_abs"] == 1e308


def test_f32_sums_are_not_scaled() -> None:
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 1e30
    stats = summarize_array(x)
    assert stats.scale == 1.0 and stats.sq_sum == float(np.sum(np.abs(x).astype(np.float64) ** 2))


def _two_versions(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A run file of two segments, and a second version of it with other values (same size and header)."""
    run = tmp_path / "run"
    rng = np.random.default_rng(1)
    write_step(run, 0, {"grad": {"w": rng.standard_normal(1 << 16).astype(np.float32)}})
    (path,) = run.iterdir()
    other = tmp_path / "other.safetensors"
    write_step(tmp_path / "other", 0, {"grad": {"w": rng.standard_normal(1 << 16).astype(np.float32)}})
    shutil.move(next((tmp_path / "other").iterdir()), other)
    return run, path, other


def test_a_file_replaced_between_segments_is_read_again_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path, other = _two_versions(tmp_path)
    want = scan_file(other)
    real = reader.scan_segments
    calls = []

    def replacing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:  # after the first segment was read from the first version
            os.replace(other, path)
        return real(*args, **kwargs)

    monkeypatch.setattr(scanning, "scan_segments", replacing)
    ((_, result),) = scan_files([str(path)], ScanOptions(jobs=1, segment_bytes=1 << 17))
    assert len(calls) >= 2
    assert result.stats == want.stats  # the new version, whole: never half of each


def test_a_file_rewritten_in_place_during_a_scan_is_changed_during_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, path, other = _two_versions(tmp_path)
    real = reader._scan_fd

    def rewriting(fd: int, *args: object, **kwargs: object) -> object:
        results = real(fd, *args, **kwargs)
        path.write_bytes(other.read_bytes())  # same inode, new mtime
        return results

    monkeypatch.setattr(reader, "_scan_fd", rewriting)
    with pytest.raises(FileChangedError, match="changed during read"):
        scan_file(path)
    result = CliRunner().invoke(cli, ["inspect", str(run), "--no-cache"])
    assert result.exit_code == 2 and "changed during read" in result.stderr
