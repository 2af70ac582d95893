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
from gradcheck.analysis.history import SPARK_WIDTH, GradHistory, grad_history, steps_until
from gradcheck.analysis.inspection import Report
from gradcheck.analysis.naming import layer_of
from gradcheck.analysis.step_rows import StepRow, step_rows
from gradcheck.analysis.story import tell, worst_of

from .console import printable
from .loss_line import loss_line
from .names import fit, middle, structural_width
from .sparkline import NONFINITE_MARK, ZERO_MARK, history_text

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}
_LABEL = {"error": "ERROR", "warning": "warn"}
_MAGNITUDE_PROBLEMS = frozenset({"vanishing", "exploding", "nonfinite", "dead"})


_NARROW = "narrow history"  # not a column: the step of _DROP_ORDER that halves the sparkline before `upd ratio` goes
_NARROW_SPARK = 8
_COLUMNS = (
    "parameter", "shape", "dtype", "min|g|", "mean|g|", "max|g|", "‖g‖", "log10", "upd ratio", "depth",
    "‖g‖ history", "status",
)  # fmt: skip
# On a narrow terminal these go first, in this order, until the table fits; the rest always stay.
_DROP_ORDER = (
    "shape",
    "dtype",
    "min|g|",
    "max|g|",
    "‖g‖",
    "depth",
    "log10",
    _NARROW,
    "upd ratio",
    "‖g‖ history",
)
_MIN_NAME = 12  # a narrower name column first drops a number column
_LEFT = frozenset({"parameter", "shape", "dtype", "‖g‖ history", "status"})


def render_report(
    console: Console,
    report: Report,
    step: int,
    selection: Sequence[int] | None = None,
    *,
    verbose: bool = False,
) -> None:
    """Print title, table, findings and verdict for `step`; history over `selection` (default: up to `step`)."""
    chosen = tuple(selection) if selection else steps_until(report.run.steps, step)
    for line in header_lines(report, step, console.width):
        console.print(line, no_wrap=True, overflow="ellipsis")
    console.print(parameter_table(console, report, step, chosen))
    for line in context_lines(report.run.contexts, report.run.scalars, step):  # training context, if recorded
        console.print(Text(printable(line), style="dim"))
    losses = [(s, loss) for s, loss in report.run.signals.losses() if s in chosen]  # recorded loss (#16)
    if losses:
        console.print(loss_line(losses), no_wrap=True, overflow="ellipsis")
    if report.findings:
        console.print()
        outside = None if chosen == tuple(report.run.steps) else frozenset(chosen)
        for line in findings_lines(report, outside, verbose=verbose):
            console.print(line, no_wrap=line.no_wrap, overflow=line.overflow)  # print() drops a Text's own
    console.print()
    console.print(verdict(report))


def header_lines(report: Report, step: int, width: int) -> list[Text]:
    """The lines above the table: the run and the shown step (the path shortened in the middle to fit)."""
    where = f" - step {step} ({_count(len(report.run.steps), 'recorded step')})"
    return [Text(middle(printable(report.run.path), max(8, width - len(where))) + where)]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def parameter_table(console: Console, report: Report, step: int, chosen: tuple[int, ...]) -> Table:
    """The table of `step` with history over `chosen`, as wide as fits the console.

    Columns of _DROP_ORDER go first; before dropping one, long names are shortened by structure (block
    prefixes as header rows, see cli/names.py). The parameter and status columns always stay.
    """
    rows = step_rows(report.run.columns, report.derived, step)
    at_step = _findings_at(report.findings, step)
    over_run = _findings_by_param(report.findings)
    history = grad_history(report.run.columns, chosen)  # every row's ‖g‖ series, as [step, param] arrays
    directions = history.directions()
    bins = history.binned(SPARK_WIDTH)
    cells = [
        _row_cells(report, row, at_step.get(row.param, []), over_run.get(row.param, []))
        | {"‖g‖ history": _history(history, row.index, bins, directions)}
        for row in rows
    ]
    widths = {name: max([cell_len(name), *(_cell_len(row[name]) for row in cells)]) for name in _COLUMNS}
    params = [row.param for row in rows]
    longest = max((len(printable(p)) for p in params), default=9)
    enough = min(longest, max(structural_width(params), _MIN_NAME))
    names, spark = list(_COLUMNS), SPARK_WIDTH
    for dropped in (None, *_DROP_ORDER):
        if dropped == _NARROW:
            spark = _NARROW_SPARK
            widths["‖g‖ history"] = _NARROW_SPARK + 2
        elif dropped is not None:
            names.remove(dropped)
        room = _room(console.width, names, widths)
        if room >= enough:
            break
    if spark != SPARK_WIDTH:
        narrow = history.binned(spark)
        for row, row_cells in zip(rows, cells, strict=True):
            row_cells["‖g‖ history"] = _history(history, row.index, narrow, directions, spark)
    name_width = max(len("parameter"), min(longest, room))
    fitted = fit(params, name_width)
    widths["parameter"] = max(cell_len("parameter"), *(cell_len(shown) for _, shown in fitted))
    table = _build_table(chosen, names, widths, narrow=spark != SPARK_WIDTH)
    _add_rows(table, names, fitted, dict(zip(params, cells, strict=True)))
    return table


