"""CI dialects of a report (GitHub Actions commands, Markdown, JUnit XML), the plain table, and writing them out.

Every `*_text` function turns a Report into the exact text a format prints; `format_report` picks one by name.
Names are passed through `printable` first, then escaped as the target format needs.
"""

from __future__ import annotations

import io
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import click
from rich.console import Console

from gradcheck.analysis.atomic import append_regular, write_output
from gradcheck.analysis.checks import Finding
from gradcheck.analysis.config import PARAM_CHECK_IDS
from gradcheck.analysis.formatting import beyond, sci, times
from gradcheck.analysis.formatting import bound as threshold_text
from gradcheck.analysis.inspection import Report
from gradcheck.analysis.step_rows import StepRow, step_rows

from .console import printable
from .jsonout import dumps, report_document
from .render import render_report, shape_text, verdict

FORMATS = ("table", "json", "github", "markdown", "junit")
# The width of piped stdout (console.py), so a table written to a file reads like the CI log of the same run.
_FILE_WIDTH = 140
# How each check compares its value with its threshold; an unknown (newer) check reads "vs".
_COMPARISON = {
    "nonfinite": ">",
    "vanishing": "<",
    "exploding": ">",
    "exploding-relative": ">",
    "spike": "≥",
    "growth": "≥",
    "update-ratio-high": ">",
    "update-ratio-low": "<",
}
_FACTOR_CHECKS = frozenset({"exploding-relative", "spike", "growth"})  # value and threshold are ratios
_LOG_CHECKS = frozenset({"update-ratio-high", "update-ratio-low"})  # value and threshold are log10 ratios
# value and threshold are shares: of a weight's units, of an output's units, of an output's values at its bounds
_SHARE_CHECKS = frozenset({"dead-units", "dead-activations", "saturation"})
# CommonMark lets a backslash escape any ASCII punctuation; these are the ones a name could turn into markup.
_MARKDOWN_SPECIAL = frozenset("\\`*_[]<>|~&#!")
_UNREADABLE_CLASS = "unreadable"
_KIND_WORDS = {"param": "parameter", "update": "update"}


def format_report(
    name: str, report: Report, shown: int | None, exit_code: int, *, selection: Sequence[int] | None = None
) -> str:
    """The text format `name` prints for `report` (`shown`: the table's step, None if nothing was readable).

    `selection` is the --steps history of the table and the JSON document (default: every step up to `shown`).
    """
    if name == "json":
        return dumps(report_document(report, shown, exit_code, selection)) + "\n"
    if name == "table":
        return table_text(report, shown, selection)
    if name == "junit":
        return junit_text(report)
    renderers: dict[str, Callable[[Report, int | None], str]] = {
        "github": github_text,
        "markdown": markdown_text,
    }
    return renderers[name](report, shown)


def table_text(report: Report, shown: int | None, selection: Sequence[int] | None = None) -> str:
    """The table output as plain text, without ANSI codes (empty when nothing was readable)."""
    if shown is None:
        return ""
    buffer = io.StringIO()
    width = None if "COLUMNS" in os.environ else _FILE_WIDTH
    console = Console(file=buffer, color_system=None, width=width, highlight=False, soft_wrap=False)
    render_report(console, report, shown, selection)
    return buffer.getvalue()


def verdict_line(report: Report) -> str:
    """The one-line verdict of the table, or the reason there is none."""
    if not report.readable:
        return f"✗ no readable snapshot file in {printable(report.run.path)}"
    return verdict(report).plain


def count_steps(finding: Finding) -> str:
    """Where a finding starts and how long it lasts: `first at step 6, 5 steps`."""
    return f"first at step {finding.step}, {finding.count} step{'' if finding.count == 1 else 's'}"


def problem_of(finding: Finding) -> str:
    """The problem, naming the check when it differs and the tensor when NaN is not in the gradient."""
    detail = [finding.check] if finding.check != finding.problem else []
    if finding.check == "nonfinite" and finding.kind != "grad":
        detail.append(_KIND_WORDS.get(finding.kind, finding.kind))
    return f"{finding.problem} ({', '.join(detail)})" if detail else finding.problem


def comparison(finding: Finding) -> str:
    """The measured value against its bound, in the check's own units (`101× ≥ 100×`), never reading as equal."""
    if finding.check in _FACTOR_CHECKS:
        value, bound = times(finding.value), times(finding.threshold)
    elif finding.check in _LOG_CHECKS:
        value, bound = beyond(finding.value, finding.threshold), threshold_text(finding.threshold)
    elif finding.check == "dead":
        return "all zero"
    elif finding.check in _SHARE_CHECKS:
        whole, limit = math.floor(100 * finding.value), 100 * finding.threshold
        return f"{whole if whole >= limit else beyond(100 * finding.value, limit)} % ≥ {limit:g} %"
    elif finding.check == "nonfinite":
        value, bound = f"{finding.value:.0f}", "0"
    else:
        value = beyond(finding.value, finding.threshold, scientific=True)
        bound = threshold_text(finding.threshold)
    return f"{value} {_COMPARISON.get(finding.check, 'vs')} {bound}"


