"""Small builders shared by the adversarial tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from runs_builder import write_step
from st_files import file_bytes

from gradcheck.analysis.stats import TensorStats
from gradcheck.analysis.summaries import summary_entry

HEALTHY = {"w": np.linspace(0.01, 0.02, 16, dtype=np.float32).reshape(4, 4)}


def healthy_run(root: Path, steps: int = 3) -> Path:
    """A small healthy run of `steps` steps (gradients, parameters and updates of one 4x4 weight)."""
    for step in range(steps):
        grads = {name: value * (1 + step / 10) for name, value in HEALTHY.items()}
        params = {name: np.full_like(value, 0.5) for name, value in HEALTHY.items()}
        updates = {name: value * 1e-3 for name, value in HEALTHY.items()}
        write_step(root, step, {"grad": grads, "param": params, "update": updates}, order=list(HEALTHY))
    return root


def summary_file(path: Path, step: int, entries: Mapping[str, Mapping[str, object]]) -> Path:
    """A stats-only snapshot: no tensor data, the summaries in `gradcheck.stats`."""
    metadata = {"gradcheck.stats": json.dumps(entries), "step": str(step), "gradcheck.format": "1"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(file_bytes({"__metadata__": metadata}))
    return path


def good_summary(**changes: object) -> dict[str, object]:
    """The summary of a healthy 4-element F32 gradient, with fields changed or added."""
    entry = summary_entry(TensorStats(4, 0, 0, 0, 0.5, 2.0, 4.0, 6.0), (4,), "F32")
    entry.update(changes)
    return entry


def no_traceback(*texts: str) -> bool:
    """Neither a Python traceback nor an internal-error line in any of the texts."""
    return not any("Traceback" in text or "internal error" in text for text in texts)
