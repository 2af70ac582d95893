"""The terminal view of a report: a per-parameter table for one step, the findings, and a verdict."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradcheck.analysis.checks import Finding
from gradcheck.analysis.formatting import sci
from gradcheck.analysis.inspection import Report
from gradcheck.analysis.metrics import ParamStep

from .console import printable

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}
_LABEL = {"error": "ERROR", "warning": "warn"}
_MAGNITUDE_PROBLEMS = frozenset({"vanishing", "exploding", "nonfinite", "dead"})


def render_report(console: Console, report: Report, step: int) -> None:
    """Print table, findings and verdict for `step`."""
    console.print(_table(report, step))
    if report.findings:
        console.print()
        console.print(_findings_table(report.findings))
        console.print()
        for problem, hint in dict.fromkeys((f.problem, f.hint) for f in report.findings):
            console.print(Text(f"hint ({problem}): {hint}", style="dim"))
    console.print()
    console.print(verdict(report))


def _table(report: Report, step: int) -> Table:
    t = report.config.thresholds
    table = Table(
        title=Text(f"{printable(report.run.path)} - step {step} of {len(report.run.steps)} recorded"),
        title_justify="left",
        header_style="bold",
    )
    longest = max((len(printable(p)) for p in report.run.params), default=9)
    table.add_column("parameter", overflow="fold", min_width=min(longest, 40))
    for name in ("shape", "dtype", "min|g|", "mean|g|", "max|g|", "‖g‖", "log10", "upd ratio", "depth"):
        table.add_column(name, justify="left" if name in ("shape", "dtype") else "right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    by_param = _findings_at(report.findings, step)
    rows = report.rows_at(step)
    for i, row in enumerate(rows):
        found = by_param.get(row.param, [])
        worst = _worst(found)
        magnitude_style = (
            _SEVERITY_STYLE[worst.severity] if worst and worst.problem in _MAGNITUDE_PROBLEMS else ""
        )
        grad = row.grad.stats if row.grad else None
        last_of_layer = i + 1 == len(rows) or rows[i + 1].layer != row.layer
        table.add_row(
            Text(printable(row.param)),
            _shape(row),
            _dtype(row),
            sci(grad.min_abs if grad else None),
            Text(sci(grad.mean_abs if grad else None), style=magnitude_style),
            sci(grad.max_abs if grad else None),
            sci(grad.norm if grad else None),
            Text(_log10(grad.mean_abs if grad else None), style=magnitude_style),
            _ratio_cell(row.update_ratio, t.update_ratio_low, t.update_ratio_high),
            "-" if row.depth is None else f"{row.depth:.1f}",
            _status_cell(found),
            end_section=last_of_layer,
        )
    return table


def _findings_at(findings: list[Finding], step: int) -> dict[str, list[Finding]]:
    by_param: dict[str, list[Finding]] = {}
    for finding in findings:
        if step in finding.steps:
            by_param.setdefault(finding.param, []).append(finding)
    return by_param


def _worst(found: list[Finding]) -> Finding | None:
    errors = [f for f in found if f.severity == "error"]
    return (errors or found or [None])[0]


def _status_cell(found: list[Finding]) -> Text:
    worst = _worst(found)
    if worst is None:
        return Text("ok", style="green")
    problems = ", ".join(dict.fromkeys(f.problem for f in found if f.severity == worst.severity))
    return Text(f"{_LABEL[worst.severity]} {problems}", style=_SEVERITY_STYLE[worst.severity])


def _ratio_cell(ratio: float | None, low: float, high: float) -> Text:
    if ratio is None:
        return Text("-")
    return Text(f"{ratio:.1f}", style="green" if low <= ratio <= high else "yellow")


def _log10(value: float | None) -> str:
    if value is None or not math.isfinite(value) or value <= 0:
        return "-"
    return f"{math.log10(value):.1f}"


def _shape(row: ParamStep) -> str:
    tensor = row.tensor
    return "×".join(map(str, tensor.shape)) if tensor and tensor.shape else "scalar"


def _dtype(row: ParamStep) -> str:
    tensor = row.tensor
    return tensor.dtype if tensor else "-"


def _findings_table(findings: list[Finding]) -> Table:
    """One line per (parameter, problem): the checks that found it, all their steps, the earliest detail."""
    table = Table(box=None, title="Findings", title_justify="left", title_style="bold", header_style="bold")
    for name in ("", "problem", "parameter", "steps", "detail"):
        table.add_column(name, no_wrap=name != "detail", overflow="fold")
    groups: dict[tuple[str, str], list[Finding]] = {}
    for finding in findings:
        groups.setdefault((finding.param, finding.problem), []).append(finding)
    for (param, problem), group in groups.items():
        steps = sorted({step for f in group for step in f.steps})
        earliest = min(group, key=lambda f: f.step)
        where = str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]} ({len(steps)})"
        checks = list(dict.fromkeys(f.check for f in group))
        table.add_row(
            Text(_LABEL[group[0].severity], style=_SEVERITY_STYLE[group[0].severity]),
            problem if checks == [problem] else f"{problem} ({', '.join(checks)})",
            Text(printable(param)),
            where,
            Text(printable(earliest.message)),  # may quote a layer name: never rich markup
        )
    return table


def verdict(report: Report) -> Text:
    """One line that says whether the run is healthy and, if not, what and since when."""
    scope = f"{len(report.run.params)} parameters, {len(report.run.steps)} recorded steps"
    errors = [f for f in report.findings if f.severity == "error"]
    warnings = [f for f in report.findings if f.severity == "warning"]
    if not report.findings:
        return Text(f"✓ healthy: no findings ({scope})", style="bold green")
    warned = f"{len({f.param for f in warnings})} parameter(s) with warnings"
    if not errors:
        problems = ", ".join(dict.fromkeys(f.problem for f in warnings))
        return Text(f"! warnings only: {problems}; {warned} ({scope})", style="bold yellow")
    problems = ", ".join(dict.fromkeys(f.problem for f in sorted(errors, key=lambda f: f.step)))
    first = min(f.step for f in errors)
    text = f"✗ unhealthy: {problems} in {len({f.param for f in errors})} parameter(s), first at step {first}"
    return Text(text + (f"; {warned}" if warnings else "") + f" ({scope})", style="bold red")
