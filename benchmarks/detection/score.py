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
    visible: bool
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


def summarize(records: list[Record]) -> dict[str, Any]:
    """Per-class confusion counts, recall, and the twins' false-alarm and warning rates."""
    buggy = [r for r in records if r.variant == "buggy"]
    healthy = [r for r in records if r.variant == "healthy"]
    classes: dict[str, dict[str, Any]] = {}
    for r in buggy:
        row = classes.setdefault(
            r.fault_class,
            {"visible": r.visible, "expected": list(r.expected), ERROR: 0, WARNING: 0, MISSED: 0},
        )
        row[verdict(r)] += 1
    for row in classes.values():
        total = row[ERROR] + row[WARNING] + row[MISSED]
        row["recall_error"] = _rate(row[ERROR], total)
        row["recall_any"] = _rate(row[ERROR] + row[WARNING], total)
    visible = [r for r in buggy if r.visible]
    alarms = [r for r in healthy if fired(r.report, ERROR)]
    warned = [r for r in healthy if fired(r.report, WARNING)]
    return {
        "classes": classes,
        "recall_visible_error": _rate(sum(verdict(r) == ERROR for r in visible), len(visible)),
        "recall_visible_any": _rate(sum(verdict(r) != MISSED for r in visible), len(visible)),
        "recall_all_error": _rate(sum(verdict(r) == ERROR for r in buggy), len(buggy)),
        "visible_programs": len(visible),
        "buggy_programs": len(buggy),
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


def render(records: list[Record], summary: dict[str, Any], seconds: float) -> str:
    """The per-program table, the confusion matrix per class and the rates, as plain text."""
    by_key = {(r.program, r.variant): r for r in records}
    programs = list(dict.fromkeys(r.program for r in records))
    lines = ["Programs (buggy | healthy twin)", ""]
    head = f"{'program':<20} {'expected':<22} {'buggy':<8} {'buggy findings':<34} {'twin':<6} {'twin findings':<26}"
    lines += [head + " trained (buggy / twin)", "-" * (len(head) + 24)]
    for name in programs:
        bug, twin = by_key.get((name, "buggy")), by_key.get((name, "healthy"))
        bug_cell = verdict(bug) if bug else "-"
        bug_found = _short(fired(bug.report, ERROR) + fired(bug.report, WARNING)) if bug else "-"
        twin_status = (twin.report or {}).get("status", "FAIL") if twin else "-"
        twin_found = _short(fired(twin.report, ERROR) + fired(twin.report, WARNING)) if twin else "-"
        rep = bug or twin
        expected = ",".join(rep.expected) + ("" if rep.visible else " (not grad)")
        trained = " / ".join(_metric(r.outcome) for r in (bug, twin) if r is not None)
        lines.append(
            f"{name:<20} {expected:<22} {bug_cell:<8} {bug_found:<34} {twin_status:<6} {twin_found:<26} {trained}"
        )
    lines += ["", "Confusion matrix (buggy programs)", ""]
    lines.append(
        f"{'class':<20} {'visible':<8} {'error':>5} {'warning':>8} {'missed':>7} {'recall(err)':>12}"
    )
    for name, row in summary["classes"].items():
        lines.append(
            f"{name:<20} {'yes' if row['visible'] else 'no':<8} {row[ERROR]:>5} {row[WARNING]:>8} "
            f"{row[MISSED]:>7} {_pct(row['recall_error']):>12}"
        )
    lines += [
        "",
        (
            f"recall at error level, gradient-visible classes: {_pct(summary['recall_visible_error'])} "
            f"of {summary['visible_programs']} (error or warning: {_pct(summary['recall_visible_any'])})"
        ),
        f"recall at error level, all classes: {_pct(summary['recall_all_error'])} of {summary['buggy_programs']}",
        (
            f"healthy twins with an error (false alarms): {_pct(summary['false_alarm_rate'])} "
            f"of {summary['healthy_programs']}"
        ),
    ]
    lines += [f"  {name}: {', '.join(checks)}" for name, checks in summary["false_alarms"].items()]
    lines.append(f"healthy twins with a warning: {_pct(summary['warning_rate'])}")
    lines += [f"  {name}: {_short(checks, 6)}" for name, checks in summary["twin_warnings"].items()]
    lines += [f"FAILED {key}: {why}" for key, why in summary["failures"].items()]
    lines.append(f"wall time {seconds:.1f} s")
    return "\n".join(lines)
