"""Health checks over a run: each yields events per (parameter, step), collapsed into findings."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .config import CHECK_IDS, Config
from .formatting import sci
from .metrics import ParamStep
from .naming import layer_of
from .runs import Run
from .thresholds import Thresholds

SEVERITY = {
    "nonfinite": "error",
    "vanishing": "error",
    "exploding": "error",
    "exploding-relative": "warning",
    "spike": "error",
    "growth": "error",
    "shrink": "warning",
    "dead": "error",
    "update-ratio-high": "warning",
    "update-ratio-low": "warning",
}
PROBLEM = {
    "nonfinite": "nonfinite",
    "vanishing": "vanishing",
    "exploding": "exploding",
    "exploding-relative": "exploding",
    "spike": "exploding",
    "growth": "exploding",
    "shrink": "vanishing",
    "dead": "dead",
    "update-ratio-high": "update-ratio-high",
    "update-ratio-low": "update-ratio-low",
}
HINTS = {
    "nonfinite": "lower the learning rate, clip gradients, look for log(0) or division by zero in the loss",
    "vanishing": "consider residual connections, ReLU-family activations, normalization or a better init",
    "exploding": "clip gradients or lower the learning rate",
    "dead": "no gradient reaches it: dead ReLUs (negative bias, too high a learning rate), a detached or "
    "unused parameter",
    "update-ratio-high": "updates are large against the weights: training may be unstable; lower the "
    "learning rate",
    "update-ratio-low": "updates are tiny against the weights: learning may be too slow; raise the learning rate",
}
_KIND_WORDS = {"grad": "gradient", "param": "parameter", "update": "update"}


@dataclass(frozen=True)
class Event:
    """One check firing for one parameter at one step."""

    check: str
    param: str
    kind: str
    step: int
    value: float
    threshold: float
    message: str


@dataclass(frozen=True)
class Finding:
    """A check that fired for one parameter, collapsed over the steps where it fired."""

    check: str
    problem: str
    severity: str
    param: str
    layer: str
    kind: str
    step: int  # first step seen
    last_step: int
    count: int  # how many recorded steps it fired at
    steps: tuple[int, ...]
    value: float  # measured value at the first step
    threshold: float
    message: str  # plain words, for the first step
    hint: str


Rule = Callable[[list[ParamStep], Thresholds], Iterable[Event]]


def nonfinite_events(history: list[ParamStep], _: Thresholds) -> Iterator[Event]:
    """NaN or Inf anywhere in a gradient, parameter or update."""
    for row in history:
        for kind, tensor in (("grad", row.grad), ("param", row.value), ("update", row.update)):
            if tensor is not None and tensor.stats.nan + tensor.stats.inf:
                bad = tensor.stats.nan + tensor.stats.inf
                message = (
                    f"{_KIND_WORDS[kind]}: {tensor.stats.nan} NaN, {tensor.stats.inf} Inf "
                    f"of {tensor.stats.count} values"
                )
                yield Event("nonfinite", row.param, kind, row.step, float(bad), 0.0, message)


def vanishing_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """Tiny mean|g| that is also far below the largest layer's gradient norm at the same step."""
    for row in history:
        mean = _grad_mean(row)
        if mean is None or row.depth is None or mean >= t.vanishing_mean:
            continue
        if row.depth < math.log10(t.vanishing_relative):
            message = (
                f"mean|g| {sci(mean)} < {sci(t.vanishing_mean)}; layer RMS {sci(10**row.depth)} x the largest"
            )
            yield Event("vanishing", row.param, "grad", row.step, mean, t.vanishing_mean, message)


def exploding_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """mean|g| above an absolute bound."""
    for row in history:
        mean = _grad_mean(row)
        if mean is not None and mean > t.exploding_mean:
            message = f"mean|g| {sci(mean)} > {sci(t.exploding_mean)}"
            yield Event("exploding", row.param, "grad", row.step, mean, t.exploding_mean, message)


def spike_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """Gradient norm jumping far above the median of the parameter's earlier recorded steps."""
    earlier: list[float] = []  # kept sorted, so each median is a lookup, not a sort of the whole history
    for step, norm in _grad_norms(history):
        if len(earlier) >= t.spike_history:
            middle = len(earlier) // 2
            baseline = earlier[middle] if len(earlier) % 2 else (earlier[middle - 1] + earlier[middle]) / 2
            if norm >= t.spike_factor * baseline:
                message = f"gradient norm {sci(norm)} is {norm / baseline:.0f}x the median of earlier steps"
                yield Event("spike", history[0].param, "grad", step, norm / baseline, t.spike_factor, message)
        bisect.insort(earlier, norm)


def growth_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """Gradient norm growing by at least growth_factor at each of growth_window recorded steps in a row."""
    return _streak_events("growth", history, t.growth_factor, t.growth_window)


def shrink_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """Gradient norm shrinking to at most shrink_factor at each of shrink_window recorded steps in a row."""
    return _streak_events("shrink", history, t.shrink_factor, t.shrink_window)


def _streak_events(check: str, history: list[ParamStep], factor: float, window: int) -> Iterator[Event]:
    """Steps ending a run of `window` recorded steps whose norm moved by `factor` or more, each from the last.

    A factor above 1 means growth (after >= factor x before), below 1 shrinking (after <= factor x before).
    """
    norms = _grad_norms(history)
    grows = factor > 1
    streak = 0
    for i in range(1, len(norms)):
        (_, before), (step, after) = norms[i - 1], norms[i]
        moved = after >= factor * before if grows else after <= factor * before
        streak = streak + 1 if moved else 0
        if streak >= window:
            message = (
                f"gradient norm {'grew' if grows else 'shrank'} {'>=' if grows else '<='} {factor:g}x per "
                f"recorded step for {streak} steps since step {norms[i - streak][0]}, to {sci(after)}"
            )
            yield Event(check, history[0].param, "grad", step, after / before, factor, message)


