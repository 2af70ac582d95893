"""Derived numbers per parameter and step: update ratio, gradient/parameter ratio, depth profile."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .columns import EMPTY, KINDS, STAT_FIELDS, Columns, DerivedColumns, KindColumns
from .naming import layer_of
from .runs import Run, Tensor
from .stats import TensorStats


@dataclass(frozen=True, slots=True)
class ParamStep:
    """One parameter at one recorded step, with what is derived from its tensors."""

    param: str
    layer: str
    step: int
    grad: Tensor | None
    value: Tensor | None
    update: Tensor | None
    update_ratio: float | None  # log10(mean|update| / mean|param|), the DL4J UI metric
    grad_param_ratio: float | None  # ||grad|| / ||param||
    layer_norm: float | None  # gradient L2 norm of the whole layer at this step
    layer_rms: float | None  # gradient root-mean-square of the whole layer at this step
    depth: float | None  # log10(layer RMS / largest layer RMS at this step), <= 0

    @property
    def tensor(self) -> Tensor | None:
        """The first recorded of gradient, parameter and update: where shape and dtype are read."""
        return self.grad or self.value or self.update


def update_ratio(update: Tensor | None, value: Tensor | None) -> float | None:
    """log10(mean|update| / mean|param|); None when either is missing, zero or not finite (0/0 at init)."""
    if update is None or value is None:
        return None
    return _log_ratio(update.stats.mean_abs, value.stats.mean_abs)


def _log_ratio(top: float, bottom: float) -> float | None:
    if not (math.isfinite(top) and math.isfinite(bottom)) or top <= 0 or bottom <= 0:
        return None
    return log10_ratio(top, bottom)


def log10_ratio(top: float, bottom: float) -> float:
    """log10(top / bottom) of two positive finite numbers, also where the quotient under- or overflows."""
    quotient = top / bottom
    if 0 < quotient < math.inf:
        return math.log10(quotient)
    return math.log10(top) - math.log10(bottom)  # 1e-200 / 1e200 is 0 in float64


def layer_gradients(run: Run, step: int) -> dict[str, tuple[float, float]]:
    """(L2 norm, RMS) of each layer's gradient at `step`, over the parameters that have a gradient.

    Depth compares RMS, not norms: a norm grows with the square root of the element count, so a scalar next to
    a 1024x1024 matrix would look a thousand times smaller with the same per-element gradient.
    """
    layers: dict[str, TensorStats] = {}
    for param in run.params:
        grad = run.get(step, param, "grad")
        if grad is not None:  # merged, not summed: F64 sums may be scaled (stats.py)
            layers[layer_of(param)] = layers.get(layer_of(param), TensorStats()).merge(grad.stats)
    return {layer: (stats.norm, stats.rms) for layer, stats in layers.items()}


def derive(run: Run) -> dict[tuple[int, str], ParamStep]:
    """ParamStep for every (step, param) that has at least one tensor."""
    derived: dict[tuple[int, str], ParamStep] = {}
    for step in run.steps:
        layers = layer_gradients(run, step)
        largest = max((rms for _, rms in layers.values() if math.isfinite(rms)), default=0.0)
        for param in run.params:
            grad, value, update = (run.get(step, param, kind) for kind in ("grad", "param", "update"))
            if grad is None and value is None and update is None:
                continue
            layer = layer_of(param)
            norm, rms = layers.get(layer, (None, None))
            derived[(step, param)] = ParamStep(
                param=param,
                layer=layer,
                step=step,
                grad=grad,
                value=value,
                update=update,
                update_ratio=update_ratio(update, value),
                grad_param_ratio=_ratio(grad, value),
                layer_norm=norm,
                layer_rms=rms,
                depth=_log_ratio(rms, largest) if rms is not None else None,
            )
    return derived


def _ratio(grad: Tensor | None, value: Tensor | None) -> float | None:
    if grad is None or value is None or not value.stats.norm:
        return None
    top, bottom = grad.stats.norm, value.stats.norm
    if math.isfinite(top) and math.isfinite(bottom) or math.isnan(top) or math.isnan(bottom):
        return top / bottom
    # a norm beyond float64 (F64 values near 1e308): the quotient from log10 of each
    high, low = grad.stats.log10_norm, value.stats.log10_norm
    return 0.0 if high is None or low is None else 10.0 ** min(high - low, 308.0)


def derive_columns(columns: Columns) -> DerivedColumns:
    """What `derive` computes, as [step, param] arrays: vectorised, and bit-identical to it."""
    grad, value, update = (columns.kinds[kind] for kind in KINDS)
    present = grad.present | value.present | update.present
    ratio = np.where(update.present & value.present, _log_ratios(update.mean_abs, value.mean_abs), np.nan)
    grad_param, known = _grad_param_ratios(grad, value)
    layers, layer_index, norm, rms = _layer_gradients(columns)
    had_grad = _any_grad_by_layer(grad.present, layer_index, len(layers))
    layer_known = had_grad[:, layer_index] & present
    largest = np.where(np.isfinite(rms) & had_grad, rms, -np.inf).max(axis=1, initial=-np.inf)
    largest = np.where(np.isneginf(largest), 0.0, largest)
    depth = _log_ratios(rms, np.broadcast_to(largest[:, None], rms.shape))
    return DerivedColumns(
        present=present,
        update_ratio=ratio,
        grad_param_ratio=np.where(known, grad_param, np.nan),
        grad_param_known=known,
        layer_norm=np.where(layer_known, norm[:, layer_index], np.nan),
        layer_rms=np.where(layer_known, rms[:, layer_index], np.nan),
        layer_known=layer_known,
        depth=np.where(layer_known, depth[:, layer_index], np.nan),
        layers=layers,
        layer_index=layer_index,
    )


def _log_ratios(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """_log_ratio elementwise (NaN for None), with math.log10 itself so the digits are the same."""
    out = np.full(top.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        usable = np.isfinite(top) & np.isfinite(bottom) & (top > 0) & (bottom > 0)
        tops, bottoms = top[usable], bottom[usable]
        quotient = tops / bottoms
    plain = (quotient > 0) & (quotient < math.inf)
    found = np.fromiter(map(math.log10, quotient[plain].tolist()), np.float64, int(plain.sum()))
    result = np.empty(quotient.shape)
    result[plain] = found
    for i in np.flatnonzero(~plain).tolist():  # a quotient beyond float64: rare
        result[i] = math.log10(tops[i]) - math.log10(bottoms[i])
    out[usable] = result
    return out


def _grad_param_ratios(grad: KindColumns, value: KindColumns) -> tuple[np.ndarray, np.ndarray]:
    """(||grad|| / ||param||, where it is not None): `_ratio` elementwise."""
    top, bottom = grad.norm, value.norm
    known = grad.present & value.present & (bottom != 0)  # a NaN norm is truthy: `not nan` is False
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = top / bottom
    beyond = known & ~(np.isfinite(top) & np.isfinite(bottom) | np.isnan(top) | np.isnan(bottom))
    for s, p in np.argwhere(beyond).tolist():  # a norm beyond float64 (F64 values near 1e308): rare
        high, low = grad.stats(s, p).log10_norm, value.stats(s, p).log10_norm  # type: ignore[union-attr]
        out[s, p] = 0.0 if high is None or low is None else 10.0 ** min(high - low, 308.0)
    return out, known


def _layer_gradients(columns: Columns) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """(layers, layer of each param, gradient L2 norm [step, layer], RMS [step, layer]).

    A layer's summary is its parameters' gradients merged left to right in model order, starting from the
    empty summary, exactly as `layer_gradients` folds TensorStats.merge, so the sums are the same bits.
    """
    names = [layer_of(param) for param in columns.params]
    layers = tuple(dict.fromkeys(names))
    at = {layer: i for i, layer in enumerate(layers)}
    layer_index = np.array([at[name] for name in names], dtype=np.intp)
    members: list[list[int]] = [[] for _ in layers]
    for p, layer in enumerate(layer_index.tolist()):
        members[layer].append(p)
    grad = columns.kinds["grad"]
    steps = len(columns.steps)
    acc = {
        name: np.full((steps, len(layers)), EMPTY[name], dtype=getattr(grad, name).dtype) for name in _MERGED
    }
    for j in range(max(map(len, members), default=0)):  # the j-th parameter of every layer, at once
        where = np.array([i for i, group in enumerate(members) if len(group) > j], dtype=np.intp)
        cols = np.array([members[i][j] for i in where.tolist()], dtype=np.intp)
        part = {name: getattr(grad, name)[:, cols] for name in _MERGED}
        merged = _merge({name: acc[name][:, where] for name in _MERGED}, part)
        chosen = grad.present[:, cols]
        for name in _MERGED:
            acc[name][:, where] = np.where(chosen, merged[name], acc[name][:, where])
    finite = acc["count"] - acc["nan"] - acc["inf"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        norm = np.where(finite > 0, np.sqrt(acc["sq_sum"]) * acc["scale"], np.nan)
        rms = np.where(finite > 0, np.sqrt(acc["sq_sum"] / finite) * acc["scale"], np.nan)
    return layers, layer_index, norm, rms


_MERGED = ("count", "nan", "inf", "abs_max", "abs_sum", "sq_sum", "scale")  # what norm and RMS need


def _merge(one: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TensorStats.merge elementwise, for the fields norm and RMS read."""
    keep = (one["abs_max"] > other["abs_max"]) | (
        (one["abs_max"] == other["abs_max"]) & (one["scale"] >= other["scale"])
    )
    to = np.where(keep, one["scale"], other["scale"])
    out = {name: one[name] + other[name] for name in ("count", "nan", "inf")}
    out["abs_max"] = np.maximum(one["abs_max"], other["abs_max"])
    out["scale"] = to
    for name, power in (("abs_sum", 1), ("sq_sum", 2)):
        out[name] = _rescaled(one[name], one["scale"], to, power) + _rescaled(
            other[name], other["scale"], to, power
        )
    return out


