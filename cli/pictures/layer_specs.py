"""The Vega-Lite specs of the per-layer charts: gradient flow at a step, the layers x steps heatmap, the context.

Split from specs.py to keep modules short; the same conventions (column-wise data, flattened in the browser).
"""

from __future__ import annotations

import math
from typing import Any

from gradcheck.analysis.heatmap import METRIC_LABELS, METRICS

from .charts import HEATMAP_SCHEME, NONFINITE_COLOUR, ZERO_COLOUR, ChartData, heatmap_cells, rounded

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"  # an identifier only: nothing is fetched
WIDTH, HEIGHT = 720, 260
HEAT_MARKERS = {"NaN/Inf": "#2b8cff", "exactly zero": "#bdbdbd", "not recorded": "#ffffff"}
_STATE_CODES = ("value", "NaN/Inf", "exactly zero", "not recorded")
# Log axes label the decades only (Vega labels 2..9 times each decade too, which crowds a tall range).
LOG_AXIS = {
    "format": ".0e",
    "labelExpr": "abs(log(datum.value) / LN10 - round(log(datum.value) / LN10)) < 1e-6 ? datum.label : ''",
}


def flow_rows(data: ChartData) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for step in data.steps:
        for depth in data.flow[step]:
            row = rows.setdefault(depth.layer, {"l": depth.layer, "s": [], "mean": [], "max": [], "bad": []})
            row["s"].append(step)
            row["mean"].append(_log(depth.mean_abs))
            row["max"].append(_log(depth.max_abs))
            row["bad"].append(1 if depth.nonfinite else 2 if depth.max_abs == 0 else 0)
    return list(rows.values())


def _log(value: float | None) -> float | None:
    return round(math.log10(value), 3) if value is not None and math.isfinite(value) and value > 0 else None


