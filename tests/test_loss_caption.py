"""The recorded loss under `inspect`'s table: one line with its first and last value and a sparkline (issue #16).

Golden files: tests/golden/signals/inspect-<run>-<width>.txt, the plain stdout; regenerate with
`GRADCHECK_REGEN=1 .venv/bin/python -m pytest -q tests/test_loss_caption.py` and review the diff. The run
without a loss is the same run with the scalars left out: its output is the other's without the loss line.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck.analysis.context import SCALARS_KEY
from gradcheck.cli.main import cli
from gradcheck.recording.writer import save_snapshot

GOLDEN = Path(__file__).resolve().parent / "golden" / "signals"
NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
LOSSES = [2.3 * 0.8**step for step in range(10)]


def _write(run: Path, losses: list[float] | None) -> None:
    rng = np.random.default_rng(0)
    params = {name: rng.normal(0, 0.1, (4, 4)).astype(np.float32) for name in NAMES}
    for step in range(10):
        grads = {name: (rng.normal(0, 1e-2, (4, 4))).astype(np.float32) for name in NAMES}
        updates = {name: (-0.1 * g).astype(np.float32) for name, g in grads.items()}
        metadata = {SCALARS_KEY: json.dumps({"loss": losses[step]})} if losses else {}
        save_snapshot(
            run, step, grads=grads, params=params, updates=updates, order=list(NAMES), metadata=metadata
        )
        params = {name: params[name] + updates[name] for name in NAMES}


def _inspect(run: str, width: int, *more: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["inspect", run, *more], env={"COLUMNS": str(width)})
    assert result.exit_code == code, result.output
    return result.stdout


def _loss_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("loss ") and " -> " in line]


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GRADCHECK_REGEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_loss_line_is_under_the_table_and_absent_without_a_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "loss", LOSSES)
    _write(tmp_path / "plain", None)
    with_loss, plain = _inspect("loss", width), _inspect("plain", width)
    _check_golden(f"inspect-loss-{width}.txt", with_loss)
    _check_golden(f"inspect-plain-{width}.txt", plain)
    (line,) = _loss_lines(with_loss)
    assert line == "loss 2.3e0 at step 0 -> 3.1e-1 at step 9 █▇▆▆▅▄▃▃▂▁"
    assert max(map(len, with_loss.splitlines())) <= width
    assert with_loss.replace(line + "\n", "").replace("loss - step", "plain - step", 1) == plain
    assert _loss_lines(plain) == []


def test_the_loss_line_follows_the_steps_shown_and_marks_a_nan(tmp_path: Path) -> None:
    _write(tmp_path / "loss", [*LOSSES[:6], math.nan, *LOSSES[7:]])
    out = _inspect(str(tmp_path / "loss"), 120, "--steps", "0:6", code=1)  # loss-nonfinite
    (line,) = _loss_lines(out)
    assert line.startswith("loss 2.3e0 at step 0 -> nan at step 6 ") and line.endswith("!")
    assert len(line.split()[-1]) == 7  # one cell per shown step


def test_a_loss_warning_is_not_counted_as_a_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdict counts parameters with warnings; a stuck loss is named as such, not as one more parameter."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "flat", [2.3, 2.31, 2.29, 2.3] * 3)
    out = _inspect("flat", 200)
    assert "loss-stuck" in out
    verdict = out.splitlines()[-1]
    assert (
        verdict
        == "! warnings only: loss-stuck; the loss or activations with warnings (4 parameters, 10 recorded steps)"
    )
