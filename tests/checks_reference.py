"""The per-object checks as they were before issue #14: the yardstick for the vectorised analysis/rules.py.

Each rule loops over one parameter's `ParamStep` rows (metrics.derive); tests/test_checks_columns.py runs both
on the sample runs and on generated runs and asserts the same findings, field for field and in order.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from gradcheck.analysis.checks import EXEMPT, HINTS, PERSISTENT, PROBLEM, SEVERITY, Finding
from gradcheck.analysis.config import CHECK_IDS, Config
from gradcheck.analysis.formatting import beyond, bound, sci, times
from gradcheck.analysis.metrics import ParamStep, log10_ratio
from gradcheck.analysis.naming import layer_of, layer_role
from gradcheck.analysis.rules import KIND_WORDS as _KIND_WORDS
from gradcheck.analysis.runs import Run
from gradcheck.analysis.signal_checks import signal_findings
from gradcheck.analysis.thresholds import Thresholds
from gradcheck.analysis.units import dead_count, unit_count


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
                f"mean|g| {beyond(mean, t.vanishing_mean, scientific=True)} < {bound(t.vanishing_mean)}; "
                f"layer RMS {sci(10**row.depth)} of the largest"
            )
            yield Event("vanishing", row.param, "grad", row.step, mean, t.vanishing_mean, message)


def exploding_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """mean|g| above an absolute bound."""
    for row in history:
        mean = _grad_mean(row)
        if mean is not None and mean > t.exploding_mean:
            message = f"mean|g| {beyond(mean, t.exploding_mean, scientific=True)} > {bound(t.exploding_mean)}"
            yield Event("exploding", row.param, "grad", row.step, mean, t.exploding_mean, message)


def spike_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """Gradient norm far above the median of the parameter's earlier recorded steps, and above all of them.

    Above the earlier maximum too: after convergence the norm falls by orders of magnitude, and an ordinary
    batch gradient is then 200x the median of the collapsed steps, yet below the norms of early training.
    Steps that spiked stay out of the baseline, so a sustained jump is measured against the steps before it.
    """
    earlier: list[float] = []  # kept sorted, so each median is a lookup, not a sort of the whole history
    for step, norm in _grad_norms(history):
        if len(earlier) >= t.spike_history:
            middle = len(earlier) // 2
            baseline = earlier[middle] if len(earlier) % 2 else (earlier[middle - 1] + earlier[middle]) / 2
            if norm >= t.spike_factor * baseline and norm > earlier[-1]:
                message = f"gradient norm {sci(norm)} is {times(norm / baseline)} the median of earlier steps"
                yield Event("spike", history[0].param, "grad", step, norm / baseline, t.spike_factor, message)
                continue
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
                f"gradient norm {'grew' if grows else 'shrank'} {'>=' if grows else '<='} {bound(factor)}× per "
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


def dead_units_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """Units (indices along axis 0) whose gradient is exactly zero from some recorded step to the last one.

    A ReLU unit that dies stays dead: from then on its row of the gradient is zero at every recorded step,
    while before it died (step 0 at least, for a high learning rate) it had gradients. So the dead units of
    step S are those zero at every recorded step from S to the end (the OR of the per-unit bitmaps, see
    units.py), counted when that stretch has dead_min_steps recorded steps or more. Events at every step
    from the first S where dead_units of the units are dead, so the finding spans the dying.
    """
    grads = [row for row in history if row.grad is not None and row.grad.stats.alive is not None]
    units = unit_count(grads[-1].grad.shape) if grads else 0  # type: ignore[union-attr]
    if len(grads) < t.dead_min_steps or units < 2 or not any(row.grad.stats.alive for row in grads):  # type: ignore[union-attr]
        return  # zero throughout: `dead`'s finding, not a fraction of units
    alive, suffix = 0, []
    for row in reversed(grads):
        alive |= row.grad.stats.alive  # type: ignore[union-attr,operator]
        suffix.append(dead_count(alive, units))
    suffix.reverse()  # suffix[i]: units zero at every recorded step from grads[i] on
    judged = len(grads) - t.dead_min_steps + 1
    first = next((i for i in range(judged) if suffix[i] / units >= t.dead_units), None)
    if first is None:
        return
    dead = suffix[first]
    message = (
        f"dead units {math.floor(100 * dead / units)} % ({dead}/{units}) from step {grads[first].step} on"
    )
    for row in grads[first:]:
        yield Event("dead-units", row.param, "grad", row.step, dead / units, t.dead_units, message)


def update_ratio_events(history: list[ParamStep], t: Thresholds) -> Iterator[Event]:
    """Median of log10(mean|update| / the weight's first mean|param|) outside [low, high], for weights.

    Against the weight's scale at its first recorded step, not its current one: a learning rate far too high
    inflates the weights until update and weight are back in the usual proportion (docs/CHECKS.md). Judged on
    the median over the recorded steps, not step by step. Events mark the steps that were themselves outside.
    """
    scale = next(
        (row.value.stats.mean_abs for row in history if _is_matrix(row) and _positive_mean(row)), None
    )
    if scale is None:
        return
    ratios = [
        (row.step, log10_ratio(row.update.stats.mean_abs, scale))  # type: ignore[union-attr]
        for row in history
        if row.update is not None and _is_matrix(row) and _positive(row.update.stats.mean_abs)
    ]
    if not ratios:
        return
    median = statistics.median(ratio for _, ratio in ratios)
    if median > t.update_ratio_high:
        check, limit, sign = "update-ratio-high", t.update_ratio_high, 1
    elif median < t.update_ratio_low:
        check, limit, sign = "update-ratio-low", t.update_ratio_low, -1
    else:
        return
    message = (
        f"median update ratio {beyond(median, limit)} {'>' if sign > 0 else '<'} {bound(limit)} "
        f"over {len(ratios)} step(s)"
    )
    for step, ratio in ratios:
        if sign * (ratio - limit) > 0:
            yield Event(check, history[0].param, "update", step, median, limit, message)


PARAM_RULES: tuple[Rule, ...] = (
    nonfinite_events,
    vanishing_events,
    exploding_events,
    spike_events,
    growth_events,
    shrink_events,
    dead_events,
    dead_units_events,
    update_ratio_events,
)


def relative_exploding_events(
    run: Run, derived: dict[tuple[int, str], ParamStep], bound: Callable[[str], float]
) -> Iterator[Event]:
    """A layer whose gradient norm is far above the last layer's at the same step (AutoTrainer).

    The last layer is the output-most by the recorded model order; without one (plain dumps, no `order`
    metadata) there is no telling which layer is last, so the check does not run.
    """
    if not run.ordered:
        return
    for step in run.steps:
        rows = [derived[(step, p)] for p in run.params if (step, p) in derived and derived[(step, p)].grad]
        last = rows[-1].layer_rms if rows else None
        if not last or not math.isfinite(last):
            continue
        for row in rows:
            ratio = (row.layer_rms or 0.0) / last
            if math.isfinite(ratio) and ratio > bound(row.param):
                message = f"layer gradient RMS {times(ratio)} the last layer's ({rows[-1].layer})"
                yield Event("exploding-relative", row.param, "grad", step, ratio, bound(row.param), message)


def run_checks_rows(run: Run, derived: dict[tuple[int, str], ParamStep], config: Config) -> list[Finding]:
    """All findings of a run under `config`, errors first, then in model order."""
    events: list[Event] = []
    settings = {param: config.for_param(param) for param in run.params}
    for param in run.params:
        thresholds, ignore = settings[param]
        skip = ignore | EXEMPT.get(layer_role(param, run.modules.get(param)) or "", frozenset())
        history = [derived[(step, param)] for step in run.steps if (step, param) in derived]
        graded = [row.step for row in history if row.grad is not None]
        for rule in PARAM_RULES:
            found = [e for e in rule(history, thresholds) if e.check not in skip]
            events.extend(_persistent(found, graded, thresholds.min_steps))
    relative = relative_exploding_events(run, derived, lambda p: settings[p][0].exploding_relative)
    events.extend(e for e in relative if e.check not in settings[e.param][1])
    found = _collapse(events, run.params) + signal_findings(run, config)  # loss and activations, if recorded
    return sorted(found, key=lambda f: f.severity != "error")  # stable: the order above within a severity


def _persistent(events: list[Event], steps: list[int], min_steps: int) -> list[Event]:
    """Events of the PERSISTENT checks kept only where they fire at min_steps recorded steps in a row.

    `steps` are the parameter's recorded steps with a gradient, in order; "in a row" means adjacent there.
    """
    position = {step: i for i, step in enumerate(steps)}
    firing: dict[str, set[int]] = {}
    for event in events:
        if event.check in PERSISTENT:
            firing.setdefault(event.check, set()).add(position[event.step])
    kept: dict[str, set[int]] = {}
    for check, places in firing.items():
        kept[check] = set()
        for place in places:
            if place - 1 in places:
                continue  # not the start of a streak
            streak = list(itertools.takewhile(places.__contains__, itertools.count(place)))
            if len(streak) >= min_steps:
                kept[check].update(streak)
    return [e for e in events if e.check not in PERSISTENT or position[e.step] in kept[e.check]]


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


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _positive_mean(row: ParamStep) -> bool:
    return row.value is not None and _positive(row.value.stats.mean_abs)


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