def _add_rows(
    table: Table,
    names: list[str],
    fitted: list[tuple[str | None, str]],
    by_param: dict[str, dict[str, Text | str]],
) -> None:
    """One table row per fitted name: block headers (param None) in bold, a line under each layer or block."""
    grouped = len(fitted) > len(by_param)
    for i, (param, shown) in enumerate(fitted):
        following = fitted[i + 1][0] if i + 1 < len(fitted) else None
        if param is None:
            table.add_row(*(Text(shown, style="bold") if n == "parameter" else "" for n in names))
            continue
        row_cells = {**by_param[param], "parameter": Text(shown)}
        if grouped:  # a line above each block header, none above a sub-header (indented)
            end = i + 1 == len(fitted) or (following is None and not fitted[i + 1][1].startswith(" "))
        else:
            end = following is None or layer_of(following) != layer_of(param)
        table.add_row(*(row_cells[name] for name in names), end_section=end)


def _room(width: int, names: list[str], widths: dict[str, int]) -> int:
    """Cells left for the parameter column; rich's default box puts a border before each column and one after
    the last, and one space of padding on either side of a cell."""
    return width - sum(widths[name] + 3 for name in names if name != "parameter") - 4


def _cell_len(cell: Text | str) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _build_table(
    chosen: tuple[int, ...], names: list[str], widths: dict[str, int], *, narrow: bool = False
) -> Table:
    span = f"{chosen[0]}-{chosen[-1]}" if len(chosen) > 1 else str(chosen[0])
    table = Table(
        header_style="bold",
        caption=Text(
            f"status: the worst finding over the run @ its first step; ‖g‖ history: log10 ‖g‖ at steps {span} "
            f"({len(chosen)}), each row on its own scale; {NONFINITE_MARK} NaN/Inf, {ZERO_MARK} zero",
            style="dim",
        ),
        caption_justify="left",
    )
    for name in names:
        if narrow and name == "‖g‖ history":  # the header wraps to two lines, the sparkline fits its width
            table.add_column(name, width=_NARROW_SPARK + 2, no_wrap=False)
            continue
        # the widths rich would measure (the longest cell), given: rich then skips measuring every cell again
        justify = "left" if name in _LEFT else "right"
        table.add_column(name, justify=justify, no_wrap=True, width=widths[name])
    return table


def _row_cells(
    report: Report, row: StepRow, found: list[Finding], over_run: list[Finding]
) -> dict[str, Text | str]:
    """The cells of one parameter but its history: numbers of the shown step (styled by its findings there),
    run-wide status."""
    t = report.config.thresholds
    worst = _worst(found)
    magnitude_style = (
        _SEVERITY_STYLE[worst.severity] if worst and worst.problem in _MAGNITUDE_PROBLEMS else ""
    )
    return {
        "parameter": Text(printable(row.param)),
        # Text, not str: rich would parse each str cell for markup and emoji twice (measure, render); these
        # cells have neither, and a 500-row table draws faster without it
        "shape": Text(shape_text(row.shape)),
        "dtype": Text(row.dtype),
        "min|g|": Text(sci(row.min_abs)),
        "mean|g|": Text(sci(row.mean_abs), style=magnitude_style),
        "max|g|": Text(sci(row.max_abs)),
        "‖g‖": Text(sci(row.norm)),
        "log10": Text(_log10(row.mean_abs), style=magnitude_style),
        "upd ratio": _ratio_cell(row.update_ratio, t.update_ratio_low, t.update_ratio_high),
        "depth": Text("-" if row.depth is None else f"{row.depth:.1f}"),
        "status": _status_cell(over_run),
    }


def _history(
    history: GradHistory,
    p: int,
    bins: list[list[int]],
    directions: list[str | None],
    width: int = SPARK_WIDTH,
) -> Text:
    return history_text(history.binned_series(p, bins[p]), directions[p], width)


def _findings_at(findings: list[Finding], step: int) -> dict[str, list[Finding]]:
    by_param: dict[str, list[Finding]] = {}
    for finding in findings:
        if step in finding.steps:
            by_param.setdefault(finding.param, []).append(finding)
    return by_param


