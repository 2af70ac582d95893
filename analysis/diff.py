"""Compare two runs layer by layer: gradient norms and update ratios at the steps both recorded."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .errors import RunError
from .metrics import layer_gradients, log10_ratio
from .naming import layer_of
from .runs import Run, load_run
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


@dataclass(frozen=True)
class RunDiff:
    """The comparison of run A with run B."""

    run_a: Run
    run_b: Run
    steps: tuple[int, ...]  # recorded by both runs
    layers: tuple[LayerDiff, ...]  # A's model order, then the layers only B has
    factor: float
    update_factor: float

    @property
    def changed(self) -> list[LayerDiff]:
        """The layers that moved more than a factor allows."""
        return [layer for layer in self.layers if layer.flags]


def diff_runs(
    run_a: str | os.PathLike[str],
    run_b: str | os.PathLike[str],
    *,
    factor: float = DEFAULT_FACTOR,
    update_factor: float = DEFAULT_UPDATE_FACTOR,
    scan: ScanOptions | None = None,
) -> RunDiff:
    """Read both runs and compare them; raises RunError when they have no recorded step in common."""
    a, b = load_run(run_a, scan), load_run(run_b, scan)
    return compare_runs(a, b, factor=factor, update_factor=update_factor)


def compare_runs(a: Run, b: Run, *, factor: float, update_factor: float) -> RunDiff:
    """Compare two loaded runs at the steps both recorded."""
    steps = tuple(sorted(set(a.steps) & set(b.steps)))
    if not steps:
        raise RunError(
            f"{a.path} (steps {_span(a.steps)}) and {b.path} (steps {_span(b.steps)}) "
            "have no recorded step in common"
        )
    norms_a, norms_b = _per_step(a, steps, _layer_norms), _per_step(b, steps, _layer_norms)
    updates_a, updates_b = _per_step(a, steps, _update_ratios), _per_step(b, steps, _update_ratios)
    layers_a, layers_b = _layers(a), _layers(b)
    rows = []
    for layer in list(layers_a) + [name for name in layers_b if name not in layers_a]:
        if layer not in layers_b or layer not in layers_a:
            status = "removed" if layer not in layers_b else "added"
            rows.append(LayerDiff(layer, status, None, None, ()))
            continue
        grad = _change(steps, layer, norms_a, norms_b)
        update = _change(steps, layer, updates_a, updates_b)
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


LayerValues = dict[int, dict[str, float]]  # step -> layer -> log10 of the metric


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
            ratios[layer] = log10_ratio(updates.mean_abs, values.mean_abs)  # the quotient may underflow
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
