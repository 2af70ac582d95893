"""What the framework adapters (keras.py, optax.py) share: argument checks and the metadata they write."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gradcheck.analysis.context import (
    CONTEXT_KEY,
    SCALARS_KEY,
    StepContext,
    context_metadata,
    scalars_metadata,
)

from .snapshot import RecordingError
from .writer import MODES


def check_arguments(run_dir: str | os.PathLike[str], every: int, mode: str) -> Path:
    """The run directory as a Path, after refusing what would only fail later, inside training."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer, not {every!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    path = Path(run_dir)
    if path.exists() and not path.is_dir():  # found now, not inside a jitted step's host callback
        raise RecordingError(f"cannot record into {path}: it is a file, not a directory")
    return path


def step_metadata(context: StepContext, scalars: Mapping[str, float]) -> dict[str, str]:
    """The snapshot metadata for a step's context and its scalars (none: no scalars entry)."""
    metadata = {CONTEXT_KEY: context_metadata(context)}
    if scalars:
        metadata[SCALARS_KEY] = scalars_metadata(scalars)
    return metadata
