"""Checks on the loss and forward activations a run recorded beside its gradients (analysis/activations.py).

`nan-origin`, `saturation`, `dead-activations`, `loss-nonfinite` and `loss-stuck` see failures whose gradients look
ordinary. A finding names a module (or `loss`) in its `param` field and `act` or `loss` in its `kind`. Runs
recorded without activations or loss get none of these findings, and their other findings are unchanged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

from .activations import ROOT_NAME, ModuleActivation, Signals, merge_alive
from .checks import HINTS, Finding
from .config import SIGNAL_CHECK_IDS, Config  # noqa: F401 (SIGNAL_CHECK_IDS re-exported; defined in config)
from .formatting import sci
from .runs import Run
from .thresholds import Thresholds

SEVERITY = {
    "nan-origin": "error",
    "loss-nonfinite": "error",
    "saturation": "warning",
    "dead-activations": "error",
    "loss-stuck": "warning",
}
LOSS = "loss"  # the `param` of loss findings

# Saturation. A bounded output (sigmoid, tanh, softmax; bounds in recording/activations.py) with at least
# Thresholds.saturation_share of its values at the bounds (evidence there), at this many consecutive recorded
# steps. A confident output layer late in training is healthy: `confident_softmax` (1500 steps) climbs to 0.88
# of its softmax rows one-hot, so an output layer (one no later module consumes) counts only when its streak
# starts within the first SATURATION_WINDOW recorded steps.
SATURATION_WINDOW = 3
# Saturation is an error when it is held: from within the first SATURATION_WINDOW recorded steps through the last,
# over at least SATURATION_HELD recorded steps (a whole run, not a phase), and the module is hidden (its pinned
# output starves every layer below of gradient: Glorot & Bengio 2010) or its output is pinned to one value, the
# spread max - min of every recorded output below PINNED_SPREAD (the output no longer depends on the input).
# Evidence (benchmarks/detection_activations, 30 recorded steps): unscaled pixels into a tanh hidden layer hold
# 0.97-0.99 for all 30; the sigmoid output of unscaled pixels is 0 to 1e-26 from the second recorded step on; a
# 1-unit softmax is exactly 1.0 throughout. The healthy twins never reach 0.9 at any step, and a confident
# output layer (`confident_softmax`, up to 0.88) spreads over [0, 1]: a confident classifier answers different
# classes for different inputs. A resumed run whose output layer is confident from its first recorded step stays
# a warning unless its outputs are all the same value.
SATURATION_HELD = 10
PINNED_SPREAD = 0.01
# Dead units from activations: a ReLU-family output with at least Thresholds.dead_activations_share of its units
# zero for every input of this many consecutive recorded steps. The window matches the gradient-based dead
# check's persistence: a unit silent for one batch does not count.
DEAD_WINDOW = 3
# Loss stuck: the median loss of the last third of the recorded steps is not at least Thresholds.loss_stuck_drop
# below the higher of the first loss and the median of the first third (medians of thirds smooth minibatch
# noise; evidence next to the threshold). Comparing thirds of the whole run keeps a late plateau healthy: the
# first third still holds the early, higher loss (`confident_softmax` plateaus from step ~600 of 1500 and is
# not flagged). Needs STUCK_MIN_STEPS recorded losses: the evidence is from 30; a short run cannot tell a slow
# start from a stuck loss (a healthy 16-step HF Trainer fine-tune at its default lr 5e-5 moved its loss 0.2 %
# over 8 logged steps, tests/test_adapter_transformers.py), and CI smoke runs are short.
STUCK_MIN_STEPS = 10
# ...and the drop must exceed this many (robust, MAD-based) standard errors of the two medians: a loss that
# only jitters is not progress (a 1-unit softmax under BCE jumps between 40 and 70 from batch to batch: its
# 11 % "drop" is noise).
STUCK_NOISE = 2.0

SIGNAL_HINTS = {
    "nan-origin": "look at that module's forward: log/sqrt/division of a value that reaches 0, exp overflow, "
    "or its weights already non-finite from an earlier update",
    "loss-nonfinite": "the loss itself is NaN/Inf: look for log(0) or division by zero in the loss, or lower "
    "the learning rate",
    "saturation": "outputs pinned at the bounds pass almost no gradient: scale the inputs, use a smaller init, "
    "or pair the output activation with the matching loss (logits into BCEWithLogits / CrossEntropy)",
    "dead-activations": "ReLU units that never fire: lower the learning rate, check the bias init, or use LeakyReLU",
    "loss-stuck": "the loss does not go down: check the loss matches the task and the labels, and that the "
    "learning rate is not far too low",
}
HINTS.update(SIGNAL_HINTS)  # the story prints hints by problem from the shared table


def signal_findings(run: Run, config: Config) -> list[Finding]:
    """Findings from the run's recorded loss and activations (none when it recorded neither)."""
    signals = run.signals
    if not signals.activations and not signals.scalars:
        return []
    found = [
        *nan_origin(run),
        *loss_nonfinite(signals),
        *saturation(signals, config),
        *dead_activations(signals, config),
        *loss_stuck(signals, config),
    ]
    # --ignore and the config's ignore lists; an override's `params` globs match the module name (or `loss`),
    # for its thresholds too
    return [f for f in found if f.check not in config.for_param(f.param)[1]]


