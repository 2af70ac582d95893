"""`inspect --view activations`: one row per module at a step (forward order), the loss line, findings, verdict."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradcheck.analysis.activations import ModuleActivation
from gradcheck.analysis.errors import RunError
from gradcheck.analysis.formatting import sci
from gradcheck.analysis.inspection import Report

from .console import printable
from .loss_line import loss_line
from .names import middle
from .render import findings_lines, verdict


def render_activations(console: Console, report: Report, step: int, selection: tuple[int, ...]) -> None:
    """Print the module table at `step` (the nearest recorded activations at or before it) and the loss line."""
    signals = report.run.signals
    if not signals.activations and not signals.scalars:
        raise RunError(
            f"{report.run.path}: no loss or activations recorded (Recorder(activations=True), recorder.log)"
        )
    at = max((s for s in signals.steps() if s <= step), default=None)
    what = f" - step {at}: module outputs in forward order" if at is not None else " - loss"
    console.print(Text(middle(printable(report.run.path), max(8, console.width - len(what))) + what))
    if at is not None:
        console.print(_table(sorted(signals.activations[at].values(), key=lambda a: a.order)))
    losses = [(s, v) for s, v in signals.losses() if s in selection or not selection]
    if losses:
        console.print(loss_line(losses))
    if report.findings:
        console.print()
        for line in findings_lines(report):
            console.print(line, no_wrap=line.no_wrap, overflow=line.overflow)
    console.print()
    console.print(verdict(report))


def _table(acts: list[ModuleActivation]) -> Table:
    table = Table(box=None, pad_edge=False)
    for title in ("module", "type", "mean", "std", "min", "max", "zeros", "NaN/Inf", "saturated", "dead"):
        table.add_column(title, justify="left" if title in ("module", "type") else "right", no_wrap=True)
    # the first module in forward order with finite inputs and a non-finite output (as the nan-origin check)
    born = next((a.module for a in acts if not a.finite and a.inputs_finite), None)
    for a in acts:
        dead = a.dead_units()
        bad = Text(f"{a.nan}/{a.inf}", style="bold red") if not a.finite else Text("-")
        if a.module == born:
            bad.append(" born here", style="bold red")
        table.add_row(
            printable(a.module),
            a.type,
            *(_number(v) for v in (a.mean, a.std, a.min, a.max)),
            f"{a.zeros / a.count:.0%}" if a.count else "-",
            bad,
            f"{a.saturated:.0%} {a.bound}" if a.saturated is not None else "-",
            f"{dead}/{a.units}" if dead is not None else "-",
        )
    return table


def _number(value: float) -> str:
    return sci(value) if math.isfinite(value) else "-"
