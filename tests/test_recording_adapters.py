"""The framework adapters' shared pieces, and that importing an adapter does not import its framework."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from gradcheck.analysis.context import CONTEXT_KEY, SCALARS_KEY, StepContext, parse_context, parse_scalars
from gradcheck.recording import RecordingError
from gradcheck.recording.adapters import check_arguments, step_metadata


def test_importing_the_adapters_imports_no_framework() -> None:
    code = (
        "import sys, gradcheck.recording.keras, gradcheck.recording.optax\n"
        "print(sorted(m for m in ('keras', 'jax', 'optax', 'flax', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("every", [0, -1, True, 2.0])
def test_every_must_be_a_positive_integer(tmp_path: Path, every: object) -> None:
    with pytest.raises(ValueError, match="every must be a positive integer"):
        check_arguments(tmp_path, every, "full")  # type: ignore[arg-type]


def test_mode_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of 'full', 'stats'"):
        check_arguments(tmp_path, 10, "summary")


def test_a_file_as_run_dir_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(RecordingError, match="it is a file, not a directory"):
        check_arguments(tmp_path / "run", 10, "full")
    assert check_arguments(tmp_path / "new" / "run", 10, "stats") == tmp_path / "new" / "run"


def test_step_metadata_reads_back() -> None:
    context = StepContext(framework="optax", optimizer="scale_by_adam", lr={"w": 0.01})
    metadata = step_metadata(context, {"loss": float("nan")})
    assert parse_context(metadata[CONTEXT_KEY]) == (context, [])
    loss = parse_scalars(metadata[SCALARS_KEY])[0]["loss"]
    assert math.isnan(loss)
    assert SCALARS_KEY not in step_metadata(context, {})
