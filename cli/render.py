"""The terminal view of a report: a per-parameter table for one step, the findings, and a verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradcheck.analysis.checks import Finding
from gradcheck.analysis.context_summary import context_lines
from gradcheck.analysis.formatting import sci
from gradcheck.analysis.history import grad_series, steps_until
from gradcheck.analysis.inspection import Report
from gradcheck.analysis.metrics import ParamStep

from .console import printable
from .sparkline import NONFINITE_MARK, ZERO_MARK, history_cell

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}
_LABEL = {"error": "ERROR", "warning": "warn"}
_MAGNITUDE_PROBLEMS = frozenset({"vanishing", "exploding", "nonfinite", "dead"})


_COLUMNS = (
    "parameter", "shape", "dtype", "min|g|", "mean|g|", "max|g|", "‖g‖", "log10", "upd ratio", "depth",
    "‖g‖ history", "status",
)  # fmt: skip
# On a narrow terminal these go first, in this order, until the table fits; the rest always stay.
_DROP_ORDER = ("shape", "dtype", "min|g|", "max|g|", "‖g‖", "upd ratio", "depth", "log10")
_LEFT = frozenset({"parameter", "shape", "dtype", "‖g‖ history", "status"})


def render_report(
    console: Console, report: Report, step: int, selection: Sequence[int] | None = None
) -> None:
    """Print table, findings and verdict for `step`; history over `selection` (default: every step up to it)."""
    chosen = tuple(selection) if selection else steps_until(report.run.steps, step)
    console.print(parameter_table(console, report, step, chosen))
    for line in context_lines(report.run.context, report.run.scalars, step):  # training context, if recorded
        console.print(Text(printable(line), style="dim"))
    if report.findings:
        console.print()
        outside = None if chosen == tuple(report.run.steps) else frozenset(chosen)
        console.print(_findings_table(report.findings, outside))
        console.print()
        for problem, hint in dict.fromkeys((f.problem, f.hint) for f in report.findings):
            console.print(Text(f"hint ({problem}): {hint}", style="dim"))
    console.print()
    console.print(verdict(report))


def parameter_table(console: Console, report: Report, step: int, chosen: tuple[int, ...]) -> Table:
    """The table of `step` with history over `chosen`, as wide as fits: columns of _DROP_ORDER go first."""
    rows = report.rows_at(step)
    by_param = _findings_at(report.findings, step)
    cells = [_row_cells(report, row, by_param.get(row.param, []), chosen) for row in rows]
    widths = {name: max([cell_len(name), *(_cell_len(row[name]) for row in cells)]) for name in _COLUMNS}
    names = list(_COLUMNS)
    for dropped in _DROP_ORDER:
        # rich's default box: one border before each column and one after the last, one space of padding a side
        if sum(widths[name] + 3 for name in names) + 1 <= console.width:
            break
        names.remove(dropped)
    table = _build_table(report, step, chosen, names)
    for i, (row, row_cells) in enumerate(zip(rows, cells, strict=True)):
        last_of_layer = i + 1 == len(rows) or rows[i + 1].layer != row.layer
        table.add_row(*(row_cells[name] for name in names), end_section=last_of_layer)
    return table


def _cell_len(cell: Text | str) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _build_table(report: Report, step: int, chosen: tuple[int, ...], names: list[str]) -> Table:
    span = f"{chosen[0]}-{chosen[-1]}" if len(chosen) > 1 else str(chosen[0])
    table = Table(
        title=Text(f"{printable(report.run.path)} - step {step} of {len(report.run.steps)} recorded"),
        title_justify="left",
        header_style="bold",
        caption=Text(
            f"‖g‖ history: log10 ‖g‖ at steps {span} ({len(chosen)}), each row on its own scale; "
            f"{NONFINITE_MARK} NaN/Inf, {ZERO_MARK} zero",
            style="dim",
        ),
        caption_justify="left",
    )
    longest = max((len(printable(p)) for p in report.run.params), default=9)
    for name in names:
        if name == "parameter":
            table.add_column(name, overflow="fold", min_width=min(longest, 40))
        else:
            table.add_column(name, justify="left" if name in _LEFT else "right", no_wrap=True)
    return table


def _row_cells(
    report: Report, row: ParamStep, found: list[Finding], chosen: tuple[int, ...]
) -> dict[str, Text | str]:
    t = report.config.thresholds
    worst = _worst(found)
    magnitude_style = (
        _SEVERITY_STYLE[worst.severity] if worst and worst.problem in _MAGNITUDE_PROBLEMS else ""
    )
    grad = row.grad.stats if row.grad else None
    return {
        "parameter": Text(printable(row.param)),
        "shape": _shape(row),
        "dtype": _dtype(row),
        "min|g|": sci(grad.min_abs if grad else None),
        "mean|g|": Text(sci(grad.mean_abs if grad else None), style=magnitude_style),
        "max|g|": sci(grad.max_abs if grad else None),
        "‖g‖": sci(grad.norm if grad else None),
        "log10": Text(_log10(grad.mean_abs if grad else None), style=magnitude_style),
        "upd ratio": _ratio_cell(row.update_ratio, t.update_ratio_low, t.update_ratio_high),
        "depth": "-" if row.depth is None else f"{row.depth:.1f}",
        "‖g‖ history": history_cell(grad_series(report.rows, row.param, chosen)),
        "status": _status_cell(found),
    }


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


def _findings_table(findings: list[Finding], selected: frozenset[int] | None) -> Table:
    """One line per (parameter, problem): the checks that found it, all their steps, the earliest detail.

    With a step selection, the findings with no step inside it are dimmed and their steps marked `outside`.
    """
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
        outside = selected is not None and selected.isdisjoint(steps)
        table.add_row(
            Text(_LABEL[group[0].severity], style=_SEVERITY_STYLE[group[0].severity]),
            problem if checks == [problem] else f"{problem} ({', '.join(checks)})",
            Text(printable(param)),
            f"{where}, outside" if outside else where,
            Text(printable(earliest.message)),  # may quote a layer name: never rich markup
            style="dim" if outside else None,
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
