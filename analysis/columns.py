"""A run as columns: each statistic of each kind is one numpy array indexed [step, parameter].

This is the run's in-memory table (issue #14). Readers fill it from per-file `StatsBlock`s; `derive`, the
checks, history, heatmap, diff and the renderers read it with vectorised numpy instead of one Python object
per (step, parameter, kind). The per-cell objects (`Tensor`, `TensorStats`) stay available through
`Columns.tensor` for code and tests that want one cell; building them for a whole long run is what made it slow.

The vectorised properties of `KindColumns` are the same float64 operations in the same order as the
`TensorStats` properties (stats.py), so every number is bit-identical to the per-object path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .stats import TensorStats

KINDS = ("grad", "param", "update")
INT_FIELDS = ("count", "nan", "inf", "zeros")
FLOAT_FIELDS = ("abs_min", "abs_max", "abs_sum", "sq_sum", "scale")
STAT_FIELDS = INT_FIELDS + FLOAT_FIELDS
# The empty summary's values: what an absent cell holds, so that sums over absent cells add nothing.
EMPTY = {name: getattr(TensorStats(), name) for name in STAT_FIELDS}


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor of one kind of one parameter at one step, as summarised from its file."""

    stats: TensorStats
    shape: tuple[int, ...]
    dtype: str
    file: str


@dataclass(frozen=True, eq=False)
class StatsBlock:
    """The summaries of n tensors as parallel arrays (int64 counts, float64 magnitudes): one file's scan.

    `keys[i]` names tensor i as it appears in its file (`grad/fc.weight`); `alive[i]` is its unit bitmap or
    None (stats.TensorStats.alive).
    """

    keys: tuple[str, ...]
    count: np.ndarray
    nan: np.ndarray
    inf: np.ndarray
    zeros: np.ndarray
    abs_min: np.ndarray
    abs_max: np.ndarray
    abs_sum: np.ndarray
    sq_sum: np.ndarray
    scale: np.ndarray
    alive: tuple[int | None, ...]

    def __len__(self) -> int:
        return len(self.keys)

    def stats(self, index: int) -> TensorStats:
        """Tensor `index` as one TensorStats (Python ints and floats, as the per-object reader made them)."""
        values = {name: getattr(self, name)[index].item() for name in STAT_FIELDS}
        return TensorStats(**values, alive=self.alive[index])

    def as_dict(self) -> dict[str, TensorStats]:
        """{key: TensorStats}: the per-object view (slow for large blocks; for tests and small files)."""
        return {key: self.stats(i) for i, key in enumerate(self.keys)}

    @classmethod
    def from_stats(cls, stats: Mapping[str, TensorStats]) -> StatsBlock:
        """A block of per-object summaries, in the mapping's order."""
        items = list(stats.values())
        arrays = {
            name: np.array(
                [getattr(s, name) for s in items], dtype=np.int64 if name in INT_FIELDS else np.float64
            )
            for name in STAT_FIELDS
        }
        return cls(keys=tuple(stats), **arrays, alive=tuple(s.alive for s in items))


class StatArrays:
    """The TensorStats properties over arrays of its fields (count, nan, inf, abs_min, abs_max, abs_sum,
    sq_sum, scale): the same float64 operations in the same order, so every value is bit-identical."""

    count: np.ndarray
    nan: np.ndarray
    inf: np.ndarray
    abs_min: np.ndarray
    abs_max: np.ndarray
    abs_sum: np.ndarray
    sq_sum: np.ndarray
    scale: np.ndarray

    @property
    def finite(self) -> np.ndarray:
        """How many elements are finite."""
        return self.count - self.nan - self.inf

    def _where_finite(self, values: np.ndarray) -> np.ndarray:
        return np.where(self.finite > 0, values, np.nan)

    @property
    def mean_abs(self) -> np.ndarray:
        """Mean of finite |x|; NaN where no finite element (or absent). Bit-identical to TensorStats.mean_abs."""
        finite = self.finite
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return np.where(finite > 0, self.abs_sum / finite * self.scale, np.nan)

    @property
    def min_abs(self) -> np.ndarray:
        """Smallest finite |x|; NaN where no finite element."""
        return self._where_finite(self.abs_min)

    @property
    def max_abs(self) -> np.ndarray:
        """Largest finite |x|; NaN where no finite element."""
        return self._where_finite(self.abs_max)

    @property
    def norm(self) -> np.ndarray:
        """L2 norm of the finite elements (Inf beyond float64); NaN where no finite element."""
        with np.errstate(over="ignore", invalid="ignore"):
            return self._where_finite(np.sqrt(self.sq_sum) * self.scale)

    @property
    def rms(self) -> np.ndarray:
        """Root mean square of the finite elements; NaN where none."""
        finite = self.finite
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return np.where(finite > 0, np.sqrt(self.sq_sum / finite) * self.scale, np.nan)


