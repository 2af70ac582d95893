"""Derived numbers per parameter and step: update ratio, gradient/parameter ratio, depth profile."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from .naming import layer_of
from .runs import Run, Tensor


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
    return math.log10(top / bottom)


def layer_gradients(run: Run, step: int) -> dict[str, tuple[float, float]]:
    """(L2 norm, RMS) of each layer's gradient at `step`, over the parameters that have a gradient.

    Depth compares RMS, not norms: a norm grows with the square root of the element count, so a scalar next to
    a 1024x1024 matrix would look a thousand times smaller with the same per-element gradient.
    """
    squares: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for param in run.params:
        grad = run.get(step, param, "grad")
        if grad is not None:
            squares[layer_of(param)] += grad.stats.sq_sum
            counts[layer_of(param)] += grad.stats.finite
    return {
        layer: (math.sqrt(total), math.sqrt(total / counts[layer])) if counts[layer] else (math.nan, math.nan)
        for layer, total in squares.items()
    }


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
    return grad.stats.norm / value.stats.norm