def _finding(
    check: str,
    who: str,
    kind: str,
    steps: list[int],
    value: float,
    threshold: float,
    message: str,
    severity: str | None = None,
) -> Finding:
    return Finding(
        check=check, problem=check, severity=severity or SEVERITY[check], param=who, layer=who, kind=kind,
        step=steps[0], last_step=steps[-1], count=len(steps), steps=tuple(steps), value=value,
        threshold=threshold, message=message, hint=SIGNAL_HINTS[check],
    )  # fmt: skip


def nan_origin(run: Run) -> Iterator[Finding]:
    """Where the first non-finite value came from: a module, the loss, or the backward pass."""
    signals = run.signals
    losses = {step: value for step, value in signals.losses() if not math.isfinite(value)}
    grad = run.columns.kinds["grad"]  # absent cells count no NaN
    grads = set(run.columns.steps[((grad.nan + grad.inf) > 0).any(axis=1)].tolist())
    bad_acts = {s for s, acts in signals.activations.items() if any(not a.finite for a in acts.values())}
    candidates = bad_acts | (losses.keys() | grads) & signals.activations.keys()
    if not candidates:
        return
    step = min(candidates)
    acts = sorted(signals.activations[step].values(), key=lambda a: a.order)
    bad = [a for a in acts if not a.finite]
    if not bad:
        where = "the loss" if step in losses else "the backward pass"
        message = f"NaN born in {where} at step {step}: every module output was finite"
        yield _finding("nan-origin", LOSS if step in losses else "backward", "act", [step], 1.0, 0.0, message)
        return
    born = [a for a in bad if a.inputs_finite]
    if born:
        a = born[0]
        message = (
            f"NaN born in {a.module} ({a.type}) at step {step}: {_nonfinite(a)} while its inputs were finite"
        )
        if _params_nonfinite(run, step, a.module):
            message += "; its parameters already held NaN/Inf"
    else:
        a = bad[0]
        message = (
            f"non-finite values entered the model at step {step}: {a.module} ({a.type}) got them as input"
        )
    yield _finding("nan-origin", a.module, "act", [step], float(a.nan + a.inf), 0.0, message)


def _nonfinite(a: ModuleActivation) -> str:
    return f"its output has {a.nan} NaN, {a.inf} Inf of {a.count} values"


def _params_nonfinite(run: Run, step: int, module: str) -> bool:
    prefix = "" if module == ROOT_NAME else module + "."
    s, values = run.columns.step_index(step), run.columns.kinds["param"]
    bad = [] if s is None else ((values.nan[s] + values.inf[s]) > 0).tolist()
    return any(bad and bad[p] and param.startswith(prefix) for p, param in enumerate(run.columns.params))


def loss_nonfinite(signals: Signals) -> Iterator[Finding]:
    """A recorded loss that is NaN or Inf."""
    steps = [step for step, value in signals.losses() if not math.isfinite(value)]
    if steps:
        value = dict(signals.losses())[steps[0]]
        message = f"loss is {value} at step {steps[0]}"
        yield _finding("loss-nonfinite", LOSS, "loss", steps, value, 0.0, message)


def _series(signals: Signals) -> dict[str, list[tuple[int, ModuleActivation]]]:
    out: dict[str, list[tuple[int, ModuleActivation]]] = {}
    for step in signals.steps():
        for name, act in signals.activations[step].items():
            out.setdefault(name, []).append((step, act))
    return out


def _is_output(name: str, order: int, acts: dict[str, ModuleActivation]) -> bool:
    """No module other than its ancestors returns after it: nothing in the model consumes its output."""
    return all(
        a.order <= order or a.module == ROOT_NAME or name.startswith(a.module + ".") for a in acts.values()
    )


