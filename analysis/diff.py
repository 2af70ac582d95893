"""Compare two runs layer by layer: gradient norms and update ratios at the steps both recorded."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .errors import RunError
from .metrics import layer_gradients
from .naming import layer_of
from .runs import Note, Run, load_run
from .scanning import ScanOptions
from .stats import TensorStats, merge_all

# One order of magnitude: layers a change does not touch drift less (about 2x in healthy_mlp against
# faster_layer_mlp), and the DL4J update ratio is read in decades too.
DEFAULT_FACTOR = 10.0
DEFAULT_UPDATE_FACTOR = 10.0


@dataclass(frozen=True)
class Change:
    """How one layer metric moved from run A to run B, in log10 units over the matching steps."""

    median: float  # median over the matching steps of log10(B) - log10(A); +-inf when one side is zero
    worst: float  # the value of largest magnitude
    worst_step: int
    steps: int  # matching steps where both runs have the metric


@dataclass(frozen=True)
class LayerDiff:
    """One layer of the comparison: present in which run, what moved, and whether it moved too much."""

    layer: str
    status: str  # "ok", "changed", "added" (only in B) or "removed" (only in A)
    grad_norm: Change | None  # log10(layer gradient norm B / A)
    update_ratio: Change | None  # log10 update ratio B minus A
    flags: tuple[str, ...]  # "grad-norm" and/or "update-ratio" when that change exceeds its factor


LayerValues = dict[int, dict[str, float]]  # step -> layer -> log10 of the metric


@dataclass(frozen=True)
class Measures:
    """What a comparison needs of one run: per step and layer, log10 gradient norm and log10 update ratio.

    Made from a run (`measure`) or read from a baseline file (analysis/baseline.py), so either side of a
    diff can be a few KB instead of the run.
    """

    path: str
    steps: tuple[int, ...]
    layers: tuple[str, ...]  # model order
    norms: LayerValues
    updates: LayerValues
    unreadable: tuple[Note, ...] = ()


class DisjointError(RunError):
    """Two runs with no layer in common: every layer added or removed would pass a diff by accident."""


@dataclass(frozen=True)
class RunDiff:
    """The comparison of run A with run B."""

    run_a: Measures
    run_b: Measures
    steps: tuple[int, ...]  # recorded by both runs
    layers: tuple[LayerDiff, ...]  # A's model order, then the layers only B has
    factor: float
    update_factor: float

    @property
    def changed(self) -> list[LayerDiff]:
        """The layers that moved more than a factor allows."""
        return [layer for layer in self.layers if layer.flags]


def measure(run: Run) -> Measures:
    """The per-layer measures of every recorded step of a loaded run."""
    steps = run.steps
    return Measures(
        path=run.path,
        steps=steps,
        layers=tuple(_layers(run)),
        norms=_per_step(run, steps, _layer_norms),
        updates=_per_step(run, steps, _update_ratios),
        unreadable=run.unreadable,
    )


def diff_runs(
    run_a: str | os.PathLike[str] | Measures,
    run_b: str | os.PathLike[str] | Measures,
    *,
    factor: float = DEFAULT_FACTOR,
    update_factor: float = DEFAULT_UPDATE_FACTOR,
    scan: ScanOptions | None = None,
    allow_disjoint: bool = False,
) -> RunDiff:
    """Read both runs (or take their measures) and compare them; RunError when no step or no layer matches."""
    a, b = (side if isinstance(side, Measures) else measure(load_run(side, scan)) for side in (run_a, run_b))
    return compare_measures(a, b, factor=factor, update_factor=update_factor, allow_disjoint=allow_disjoint)


def compare_runs(a: Run | Measures, b: Run | Measures, *, factor: float, update_factor: float) -> RunDiff:
    """Compare two loaded runs at the steps both recorded."""
    a, b = (side if isinstance(side, Measures) else measure(side) for side in (a, b))
    return compare_measures(a, b, factor=factor, update_factor=update_factor)


def compare_measures(
    a: Measures, b: Measures, *, factor: float, update_factor: float, allow_disjoint: bool = False
) -> RunDiff:
    """Compare two runs' measures at the steps both recorded and the layers both have."""
    steps = tuple(sorted(set(a.steps) & set(b.steps)))
    if not steps:
        raise RunError(
            f"{a.path} (steps {_span(a.steps)}) and {b.path} (steps {_span(b.steps)}) "
            "have no recorded step in common"
        )
    if not allow_disjoint and a.layers and b.layers and set(a.layers).isdisjoint(b.layers):
        raise DisjointError(
            f"{a.path} ({len(a.layers)} layers, e.g. {a.layers[0]!r}) and {b.path} ({len(b.layers)} layers, "
            f"e.g. {b.layers[0]!r}) share no layer: renamed? (--allow-disjoint to compare anyway)"
        )
    rows = []
    for layer in list(a.layers) + [name for name in b.layers if name not in a.layers]:
        if layer not in b.layers or layer not in a.layers:
            status = "removed" if layer not in b.layers else "added"
            rows.append(LayerDiff(layer, status, None, None, ()))
            continue
        grad = _change(steps, layer, a.norms, b.norms)
        update = _change(steps, layer, a.updates, b.updates)
        flags = tuple(
            name
            for name, change, limit in (("grad-norm", grad, factor), ("update-ratio", update, update_factor))
            if change is not None and abs(change.median) > math.log10(limit)
        )
        rows.append(LayerDiff(layer, "changed" if flags else "ok", grad, update, flags))
    return RunDiff(a, b, steps, tuple(rows), factor, update_factor)


