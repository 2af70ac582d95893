"""Score gradcheck's verdicts on the detection programs: the confusion matrix, recall and false alarms.

A buggy program is detected at error level when gradcheck reports an error finding whose problem is one of the
program's expected problems, at warning level when only warnings carry an expected problem, else missed
(findings of other problems are listed, but do not count as detection). A healthy twin with any error finding
is a false alarm; one with a warning counts towards the warning rate. Plain data in, plain data and text out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ERROR, WARNING, MISSED = "error", "warning", "missed"


@dataclass(frozen=True)
class Record:
    """One program variant after training and inspection."""

    program: str
    fault_class: str
    variant: str  # "buggy" or "healthy"
    expected: tuple[str, ...]
    shows_in: str  # FaultClass.shows_in: "gradients", "updates", "loss", "activations", "none"
    outcome: dict[str, Any]  # the Outcome the training reported
    report: dict[str, Any] | None  # gradcheck's JSON document, None if it failed
    failure: str | None  # why training or gradcheck failed
    seconds: float


def fired(report: dict[str, Any] | None, severity: str) -> list[str]:
    """`check:problem(param)` for each finding of the severity, in gradcheck's order."""
    if report is None:
        return []
    return [
        f"{f['check']}({f['param']})"
        if f["check"] == f["problem"]
        else f"{f['check']}/{f['problem']}({f['param']})"
        for f in report["findings"]
        if f["severity"] == severity
    ]


def verdict(record: Record) -> str:
    """error / warning / missed for a buggy program (expected problems only)."""
    if record.report is None:
        return MISSED
    severities = {f["severity"] for f in record.report["findings"] if f["problem"] in record.expected}
    return ERROR if ERROR in severities else WARNING if WARNING in severities else MISSED


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _recall(buggy: list[Record]) -> dict[str, Any]:
    """Programs, and the share detected at error level and at any level."""
    return {
        "programs": len(buggy),
        "error": _rate(sum(verdict(r) == ERROR for r in buggy), len(buggy)),
        "any": _rate(sum(verdict(r) != MISSED for r in buggy), len(buggy)),
    }


def summarize(records: list[Record]) -> dict[str, Any]:
    """Per-class confusion counts, recall (per class, per signal, overall), twin alarm and warning rates."""
    buggy = [r for r in records if r.variant == "buggy"]
    healthy = [r for r in records if r.variant == "healthy"]
    classes: dict[str, dict[str, Any]] = {}
    for r in buggy:
        row = classes.setdefault(
            r.fault_class,
            {"shows_in": r.shows_in, "expected": list(r.expected), ERROR: 0, WARNING: 0, MISSED: 0},
        )
        row[verdict(r)] += 1
    for row in classes.values():
        total = row[ERROR] + row[WARNING] + row[MISSED]
        row["recall_error"] = _rate(row[ERROR], total)
        row["recall_any"] = _rate(row[ERROR] + row[WARNING], total)
    signals = dict.fromkeys(r.shows_in for r in buggy)
    alarms = [r for r in healthy if fired(r.report, ERROR)]
    warned = [r for r in healthy if fired(r.report, WARNING)]
    return {
        "classes": classes,
        "recall_by_signal": {s: _recall([r for r in buggy if r.shows_in == s]) for s in signals},
        "recall_all": _recall(buggy),
        "healthy_programs": len(healthy),
        "false_alarm_rate": _rate(len(alarms), len(healthy)),
        "warning_rate": _rate(len(warned), len(healthy)),
        "false_alarms": {r.program: fired(r.report, ERROR) for r in alarms},
        "twin_warnings": {r.program: fired(r.report, WARNING) for r in warned},
        "failures": {f"{r.program}/{r.variant}": r.failure for r in records if r.failure},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _metric(outcome: dict[str, Any]) -> str:
    value = outcome.get("value")
    shown = "nan" if value is None else f"{value:.3f}"
    bad = outcome.get("first_nonfinite_loss")
    return f"{outcome.get('metric', '?')} {shown}" + (f", NaN loss @{bad}" if bad is not None else "")


def _short(checks: list[str], limit: int = 3) -> str:
    """The distinct checks in a list of `check(param)` strings, with how often each fired."""
    counts: dict[str, int] = {}
    for c in checks:
        name = c.split("(")[0]
        counts[name] = counts.get(name, 0) + 1
    items = [f"{k}×{v}" if v > 1 else k for k, v in counts.items()]
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "") or "-"


def _program_lines(records: list[Record]) -> list[str]:
    """One line per program: buggy verdict and findings, the twin's status and findings, what each reached."""
    by_key = {(r.program, r.variant): r for r in records}
    head = (
        f"{'program':<21}{'expected':<21}{'buggy':<9}{'buggy findings':<40}{'twin':<6}{'twin findings':<36}"
        "trained: buggy / twin"
    )
    lines = [head, "-" * (len(head) + 20)]
    for name in dict.fromkeys(r.program for r in records):
        bug, twin = by_key.get((name, "buggy")), by_key.get((name, "healthy"))
        any_run = bug or twin
        found = {
            r.variant: _short(fired(r.report, ERROR) + fired(r.report, WARNING)) for r in (bug, twin) if r
        }
        lines.append(
            f"{name:<21}{','.join(any_run.expected):<21}{verdict(bug) if bug else '-':<9}"
            f"{found.get('buggy', '-'):<40}{(twin.report or {}).get('status', 'FAIL') if twin else '-':<6}"
            f"{found.get('healthy', '-'):<36}"
            + " / ".join(_metric(r.outcome) if r else "-" for r in (bug, twin))
        )
    return lines


def _matrix_lines(summary: dict[str, Any]) -> list[str]:
    """The confusion matrix of the buggy programs, per class."""
    lines = [f"{'class':<21}{'shows in':<12}{'error':>6}{'warning':>9}{'missed':>8}{'recall(error)':>15}"]
    for name, row in summary["classes"].items():
        lines.append(
            f"{name:<21}{row['shows_in']:<12}{row[ERROR]:>6}{row[WARNING]:>9}{row[MISSED]:>8}"
            f"{_pct(row['recall_error']):>15}"
        )
    return lines


def _rate_lines(summary: dict[str, Any]) -> list[str]:
    """Recall per signal and overall; false alarms and warnings on the twins, naming the checks that fired."""
    groups = [(f"classes that show in {k}", v) for k, v in summary["recall_by_signal"].items()]
    lines = [
        f"recall, {label}: {_pct(r['error'])} at error level, {_pct(r['any'])} at any level, "
        f"of {r['programs']}"
        for label, r in [*groups, ("all classes", summary["recall_all"])]
    ]
    n = summary["healthy_programs"]
    lines.append(f"healthy twins with an error (false alarms): {_pct(summary['false_alarm_rate'])} of {n}")
    lines += [f"  {name}: {', '.join(checks)}" for name, checks in summary["false_alarms"].items()]
    lines.append(f"healthy twins with a warning: {_pct(summary['warning_rate'])} of {n}")
    lines += [f"  {name}: {_short(checks, 6)}" for name, checks in summary["twin_warnings"].items()]
    return lines + [f"FAILED {key}: {why}" for key, why in summary["failures"].items()]


def render(records: list[Record], summary: dict[str, Any], seconds: float) -> str:
    """The per-program table, the confusion matrix per class and the rates, as plain text."""
    return "\n".join(
        [
            *_program_lines(records),
            "",
            *_matrix_lines(summary),
            "",
            *_rate_lines(summary),
            f"wall time {seconds:.1f} s",
        ]
    )