def saturation(signals: Signals, config: Config | None = None) -> Iterator[Finding]:
    """A sigmoid/tanh/softmax output mostly at its bounds over SATURATION_WINDOW recorded steps."""
    early = signals.steps()[:SATURATION_WINDOW]
    for name, series in _series(signals).items():
        share = _thresholds(config, name).saturation_share
        hits = [(step, a) for step, a in series if a.saturated is not None and a.saturated >= share]
        streak = _streak([step for step, _ in hits], [step for step, _ in series], SATURATION_WINDOW)
        if not streak:
            continue
        step, act = hits[[s for s, _ in hits].index(streak[0])]
        output = _is_output(name, act.order, signals.activations[step])
        if output and streak[0] not in early:
            continue
        message = (
            f"{act.saturated:.0%} of {name} ({act.type}) {'rows' if act.bound == 'softmax' else 'values'} "
            f"at the {act.bound} bounds from step {streak[0]} ({len(streak)} recorded steps)"
        )
        held = streak[0] in early and streak[-1] == signals.steps()[-1] and len(streak) >= SATURATION_HELD
        pinned = all(a.max - a.min < PINNED_SPREAD for s, a in series if s in set(streak))
        if held and (pinned or not output):
            message += ", to the last step" + (f": every output within {PINNED_SPREAD} of one value" * pinned)
        severity = "error" if held and (pinned or not output) else None
        value = act.saturated or 0.0
        yield _finding("saturation", name, "act", streak, value, share, message, severity)


def dead_activations(signals: Signals, config: Config | None = None) -> Iterator[Finding]:
    """ReLU-family units that stayed at zero for every input over DEAD_WINDOW recorded steps."""
    for name, series in _series(signals).items():
        share = _thresholds(config, name).dead_activations_share
        with_bits = [(step, a) for step, a in series if a.alive is not None]
        firing: list[int] = []
        worst: tuple[int, int, int] | None = None
        for i in range(DEAD_WINDOW - 1, len(with_bits)):
            window = with_bits[i - DEAD_WINDOW + 1 : i + 1]
            if len({len(a.alive or b"") for _, a in window}) != 1:
                continue
            act = window[-1][1]
            dead = act.dead_units(merge_alive([a.alive or b"" for _, a in window])) or 0
            if act.units and dead / act.units >= share:
                firing.append(window[-1][0])
                worst = worst or (window[0][0], dead, act.units)
        if firing and worst:
            start, dead, units = worst
            message = f"{dead} of {units} units of {name} never fired over steps {start}-{firing[0]}"
            yield _finding("dead-activations", name, "act", firing, dead / units, share, message)


def loss_stuck(signals: Signals, config: Config | None = None) -> Iterator[Finding]:
    """The recorded loss did not go down between the first and the last third of the run."""
    least = _thresholds(config, LOSS).loss_stuck_drop
    losses = [(step, value) for step, value in signals.losses() if math.isfinite(value)]
    if len(losses) < STUCK_MIN_STEPS:  # at least 3 values per third, for a variance
        return
    third = len(losses) // 3
    first, last = [v for _, v in losses[:third]], [v for _, v in losses[-third:]]
    # The first loss counts too: a run that converged before its second recorded step is not stuck.
    early, late = max(losses[0][1], statistics.median(first)), statistics.median(last)
    if early == 0:
        return
    drop = (early - late) / abs(early)
    noise = STUCK_NOISE * 1.4826 * (_mad(first) + _mad(last)) / math.sqrt(third)
    if drop < least or early - late < noise:
        message = (
            f"loss went from {sci(early)} to {sci(late)} (medians of the first and last third of "
            f"{len(losses)} recorded steps): {drop:.1%} lower, below {least:.0%}"
        )
        steps = [step for step, _ in losses]
        yield _finding("loss-stuck", LOSS, "loss", [steps[0], steps[-1]], drop, least, message)


def _thresholds(config: Config | None, who: str) -> Thresholds:
    """The thresholds for a module (or `loss`): the config's, with the overrides whose params globs match it."""
    return config.for_param(who)[0] if config is not None else Thresholds()


def _mad(values: list[float]) -> float:
    """Median absolute deviation: the spread of minibatch noise, blind to the one-off early high loss."""
    middle = statistics.median(values)
    return statistics.median(abs(v - middle) for v in values)


def _streak(hits: list[int], steps: list[int], window: int) -> list[int]:
    """The first run of at least `window` consecutive recorded steps that are all hits, with its extension."""
    hit, run = set(hits), []
    for step in steps:
        if step in hit:
            run.append(step)
        elif len(run) >= window:
            return run
        else:
            run = []
    return run if len(run) >= window else []
