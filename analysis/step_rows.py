"""One recorded step of a run as table rows: the numbers `inspect`'s table and the Markdown summary show.

Read from the run's columns and derived columns (analysis/columns.py) for one step, so drawing the table of a
long run costs one row of arrays, not one ParamStep per parameter and step. The values are the ParamStep ones
bit for bit (KindColumns' properties are TensorStats' operations on arrays).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .columns import Columns, DerivedColumns
from .layer_columns import kind_rows


class StepRow(NamedTuple):
    """One parameter at one step; None where the tensor (or the derived value) is not there."""

    param: str
    index: int  # the parameter's column in Columns.params
    shape: tuple[int, ...]  # of the first recorded of gradient, parameter and update (ParamStep.tensor)
    dtype: str
    min_abs: float | None  # of the gradient; NaN when it has no finite element
    mean_abs: float | None
    max_abs: float | None
    norm: float | None
    update_ratio: float | None  # ParamStep.update_ratio
    depth: float | None  # ParamStep.depth


def step_rows(columns: Columns, derived: DerivedColumns, step: int) -> list[StepRow]:
    """The rows of `step` in model order: every parameter with a tensor of any kind there (Report.rows_at)."""
    s = columns.step_index(step)
    if s is None:
        return []
    row = slice(s, s + 1)
    kinds = [kind_rows(columns.kinds[name], row) for name in ("grad", "param", "update")]
    grad = kinds[0]
    recorded = np.flatnonzero(grad.present[0] | kinds[1].present[0] | kinds[2].present[0]).tolist()
    has_grad = grad.present[0].tolist()
    stats = {name: getattr(grad, name)[0].tolist() for name in ("min_abs", "mean_abs", "max_abs", "norm")}
    dtype, shape = np.full(len(columns.params), -1), np.full(len(columns.params), -1)
    for kind in reversed(kinds):  # the first recorded kind wins, as ParamStep.tensor picks it
        dtype = np.where(kind.present[0], kind.dtype[0], dtype)
        shape = np.where(kind.present[0], kind.shape[0], shape)
    dtypes, shapes = dtype.tolist(), shape.tolist()
    ratio, depth = _optional(derived.update_ratio[s]), _optional(derived.depth[s])
    return [
        StepRow(
            columns.params[p],
            p,
            columns.shapes[shapes[p]],
            columns.dtypes[dtypes[p]],
            *(stats[name][p] if has_grad[p] else None for name in ("min_abs", "mean_abs", "max_abs", "norm")),
            ratio[p],
            depth[p],
        )
        for p in recorded
    ]


def _optional(values: np.ndarray) -> list[float | None]:
    """A derived row with NaN (the contract's None) back to None."""
    return [None if math.isnan(value) else value for value in values.tolist()]