# GitHub Actions ---------------------------------------------------------------------------------------------


def github_text(report: Report, _shown: int | None = None) -> str:
    """One `::error`/`::warning` workflow command per finding and unreadable file, then the verdict.

    Errors come first, earliest first step first: GitHub shows only 10 annotations of each kind per step,
    and the earliest finding is the one nearest the cause (a spike before the NaN it leads to).
    """
    lines = [
        _workflow_command(
            finding.severity,
            f"gradcheck: {problem_of(finding)} in {printable(finding.param)}",
            f"{printable(finding.message)} ({count_steps(finding)})",
        )
        for finding in annotation_order(report.findings)
    ]
    lines += [
        _workflow_command(
            "warning", "gradcheck: unreadable file", f"{printable(note.file)}: {printable(note.reason)}"
        )
        for note in report.run.unreadable
    ]
    return "\n".join([*lines, verdict_line(report)]) + "\n"


def annotation_order(findings: list[Finding]) -> list[Finding]:
    """Errors before warnings, then by first step; the report's model order within a step."""
    return sorted(findings, key=lambda f: (f.severity != "error", f.step))


def escape_data(text: str) -> str:
    """Escape a workflow command's message as actions/toolkit does (packages/core/src/command.ts)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command's property value: the data escapes plus `:` and `,`."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _workflow_command(command: str, title: str, message: str) -> str:
    return f"::{command} title={escape_property(title)}::{escape_data(message)}"


def append_step_summary(report: Report, shown: int | None) -> None:
    """Append the Markdown summary to the file GITHUB_STEP_SUMMARY names; failing to is a warning only."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:  # a regular file only: a FIFO or /dev/zero there must not hang or swamp us
        append_regular(target, markdown_text(report, shown).encode("utf-8"))
    except OSError as error:
        reason = error.strerror or str(error)
        click.echo(f"gradcheck: warning: {printable(target)}: step summary not written: {reason}", err=True)


# Markdown ---------------------------------------------------------------------------------------------------


def markdown_text(report: Report, shown: int | None) -> str:
    """A PR-comment summary: verdict heading, findings table, hints, per-parameter table, unreadable files."""
    counts = f"{report.errors} error(s), {report.warnings} warning(s), fail on {report.config.fail_on}"
    blocks = [
        f"## gradcheck: {escape_markdown(verdict_line(report))}",
        f"Run {escape_markdown(printable(report.run.path))}: {counts}.",
    ]
    if report.findings:
        blocks += [_findings_markdown(report.findings), _hints_markdown(report.findings)]
    if shown is not None:
        blocks.append(_params_markdown(report, shown))
    if report.run.unreadable:
        blocks.append(
            "### Unreadable files\n\n"
            + "\n".join(
                f"- {escape_markdown(printable(n.file))}: {escape_markdown(printable(n.reason))}"
                for n in report.run.unreadable
            )
        )
    return "\n\n".join(blocks) + "\n"


def escape_markdown(text: str) -> str:
    """Backslash-escape the characters that would become markup or split a table cell."""
    return "".join(f"\\{char}" if char in _MARKDOWN_SPECIAL else char for char in text)


