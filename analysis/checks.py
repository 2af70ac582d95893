"""Health checks over a run: masks per check over the run's columns (analysis/rules.py), collapsed into findings.

A finding is one check for one parameter and kind, over the steps where it fired; Python objects are built
only there, never per (step, parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .columns import DerivedColumns
from .config import CHECK_IDS, Config
from .naming import layer_of, layer_role
from .rules import RULES, Fired, Frame
from .runs import Run

SEVERITY = {
    "nonfinite": "error",
    "vanishing": "error",
    "exploding": "error",
    "exploding-relative": "warning",
    "spike": "error",
    "growth": "error",
    "shrink": "warning",
    "dead": "error",
    "dead-units": "error",
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
    "dead-units": "dead",
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
# Errors judged step by step, which need their condition at `min-steps` recorded steps in a row (persistence).
PERSISTENT = frozenset({"vanishing", "exploding", "spike"})
# Checks that do not apply to a kind of layer (naming.layer_role). An embedding row gets no gradient whenever
# its token is absent from the batch (97 % of the rows in a small batch over a large vocabulary), and an
# unused position or token table is zero throughout: neither is a dead unit. The same sparsity dilutes
# mean|update| (rows not in the batch move little or not at all), so a low update ratio says nothing either:
# the healthy character RNN of benchmarks/detection has its embedding at -4.7 while its other weights sit at
# -1.3 to -2.5. A norm's scale and shift are per-feature, not units with an activation of their own: the
# units are judged on the adjacent weight.
EXEMPT = {
    "embedding": frozenset({"dead", "dead-units", "update-ratio-low"}),
    "norm": frozenset({"dead-units"}),
}


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


def run_checks(run: Run, derived: DerivedColumns, config: Config) -> list[Finding]:
    """All findings of a run under `config`, errors first, then in model order.

    `derived` is what metrics derives over `run.columns` (depth and layer RMS are all the rules read of it).
    """
    columns = run.columns
    if config.overrides:
        settings = [config.for_param(param) for param in columns.params]
    else:  # the same for every parameter: settle it once (and fail, if at all, naming the first)
        settings = [config.for_param(columns.params[0])] * len(columns.params) if columns.params else []
    skip = tuple(
        ignore | EXEMPT.get(layer_role(param, run.modules.get(param)) or "", frozenset())
        for param, (_, ignore) in zip(columns.params, settings, strict=True)
    )
    frame = Frame(columns, derived, tuple(t for t, _ in settings), skip, run.ordered)
    rules = RULES if columns.steps.size and columns.params else ()  # an empty run: no cell to judge
    findings = [finding for rule in rules for fired in rule(frame) for finding in _findings(fired, frame)]
    position = {param: i for i, param in enumerate(columns.params)}
    order = {check: i for i, check in enumerate(CHECK_IDS)}
    findings.sort(key=lambda f: (f.severity != "error", position[f.param], order[f.check], f.kind))
    found = findings + _signal_checks.signal_findings(run, config)  # loss and activations, if recorded
    return sorted(found, key=lambda f: f.severity != "error")  # stable: the order above within a severity


def _findings(fired: Fired, frame: Frame) -> list[Finding]:
    """One finding per parameter where `fired` holds, after ignores, exemptions and persistence."""
    mask = fired.mask & frame.enabled(fired.check)
    if fired.check in PERSISTENT:
        mask = _persistent(mask, frame.grad.present, frame.setting("min_steps"))
    steps, params, found = frame.columns.steps, frame.columns.params, []
    for p in np.flatnonzero(mask.any(axis=0)).tolist():
        rows = np.flatnonzero(mask[:, p])
        value, threshold, message = fired.describe(int(rows[0]), p)  # the first step's event
        at = tuple(steps[rows].tolist())
        found.append(
            Finding(
                check=fired.check,
                problem=PROBLEM[fired.check],
                severity=SEVERITY[fired.check],
                param=params[p],
                layer=layer_of(params[p]),
                kind=fired.kind,
                step=at[0],
                last_step=at[-1],
                count=len(at),
                steps=at,
                value=value,
                threshold=threshold,
                message=message,
                hint=HINTS[PROBLEM[fired.check]],
            )
        )
    return found


def _persistent(firing: np.ndarray, graded: np.ndarray, min_steps: np.ndarray) -> np.ndarray:
    """The cells of `firing` in a streak of at least min_steps[p] of column p's `graded` rows in a row.

    Rows without a gradient neither extend nor break a streak ("in a row" means adjacent among the parameter's
    recorded steps with a gradient); a graded row that does not fire ends one.
    """
    firing = firing & graded
    streak = np.cumsum(graded & ~firing, axis=0)  # the same number along one streak of a column
    rows, cols = np.nonzero(firing)
    _, which, length = np.unique(
        cols * (firing.shape[0] + 1) + streak[rows, cols], return_inverse=True, return_counts=True
    )
    kept = np.zeros_like(firing)
    long = length[which] >= min_steps[cols]
    kept[rows[long], cols[long]] = True
    return kept


# Last: it reads Finding and HINTS from this module (and adds its hints to HINTS).
from . import signal_checks as _signal_checks