def dead_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """A gradient exactly zero at every recorded step (one event per step, so the finding spans them)."""
    grads = [row for row in history if row.grad is not None and row.grad.stats.count]
    if len(grads) >= t.dead_min_steps and all(row.grad.stats.zeros == row.grad.stats.count for row in grads):  # type: ignore[union-attr]
        for row in grads:
            message = f"gradient exactly zero at all {len(grads)} recorded steps"
            yield Event("dead", row.param, "grad", row.step, 0.0, 0.0, message)


def update_ratio_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """Median of log10(mean|update| / mean|param|) over the recorded steps outside [low, high], for weights.

    Judged on the median, not step by step: Adam's first steps move every weight by about the learning rate,
    a transient that says nothing about the run. Events mark the steps that were themselves outside.
    """
    ratios = [
        (row.step, row.update_ratio) for row in history if row.update_ratio is not None and _is_matrix(row)
    ]
    if not ratios:
        return
    median = statistics.median(ratio for _, ratio in ratios)
    if median > t.update_ratio_high:
        check, bound, sign = "update-ratio-high", t.update_ratio_high, 1
    elif median < t.update_ratio_low:
        check, bound, sign = "update-ratio-low", t.update_ratio_low, -1
    else:
        return
    message = (
        f"median update ratio {median:.1f} {'>' if sign > 0 else '<'} {bound:g} over {len(ratios)} step(s)"
    )
    for step, ratio in ratios:
        if sign * (ratio - bound) > 0:
            yield Event(check, history[0].param, "update", step, median, bound, message)


PARAM_RULES: tuple[Rule, ...] = (
    nonfinite_events,
    vanishing_events,
    exploding_events,
    spike_events,
    growth_events,
    shrink_events,
    dead_events,
    update_ratio_events,
)


def relative_exploding_events(
    run: Run, derived: dict[tuple[int, str], ParamStep], bound: Callable[[str], float]
) -> Iterator[Event]:
    """A layer whose gradient norm is far above the last layer's at the same step (AutoTrainer)."""
    for step in run.steps:
        rows = [derived[(step, p)] for p in run.params if (step, p) in derived and derived[(step, p)].grad]
        last = rows[-1].layer_rms if rows else None
        if not last or not math.isfinite(last):
            continue
        for row in rows:
            ratio = (row.layer_rms or 0.0) / last
            if math.isfinite(ratio) and ratio > bound(row.param):
                message = f"layer gradient RMS {ratio:.0f}x the last layer's ({rows[-1].layer})"
                yield Event("exploding-relative", row.param, "grad", step, ratio, bound(row.param), message)


def run_checks(run: Run, derived: dict[tuple[int, str], ParamStep], config: Config) -> list[Finding]:
    """All findings of a run under `config`, errors first, then in model order."""
    events: list[Event] = []
    settings = {param: config.for_param(param) for param in run.params}
    for param in run.params:
        thresholds, ignore = settings[param]
        history = [derived[(step, param)] for step in run.steps if (step, param) in derived]
        for rule in PARAM_RULES:
            events.extend(e for e in rule(history, thresholds) if e.check not in ignore)
    relative = relative_exploding_events(run, derived, lambda p: settings[p][0].exploding_relative)
    events.extend(e for e in relative if e.check not in settings[e.param][1])
    found = _collapse(events, run.params) + _signal_checks.signal_findings(
        run, config
    )  # loss and activations, if recorded
    return sorted(found, key=lambda f: f.severity != "error")  # stable: the order above within a severity


def _collapse(events: list[Event], params: tuple[str, ...]) -> list[Finding]:
    grouped: dict[tuple[str, str, str], list[Event]] = {}
    for event in events:
        grouped.setdefault((event.check, event.param, event.kind), []).append(event)
    position = {param: i for i, param in enumerate(params)}
    findings = []
    for (check, param, kind), group in grouped.items():
        first = min(group, key=lambda e: e.step)
        steps = tuple(sorted({e.step for e in group}))
        findings.append(
            Finding(
                check=check,
                problem=PROBLEM[check],
                severity=SEVERITY[check],
                param=param,
                layer=layer_of(param),
                kind=kind,
                step=steps[0],
                last_step=steps[-1],
                count=len(steps),
                steps=steps,
                value=first.value,
                threshold=first.threshold,
                message=first.message,
                hint=HINTS[PROBLEM[check]],
            )
        )
    order = {check: i for i, check in enumerate(CHECK_IDS)}
    findings.sort(key=lambda f: (f.severity != "error", position[f.param], order[f.check], f.kind))
    return findings


def _is_matrix(row: ParamStep) -> bool:
    """Weights with two or more dimensions: biases and norm scales start at 0 or 1, so their ratio misleads."""
    tensor = row.value or row.update
    return tensor is not None and len(tensor.shape) >= 2


def _grad_mean(row: ParamStep) -> float | None:
    if row.grad is None or not row.grad.stats.finite:
        return None
    return row.grad.stats.mean_abs


def _grad_norms(history: list[ParamStep]) -> list[tuple[int, float]]:
    """(step, norm) of the steps whose gradient is entirely finite and not zero."""
    return [
        (row.step, row.grad.stats.norm)
        for row in history
        if row.grad is not None and row.grad.stats.finite == row.grad.stats.count and row.grad.stats.norm > 0
    ]


# Last: it reads Finding and HINTS from this module (and adds its hints to HINTS).
from . import signal_checks as _signal_checks