@dataclass(frozen=True, eq=False)
class KindColumns(StatArrays):
    """One kind's statistics over a run: arrays [step, param]; absent cells hold the empty summary's values.

    `file`, `dtype` and `shape` index the run's `files`, `dtypes` and `shapes` tables (-1 where absent).
    `alive` holds the unit bitmaps that are known, by (step index, param index).
    """

    present: np.ndarray  # bool
    count: np.ndarray  # int64
    nan: np.ndarray
    inf: np.ndarray
    zeros: np.ndarray
    abs_min: np.ndarray  # float64
    abs_max: np.ndarray
    abs_sum: np.ndarray  # sum of |x| / scale
    sq_sum: np.ndarray  # sum of (|x| / scale)^2
    scale: np.ndarray
    file: np.ndarray  # int32
    dtype: np.ndarray  # int32
    shape: np.ndarray  # int32
    alive: Mapping[tuple[int, int], int] = field(default_factory=dict)

    def stats(self, s: int, p: int) -> TensorStats | None:
        """Cell (step index, param index) as a TensorStats, None where absent."""
        if not self.present[s, p]:
            return None
        values = {name: getattr(self, name)[s, p].item() for name in STAT_FIELDS}
        return TensorStats(**values, alive=self.alive.get((s, p)))


@dataclass(frozen=True, eq=False)
class Columns:
    """A run's statistics: `steps` (sorted int64) x `params` (model order), one KindColumns per kind."""

    steps: np.ndarray
    params: tuple[str, ...]
    kinds: Mapping[str, KindColumns]  # always the three KINDS; a kind never recorded has no present cell
    files: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """(steps, params)."""
        return (len(self.steps), len(self.params))

    def step_index(self, step: int) -> int | None:
        """Row of `step`, None when it was not recorded."""
        i = int(np.searchsorted(self.steps, step))
        return i if i < len(self.steps) and self.steps[i] == step else None

    def param_index(self, param: str) -> int | None:
        """Column of `param`, None when it is not in the run."""
        return self._param_indices.get(param)

    @property
    def _param_indices(self) -> dict[str, int]:
        cached = self.__dict__.get("_indices")
        if cached is None:
            cached = {name: i for i, name in enumerate(self.params)}
            object.__setattr__(self, "_indices", cached)
        return cached

    def tensor(self, step: int, param: str, kind: str) -> Tensor | None:
        """One cell as a Tensor (the per-object view), None when not recorded."""
        s, p = self.step_index(step), self.param_index(param)
        if s is None or p is None:
            return None
        column = self.kinds[kind]
        stats = column.stats(s, p)
        if stats is None:
            return None
        return Tensor(
            stats,
            self.shapes[column.shape[s, p]],
            self.dtypes[column.dtype[s, p]],
            self.files[column.file[s, p]],
        )

    def cells(self) -> Iterable[tuple[tuple[int, str, str], Tensor]]:
        """Every present cell as ((step, param, kind), Tensor), step-major: the slow per-object view."""
        for s, step in enumerate(self.steps.tolist()):
            for p, param in enumerate(self.params):
                for kind in KINDS:
                    if self.kinds[kind].present[s, p]:
                        tensor = self.tensor(step, param, kind)
                        assert tensor is not None
                        yield (step, param, kind), tensor


def empty_kind(steps: int, params: int) -> KindColumns:
    """A KindColumns with no present cell."""
    shape = (steps, params)
    arrays = {
        name: np.full(shape, EMPTY[name], dtype=np.int64 if name in INT_FIELDS else np.float64)
        for name in STAT_FIELDS
    }
    indices = {name: np.full(shape, -1, dtype=np.int32) for name in ("file", "dtype", "shape")}
    return KindColumns(present=np.zeros(shape, dtype=bool), **arrays, **indices, alive={})