def flow_spec(data: ChartData) -> dict[str, Any]:
    """plot_grad_flow: max |g| (light) and mean |g| (dark) per layer in model order, at the slider's step."""
    logs = [v for row in flow_rows(data) for v in row["mean"] + row["max"] if v is not None]
    logs += [math.log10(data.vanishing_mean), math.log10(data.exploding_mean)]
    floor = 10.0 ** (math.floor(min(logs)) - 1)
    last = len(data.steps) - 1
    x = {
        "field": "l",
        "type": "nominal",
        "sort": list(data.layers),
        "title": "layer (model order)",
        "axis": {"labelAngle": -40, "labelLimit": 140},
    }
    return {
        "$schema": SCHEMA,
        "width": {"step": max(8, min(80, WIDTH // max(1, len(data.layers))))},
        "height": HEIGHT,
        "params": [
            {"name": "steps", "value": list(data.steps)},
            {
                "name": "at",
                "value": last,
                "bind": {"input": "range", "min": 0, "max": last, "step": 1, "name": "recorded step # "},
            },
        ],
        "title": {
            "text": {"expr": "'mean and max |g| per layer at step ' + steps[at]"},
            "anchor": "start",
            "fontSize": 12,
        },
        "data": {"name": "flow"},
        "transform": [{"flatten": ["s", "mean", "max", "bad"]}, {"filter": "datum.s == steps[at]"}],
        "layer": [*_flow_bars(x, floor), _flow_labels(x, floor), *_threshold_rules(data)],
    }


def _flow_bars(x: dict[str, Any], floor: float) -> list[dict[str, Any]]:
    """Max |g| (light) behind mean |g| (dark), from `floor` up (a log axis has no zero)."""
    return [
        {
            "transform": [
                {"filter": f"isValid(datum.{name})"},
                {"calculate": f"pow(10, datum.{name})", "as": "y"},
            ],
            "mark": {"type": "bar", "color": colour, "opacity": 0.9},
            "encoding": {
                "x": x,
                "y": {
                    "field": "y",
                    "type": "quantitative",
                    "scale": {"type": "log", "domainMin": floor},
                    "title": "|g|",
                    "axis": LOG_AXIS,
                },
                "y2": {"datum": floor},
                "tooltip": [
                    {"field": "l", "title": "layer"},
                    {"field": "s", "title": "step"},
                    {"field": "y", "title": f"{name}|g|", "format": ".3~e"},
                ],
            },
        }
        for name, colour in (("max", "#9ecae1"), ("mean", "#08519c"))
    ]


def _threshold_rules(data: ChartData) -> list[dict[str, Any]]:
    return [
        {
            "data": {"values": [{"y": value, "t": label}]},
            "mark": {"type": "rule", "strokeDash": [4, 3], "color": colour},
            "encoding": {"y": {"field": "y", "type": "quantitative"}, "tooltip": {"field": "t"}},
        }
        for value, label, colour in (
            (data.vanishing_mean, f"vanishing-mean {data.vanishing_mean:g}", "#6a51a3"),
            (data.exploding_mean, f"exploding-mean {data.exploding_mean:g}", NONFINITE_COLOUR),
        )
    ]


def _flow_labels(x: dict[str, Any], floor: float) -> dict[str, Any]:
    """`NaN/Inf` or `all zero` written up the bar of a layer that has no magnitude to draw."""
    return {
        "transform": [
            {"filter": "datum.bad > 0"},
            {"calculate": "datum.bad == 1 ? 'NaN/Inf' : 'all zero'", "as": "word"},
        ],
        "mark": {"type": "text", "angle": 270, "align": "left", "dx": 4},
        "encoding": {
            "x": x,
            "y": {"datum": floor},
            "text": {"field": "word"},
            "color": {
                "field": "word",
                "type": "nominal",
                "legend": None,
                "scale": {"domain": ["NaN/Inf", "all zero"], "range": [NONFINITE_COLOUR, ZERO_COLOUR]},
            },
        },
    }


def heat_rows(data: ChartData) -> list[dict[str, Any]]:
    if not data.heatmaps:
        return []
    first = next(iter(data.heatmaps.values()))
    rows = [{"l": layer, "c": list(range(len(first.columns)))} for layer in first.layers]
    for metric, drawn in data.heatmaps.items():
        key = metric.replace("-", "_")
        bad, zero, missing = heatmap_cells(drawn)
        states = bad * 1 + zero * 2 + missing * 3
        for i, row in enumerate(rows):
            row[f"v_{key}"] = rounded([float(v) for v in drawn.values[i]])
            row[f"k_{key}"] = [int(k) for k in states[i]]
    return rows


def column_rows(data: ChartData) -> list[dict[str, Any]]:
    if not data.heatmaps:
        return []
    columns = next(iter(data.heatmaps.values())).columns
    return [{"c": i, "first": a, "last": b} for i, (a, b) in enumerate(columns)]


def heat_spec(data: ChartData) -> dict[str, Any]:
    """Layers x recorded steps coloured by the chosen log10 metric, as `gradcheck heatmap` (the max of a bin)."""
    metrics = [m for m in METRICS if m in data.heatmaps]
    keys = [m.replace("-", "_") for m in metrics]
    flat = [f"{p}_{k}" for k in keys for p in ("v", "k")]
    codes = "[" + ", ".join(f"'{s}'" for s in _STATE_CODES) + "]"
    base_y = {
        "field": "l",
        "type": "nominal",
        "sort": list(data.layers),
        "title": None,
        "axis": {"labelLimit": 160},
    }
    x = {
        "field": "first",
        "type": "ordinal",
        "title": "recorded step (first of the column)",
        "axis": {"labelOverlap": "parity", "labelAngle": 0},
    }
    tooltip = [
        {"field": "l", "title": "layer"},
        {"field": "steps", "title": "steps"},
        {"field": "show", "title": "value"},
    ]
    return {
        "$schema": SCHEMA,
        "width": WIDTH,
        "height": {"step": max(6, min(22, 400 // max(1, len(data.layers))))},
        "params": [
            {
                "name": "metric",
                "value": keys[0],
                "bind": {
                    "input": "select",
                    "options": keys,
                    "labels": [METRIC_LABELS[m] for m in metrics],
                    "name": "metric ",
                },
            }
        ],
        "data": {"name": "heat"},
        "transform": [
            {"flatten": ["c", *flat]},
            {"lookup": "c", "from": {"data": {"name": "columns"}, "key": "c", "fields": ["first", "last"]}},
            {"calculate": "datum['v_' + metric]", "as": "v"},
            {"calculate": f"{codes}[datum['k_' + metric]]", "as": "state"},
            {
                "calculate": "datum.first == datum.last ? '' + datum.first : datum.first + '-' + datum.last",
                "as": "steps",
            },
            {"calculate": "datum.state == 'value' ? format(datum.v, '.2f') : datum.state", "as": "show"},
        ],
        "encoding": {"x": x, "y": base_y, "tooltip": tooltip},
        "layer": _heat_layers(),
        "resolve": {"scale": {"color": "independent"}},
    }


def _heat_layers() -> list[dict[str, Any]]:
    """Magnitudes on the inferno scale, marker cells (NaN/Inf, zero, not recorded) in fixed colours."""
    return [
        {
            "transform": [{"filter": "datum.state == 'value'"}],
            "mark": "rect",
            "encoding": {
                "color": {
                    "field": "v",
                    "type": "quantitative",
                    "scale": {"scheme": HEATMAP_SCHEME},
                    "title": "log10",
                }
            },
        },
        {
            "transform": [{"filter": "datum.state != 'value'"}],
            "mark": {"type": "rect", "stroke": "#eeeeee", "strokeWidth": 0.5},
            "encoding": {
                "fill": {
                    "field": "state",
                    "type": "nominal",
                    "title": "marker",
                    "scale": {"domain": list(HEAT_MARKERS), "range": list(HEAT_MARKERS.values())},
                }
            },
        },
    ]


def context_spec() -> dict[str, Any]:
    """The recorded context (learning rate, loss scale, loss, ...) as one small chart per series."""
    return {
        "$schema": SCHEMA,
        "data": {"name": "context"},
        "transform": [{"filter": "isValid(datum.v)"}],
        "facet": {"row": {"field": "n", "type": "nominal", "title": None}},
        "spec": {
            "width": WIDTH,
            "height": 90,
            "mark": {"type": "line", "point": True, "strokeWidth": 1.2},
            "encoding": {
                "x": {"field": "s", "type": "quantitative", "title": "step"},
                "y": {"field": "v", "type": "quantitative", "title": None, "scale": {"zero": False}},
                "tooltip": [
                    {"field": "n", "title": "series"},
                    {"field": "s", "title": "step"},
                    {"field": "v", "title": "value", "format": ".4~g"},
                ],
            },
        },
        "resolve": {"scale": {"y": "independent"}},
    }
