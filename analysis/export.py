"""A run's statistics as series and rows for machines: the JSON schema 2 series and `gradcheck export` rows.

Everything here reads the run's columns (`Run.columns`, `Report.derived`; analysis/columns.py) with numpy, in
blocks of parameters or of steps, so a long run never becomes one Python object per (step, parameter, kind).
Values are the same float64 numbers the per-object path computes (the KindColumns properties, the history's
`math.log10`), so a consumer of either format sees the same bits as schema 1 of `--format json`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .columns import KINDS, STAT_FIELDS, Columns, DerivedColumns, KindColumns

# The statistics each tensor gets, in document order: schema 1's tensor fields, then the RMS (export only).
COUNT_FIELDS = ("count", "nan", "inf", "zeros")
FLOAT_STATS = ("min_abs", "mean_abs", "max_abs", "norm")
EXPORT_STATS = COUNT_FIELDS + FLOAT_STATS + ("rms",)
# Derived metrics of each (step, parameter), named as in the JSON document; the layer's are per layer there.
PARAM_METRICS = {"update_ratio": "update_ratio", "grad_param_norm_ratio": "grad_param_ratio"}
LAYER_METRICS = {"grad_norm": "layer_norm", "grad_rms": "layer_rms", "depth": "depth"}
# The same in an export row, named as schema 1 names them per step.
EXPORT_LAYER_METRICS = {"layer_grad_norm": "layer_norm", "layer_grad_rms": "layer_rms", "depth": "depth"}
# Parameters per block when computing a kind's statistics: 64 columns of 1,000 steps are ~0.5 MB per array,
# small beside the run's own columns (~126 MB at 1,000 x 500 x 3) and large enough for numpy to run fast.
PARAM_BLOCK = 64


@dataclass(frozen=True)
class LayerSeries:
    """One layer's gradient norm, RMS and depth at every recorded step (NaN where undefined)."""

    name: str
    params: tuple[str, ...]
    grad_norm: np.ndarray
    grad_rms: np.ndarray
    depth: np.ndarray


def kind_block(kind: KindColumns, index: tuple[slice, slice]) -> KindColumns:
    """The cells [steps, params] of `index` as a KindColumns of views: its properties give the same bits."""
    arrays = {name: getattr(kind, name)[index] for name in ("present", "file", "dtype", "shape")}
    stats = {name: getattr(kind, name)[index] for name in STAT_FIELDS}
    return KindColumns(**arrays, **stats)


def kind_statistics(kind: KindColumns) -> dict[str, np.ndarray]:
    """Every statistic of EXPORT_STATS as [step, param] arrays; NaN where a float is undefined."""
    values: dict[str, np.ndarray] = {name: getattr(kind, name) for name in COUNT_FIELDS}
    for name in FLOAT_STATS + ("rms",):
        values[name] = getattr(kind, name)
    return values


def param_blocks(count: int, size: int = PARAM_BLOCK) -> Iterator[slice]:
    """Consecutive slices of at most `size` parameters covering `count`."""
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def first_tensor(columns: Columns, p: int) -> tuple[tuple[int, ...], str] | None:
    """Shape and dtype of the parameter's first recorded tensor (grad, else param, else update), as schema 1."""
    kinds = [columns.kinds[name] for name in KINDS]
    recorded = np.logical_or.reduce([kind.present[:, p] for kind in kinds])
    if not recorded.any():
        return None
    s = int(recorded.argmax())
    kind = next(kind for kind in kinds if kind.present[s, p])
    return columns.shapes[kind.shape[s, p]], columns.dtypes[kind.dtype[s, p]]


def layer_of(derived: DerivedColumns, p: int, param: str) -> str:
    """The parameter's layer; the parameter itself if it never had a tensor (schema 1's fallback)."""
    return derived.layers[derived.layer_index[p]] if derived.present[:, p].any() else param


def layer_series(columns: Columns, derived: DerivedColumns) -> list[LayerSeries]:
    """Each layer's norm, RMS and depth per step, read from a parameter of the layer recorded at that step."""
    found = []
    for index, name in enumerate(derived.layers):
        members = np.flatnonzero(derived.layer_index == index)
        members = members[derived.present[:, members].any(axis=0)]
        values = {}
        for key, source in LAYER_METRICS.items():
            mask = derived.layer_known[:, members] if source != "depth" else derived.present[:, members]
            values[key] = _first_known(getattr(derived, source)[:, members], mask)
        found.append(LayerSeries(name, tuple(columns.params[p] for p in members), **values))
    return found


def _first_known(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per row, the value of the first column where `known`; NaN where no column is."""
    if values.shape[1] == 0:
        return np.full(values.shape[0], np.nan)
    first = known.argmax(axis=1)
    picked = values[np.arange(values.shape[0]), first]
    return np.where(known.any(axis=1), picked, np.nan)


def latest_modules(contexts: Mapping[int, object]) -> dict[str, str]:
    """Parameter -> module type from the latest recorded context that names it (schema 1's `module`)."""
    found: dict[str, str] = {}
    for context in reversed(list(contexts.values())):
        for param, module in getattr(context, "modules", {}).items():
            found.setdefault(param, module)
    return found


def export_chunks(
    columns: Columns, derived: DerivedColumns, rows: int = 25_000
) -> Iterator[dict[str, np.ndarray]]:
    """The rows of `gradcheck export`, about `rows` at a time: one per present (step, param, kind) cell.

    Rows go step by step, then in model order, then grad, param, update. Each chunk maps a column name to an
    array: `step`, `param` and `kind` (indexes into `columns.params` and KINDS), `file`, `dtype`, `shape`
    (indexes into the run's tables), EXPORT_STATS, the parameter's PARAM_METRICS and its layer's
    EXPORT_LAYER_METRICS (NaN where undefined; ±Inf kept).
    """
    count, params = columns.shape
    step_rows = max(1, rows // max(1, params * len(KINDS)))
    for start in range(0, count, step_rows):
        window = slice(start, min(start + step_rows, count))
        yield _chunk(columns, derived, window)


def _chunk(columns: Columns, derived: DerivedColumns, window: slice) -> dict[str, np.ndarray]:
    kinds = [kind_block(columns.kinds[name], (window, slice(None))) for name in KINDS]
    present = np.stack([kind.present for kind in kinds], axis=-1)  # [steps, params, kinds]
    s, p, k = np.nonzero(present)  # C order: step, then param, then kind, as documented

    def take(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(arrays, axis=-1)[s, p, k]

    out = {"step": columns.steps[window][s], "param": p, "kind": k}
    for name in ("file", "dtype", "shape"):
        out[name] = take([getattr(kind, name) for kind in kinds])
    statistics = [kind_statistics(kind) for kind in kinds]
    for name in EXPORT_STATS:
        out[name] = take([stats[name] for stats in statistics])
    for name, source in PARAM_METRICS.items():
        out[name] = getattr(derived, source)[window][s, p]
    for name, source in EXPORT_LAYER_METRICS.items():
        out[name] = getattr(derived, source)[window][s, p]
    return out
