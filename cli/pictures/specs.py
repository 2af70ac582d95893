"""The Vega-Lite specs of the HTML report and the compact data tables they share.

Data travels column-wise (one row per parameter or layer holding arrays over the steps) and is expanded in the
browser by Vega-Lite's `flatten`, so a 100-parameter x 200-step run stays well under a megabyte of JSON.
"""

from __future__ import annotations

import math
from typing import Any

from .charts import (
    BAND_COLOUR,
    LAYER_COLOURS,
    NONFINITE_COLOUR,
    ZERO_COLOUR,
    ChartData,
    marked_steps,
    rounded,
)
from .layer_specs import (
    HEIGHT,
    LOG_AXIS,
    SCHEMA,
    WIDTH,
    column_rows,
    context_spec,
    flow_rows,
    flow_spec,
    heat_rows,
    heat_spec,
)
from .signal_specs import activations_spec, loss_spec, signal_datasets

ALL_LAYERS = "(all layers)"
LEGEND_MAX = 20  # more layers than this: no legend (it would be taller than the chart); the select filters


def datasets(data: ChartData) -> dict[str, list[dict[str, Any]]]:
    """The named datasets every spec refers to (Vega-Lite `datasets`)."""
    steps = list(data.steps)
    return {
        "series": [
            {
                "p": s.param,
                "l": s.layer,
                "s": steps,
                "g": rounded(s.grad_log_norm),
                "r": rounded(s.update_ratio),
                "m": rounded(s.param_log_mean),
            }
            for s in data.series
        ],
        "marks": [
            {"p": s.param, "l": s.layer, "s": data.steps[i], "k": kind}
            for s in data.series
            for kind, indices in zip(("NaN/Inf", "exactly zero"), marked_steps(s), strict=True)
            for i in indices
        ],
        "flow": flow_rows(data),
        "heat": heat_rows(data),
        "columns": column_rows(data),
        "context": [
            {"n": name, "s": step, "v": value if math.isfinite(value) else None}
            for name, points in data.context.items()
            for step, value in points
        ],
    } | signal_datasets(data.loss, data.act_steps, data.activations)


def specs(data: ChartData) -> dict[str, dict[str, Any]]:
    """Chart id -> Vega-Lite spec, in the order the page shows them; charts with nothing to draw are left out."""
    out = {
        "norms": _over_steps(data, "g", "‖g‖ of each parameter", log=True, marks=True),
        "ratio": _over_steps(data, "r", "log10 mean|update| / mean|param|", log=False, marks=False),
        "param": _over_steps(data, "m", "mean|param|", log=True, marks=False),
        "flow": flow_spec(data),
        "heatmap": heat_spec(data),
    }
    if not any(s.update_ratio.count(None) < len(s.update_ratio) for s in data.series):
        del out["ratio"]
    if not any(s.param_log_mean.count(None) < len(s.param_log_mean) for s in data.series):
        del out["param"]
    if not data.heatmaps:
        del out["heatmap"]
    if data.loss:
        out["loss"] = loss_spec(data.loss)
    if data.activations:
        out["activations"] = activations_spec(data.activations)
    if data.context:
        out["context"] = context_spec()
    return out


def _layer_colour(data: ChartData) -> dict[str, Any]:
    colours = [LAYER_COLOURS[i % len(LAYER_COLOURS)] for i in range(len(data.layers))]
    legend = {"title": "layer", "columns": 2} if len(data.layers) <= LEGEND_MAX else None
    return {
        "field": "l",
        "type": "nominal",
        "scale": {"domain": list(data.layers), "range": colours},
        "legend": legend,
    }


def _layer_param(data: ChartData) -> dict[str, Any]:
    """A select of one layer (or all): `gradcheck` finding links set it."""
    options = [ALL_LAYERS, *data.layers]
    return {
        "name": "layer",
        "value": ALL_LAYERS,
        "bind": {"input": "select", "options": options, "name": "layer "},
    }


def _layer_filter() -> dict[str, str]:
    return {"filter": f"layer == '{ALL_LAYERS}' || datum.l == layer"}


def _over_steps(data: ChartData, field: str, title: str, *, log: bool, marks: bool) -> dict[str, Any]:
    """One line per parameter over the recorded steps, coloured by layer; zoom on x, hover for values."""
    value = (
        {"calculate": f"pow(10, datum.{field})", "as": "y"}
        if log
        else {"calculate": f"datum.{field}", "as": "y"}
    )
    lines: dict[str, Any] = {
        "data": {"name": "series"},
        "transform": [
            {"flatten": ["s", field]},
            {"filter": f"isValid(datum.{field})"},
            _layer_filter(),
            value,
        ],
        "params": [{"name": "zoom", "select": {"type": "interval", "encodings": ["x"]}, "bind": "scales"}],
        "mark": {"type": "line", "point": len(data.steps) <= 40, "strokeWidth": 1.2, "clip": True},
        "encoding": {
            "x": {
                "field": "s",
                "type": "quantitative",
                "title": "step",
                "scale": {"domain": _step_domain(data), "nice": False},
            },
            "y": {
                "field": "y",
                "type": "quantitative",
                "title": title,
                "scale": {"type": "log" if log else "linear"},
                "axis": LOG_AXIS if log else {},
            },
            "color": _layer_colour(data),
            "detail": {"field": "p"},
            "tooltip": [
                {"field": "p", "title": "parameter"},
                {"field": "s", "title": "step"},
                {"field": "y", "title": title, "format": ".3~e" if log else ".2f"},
            ],
        },
    }
    layers: list[dict[str, Any]] = []
    if field == "r":
        layers.append(_band(data))
    layers.append(lines)
    if marks:
        layers.append(_marks())
    return {
        "$schema": SCHEMA,
        "width": WIDTH,
        "height": HEIGHT,
        "params": [_layer_param(data)],
        "layer": layers,
        "resolve": {"scale": {"color": "independent"}},
    }


def _step_domain(data: ChartData) -> list[int]:
    """Every chart over the steps spans all recorded steps, even where a series has no value (NaN at the end)."""
    return [data.steps[0], data.steps[-1]] if data.steps else [0, 1]


def _band(data: ChartData) -> dict[str, Any]:
    low, high = data.band
    return {
        "data": {"values": [{"low": low, "high": high}]},
        "mark": {"type": "rect", "color": BAND_COLOUR, "opacity": 0.15},
        "encoding": {
            "x": {"value": 0},
            "x2": {"value": "width"},
            "y": {"field": "low", "type": "quantitative"},
            "y2": {"field": "high"},
            "tooltip": {"value": f"healthy band {low:g} .. {high:g} (update-ratio-low / -high)"},
        },
    }


def _marks() -> dict[str, Any]:
    """NaN/Inf and exactly-zero gradients: triangles on the step axis (log10 of them is undefined)."""
    return {
        "data": {"name": "marks"},
        "transform": [_layer_filter()],
        "mark": {"type": "point", "shape": "triangle-up", "filled": True, "size": 70},
        "encoding": {
            "x": {"field": "s", "type": "quantitative"},
            "y": {"value": HEIGHT - 4},
            "color": {
                "field": "k",
                "type": "nominal",
                "scale": {"domain": ["NaN/Inf", "exactly zero"], "range": [NONFINITE_COLOUR, ZERO_COLOUR]},
                "legend": {"title": "gradient"},
            },
            "tooltip": [
                {"field": "p", "title": "parameter"},
                {"field": "s", "title": "step"},
                {"field": "k", "title": "gradient"},
            ],
        },
    }
