"""Baseline files stand in for a run in `gradcheck diff` (issue #12): a few KB instead of the run, the same verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck.analysis.baseline import load_baseline
from gradcheck.analysis.diff import diff_runs, measure
from gradcheck.analysis.errors import RunError
from gradcheck.analysis.runs import load_run
from gradcheck.cli.diff import _sides
from gradcheck.cli.main import cli
from gradcheck.recording.writer import save_snapshot

GPT2_BLOCK = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
              "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
              "mlp.c_proj.weight", "mlp.c_proj.bias")  # fmt: skip
# 53 parameters, as the GPT-like run of the issue: embeddings, 4 blocks of 12, the final norm and a head
NAMES = ("transformer.wte.weight", "transformer.wpe.weight",
         *(f"transformer.h.{i}.{n}" for i in range(4) for n in GPT2_BLOCK),
         "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight")  # fmt: skip


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("baseline") / "gpt"
    rng = np.random.default_rng(0)
    params = {n: rng.normal(0, 0.02, (8, 8)).astype(np.float32) for n in NAMES}
    for step in range(30):
        grads = {n: rng.normal(0, 1e-3, (8, 8)).astype(np.float32) for n in NAMES}
        updates = {n: -1e-3 * g for n, g in grads.items()}
        save_snapshot(run, step, grads=grads, params=params, updates=updates)
        params = {n: params[n] + updates[n] for n in NAMES}
    return run


def test_baseline_of_53_params_30_steps_is_under_100_kb(
    runner: CliRunner, big_run: Path, tmp_path: Path
) -> None:
    assert len(NAMES) == 53
    out = tmp_path / "base.json"
    result = runner.invoke(cli, ["baseline", str(big_run), "-o", str(out)])
    assert 0 == result.exit_code, result.output
    size = out.stat().st_size
    assert size < 100_000, size
    doc = json.loads(out.read_text())
    assert doc["gradcheck_baseline"] == 1 and len(doc["steps"]) == 30 and len(doc["layers"]) == 28


def test_baseline_gives_the_same_diff_as_the_run(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.json"
    runner.invoke(cli, ["baseline", str(sample_runs / "healthy_mlp"), "-o", str(base)])
    from_run = diff_runs(sample_runs / "healthy_mlp", sample_runs / "faster_layer_mlp")
    from_file = diff_runs(load_baseline(base), sample_runs / "faster_layer_mlp")
    assert from_file.layers == from_run.layers  # bit for bit: the file keeps every float exactly
    result = runner.invoke(cli, ["diff", str(base), str(sample_runs / "faster_layer_mlp")])
    assert 1 == result.exit_code and "changed grad-norm" in result.stdout
    same = runner.invoke(cli, ["diff", str(sample_runs / "healthy_mlp"), str(base)])
    assert 0 == same.exit_code


def test_inspect_json_stands_in_too(runner: CliRunner, sample_runs: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    runner.invoke(
        cli, ["inspect", str(sample_runs / "healthy_mlp"), "--format", "json", "--output", str(report)]
    )
    from_run = diff_runs(sample_runs / "healthy_mlp", sample_runs / "faster_layer_mlp")
    from_json = diff_runs(load_baseline(report), sample_runs / "faster_layer_mlp")
    assert [layer.flags for layer in from_json.layers] == [layer.flags for layer in from_run.layers]
    for a, b in zip(from_json.layers, from_run.layers, strict=True):
        assert a.grad_norm.median == pytest.approx(b.grad_norm.median, abs=1e-9)
        assert a.update_ratio.median == pytest.approx(b.update_ratio.median, abs=1e-6)


def test_all_zero_gradient_survives_the_round_trip(tmp_path: Path) -> None:
    run = tmp_path / "zero"
    for step in (0, 1):
        save_snapshot(run, step, grads={"fc.weight": np.zeros((2, 2), np.float32)},
                      params={"fc.weight": np.ones((2, 2), np.float32)})  # fmt: skip
    runner = CliRunner()
    runner.invoke(cli, ["baseline", str(run), "-o", str(tmp_path / "b.json")])
    assert load_baseline(tmp_path / "b.json").norms == measure(load_run(run)).norms  # -inf kept as "-inf"


@pytest.mark.parametrize(
    ("content", "message"),
    [("not json", "not a JSON baseline file"), ('{"a": 1}', "neither a gradcheck baseline file"),
     (('{"gradcheck_baseline": 1, "steps": [0], "layers": ["x"], "grad_norm_log10": {"x": [1, 2]}, '
      '"update_ratio_log10": {}}'), "malformed baseline file"),
     # found by tests/adversarial/test_property_bad_inputs.py: both were exit 3 (internal error)
     ('{"gradcheck_baseline": 1, "steps": [1e400], "layers": {}}', "malformed baseline file (OverflowError"),
     ("[" * 100_000, "not a JSON baseline file (nested too deeply)")],
)  # fmt: skip
def test_bad_baseline_is_exit_2_with_one_line(
    runner: CliRunner, tmp_path: Path, sample_runs: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = runner.invoke(cli, ["diff", str(bad), str(sample_runs / "healthy_mlp")])
    assert 2 == result.exit_code and message in result.stderr and result.stderr.count("\n") == 1
    with pytest.raises(RunError):
        load_baseline(bad)


def test_a_baseline_is_read_as_a_capped_regular_file(
    runner: CliRunner, tmp_path: Path, sample_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #13 class 5 for the new input: a file over the cap is refused, not loaded whole into memory."""
    import gradcheck.analysis.baseline as baseline_module

    big = tmp_path / "big.json"
    big.write_text('{"x": "' + "y" * 4096 + '"}')
    monkeypatch.setattr(baseline_module, "MAX_BASELINE_BYTES", 1024)
    result = runner.invoke(cli, ["diff", str(big), str(sample_runs / "healthy_mlp")])
    assert 2 == result.exit_code
    assert result.stderr == f"gradcheck: error: {big}: cannot read the baseline file (is larger than 0 MiB)\n"


@pytest.mark.parametrize("width", [60, 80, 200])
def test_diff_title_with_a_baseline_uses_the_room_the_short_side_leaves(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    """The title gave each side half the width: `base.json (ba… of healthy_mlp)` at 80 columns, 30 unused."""
    monkeypatch.chdir(sample_runs)
    runner.invoke(cli, ["baseline", "healthy_mlp", "-o", str(tmp_path / "base.json")])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "healthy_mlp").symlink_to(sample_runs / "healthy_mlp")
    result = runner.invoke(cli, ["diff", "base.json", "healthy_mlp"], env={"COLUMNS": str(width)})
    title = result.stdout.splitlines()[0]
    assert len(title) <= width
    if width >= 80:
        assert title.startswith("base.json (baseline of healthy_mlp) → ")
    assert _sides("a" * 50, "b" * 5, 40) == ("a" * 17 + "…" + "a" * 17, "b" * 5)
    assert _sides("a" * 5, "b" * 50, 40) == ("a" * 5, "b" * 17 + "…" + "b" * 17)
    assert _sides("a" * 50, "b" * 50, 40) == ("a" * 10 + "…" + "a" * 9, "b" * 10 + "…" + "b" * 9)