def _findings_by_param(findings: list[Finding]) -> dict[str, list[Finding]]:
    by_param: dict[str, list[Finding]] = {}
    for finding in findings:
        by_param.setdefault(finding.param, []).append(finding)
    return by_param


def _worst(found: list[Finding]) -> Finding | None:
    errors = [f for f in found if f.severity == "error"]
    return (errors or found or [None])[0]


def _status_cell(found: list[Finding]) -> Text:
    """The worst finding over the run and its first step: `ERROR exploding @6`, `warn update-ratio-high @0`."""
    worst = worst_of(found)
    if worst is None:
        return Text("ok", style="green")
    severity, problem, first = worst
    return Text(f"{_LABEL[severity]} {problem} @{first}", style=_SEVERITY_STYLE[severity])


def _ratio_cell(ratio: float | None, low: float, high: float) -> Text:
    if ratio is None:
        return Text("-")
    return Text(f"{ratio:.1f}", style="green" if low <= ratio <= high else "yellow")


def _log10(value: float | None) -> str:
    if value is None or not math.isfinite(value) or value <= 0:
        return "-"
    return f"{math.log10(value):.1f}"


def shape_text(shape: tuple[int, ...]) -> str:
    """A tensor shape as the tables show it: `64×32`, or `scalar`."""
    return "×".join(map(str, shape)) if shape else "scalar"


def findings_lines(
    report: Report, selected: frozenset[int] | None = None, *, verbose: bool = False
) -> list[Text]:
    """The findings as a story: likely causes, then one line per problem and first step, then the hints.

    A group line never wraps: the console cuts its detail with an ellipsis (unless `verbose`, which also
    adds a line per finding with its full message). Groups with no step inside `selected` are dimmed, `outside`.
    """
    story = tell(report.findings, report.run.params)
    lines = [Text("Findings, by first step (--verbose: every parameter in full)", style="bold")]
    lines += [Text(f"likely cause: {cause.text}", style="bold") for cause in story.causes]
    problem_width = max((len(group.label) for group in story.groups), default=0)
    for group in story.groups:
        steps = {step for f in group.findings for step in f.steps}
        outside = selected is not None and selected.isdisjoint(steps)
        line = Text(f" {_LABEL[group.severity]:<5} ", style=_SEVERITY_STYLE[group.severity])
        where = group.when + (", outside" if outside else "")
        line.append(
            f"{group.label:<{problem_width}}  {printable(group.who)}, {where}: {printable(group.message)}"
        )
        if outside:
            line.stylize("dim")
        if not verbose:
            line.no_wrap, line.overflow = True, "ellipsis"
        lines.append(line)
        if verbose:
            lines += [
                Text(f"         {printable(f.param)} [{f.check}]: {printable(f.message)}")
                for f in group.findings
            ]
    lines.append(Text())
    hints = [("likely cause", cause.hint) for cause in story.causes] + list(story.hints)
    lines += [Text(f"hint ({problem}): {hint}", style="dim") for problem, hint in hints]
    return lines


_KINDS = ("grad", "param", "update")


def verdict(report: Report) -> Text:
    """One line that says whether the run is healthy and, if not, what and since when."""
    scope = f"{_count(len(report.run.params), 'parameter')}, {_count(len(report.run.steps), 'recorded step')}"
    errors = [f for f in report.findings if f.severity == "error"]
    warnings = [f for f in report.findings if f.severity == "warning"]
    if not report.findings:
        return Text(f"✓ healthy: no findings ({scope})", style="bold green")
    warned = _warned(warnings)
    if not errors:
        problems = ", ".join(dict.fromkeys(f.problem for f in warnings))
        return Text(f"! warnings only: {problems}; {warned} ({scope})", style="bold yellow")
    problems = ", ".join(dict.fromkeys(f.problem for f in sorted(errors, key=lambda f: f.step)))
    first = min(f.step for f in errors)
    params = {f.param for f in errors if f.kind in _KINDS}  # not the modules and loss of signal findings
    where = f"{len(params)} parameter(s)" if params else "the loss or activations"
    text = f"✗ unhealthy: {problems} in {where}, first at step {first}"
    born = next((f for f in errors if f.check == "nan-origin"), None)  # analysis/signal_checks.py
    text += f"; NaN born in {printable(born.param)} at step {born.step}" if born else ""
    return Text(text + (f"; {warned}" if warnings else "") + f" ({scope})", style="bold red")


def _warned(warnings: list[Finding]) -> str:
    """Who has warnings: parameters (counted), and the loss or activations, which are not parameters."""
    params = {f.param for f in warnings if f.kind in _KINDS}
    who = [f"{len(params)} parameter(s)"] if params else []
    if any(f.kind not in _KINDS for f in warnings):
        who.append("the loss or activations")
    return f"{' and '.join(who)} with warnings"
