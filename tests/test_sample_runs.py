"""Every committed sample run (real training) gets its expected verdict, and is read like numpy reads it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from json_rows import per_step
from reference import reference
from safetensors.numpy import load_file

from gradcheck.cli.main import cli

# run -> (exit code, error problems expected, parameters with an error finding)
EXPECTED = {
    "healthy_mlp": (0, set(), set()),
    "healthy_gru": (0, set(), set()),
    "bf16_mlp": (0, set(), set()),
    "plain_dumps": (0, set(), set()),
    "faster_layer_mlp": (0, set(), set()),
    "vanishing_sigmoid": (1, {"vanishing"}, None),
    "exploding_nan": (1, {"exploding", "nonfinite"}, None),
    "dead_relu": (1, {"dead"}, {"0.weight", "0.bias", "2.weight"}),
}


def inspect_json(runner: CliRunner, run: Path) -> tuple[int, dict]:
    result = runner.invoke(cli, ["inspect", str(run), "--format", "json"])
    assert result.stderr == ""
    return result.exit_code, per_step(json.loads(result.stdout))


def test_every_sample_run_has_an_expectation(sample_runs: Path) -> None:
    assert sorted(p.name for p in sample_runs.iterdir() if p.is_dir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_run_verdict(runner: CliRunner, sample_runs: Path, name: str) -> None:
    exit_code, doc = inspect_json(runner, sample_runs / name)
    expected_exit, problems, params = EXPECTED[name]
    assert exit_code == expected_exit
    errors = [f for f in doc["findings"] if f["severity"] == "error"]
    assert {f["problem"] for f in errors} == problems
    if params is not None:
        assert {f["param"] for f in errors} == params
    assert doc["unreadable"] == [] and doc["skipped"] == []


def test_vanishing_run_flags_the_early_layers_only(runner: CliRunner, sample_runs: Path) -> None:
    _, doc = inspect_json(runner, sample_runs / "vanishing_sigmoid")
    vanishing = {f["param"] for f in doc["findings"] if f["problem"] == "vanishing"}
    assert {"0.weight", "2.weight", "4.weight"} <= vanishing
    assert not vanishing & {"18.weight", "20.weight", "22.weight"}
    first = next(f for f in doc["findings"] if f["param"] == "0.weight")
    assert first["step"] == doc["steps"][0] and first["count"] == len(doc["steps"])


def test_exploding_run_first_bad_steps(runner: CliRunner, sample_runs: Path) -> None:
    _, doc = inspect_json(runner, sample_runs / "exploding_nan")
    first = {}
    for f in doc["findings"]:
        if f["severity"] == "error":
            first[f["problem"]] = min(first.get(f["problem"], f["step"]), f["step"])
    assert first["nonfinite"] == 11  # the first NaN gradient (sample_runs/README.md)
    assert first["exploding"] < first["nonfinite"]  # the explosion is seen before the NaN


def test_text_output_of_a_sample_run(runner: CliRunner, sample_runs: Path) -> None:
    result = runner.invoke(cli, ["inspect", str(sample_runs / "dead_relu")])
    assert result.exit_code == 1
    assert "dead" in result.stdout and "0.weight" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("✗ unhealthy: dead in 3 parameter(s)")


def _assert_matches(doc_stats: dict, values: np.ndarray) -> None:
    expected = reference(values)
    assert (doc_stats["count"], doc_stats["zeros"]) == (expected.count, expected.zeros)
    for key in ("min_abs", "mean_abs", "max_abs", "norm"):
        np.testing.assert_allclose(doc_stats[key], getattr(expected, key), rtol=1e-12, err_msg=key)


def test_plain_dumps_are_read_like_numpy_reads_them(runner: CliRunner, sample_runs: Path) -> None:
    run = sample_runs / "plain_dumps"
    _, doc = inspect_json(runner, run)
    assert doc["steps"] == [0, 50, 100, 150, 200, 250, 300]
    # no order metadata: natural sort of the names (docs/FORMAT.md)
    assert [p["name"] for p in doc["params"]] == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for param in doc["params"]:
        for row in param["steps"]:
            for kind, prefix in (("grad", "grads"), ("param", "params"), ("update", "updates")):
                values = load_file(run / f"{prefix}_{row['step']}.safetensors")[param["name"]]
                _assert_matches(row[kind], values.astype(np.float32))


def _bf16_tensors(path: Path) -> dict[str, np.ndarray]:
    """BF16 tensors as float32, decoded independently of gradcheck: bf16 is the top half of a float32."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        assert entry["dtype"] == "BF16"
        begin, end = entry["data_offsets"]
        bits = np.frombuffer(raw[8 + length + begin : 8 + length + end], dtype="<u2")
        out[name] = (bits.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])
    return out


def test_bf16_run_is_read_like_numpy_reads_it(runner: CliRunner, sample_runs: Path) -> None:
    run = sample_runs / "bf16_mlp"
    _, doc = inspect_json(runner, run)
    assert {p["dtype"] for p in doc["params"]} == {"BF16"}
    for step in doc["steps"]:
        tensors = _bf16_tensors(run / f"step_{step:08d}.safetensors")
        for param in doc["params"]:
            row = next(r for r in param["steps"] if r["step"] == step)
            for kind in ("grad", "param", "update"):
                _assert_matches(row[kind], tensors[f"{kind}/{param['name']}"])


def test_readme_example_is_real_output(
    runner: CliRunner, sample_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (sample_runs.parent / "README.md").read_text()
    start = readme.index("```text\nsample_runs/dead_relu") + len("```text\n")
    shown = readme[start : readme.index("```", start)].rstrip("\n")
    monkeypatch.setenv("COLUMNS", "130")
    monkeypatch.chdir(sample_runs.parent)
    result = runner.invoke(cli, ["inspect", "sample_runs/dead_relu", "--no-color"])
    assert "\n".join(line.rstrip() for line in result.stdout.rstrip("\n").splitlines()) == shown
