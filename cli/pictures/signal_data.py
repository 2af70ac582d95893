"""The report's loss and per-module activation series (issue #16), as plain data from `run.signals`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradcheck.analysis.activation_heatmap import activation_values
from gradcheck.analysis.activations import Signals

# Findings of these checks link to these charts (charts.CHART_OF_CHECK takes them).
CHART_OF_SIGNAL = {
    "nan-origin": "activations",
    "saturation": "activations",
    "dead-activations": "activations",
    "loss-nonfinite": "loss",
    "loss-stuck": "loss",
}


@dataclass(frozen=True)
class ModuleSeries:
    """One module over the steps with activations: shares of zeros and at the bounds (None: not recorded)."""

    module: str
    type: str
    zeros: tuple[float | None, ...]  # NaN where the output was non-finite
    saturated: tuple[float | None, ...]  # None for modules without bounds


def module_series(signals: Signals) -> tuple[tuple[int, ...], tuple[ModuleSeries, ...]]:
    """The steps with activations and each module's series over them, in forward order."""
    steps = tuple(signals.steps())
    if not steps:
        return (), ()
    zero_modules, zeros, zero_missing = activation_values(signals, steps, "act-zero")
    bounded, saturated, bound_missing = activation_values(signals, steps, "act-saturated")
    bound_row = {name: i for i, name in enumerate(bounded)}
    types = {name: act.type for step in steps for name, act in signals.activations[step].items()}
    out = []
    for i, name in enumerate(zero_modules):
        row = bound_row.get(name)
        out.append(
            ModuleSeries(
                name,
                types[name],
                _column(zeros[i], zero_missing[i]),
                _column(saturated[row], bound_missing[row]) if row is not None else (None,) * len(steps),
            )
        )
    return steps, tuple(out)


def _column(values: Any, missing: Any) -> tuple[float | None, ...]:
    return tuple(None if gone else float(v) for v, gone in zip(values, missing, strict=True))
