"""Per-layer summaries over a run's columns: what `merge_all` gives for the parameters of a layer, at every step.

The depth profile, the heatmap and the charts merge the tensors of a layer's parameters at each step. Doing
that with one TensorStats per (step, parameter) made drawing a long run slow; here each merge is one set of
numpy operations over all steps, in the same float64 operations and the same parameter order as
`TensorStats.merge` (stats.py), so every number stays bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .columns import Columns, KindColumns, StatArrays
from .naming import layer_of


@dataclass(frozen=True, eq=False)
class Merged(StatArrays):
    """Merged summaries as arrays (one value per step, or per step and layer); the fields of TensorStats."""

    count: np.ndarray
    nan: np.ndarray
    inf: np.ndarray
    abs_min: np.ndarray
    abs_max: np.ndarray
    abs_sum: np.ndarray
    sq_sum: np.ndarray
    scale: np.ndarray


def layer_order(columns: Columns) -> tuple[tuple[str, ...], list[list[int]]]:
    """Layers and their parameter columns, in the order the per-object rows first showed them.

    Rows were keyed step by step in model order, so a layer comes where its first recorded (step, parameter)
    cell comes in that order; a parameter with no tensor at all belongs to no layer.
    """
    present = _any_present(columns)
    recorded = present.any(axis=0)
    first_step = np.argmax(present, axis=0)
    first: dict[str, tuple[int, int]] = {}
    members: dict[str, list[int]] = {}
    for p, param in enumerate(columns.params):
        if not recorded[p]:
            continue
        layer = layer_of(param)
        key = (int(first_step[p]), p)
        first[layer] = min(first.get(layer, key), key)
        members.setdefault(layer, []).append(p)
    layers = tuple(sorted(first, key=first.__getitem__))
    return layers, [members[layer] for layer in layers]


def _any_present(columns: Columns) -> np.ndarray:
    kinds = columns.kinds.values()
    return np.logical_or.reduce([kind.present for kind in kinds]) if kinds else np.zeros(columns.shape, bool)


def empty_merged(size: int | tuple[int, ...]) -> Merged:
    """The empty summary's values in an array of `size`: what merging starts from."""
    zeros = np.zeros(size, dtype=np.int64)
    return Merged(
        count=zeros,
        nan=zeros,
        inf=zeros,
        abs_min=np.full(size, math.inf),
        abs_max=np.zeros(size),
        abs_sum=np.zeros(size),
        sq_sum=np.zeros(size),
        scale=np.ones(size),
    )


def cell_of(kind: KindColumns, p: int | np.ndarray, rows: np.ndarray | slice = slice(None)) -> Merged:
    """Parameter column(s) `p` of a kind (at `rows`) as Merged arrays."""
    return Merged(
        count=kind.count[rows, p],
        nan=kind.nan[rows, p],
        inf=kind.inf[rows, p],
        abs_min=kind.abs_min[rows, p],
        abs_max=kind.abs_max[rows, p],
        abs_sum=kind.abs_sum[rows, p],
        sq_sum=kind.sq_sum[rows, p],
        scale=kind.scale[rows, p],
    )


def merge(one: Merged, other: Merged, take: np.ndarray) -> Merged:
    """`one.merge(other)` where `take`, `one` elsewhere: TensorStats.merge as arrays."""
    # (one.abs_max, one.scale) >= (other.abs_max, other.scale), as Python compares tuples
    keep = (one.abs_max > other.abs_max) | ((one.abs_max == other.abs_max) & (one.scale >= other.scale))
    to = np.where(keep, one.scale, other.scale)
    with np.errstate(over="ignore", invalid="ignore"):
        merged = Merged(
            count=one.count + other.count,
            nan=one.nan + other.nan,
            inf=one.inf + other.inf,
            abs_min=np.minimum(one.abs_min, other.abs_min),
            abs_max=np.maximum(one.abs_max, other.abs_max),
            abs_sum=_rescaled(one.abs_sum, one.scale, to, 1) + _rescaled(other.abs_sum, other.scale, to, 1),
            sq_sum=_rescaled(one.sq_sum, one.scale, to, 2) + _rescaled(other.sq_sum, other.scale, to, 2),
            scale=to,
        )
    return Merged(**{name: np.where(take, getattr(merged, name), getattr(one, name)) for name in _FIELDS})


_FIELDS = ("count", "nan", "inf", "abs_min", "abs_max", "abs_sum", "sq_sum", "scale")


def _rescaled(value: np.ndarray, scale: np.ndarray, to: np.ndarray, power: int) -> np.ndarray:
    """stats._rescaled as arrays: ldexp by the exponent difference, Inf on overflow, unchanged when no shift."""
    same = (scale == to) | (value == 0) | np.isinf(value)
    if same.all():
        return value
    shift = power * (np.frexp(scale)[1] - np.frexp(to)[1])
    with np.errstate(over="ignore"):
        return np.where(same, value, np.ldexp(value, np.where(same, 0, shift)))


def merge_layers(
    kind: KindColumns, groups: Sequence[Sequence[int]], mask: np.ndarray | None = None
) -> Merged:
    """Per step and layer ([S, L] arrays), merge_all of the layer's present cells (and `mask`), in `groups` order.

    Every layer merges its k-th parameter in the same pass, so the passes are as many as the largest layer has
    parameters, and each layer still merges its parameters one by one in model order, as merge_all does.
    """
    steps = kind.present.shape[0]
    take_all = kind.present if mask is None else kind.present & mask
    acc = empty_merged((steps, len(groups)))
    for k in range(max((len(group) for group in groups), default=0)):
        has = np.array([len(group) > k for group in groups])
        members = np.array([group[k] if len(group) > k else 0 for group in groups], dtype=np.intp)
        take = take_all[:, members] & has
        if take.any():
            acc = merge(acc, cell_of(kind, members), take)
    return acc


def log10_cells(values: np.ndarray) -> np.ndarray:
    """math.log10 of each value, element by element (numpy's log10 may differ from it in the last bit)."""
    flat = values.ravel().tolist()
    return np.fromiter(map(math.log10, flat), dtype=np.float64, count=len(flat)).reshape(values.shape)


def kind_rows(kind: KindColumns, rows: slice) -> KindColumns:
    """The steps `rows` of a kind (views, no copy): to merge or summarise one step without the whole run."""
    fields = ("present", "count", "nan", "inf", "zeros", "abs_min", "abs_max", "abs_sum", "sq_sum", "scale")
    arrays = {name: getattr(kind, name)[rows] for name in (*fields, "file", "dtype", "shape")}
    return KindColumns(**arrays, alive={})
