"""Derived numbers per parameter and step: update ratio, gradient/parameter ratio, depth profile."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