def columns_from_tensors(
    steps: Sequence[int], params: Sequence[str], tensors: Mapping[tuple[int, str, str], Tensor]
) -> Columns:
    """Columns of per-object tensors: the slow reference builder (tests compare the fast paths with it)."""
    step_row = {step: i for i, step in enumerate(steps)}
    param_col = {param: i for i, param in enumerate(params)}
    kinds = {kind: empty_kind(len(steps), len(params)) for kind in KINDS}
    tables: dict[str, dict[object, int]] = {"file": {}, "dtype": {}, "shape": {}}
    for (step, param, kind), tensor in tensors.items():
        s, p, column = step_row[step], param_col[param], kinds[kind]
        column.present[s, p] = True
        for name in STAT_FIELDS:
            getattr(column, name)[s, p] = getattr(tensor.stats, name)
        for name, value in (("file", tensor.file), ("dtype", tensor.dtype), ("shape", tensor.shape)):
            getattr(column, name)[s, p] = tables[name].setdefault(value, len(tables[name]))
        if tensor.stats.alive is not None:
            column.alive[(s, p)] = tensor.stats.alive  # type: ignore[index]
    return Columns(
        steps=np.array(steps, dtype=np.int64),
        params=tuple(params),
        kinds=kinds,
        files=tuple(tables["file"]),  # type: ignore[arg-type]
        dtypes=tuple(tables["dtype"]),  # type: ignore[arg-type]
        shapes=tuple(tables["shape"]),  # type: ignore[arg-type]
    )


def none_to_nan(values: Iterable[float | None]) -> np.ndarray:
    """A float64 array of optional numbers, None as NaN (for comparing derived columns with per-object rows)."""
    return np.array([math.nan if value is None else value for value in values], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class DerivedColumns:
    """What metrics.derive computes, as [step, param] arrays over a run's Columns.

    None in the per-object `ParamStep` is NaN here; where a value can also be a real NaN (a ratio of NaN norms,
    the norm of a layer whose gradients are all NaN) a `*_known` mask tells the two apart.
    """

    present: np.ndarray  # bool: the (step, param) has at least one tensor (a ParamStep exists)
    update_ratio: np.ndarray  # log10(mean|update| / mean|param|); NaN = None
    grad_param_ratio: np.ndarray  # ||grad|| / ||param||
    grad_param_known: np.ndarray  # bool: False where ParamStep.grad_param_ratio is None
    layer_norm: np.ndarray  # gradient L2 norm of the parameter's layer at the step
    layer_rms: np.ndarray
    layer_known: np.ndarray  # bool: False where ParamStep.layer_norm / layer_rms are None
    depth: np.ndarray  # log10(layer RMS / largest layer RMS at the step); NaN = None
    layers: tuple[str, ...]  # layer names, in the model order of their first parameter
    layer_index: np.ndarray  # int: params[i] belongs to layers[layer_index[i]]


def derived_from_rows(columns: Columns, rows: Mapping[tuple[int, str], object]) -> DerivedColumns:
    """DerivedColumns of per-object ParamStep rows: the slow reference (tests compare the fast derive with it)."""
    shape = columns.shape
    out = {
        name: np.full(shape, np.nan)
        for name in ("update_ratio", "grad_param_ratio", "layer_norm", "layer_rms", "depth")
    }
    masks = {name: np.zeros(shape, dtype=bool) for name in ("present", "grad_param_known", "layer_known")}
    layers: dict[str, int] = {}
    layer_index = np.zeros(len(columns.params), dtype=np.intp)
    for (step, param), row in rows.items():
        s, p = columns.step_index(step), columns.param_index(param)
        assert s is not None and p is not None
        masks["present"][s, p] = True
        layer_index[p] = layers.setdefault(row.layer, len(layers))  # type: ignore[attr-defined]
        for name in ("update_ratio", "depth"):
            value = getattr(row, name)
            out[name][s, p] = math.nan if value is None else value
        if row.grad_param_ratio is not None:  # type: ignore[attr-defined]
            out["grad_param_ratio"][s, p] = row.grad_param_ratio  # type: ignore[attr-defined]
            masks["grad_param_known"][s, p] = True
        if row.layer_norm is not None:  # type: ignore[attr-defined]
            out["layer_norm"][s, p], out["layer_rms"][s, p] = row.layer_norm, row.layer_rms  # type: ignore[attr-defined]
            masks["layer_known"][s, p] = True
    return DerivedColumns(**out, **masks, layers=tuple(layers), layer_index=layer_index)
