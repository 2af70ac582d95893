"""One owner of `gradcheck.scalars`: `Run.signals.scalars` (analysis/activations.py); `Run.scalars` is its alias.

The key is parsed once per file (analysis/loading.py), so both agree and a malformed scalar is noted once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gradcheck.analysis.context import SCALARS_KEY
from gradcheck.analysis.runs import load_run
from gradcheck.recording.writer import save_snapshot


def _run(run_dir: Path, scalars: list[dict[str, object] | None]) -> None:
    for step, values in enumerate(scalars):
        metadata = {} if values is None else {SCALARS_KEY: json.dumps(values)}
        save_snapshot(run_dir, step, grads={"w": np.full((2, 2), step + 1, np.float32)}, metadata=metadata)


def test_run_scalars_and_signals_scalars_are_the_same(tmp_path: Path) -> None:
    _run(tmp_path, [{"loss": 2.0, "acc": 0.1}, None, {"loss": "nan"}, {"loss": 0.5}])
    run = load_run(tmp_path)
    assert run.signals.scalars == {
        0: {"loss": 2.0, "acc": 0.1},
        2: {"loss": run.signals.scalars[2]["loss"]},
        3: {"loss": 0.5},
    }
    assert run.scalars == run.signals.scalars
    assert run.signals.losses()[0] == (0, 2.0) and [s for s, _ in run.signals.losses()] == [0, 2, 3]


def test_a_run_without_scalars_has_none(tmp_path: Path) -> None:
    _run(tmp_path, [None, None])
    run = load_run(tmp_path)
    assert run.scalars == run.signals.scalars == {} and run.skipped == ()


def test_a_malformed_scalar_is_noted_once(tmp_path: Path) -> None:
    _run(tmp_path, [{"loss": 1.0, "acc": "high"}])
    run = load_run(tmp_path)
    assert [note.reason for note in run.skipped] == [f"{SCALARS_KEY}: 'acc' is not a number"]
