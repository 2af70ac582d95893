"""`gradcheck plot`: the report's charts as PNG or SVG through matplotlib, same series and colours."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from gradcheck.analysis.errors import GradcheckError

from .charts import (
    BAND_COLOUR,
    HEATMAP_SCHEME,
    NONFINITE_COLOUR,
    ZERO_COLOUR,
    ChartData,
    heatmap_cells,
    marked_steps,
)
from .layer_specs import HEAT_MARKERS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CHARTS = ("flow", "norms", "ratio", "param", "heatmap")
SIZE = (9.0, 4.5)  # inches; at 100 dpi a 900 x 450 PNG, wide enough for a README or a PR comment
DPI = 100
LEGEND_MAX = 12  # more layers than this: no legend (it would cover the lines)


class ChartError(GradcheckError):
    """A chart asked for what the run does not have (a step not recorded, a metric with no value)."""


def figure(data: ChartData, chart: str, *, step: int | None = None, metric: str = "grad-norm") -> Figure:
    """The matplotlib Figure of one chart (no pyplot: no global state, no display backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if chart == "flow":
        _flow(ax, data, data.steps[-1] if step is None else step)
    elif chart == "heatmap":
        _heatmap(fig, ax, data, metric)
    else:
        _over_steps(ax, data, chart)
    ax.set_title(f"{data.run}: {_TITLES[chart]}", fontsize=10, loc="left")
    return fig


def image_bytes(fig: Figure, image_format: str) -> bytes:
    """The PNG or SVG file of a figure; SVG ids and dates are fixed so the same run gives the same file."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "gradcheck"}):
        fig.savefig(buffer, format=image_format, metadata={"Date": None} if image_format == "svg" else None)
    data = buffer.getvalue()
    if image_format == "svg":
        # matplotlib copies names raw into XML comments: `cat`ed into a CI log, a `::` at a line start or a
        # `##[` would be a workflow command (issue #13, class 6). Character references read the same in XML.
        data = data.replace(b"::", b":&#58;").replace(b"##[", b"#&#35;[")
    return data


_TITLES = {
    "flow": "mean and max |g| per layer",
    "norms": "‖g‖ per parameter",
    "ratio": "update ratio, healthy band shaded",
    "param": "mean|param| per parameter",
    "heatmap": "layers × recorded steps",
}
_FIELDS = {"norms": "grad_log_norm", "ratio": "update_ratio", "param": "param_log_mean"}


def _over_steps(ax: Axes, data: ChartData, chart: str) -> None:
    """One line per parameter over the steps, coloured by layer; NaN/Inf and zero gradients marked on the axis."""
    steps = np.array(data.steps, dtype=float)
    log = chart != "ratio"
    if chart == "ratio":
        low, high = data.band
        ax.axhspan(low, high, color=BAND_COLOUR, alpha=0.15, lw=0, label=f"healthy {low:g} .. {high:g}")
    labelled: set[str] = set()
    for s in data.series:
        raw = getattr(s, _FIELDS[chart])
        values = np.array([np.nan if v is None else v for v in raw], dtype=float)
        if np.isnan(values).all():
            continue
        ys = 10.0**values if log else values
        label = s.layer if s.layer not in labelled else None
        labelled.add(s.layer)
        ax.plot(
            steps,
            ys,
            color=data.colour(s.layer),
            lw=1.2,
            label=label,
            marker="o" if len(steps) <= 40 else None,
            ms=3,
        )
    if chart == "norms":
        _markers(ax, data)
    pad = max(1.0, (data.steps[-1] - data.steps[0]) * 0.02)
    ax.set_xlim(
        data.steps[0] - pad, data.steps[-1] + pad
    )  # every recorded step, even after the last finite value
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(
        {"norms": "‖g‖", "ratio": "log10 mean|update| / mean|param|", "param": "mean|param|"}[chart]
    )
    if len(data.layers) <= LEGEND_MAX:
        ax.legend(fontsize=7, loc="best", ncols=2)


def _markers(ax: Axes, data: ChartData) -> None:
    """Triangles at the bottom of the axes (in axes coordinates: log10 of them is undefined)."""
    transform = ax.get_xaxis_transform()
    for colour, which in ((NONFINITE_COLOUR, 0), (ZERO_COLOUR, 1)):
        xs = [data.steps[i] for s in data.series for i in marked_steps(s)[which]]
        if xs:
            name = "NaN/Inf gradient" if which == 0 else "exactly zero gradient"
            ax.scatter(
                xs,
                [0.02] * len(xs),
                marker="^",
                color=colour,
                s=40,
                transform=transform,
                label=name,
                zorder=3,
                clip_on=False,
            )


def _flow(ax: Axes, data: ChartData, step: int) -> None:
    """plot_grad_flow: max |g| (light) behind mean |g| (dark) per layer in model order, thresholds dashed."""
    if step not in data.flow:
        raise ChartError(f"{data.run}: step {step} was not recorded")
    layers = data.flow[step]
    x = np.arange(len(layers))
    means = np.array([np.nan if d.mean_abs is None or d.mean_abs <= 0 else d.mean_abs for d in layers])
    maxes = np.array([np.nan if d.max_abs is None or d.max_abs <= 0 else d.max_abs for d in layers])
    logs = [
        math.log10(v) for v in (*means, *maxes, data.vanishing_mean, data.exploding_mean) if np.isfinite(v)
    ]
    floor = 10.0 ** (math.floor(min(logs)) - 1)
    ax.bar(x, np.nan_to_num(maxes, nan=floor) - floor, bottom=floor, color="#9ecae1", label="max |g|")
    ax.bar(x, np.nan_to_num(means, nan=floor) - floor, bottom=floor, color="#08519c", label="mean |g|")
    ax.axhline(
        data.vanishing_mean, color="#6a51a3", ls="--", lw=1, label=f"vanishing-mean {data.vanishing_mean:g}"
    )
    ax.axhline(
        data.exploding_mean,
        color=NONFINITE_COLOUR,
        ls="--",
        lw=1,
        label=f"exploding-mean {data.exploding_mean:g}",
    )
    for i, depth in enumerate(layers):
        if depth.nonfinite:
            ax.text(
                i,
                floor,
                " NaN/Inf",
                rotation=90,
                color=NONFINITE_COLOUR,
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xticks(x, [d.layer for d in layers], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("|g|")
    ax.set_xlabel(f"layer (model order), step {step}")
    ax.legend(fontsize=7, loc="best")


def _heatmap(fig: Figure, ax: Axes, data: ChartData, metric: str) -> None:
    """The `gradcheck heatmap` grid: inferno for magnitudes, fixed colours for the marker cells."""
    from matplotlib.colors import ListedColormap

    if metric not in data.heatmaps:
        raise ChartError(f"{data.run}: no layer has a value for --metric {metric}")
    drawn = data.heatmaps[metric]
    bad, zero, missing = heatmap_cells(drawn)
    values = np.where(drawn.finite, drawn.values, np.nan)
    image = ax.imshow(values, aspect="auto", cmap=HEATMAP_SCHEME, interpolation="nearest")
    markers = np.full(values.shape, np.nan)
    for code, mask in enumerate((bad, zero, missing)):
        markers[mask] = code
    ax.imshow(
        markers,
        aspect="auto",
        cmap=ListedColormap(list(HEAT_MARKERS.values())),
        vmin=0,
        vmax=2,
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, label=drawn.metric.replace("-", " ") + " (log10)")
    ax.set_yticks(range(len(drawn.layers)), drawn.layers, fontsize=7)
    ticks = np.unique(np.linspace(0, len(drawn.columns) - 1, min(8, len(drawn.columns))).astype(int))
    ax.set_xticks(ticks, [str(drawn.columns[i][0]) for i in ticks])
    ax.set_xlabel("recorded step (first of the column)")
    for name, colour in HEAT_MARKERS.items():
        ax.scatter([], [], marker="s", color=colour, edgecolors="#999999", label=name)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.12), ncols=3, frameon=False)
