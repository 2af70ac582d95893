"""The modules x steps matrices of `gradcheck heatmap --metric act-zero|act-saturated` (issue #16).

Rows are the modules that recorded forward activations (analysis/activations.py), in forward order; columns the
run's recorded steps, as for the layer metrics of analysis/heatmap.py, which bins them. A cell holds a share in
[0, 1], not a log10 magnitude: the exact zeros of the module's output (dead ReLUs, `act-zero`), or its values
(softmax: rows) at the sigmoid/tanh/softmax bounds (`act-saturated`, only for bounded modules). A non-finite
output is NaN, the heatmap's NaN/Inf marker; a step without activations is `missing`.
"""

from __future__ import annotations

import math

import numpy as np

from .activations import ModuleActivation, Signals

ACT_METRICS = ("act-zero", "act-saturated")
ACT_METRIC_LABELS = {
    "act-zero": "share of exact zeros in the module's output",
    "act-saturated": "share of the module's output at its sigmoid/tanh/softmax bounds",
}
ACT_NEEDS = {
    "act-zero": "needs activations: Recorder(activations=True)",
    "act-saturated": "needs activations of a sigmoid, tanh or softmax module: Recorder(activations=True)",
}


def activation_values(
    signals: Signals, steps: tuple[int, ...], metric: str
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Modules in forward order and, per module and step of `steps`, the cell value and the missing mask."""
    share = _zero_share if metric == "act-zero" else _saturated_share
    recorded = [step for step in steps if step in signals.activations]
    order: dict[str, int] = {}
    for step in recorded:
        for name, act in signals.activations[step].items():
            if share(act) is not None:
                order.setdefault(name, act.order)
    modules = tuple(sorted(order, key=lambda name: order[name]))  # forward order of the first step seen
    index = {name: i for i, name in enumerate(modules)}
    values = np.full((len(modules), len(steps)), np.nan)
    missing = np.ones(values.shape, dtype=bool)
    column = {step: i for i, step in enumerate(steps)}
    for step in recorded:
        for name, act in signals.activations[step].items():
            value = share(act)
            if value is not None:
                values[index[name], column[step]] = value
                missing[index[name], column[step]] = False
    return modules, values, missing


def _zero_share(act: ModuleActivation) -> float | None:
    if not act.finite:
        return math.nan
    return act.zeros / act.count if act.count else None


def _saturated_share(act: ModuleActivation) -> float | None:
    if act.saturated is None:
        return None
    return act.saturated if act.finite else math.nan
