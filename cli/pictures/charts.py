"""The numbers behind every picture, taken from the analysis results the table shows (no second computation).

`chart_data` is the one place the report and the static plots read a run from: the HTML page and matplotlib
draw the same series, so a chart never disagrees with `gradcheck inspect`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcheck.analysis.errors import RunError
from gradcheck.analysis.heatmap import LAYER_METRICS, Heatmap, build_heatmap
from gradcheck.analysis.history import NONFINITE, STATES, ZERO, LayerDepth, depth_profiles, grad_history
from gradcheck.analysis.inspection import Report
from gradcheck.analysis.layer_columns import log10_cells
from gradcheck.analysis.naming import layer_of
from gradcheck.analysis.story import Story, tell

from .signal_data import CHART_OF_SIGNAL, ModuleSeries, module_series

LOSS = "loss"
# One colour per layer, cycled in model order: Tableau 10, which is both matplotlib's default cycle ("tab10")
# and Vega's "tableau10" scheme, so the HTML report and `gradcheck plot` colour a layer alike.
LAYER_COLOURS = (
    "#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b",
    "#eeca3b", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac",
)  # fmt: skip
NONFINITE_COLOUR = "#d62728"  # NaN/Inf markers: red, the table's error colour
ZERO_COLOUR = "#7f7f7f"  # exactly-zero markers: grey, the heatmap's "0"
BAND_COLOUR = "#54a24b"  # the healthy update-ratio band
HEATMAP_SCHEME = "inferno"  # dark = vanishing, bright = exploding, as `gradcheck heatmap`
# Heatmap columns in the report: a wider run is binned as `gradcheck heatmap` bins it (each cell the max of its
# bin, NaN/Inf winning), so a 10,000-step run still gives a page of a few MB at most.
MAX_HEATMAP_COLUMNS = 400
# A group of findings links to the chart that shows it: update-ratio findings to the ratio chart, the rest to ‖g‖.
CHART_OF_CHECK = {"update-ratio-high": "ratio", "update-ratio-low": "ratio"} | CHART_OF_SIGNAL


@dataclass(frozen=True)
class ParamSeries:
    """One parameter over the recorded steps: log10 values (None where undefined) and marker states."""

    param: str
    layer: str
    grad_log_norm: tuple[float | None, ...]  # log10 ‖g‖, from history.grad_series as in the table
    grad_state: tuple[str, ...]  # ok, zero, nonfinite, missing
    update_ratio: tuple[float | None, ...]  # log10 mean|update| / mean|param| (metrics.ParamStep)
    param_log_mean: tuple[float | None, ...]  # log10 mean|param|


@dataclass(frozen=True)
class ChartData:
    """Everything a chart of a run draws, as plain data."""

    run: str
    steps: tuple[int, ...]
    layers: tuple[str, ...]  # model order
    series: tuple[ParamSeries, ...]  # model order
    flow: Mapping[int, list[LayerDepth]]  # step -> mean and max |g| per layer (history.depth_profiles)
    heatmaps: Mapping[str, Heatmap]  # metric -> heatmap, for each metric the run has values for
    band: tuple[float, float]  # healthy log10 update ratio, the thresholds of the update-ratio checks
    vanishing_mean: float
    exploding_mean: float
    context: Mapping[str, tuple[tuple[int, float], ...]]  # name -> (step, value): lr, loss scale, loss, ...
    # Recorded loss and forward activations (issue #16); empty for runs without them.
    loss: tuple[tuple[int, float], ...] = ()
    act_steps: tuple[int, ...] = ()
    activations: tuple[ModuleSeries, ...] = ()  # forward order

    def colour(self, layer: str) -> str:
        """The colour of a layer, the same in every chart and in both renderers."""
        return LAYER_COLOURS[self.layers.index(layer) % len(LAYER_COLOURS)]


def chart_data(report: Report, *, heatmap_columns: int = MAX_HEATMAP_COLUMNS) -> ChartData:
    """The series of a report over all its recorded steps."""
    run = report.run
    series = _param_series(report)
    t = report.config.thresholds
    act_steps, modules = module_series(run.signals)
    return ChartData(
        run=run.path,
        steps=run.steps,
        layers=tuple(dict.fromkeys(s.layer for s in series)),
        series=series,
        flow=depth_profiles(run.columns),
        heatmaps=_heatmaps(report, heatmap_columns),
        band=(t.update_ratio_low, t.update_ratio_high),
        vanishing_mean=t.vanishing_mean,
        exploding_mean=t.exploding_mean,
        context=context_series(*recorded_context(report)),
        loss=tuple(run.signals.losses()),
        act_steps=act_steps,
        activations=modules,
    )


def grouped_findings(report: Report) -> Story:
    """The findings as the terminal groups them (analysis/story.py): likely causes, groups by first step, hints.

    The one place the pictures group findings; `inspect`'s table and `--format json`'s `story` call the same
    `tell`, so the three tell one story.
    """
    return tell(report.findings, report.run.params)


def recorded_context(report: Report) -> tuple[Mapping[int, Any], Mapping[int, Mapping[str, float]]]:
    """Per step, the StepContext and the scalars (loss, ...) the reader found; empty for runs without them."""
    return report.run.contexts, report.run.signals.scalars


def context_series(
    contexts: Mapping[int, Any], scalars: Mapping[int, Mapping[str, float]]
) -> dict[str, tuple[tuple[int, float], ...]]:
    """Scalar series over the steps: learning rate (the largest of the param groups), loss scale, gradient norm
    before clipping, clip factor, AMP-skipped steps, and every recorded scalar but the loss (it has its own
    chart); series with no value are left out.
    """
    out: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(contexts):
        context = contexts[step]
        lrs = [lr for lr in context.lr.values() if math.isfinite(lr)]
        values = {
            "learning rate": max(lrs) if lrs else None,
            "loss scale": context.loss_scale,
            "grad norm before clipping": context.grad_norm,
            "clip factor": context.clip_coef,
            "AMP-skipped steps": float(context.skipped_count) if context.skipped_count else None,
        }
        for name, value in values.items():
            if value is not None:
                out.setdefault(name, []).append((step, float(value)))
    for step in sorted(scalars):
        for name, value in scalars[step].items():
            if name != LOSS:  # drawn in a chart of its own (signal_specs), with NaN/Inf marked
                out.setdefault(name, []).append((step, float(value)))
    return {name: tuple(points) for name, points in out.items()}


def _param_series(report: Report) -> tuple[ParamSeries, ...]:
    """Every parameter's series, read from the run's columns (history.grad_history is the table's ‖g‖ history)."""
    columns, derived = report.run.columns, report.derived
    history = grad_history(columns, report.run.steps)
    recorded = derived.present.any(axis=0).tolist()
    values = columns.kinds["param"]
    mean = np.where(values.present, values.mean_abs, np.nan)
    shown = np.isfinite(mean) & (mean > 0)
    logs = np.full(mean.shape, np.nan)
    logs[shown] = log10_cells(mean[shown])
    norms = _per_param(history.log_norm, history.state == 0)
    states = np.array(STATES, dtype=object)[history.state].T.tolist()
    ratios = _per_param(derived.update_ratio, ~np.isnan(derived.update_ratio))
    means = _per_param(logs, shown)
    return tuple(
        ParamSeries(
            param=param,
            layer=layer_of(param) if recorded[p] else param,
            grad_log_norm=tuple(norms[p]),
            grad_state=tuple(states[p]),
            update_ratio=tuple(ratios[p]),
            param_log_mean=tuple(means[p]),
        )
        for p, param in enumerate(report.run.params)
    )


def _per_param(values: np.ndarray, known: np.ndarray) -> list[list[float | None]]:
    """[step, param] floats as one list per parameter, None where not `known`."""
    return np.where(known, values, None).T.tolist()


def _heatmaps(report: Report, columns: int) -> dict[str, Heatmap]:
    out = {}
    for metric in LAYER_METRICS:  # act-* have modules for rows: the activations section draws them
        try:
            out[metric] = build_heatmap(report, metric, max_columns=columns)
        except RunError:  # no layer has this metric (no update tensors recorded): the choice is left out
            continue
    return out


def marked_steps(series: ParamSeries) -> tuple[list[int], list[int]]:
    """Indices of the steps whose gradient was NaN/Inf, and of those where it was exactly zero."""
    bad = [i for i, state in enumerate(series.grad_state) if state == NONFINITE]
    zero = [i for i, state in enumerate(series.grad_state) if state == ZERO]
    return bad, zero


def heatmap_cells(drawn: Heatmap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of the marker cells of a heatmap: NaN/Inf, exactly zero, nothing recorded."""
    bad = np.isnan(drawn.values) & ~drawn.missing
    zero = np.isneginf(drawn.values) & ~drawn.missing
    return bad, zero, drawn.missing


def rounded(values: Sequence[float | None], digits: int = 3) -> list[float | None]:
    """log10 values rounded for the page: 0.001 decade is 0.2 %, far below what a chart can show."""
    return [None if v is None or not math.isfinite(v) else round(v, digits) for v in values]
