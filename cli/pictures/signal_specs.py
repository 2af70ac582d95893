"""The report's loss chart and per-module activation chart (issue #16), for runs that recorded them.

Data comes from `run.signals` (analysis/activations.py), the numbers `--view activations` and the heatmap's
`act-zero`/`act-saturated` show: per module in forward order, the share of exact zeros of its output and, for
sigmoid/tanh/softmax modules, the share at the bounds; the loss as recorded, NaN/Inf marked in red.
"""

from __future__ import annotations

import math
from typing import Any

from .charts import LAYER_COLOURS, NONFINITE_COLOUR, rounded
from .layer_specs import HEIGHT, SCHEMA, WIDTH
from .signal_data import ModuleSeries

ALL_MODULES = "(all layers)"  # the value finding links use for "every layer" (specs.ALL_LAYERS)
MEASURES = {"z": "share of exact zeros", "a": "share at the sigmoid/tanh/softmax bounds"}


def signal_datasets(
    loss: tuple[tuple[int, float], ...], steps: tuple[int, ...], modules: tuple[ModuleSeries, ...]
) -> dict[str, list[dict[str, Any]]]:
    """The `loss` and `acts` datasets (empty lists for a run without them)."""
    return {
        "loss": [
            {"s": step, "v": value if math.isfinite(value) else None, "bad": not math.isfinite(value)}
            for step, value in loss
        ],
        "acts": [
            {"m": m.module, "t": m.type, "s": list(steps), "z": _shares(m.zeros), "a": _shares(m.saturated)}
            for m in modules
        ],
    }


def _shares(values: tuple[float | None, ...]) -> list[float | None]:
    """Shares for JSON: a non-finite output (NaN) has no share and shows as a gap."""
    return rounded([v if v is not None and math.isfinite(v) else None for v in values])


def loss_spec(loss: tuple[tuple[int, float], ...]) -> dict[str, Any]:
    """The recorded loss over the steps (log scale when every finite value is positive), NaN/Inf as red rules."""
    finite = [v for _, v in loss if math.isfinite(v)]
    log = bool(finite) and min(finite) > 0
    return {
        "$schema": SCHEMA,
        "width": WIDTH,
        "height": HEIGHT,
        "data": {"name": "loss"},
        "layer": [
            {
                "transform": [{"filter": "isValid(datum.v)"}],
                "mark": {"type": "line", "point": True, "strokeWidth": 1.4},
                "encoding": {
                    "x": {"field": "s", "type": "quantitative", "title": "step"},
                    "y": {
                        "field": "v",
                        "type": "quantitative",
                        "title": "loss",
                        "scale": {"type": "log"} if log else {"zero": False},
                    },
                    "tooltip": [
                        {"field": "s", "title": "step"},
                        {"field": "v", "title": "loss", "format": ".4~g"},
                    ],
                },
            },
            {
                "transform": [{"filter": "datum.bad"}],
                "mark": {"type": "rule", "color": NONFINITE_COLOUR, "strokeWidth": 2},
                "encoding": {
                    "x": {"field": "s", "type": "quantitative"},
                    "tooltip": [{"field": "s", "title": "NaN/Inf loss at step"}],
                },
            },
        ],
    }


def activations_spec(modules: tuple[ModuleSeries, ...]) -> dict[str, Any]:
    """One line per module over the steps: the share of zeros or at the bounds (a select), 0 to 1."""
    names = [m.module for m in modules]
    colours = [LAYER_COLOURS[i % len(LAYER_COLOURS)] for i in range(len(names))]
    return {
        "$schema": SCHEMA,
        "width": WIDTH,
        "height": HEIGHT,
        "params": [
            {
                "name": "measure",
                "value": "z",
                "bind": {
                    "input": "select",
                    "options": list(MEASURES),
                    "labels": list(MEASURES.values()),
                    "name": "measure ",
                },
            },
            {
                "name": "layer",
                "value": ALL_MODULES,
                "bind": {"input": "select", "options": [ALL_MODULES, *names], "name": "module "},
            },
        ],
        "data": {"name": "acts"},
        "transform": [
            {"filter": f"layer == '{ALL_MODULES}' || datum.m == layer"},
            {"flatten": ["s", "z", "a"]},
            {"calculate": "datum[measure]", "as": "y"},
            {"filter": "isValid(datum.y)"},
        ],
        "mark": {"type": "line", "point": True, "strokeWidth": 1.2},
        "encoding": {
            "x": {"field": "s", "type": "quantitative", "title": "step"},
            "y": {
                "field": "y",
                "type": "quantitative",
                "title": "share of the output",
                "scale": {"domain": [0, 1]},
            },
            "color": {
                "field": "m",
                "type": "nominal",
                "sort": names,
                "scale": {"domain": names, "range": colours},
                "legend": {"title": "module", "columns": 2} if len(names) <= 20 else None,
            },
            "tooltip": [
                {"field": "m", "title": "module"},
                {"field": "t", "title": "type"},
                {"field": "s", "title": "step"},
                {"field": "y", "title": "share", "format": ".1%"},
            ],
        },
    }
