"""Findings as a story: identical findings grouped across parameters, ordered by first step, causes linked.

Shared by the terminal table, the JSON document and the HTML report, so all three tell the same story. Pure:
findings in, plain data out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .checks import HINTS, Finding

# Problems a run-away learning rate produces: a warning on the update ratio before them makes it the likely cause.
_LR_CONSEQUENCES = frozenset({"nonfinite", "exploding", "vanishing", "dead"})
# NaN/Inf that follows an explosion on the same parameters is the explosion overflowing, not a log(0) in the loss.
_EXPLOSION_CONSEQUENCES = frozenset({"nonfinite"})
_ERROR_WORDS = {"nonfinite": "the NaN/Inf", "exploding": "the explosion", "vanishing": "the vanishing"}
_ERROR_WORDS |= {"dead": "the dead gradients"}
LR_HINT = "lower the learning rate (or warm it up), then clip gradients"


@dataclass(frozen=True)
class Group:
    """One problem that started at one step, on one or more parameters (model order)."""

    problem: str
    severity: str
    first_step: int
    last_step: int
    params: tuple[str, ...]
    checks: tuple[str, ...]  # the checks that found it, in first-seen order
    all_params: bool  # every parameter of the run has it
    message: str  # the earliest finding's message (of the first parameter at that step)
    findings: tuple[Finding, ...]

    @property
    def label(self) -> str:
        """The problem, or the one warning check that found it (`exploding-relative`)."""
        return label(self.problem, self.severity, self.checks)

    @property
    def who(self) -> str:
        """`all 6 parameters`, `0.weight`, or `3 parameters`."""
        if self.all_params and len(self.params) > 1:
            return f"all {len(self.params)} parameters"
        return self.params[0] if len(self.params) == 1 else f"{len(self.params)} parameters"

    @property
    def when(self) -> str:
        """`step 6` or `steps 6-10`."""
        if self.first_step == self.last_step:
            return f"step {self.first_step}"
        return f"steps {self.first_step}-{self.last_step}"


@dataclass(frozen=True)
class Cause:
    """An earlier group that likely explains later error groups on some of the same parameters."""

    cause: Group
    effects: tuple[Group, ...]  # the earliest group of each problem it explains, by first step
    text: str  # one line: "update ratio 0.3 (log10) from step 0 preceded the NaN/Inf at step 11: ..."
    hint: str


@dataclass(frozen=True)
class Story:
    """The findings of a run, told cause first."""

    groups: tuple[Group, ...]  # by first step; at one step errors first, then model order
    causes: tuple[Cause, ...]
    hints: tuple[tuple[str, str], ...]  # (problem, hint) of the problems no cause explains


def tell(findings: Sequence[Finding], params: Sequence[str]) -> Story:
    """Group `findings` of a run whose parameters are `params` (model order) and link causes to effects."""
    groups = _groups(findings, params)
    causes = _causes(groups)
    explained = {g.problem for cause in causes for g in (cause.cause, *cause.effects)}
    hints = [
        (g.problem, HINTS[g.problem]) for g in groups if g.problem not in explained and g.problem in HINTS
    ]
    return Story(tuple(groups), tuple(causes), tuple(dict.fromkeys(hints)))


def first_steps(findings: Sequence[Finding]) -> dict[tuple[str, str], int]:
    """(parameter, problem) -> the first step any of its checks fired."""
    first: dict[tuple[str, str], int] = {}
    for f in findings:
        key = (f.param, f.problem)
        first[key] = min(first.get(key, f.step), f.step)
    return first


def worst_of(findings: Sequence[Finding]) -> tuple[str, str, int] | None:
    """(severity, label, first step) of a parameter's worst finding over the run: errors first, then earliest.

    The label is the problem, or the check for a warning that only resembles it (see `label`).
    """
    if not findings:
        return None
    worst = min(findings, key=lambda f: (f.severity != "error", f.step))
    checks = tuple(dict.fromkeys(f.check for f in findings if f.problem == worst.problem))
    return worst.severity, label(worst.problem, worst.severity, checks), worst.step


def label(problem: str, severity: str, checks: Sequence[str]) -> str:
    """What to call a finding: its problem, except a warning from one check that is not the problem itself
    (`exploding-relative`, `shrink`): those only point towards the problem, and say so by their name."""
    if severity == "warning" and len(checks) == 1 and checks[0] != problem:
        return checks[0]
    return problem


def _groups(findings: Sequence[Finding], params: Sequence[str]) -> list[Group]:
    position = {param: i for i, param in enumerate(params)}
    per_param: dict[tuple[str, str, str], list[Finding]] = {}
    for f in findings:
        per_param.setdefault((f.problem, f.severity, f.param), []).append(f)
    keyed: dict[tuple[str, str, int], list[list[Finding]]] = {}
    for (problem, severity, _), found in per_param.items():
        keyed.setdefault((problem, severity, min(f.step for f in found)), []).append(found)
    groups = []
    for (problem, severity, first), members in keyed.items():
        members.sort(key=lambda found: position.get(found[0].param, len(position)))
        flat = [f for found in members for f in found]
        earliest = min(flat, key=lambda f: (f.step, position.get(f.param, len(position))))
        names = tuple(found[0].param for found in members)
        groups.append(
            Group(
                problem=problem,
                severity=severity,
                first_step=first,
                last_step=max(f.last_step for f in flat),
                params=names,
                checks=tuple(dict.fromkeys(f.check for f in flat)),
                all_params=len(names) == len(params),
                message=earliest.message,
                findings=tuple(flat),
            )
        )
    groups.sort(key=lambda g: (g.first_step, g.severity != "error", position.get(g.params[0], 0)))
    return groups


def _causes(groups: list[Group]) -> list[Cause]:
    """A too-high update ratio before errors on the same parameters; else an explosion before NaN/Inf."""
    for cause in groups:
        if cause.problem == "update-ratio-high":
            effects = _effects(groups, cause, _LR_CONSEQUENCES)
            if effects:
                ratio = cause.findings[0].value
                text = (
                    f"update ratio {ratio:.2g} (log10) from step {cause.first_step} preceded "
                    f"{_listed(effects)}: learning rate too high?"
                )
                return [Cause(cause, effects, text, LR_HINT)]
    causes = []
    for cause in groups:
        if cause.problem == "exploding" and cause.severity == "error":
            effects = _effects(groups, cause, _EXPLOSION_CONSEQUENCES)
            if effects:
                text = (
                    f"the explosion from step {cause.first_step} preceded {_listed(effects)}: it overflowed"
                )
                causes.append(Cause(cause, effects, text, HINTS["exploding"]))
                break
    return causes


def _effects(groups: list[Group], cause: Group, problems: frozenset[str]) -> tuple[Group, ...]:
    """The earliest error group of each of `problems` that starts after `cause` on a shared parameter."""
    effects: dict[str, Group] = {}
    for effect in groups:
        wanted = effect.severity == "error" and effect.problem in problems and effect.problem not in effects
        if (
            wanted
            and cause.first_step < effect.first_step
            and not set(cause.params).isdisjoint(effect.params)
        ):
            effects[effect.problem] = effect
    return tuple(effects.values())


def _listed(effects: tuple[Group, ...]) -> str:
    parts = [f"{_ERROR_WORDS[e.problem]} at step {e.first_step}" for e in effects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
