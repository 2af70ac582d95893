"""`gradcheck diff`: a deliberately changed layer is flagged, a run against itself is not.

Golden file: tests/golden/diff/healthy_vs_faster.txt is the table of
`COLUMNS=100 gradcheck diff sample_runs/healthy_mlp sample_runs/faster_layer_mlp --no-color` run from the
repository root; regenerate it with exactly that command redirected into the file.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck.analysis.diff import compare_runs, diff_runs
from gradcheck.analysis.errors import RunError
from gradcheck.cli.main import cli
from gradcheck.recording import save_snapshot

GOLDEN = Path(__file__).resolve().parent / "golden" / "diff"


def _diff_json(runner: CliRunner, a: Path, b: Path, *options: str) -> tuple[int, dict]:
    result = runner.invoke(cli, ["diff", str(a), str(b), "--format", "json", *options])
    return result.exit_code, json.loads(result.stdout)


def test_changed_layer_is_flagged_and_only_it(runner: CliRunner, sample_runs: Path) -> None:
    # faster_layer_mlp trains layer 2 at 30x the learning rate: its gradient norm ends up ~18x smaller
    # (median over the 7 steps), while layers 0 and 4 move only ~2x (sample_runs/README.md).
    code, doc = _diff_json(runner, sample_runs / "healthy_mlp", sample_runs / "faster_layer_mlp")
    assert 1 == code
    assert doc["changed"] == ["2"]
    by_layer = {layer["layer"]: layer for layer in doc["layers"]}
    assert by_layer["2"]["flags"] == ["grad-norm"]
    assert by_layer["2"]["grad_norm_log10_ratio"]["median"] < -1
    for neighbour in ("0", "4"):
        assert by_layer[neighbour]["status"] == "ok"
        assert abs(by_layer[neighbour]["grad_norm_log10_ratio"]["median"]) < 0.5
    # same init and first batch: step 0 gradients are equal, Adam's first step is 30x larger in layer 2
    assert by_layer["2"]["update_ratio_log10_diff"]["worst_step"] == 0
    np.testing.assert_allclose(by_layer["2"]["update_ratio_log10_diff"]["worst"], math.log10(30), atol=0.01)
    assert doc["steps"] == [0, 60, 120, 180, 240, 300, 360]


def test_run_against_itself_flags_nothing(runner: CliRunner, sample_runs: Path) -> None:
    code, doc = _diff_json(runner, sample_runs / "healthy_mlp", sample_runs / "healthy_mlp")
    assert 0 == code
    assert doc["changed"] == []
    assert all(layer["grad_norm_log10_ratio"]["median"] == 0.0 for layer in doc["layers"])


def test_run_against_a_copy_flags_nothing(runner: CliRunner, sample_runs: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(sample_runs / "faster_layer_mlp", copy)
    result = runner.invoke(cli, ["diff", str(sample_runs / "faster_layer_mlp"), str(copy)])
    assert 0 == result.exit_code
    assert result.stdout.strip().splitlines()[-1].startswith("✓ no layer moved more than")


def test_factor_decides_what_is_flagged(runner: CliRunner, sample_runs: Path) -> None:
    a, b = sample_runs / "healthy_mlp", sample_runs / "faster_layer_mlp"
    assert _diff_json(runner, a, b, "--factor", "100")[0] == 0
    code, doc = _diff_json(runner, a, b, "--factor", "1.5", "--update-factor", "1.5")
    assert 1 == code and doc["changed"] == ["0", "2", "4"]


def test_table_matches_golden(runner: CliRunner, sample_runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.chdir(sample_runs.parent)
    result = runner.invoke(
        cli, ["diff", "sample_runs/healthy_mlp", "sample_runs/faster_layer_mlp", "--no-color"]
    )
    assert 1 == result.exit_code
    assert result.stdout == (GOLDEN / "healthy_vs_faster.txt").read_text()


def _write_run(root: Path, steps: list[int], layers: dict[str, float]) -> Path:
    rng = np.random.default_rng(0)
    for step in steps:
        grads = {f"{name}.weight": scale * rng.standard_normal((4, 4)) for name, scale in layers.items()}
        params = {name: rng.standard_normal((4, 4)) for name in grads}
        updates = {name: 1e-3 * value for name, value in params.items()}
        save_snapshot(root, step, grads=grads, params=params, updates=updates)
    return root


def test_added_and_removed_layers_are_listed_not_flagged(runner: CliRunner, tmp_path: Path) -> None:
    a = _write_run(tmp_path / "a", [0, 10], {"enc": 1.0, "old": 1.0})
    b = _write_run(tmp_path / "b", [0, 10], {"enc": 1.0, "new": 1.0})
    code, doc = _diff_json(runner, a, b)
    assert 0 == code
    assert [(layer["layer"], layer["status"]) for layer in doc["layers"]] == [
        ("enc", "ok"),
        ("old", "removed"),
        ("new", "added"),
    ]


def test_only_matching_steps_are_compared(tmp_path: Path) -> None:
    a = _write_run(tmp_path / "a", [0, 10, 20], {"enc": 1.0})
    b = _write_run(tmp_path / "b", [10, 20, 30], {"enc": 1000.0})
    result = diff_runs(a, b)
    assert result.steps == (10, 20)
    (layer,) = result.layers
    assert layer.flags == ("grad-norm",)
    assert layer.grad_norm is not None and layer.grad_norm.steps == 2


def test_zero_gradient_on_one_side_is_an_infinite_move(tmp_path: Path) -> None:
    a = _write_run(tmp_path / "a", [0], {"enc": 1.0})
    b = _write_run(tmp_path / "b", [0], {"enc": 0.0})
    (layer,) = diff_runs(a, b).layers
    assert layer.grad_norm is not None and layer.grad_norm.median == -math.inf
    assert layer.flags == ("grad-norm",)
    same = diff_runs(b, b).layers[0]
    assert same.grad_norm is not None and same.grad_norm.median == 0.0 and not same.flags


def test_no_matching_steps_is_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    a = _write_run(tmp_path / "a", [0, 10], {"enc": 1.0})
    b = _write_run(tmp_path / "b", [5, 15], {"enc": 1.0})
    result = runner.invoke(cli, ["diff", str(a), str(b)])
    assert 2 == result.exit_code
    assert "no recorded step in common" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    with pytest.raises(RunError):
        compare_runs(diff_runs(a, a).run_a, diff_runs(b, b).run_a, factor=10, update_factor=10)


def test_missing_run_is_exit_2(runner: CliRunner, sample_runs: Path, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["diff", str(sample_runs / "healthy_mlp"), str(tmp_path / "nope")])
    assert 2 == result.exit_code
    assert result.stderr.startswith("gradcheck: error: ") and "no such directory" in result.stderr


def test_factor_must_exceed_one(runner: CliRunner, sample_runs: Path) -> None:
    run = str(sample_runs / "healthy_mlp")
    result = runner.invoke(cli, ["diff", run, run, "--factor", "1"])
    assert 2 == result.exit_code
