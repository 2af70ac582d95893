"""Write run directories of safetensors snapshots from numpy arrays, for tests.

Two layouts, as a training loop would write them:

- "prefixed" (the preferred one): one file per step, `step_{step:08d}.safetensors`, keys `grad/<name>`,
  `param/<name>`, `update/<name>`, metadata `{"gradcheck.format": "1", "step": ..., "order": [...]}`.
- "plain": one file per step and kind, named by `pattern` (default `{kinds}_{step}` -> `grads_100`), keys
  without prefix and no metadata, so kind and step come from the file name alone.

    write_run(tmp_path, {0: {"grad": {"fc.weight": g0}, "param": {"fc.weight": w0}}}, order=["fc.weight"])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

KINDS = ("grad", "param", "update")
PLURAL = {"grad": "grads", "param": "params", "update": "updates"}
FORMAT_VERSION = "1"

# step -> kind -> parameter name -> array
Steps = Mapping[int, Mapping[str, Mapping[str, np.ndarray]]]


def write_file(
    path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write tensors under their keys as they are, with optional string metadata; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays = {key: np.ascontiguousarray(value) for key, value in tensors.items()}
    save_file(arrays, str(target), metadata=dict(metadata) if metadata is not None else None)
    return target


def snapshot_metadata(step: int, order: Sequence[str] | None = None) -> dict[str, str]:
    """The metadata of the prefixed layout: format version, step and (if given) parameter order."""
    metadata = {"gradcheck.format": FORMAT_VERSION, "step": str(step)}
    if order is not None:
        metadata["order"] = json.dumps(list(order))
    return metadata


def write_step(
    root: str | Path,
    step: int,
    kinds: Mapping[str, Mapping[str, np.ndarray]],
    *,
    order: Sequence[str] | None = None,
    name: str | None = None,
) -> Path:
    """Write one step in the prefixed layout (file `step_{step:08d}.safetensors` unless `name` is given)."""
    unknown = set(kinds) - set(KINDS)
    assert not unknown, f"unknown kinds {sorted(unknown)}; use {KINDS}"
    tensors = {f"{kind}/{param}": array for kind, arrays in kinds.items() for param, array in arrays.items()}
    file_name = name or f"step_{step:08d}.safetensors"
    return write_file(Path(root) / file_name, tensors, snapshot_metadata(step, order))


def plain_name(kind: str, step: int, pattern: str = "{kinds}_{step}") -> str:
    """File name of the plain layout: `pattern` may use {kind}, {kinds} and {step}."""
    return pattern.format(kind=kind, kinds=PLURAL[kind], step=step) + ".safetensors"


def write_plain(
    root: str | Path,
    step: int,
    kind: str,
    arrays: Mapping[str, np.ndarray],
    *,
    pattern: str = "{kinds}_{step}",
) -> Path:
    """Write one kind of one step in the plain layout: unprefixed keys, no metadata."""
    return write_file(Path(root) / plain_name(kind, step, pattern), arrays)


def write_run(
    root: str | Path,
    steps: Steps,
    *,
    layout: str = "prefixed",
    order: Sequence[str] | None = None,
    pattern: str = "{kinds}_{step}",
) -> list[Path]:
    """Write a whole run to `root` (created if needed) and return the files written, in step order.

    `order` is recorded as metadata in the prefixed layout only (the plain layout has no metadata).
    """
    if layout not in ("prefixed", "plain"):
        raise ValueError(f"layout must be 'prefixed' or 'plain', got {layout!r}")
    Path(root).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for step in sorted(steps):
        if layout == "prefixed":
            written.append(write_step(root, step, steps[step], order=order))
        else:
            for kind, arrays in steps[step].items():
                written.append(write_plain(root, step, kind, arrays, pattern=pattern))
    return written
