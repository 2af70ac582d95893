"""Regenerating the sample runs reproduces the committed files exactly (slow: trains real models, needs torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SAMPLE_RUNS = Path(__file__).resolve().parents[1] / "sample_runs"
GENERATE = SAMPLE_RUNS / "generate.py"
RUNS = (
    "healthy_mlp",
    "healthy_gru",
    "vanishing_sigmoid",
    "exploding_nan",
    "dead_relu",
    "bf16_mlp",
    "plain_dumps",
    "faster_layer_mlp",
)


def _snapshot_files(run_dir: Path) -> list[str]:
    """Sorted names of the safetensors files in one run folder."""
    return sorted(path.name for path in run_dir.glob("*.safetensors"))


def _read(path: Path) -> tuple[dict[str, str] | None, dict[str, Any]]:
    """Metadata and all tensors of one file, as torch tensors (numpy has no bfloat16)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All runs regenerated once, in a fresh process, into a temporary root."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    root = tmp_path_factory.mktemp("sample_runs")
    result = subprocess.run(
        [sys.executable, str(GENERATE), str(root)], check=False, capture_output=True, text=True
    )
    assert 0 == result.returncode, result.stderr
    return root


@pytest.mark.slow
def test_no_unexpected_runs(regenerated: Path) -> None:
    """The generator writes exactly the committed set of runs."""
    written = sorted(d.name for d in regenerated.iterdir() if d.is_dir())
    committed = sorted(d.name for d in SAMPLE_RUNS.iterdir() if d.is_dir() and _snapshot_files(d))
    assert written == sorted(RUNS)
    assert committed == sorted(RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_run_regenerates_exactly(regenerated: Path, run: str) -> None:
    """Every file, metadata entry and tensor (dtype, shape and raw bytes, so NaN compares too) is unchanged."""
    import torch

    files = _snapshot_files(SAMPLE_RUNS / run)
    assert files, f"{run} has no committed snapshots"
    assert _snapshot_files(regenerated / run) == files
    for name in files:
        committed_meta, committed = _read(SAMPLE_RUNS / run / name)
        fresh_meta, fresh = _read(regenerated / run / name)
        assert fresh_meta == committed_meta, name
        assert sorted(fresh) == sorted(committed), name
        for key, expected in committed.items():
            actual = fresh[key]
            assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), f"{name}: {key}"
            same = torch.equal(actual.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))
            assert same, f"{name}: {key} differs"