def _table_markdown(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _findings_markdown(findings: list[Finding]) -> str:
    header = ("severity", "parameter", "problem", "first step", "steps", "value vs threshold")
    rows = (
        (
            f.severity,
            escape_markdown(printable(f.param)),
            escape_markdown(problem_of(f)),
            str(f.step),
            str(f.step) if f.count == 1 else f"{f.step}–{f.last_step} ({f.count})",
            comparison(f),  # our own words and numbers: nothing to escape
        )
        for f in findings
    )
    return "### Findings\n\n" + _table_markdown(header, rows)


def _hints_markdown(findings: list[Finding]) -> str:
    hints = dict.fromkeys((f.problem, f.hint) for f in findings)
    return "\n".join(f"- **{escape_markdown(problem)}**: {escape_markdown(hint)}" for problem, hint in hints)


def _params_markdown(report: Report, step: int) -> str:
    header = ("parameter", "shape", "dtype", r"mean\|g\|", r"max\|g\|", "‖g‖", "update ratio", "status")
    rows = step_rows(report.run.columns, report.derived, step)
    found: dict[str, list[Finding]] = {}
    for finding in report.findings:
        if step in finding.steps:
            found.setdefault(finding.param, []).append(finding)
    table = _table_markdown(header, (_param_cells(row, found.get(row.param, [])) for row in rows))
    summary = f"Step {step}: {len(rows)} parameter(s)"
    return f"<details><summary>{summary}</summary>\n\n{table}\n\n</details>"


def _param_cells(row: StepRow, found: list[Finding]) -> tuple[str, ...]:
    ratio = "-" if row.update_ratio is None else f"{row.update_ratio:.1f}"
    return (
        escape_markdown(printable(row.param)),
        shape_text(row.shape),
        row.dtype,
        sci(row.mean_abs),
        sci(row.max_abs),
        sci(row.norm),
        ratio,
        _status(found),
    )


def _status(found: list[Finding]) -> str:
    errors = [f for f in found if f.severity == "error"]
    worst = errors or found
    if not worst:
        return "ok"
    return f"{worst[0].severity}: {', '.join(dict.fromkeys(f.problem for f in worst))}"


# JUnit XML --------------------------------------------------------------------------------------------------


def junit_text(report: Report, _shown: int | None = None) -> str:
    """JUnit XML: a testcase per (parameter, check) that ran, failed by error findings; one per (loss or module,
    check) of the signal checks that found something; one per unreadable file."""
    by_param: dict[str, dict[str, list[Finding]]] = {}  # grouped once: a pass per parameter is P x F
    for finding in report.findings:
        by_param.setdefault(finding.param, {}).setdefault(finding.check, []).append(finding)
    cases = [
        case
        for param in report.run.params
        for case in _param_cases(param, report.config.for_param(param)[1], by_param.get(param, {}))
    ]
    params = set(report.run.params)
    cases += [  # the loss and activation checks: a testcase per (scalar or module, check) that found something
        _check_case(name, check, found)
        for name, checks in by_param.items()
        if name not in params
        for check, found in checks.items()
    ]
    cases += [_unreadable_case(note.file, note.reason) for note in report.run.unreadable]
    counts = {
        "tests": str(len(cases)),
        "failures": str(sum(case.find("failure") is not None for case in cases)),
        "errors": str(sum(case.find("error") is not None for case in cases)),
        "skipped": "0",
    }
    root = ET.Element("testsuites", {"name": "gradcheck", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": "gradcheck", **counts})
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("run", printable(report.run.path)),
        ("status", report.status),
        ("fail-on", report.config.fail_on),
        ("recorded-steps", str(len(report.run.steps))),
        ("verdict", verdict_line(report)),
    ):
        ET.SubElement(properties, "property", {"name": name, "value": value})
    suite.extend(cases)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _param_cases(param: str, ignored: frozenset[str], found: dict[str, list[Finding]]) -> list[ET.Element]:
    checks = dict.fromkeys([*(c for c in PARAM_CHECK_IDS if c not in ignored), *found])
    return [_check_case(param, check, found.get(check, [])) for check in checks]


def _check_case(param: str, check: str, found: list[Finding]) -> ET.Element:
    # classname is the parameter, not its layer: (classname, name) stays unique, and Jenkins, which splits
    # classname at its last dot, still groups `0.weight` under package `0`, the layer.
    case = ET.Element("testcase", {"classname": printable(param), "name": check})
    details = "\n".join(
        f"{f.severity} ({f.kind}): {printable(f.message)} [{comparison(f)}], {count_steps(f)}\nhint: {f.hint}"
        for f in found
    )
    errors = [f for f in found if f.severity == "error"]
    if errors:
        first = min(errors, key=lambda f: f.step)
        message = f"{printable(first.message)} ({count_steps(first)})"
        failure = ET.SubElement(case, "failure", {"message": message, "type": check})
        failure.text = details
    elif found:
        ET.SubElement(case, "system-out").text = details
    return case


def _unreadable_case(file: str, reason: str) -> ET.Element:
    case = ET.Element("testcase", {"classname": _UNREADABLE_CLASS, "name": printable(file)})
    error = ET.SubElement(case, "error", {"message": printable(reason), "type": "unreadable"})
    error.text = f"{printable(file)}: {printable(reason)}"
    return case


# Files ------------------------------------------------------------------------------------------------------


def write_atomically(path: Path, text: str | bytes) -> None:
    """Write text (as UTF-8) or bytes under a temporary name beside `path`, then rename it into place.

    Raises OSError. Every command's output file goes through here, so a FIFO, a device, a symlink or a
    255-byte name behaves the same for `inspect --output`, `report`, `plot` and `baseline`.
    """
    # mkstemp makes 0600; a report is as readable as any new file. Devices and FIFOs are written in place.
    data = text.encode("utf-8") if isinstance(text, str) else text
    write_output(Path(path), data, mode=0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