def _rescaled(value: np.ndarray, scale: np.ndarray, to: np.ndarray, power: int) -> np.ndarray:
    """stats._rescaled elementwise: sums of (|x|/scale)^power as sums of (|x|/to)^power."""
    same = (scale == to) | (value == 0) | np.isinf(value)
    if same.all():
        return value
    shift = power * (np.frexp(scale)[1] - np.frexp(to)[1])
    with np.errstate(over="ignore", under="ignore"):
        return np.where(same, value, np.ldexp(value, np.where(same, 0, shift)))


def _any_grad_by_layer(present: np.ndarray, layer_index: np.ndarray, layers: int) -> np.ndarray:
    """[step, layer]: whether any parameter of the layer has a gradient at the step."""
    out = np.zeros((present.shape[0], layers), dtype=bool)
    for p, layer in enumerate(layer_index.tolist()):
        out[:, layer] |= present[:, p]
    return out


def derive_rows(columns: Columns, base: DerivedColumns, fresh: np.ndarray) -> DerivedColumns:
    """derive_columns(columns) from `base`, the derivation of columns whose first rows these columns copied,
    recomputing only the `fresh` step rows (every derived number depends on its own step only)."""
    steps, params = columns.shape
    part = derive_columns(_rows_of(columns, fresh))
    arrays = {}
    for name in ("present", *_DERIVED_ARRAYS):
        old = getattr(base, name)
        out = np.empty((steps, params), dtype=old.dtype)
        out[: old.shape[0]] = old
        out[fresh] = getattr(part, name)
        arrays[name] = out
    return DerivedColumns(**arrays, layers=part.layers, layer_index=part.layer_index)


_DERIVED_ARRAYS = (
    "update_ratio", "grad_param_ratio", "grad_param_known", "layer_norm", "layer_rms", "layer_known", "depth",
)  # fmt: skip


def _rows_of(columns: Columns, rows: np.ndarray) -> Columns:
    """The columns of some step rows only (copies; the unit bitmaps are not needed to derive)."""
    kinds = {
        kind: dataclasses.replace(
            column, **{name: getattr(column, name)[rows] for name in ("present", *STAT_FIELDS)}, alive={}
        )
        for kind, column in columns.kinds.items()
    }
    return dataclasses.replace(columns, steps=columns.steps[rows], kinds=kinds)