def _span(steps: tuple[int, ...]) -> str:
    return "none" if not steps else f"{steps[0]}..{steps[-1]} ({len(steps)})"


def _layers(run: Run) -> dict[str, None]:
    return dict.fromkeys(layer_of(param) for param in run.params)


def _per_step(
    run: Run, steps: tuple[int, ...], metric: Callable[[Run, int], dict[str, float]]
) -> LayerValues:
    return {step: metric(run, step) for step in steps}


def _layer_norms(run: Run, step: int) -> dict[str, float]:
    """log10 of each layer's gradient L2 norm (-inf for an all-zero gradient); layers without one left out."""
    return {
        layer: _log10(norm) for layer, (norm, _) in layer_gradients(run, step).items() if not math.isnan(norm)
    }


def _update_ratios(run: Run, step: int) -> dict[str, float]:
    """log10(mean|update| / mean|param|) over all elements of each layer that has both."""
    pairs: dict[str, list[tuple[TensorStats, TensorStats]]] = {}
    for param in run.params:
        update, value = run.get(step, param, "update"), run.get(step, param, "param")
        if update is not None and value is not None:
            pairs.setdefault(layer_of(param), []).append((update.stats, value.stats))
    ratios = {}
    for layer, both in pairs.items():
        updates, values = merge_all(u for u, _ in both), merge_all(v for _, v in both)
        if updates.finite and values.finite and values.abs_sum > 0 and updates.abs_sum > 0:
            ratios[layer] = math.log10(updates.mean_abs / values.mean_abs)
    return ratios


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else -math.inf


def _change(steps: tuple[int, ...], layer: str, a: LayerValues, b: LayerValues) -> Change | None:
    """Median and worst of log10 B - log10 A over the steps where both runs have a value."""
    moves: list[tuple[float, int]] = []
    for step in steps:
        if layer in a[step] and layer in b[step]:
            moves.append((_difference(b[step][layer], a[step][layer]), step))
    if not moves:
        return None
    worst, worst_step = max(moves, key=lambda move: abs(move[0]))
    return Change(statistics.median(m for m, _ in moves), worst, worst_step, len(moves))


def _difference(b: float, a: float) -> float:
    """b - a, where two equal infinities (a layer all-zero in both runs) count as no change."""
    return 0.0 if a == b else b - a
