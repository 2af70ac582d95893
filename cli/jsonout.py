"""The `--format json` document: stable, documented in docs/JSON.md, valid JSON (NaN/Inf become null)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from gradcheck.analysis import __version__
from gradcheck.analysis.activations import signals_document
from gradcheck.analysis.context_summary import summarize_context
from gradcheck.analysis.history import Point, grad_series, steps_until, trend
from gradcheck.analysis.inspection import Report
from gradcheck.analysis.metrics import ParamStep
from gradcheck.analysis.runs import Run, Tensor
from gradcheck.analysis.story import tell
from gradcheck.analysis.thresholds import SCHEMA_1_KEYS

SCHEMA_VERSION = 1
_FINDING_FIELDS = (
    "severity", "problem", "check", "param", "layer", "kind", "step", "last_step", "count", "value",
    "threshold", "message", "hint",
)  # fmt: skip


def report_document(
    report: Report, step: int | None, exit_code: int, selection: Sequence[int] | None = None
) -> dict[str, Any]:
    """The JSON-ready dict of a report; `step` is the step the table would show (None: nothing readable).

    `selection` is the steps the history covers (`--steps`); by default every recorded step up to `step`.
    """
    run = report.run
    if selection is None:
        selection = steps_until(run.steps, step)
    return {
        **document_head(report, exit_code, SCHEMA_VERSION),
        "steps": list(run.steps),
        "shown_step": step,
        "selected_steps": list(selection),
        "findings": [{key: asdict(f)[key] for key in _FINDING_FIELDS} for f in report.findings],
        "story": story_document(report),
        "params": [_param_document(report, param, selection) for param in run.params],
        "unreadable": [{"file": note.file, "reason": note.reason} for note in run.unreadable],
        "skipped": [{"file": n.file, "tensor": n.tensor, "reason": n.reason} for n in run.skipped],
        "thresholds": {  # schema 1 keeps its keys: the signal checks' thresholds are in schema 2 only
            name.replace("_", "-"): getattr(report.config.thresholds, name) for name in SCHEMA_1_KEYS
        },
        "context": _context_document(run),
    } | signals_document(run.signals)  # only for runs that recorded the loss or activations


def document_head(report: Report, exit_code: int, schema: int) -> dict[str, Any]:
    """The members every JSON document opens with, in both schemas: schema, version, run and verdict."""
    return {
        "schema": schema,
        "gradcheck_version": __version__,
        "run": report.run.path,
        "status": report.status,
        "failed": report.failed,
        "exit_code": exit_code,
        "fail_on": report.config.fail_on,
        "summary": {"errors": report.errors, "warnings": report.warnings},
    }


def _context_document(run: Run) -> dict[str, Any]:
    """The recorded training context: a run summary and, per recorded step, the context and the scalars."""
    summary = summarize_context(run.contexts, run.scalars)
    steps = []
    for step in sorted(set(run.contexts) | set(run.scalars)):
        entry: dict[str, Any] = {"step": step}
        context = run.contexts.get(step)
        if context is not None:
            entry.update({key: value for key, value in asdict(context).items() if key != "modules"})
            entry["skipped"] = list(context.skipped)
            entry["clipped"] = context.clipped
        entry["scalars"] = run.scalars.get(step, {})
        steps.append(entry)
    document = None
    if summary is not None:
        document = {**asdict(summary), "clipped_share": summary.clipped_share}
        document["skipped"] = list(summary.skipped)
        document["skipped_before"] = [{"step": s, "count": n} for s, n in summary.skipped_before]
    return {"summary": document, "steps": steps}


def story_document(report: Report) -> dict[str, Any]:
    """The findings grouped as the table tells them (analysis/story.py): groups by first step, causes, hints."""
    story = tell(report.findings, report.run.params)
    return {
        "groups": [
            {
                "severity": g.severity,
                "problem": g.problem,
                "first_step": g.first_step,
                "last_step": g.last_step,
                "params": list(g.params),
                "all_params": g.all_params,
                "checks": list(g.checks),
                "message": g.message,
            }
            for g in story.groups
        ],
        "causes": [
            {
                "cause": {"problem": c.cause.problem, "first_step": c.cause.first_step},
                "effects": [{"problem": e.problem, "first_step": e.first_step} for e in c.effects],
                "text": c.text,
                "hint": c.hint,
            }
            for c in story.causes
        ],
        "hints": [{"problem": problem, "hint": hint} for problem, hint in story.hints],
    }


def dumps(document: dict[str, Any]) -> str:
    """Serialise with NaN/Inf as null; allow_nan=False guarantees no invalid JSON slips through."""
    text = json.dumps(_finite(document), indent=2, allow_nan=False, ensure_ascii=False)
    # GitHub's legacy log parser acts on `##[` anywhere; only strings can hold `#`, and \u0023 decodes the same
    text = text.replace("##[", "#\\u0023[")
    return text if text.replace("\n", "").isprintable() else _escape_unprintable(text)


def _escape_unprintable(text: str) -> str:
    """\\u-escape what a terminal could act on and the lone surrogates of non-UTF-8 file names."""
    # json.dumps escaped C0 controls and backslashes already, so a raw unprintable character (C1 control,
    # bidi override, surrogate) sits inside a string and never right after an escaping backslash.
    return "".join(char if char.isprintable() or char == "\n" else _u_escape(char) for char in text)


def _u_escape(char: str) -> str:
    code = ord(char)
    if code > 0xFFFF:  # JSON escapes are 16-bit: a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _param_document(report: Report, param: str, selection: Sequence[int]) -> dict[str, Any]:
    rows = [report.rows[(s, param)] for s in report.run.steps if (s, param) in report.rows]
    first = rows[0].tensor if rows else None
    return {
        "name": param,
        "layer": rows[0].layer if rows else param,
        "shape": list(first.shape) if first else None,
        "dtype": first.dtype if first else None,
        "module": _module_of(report.run, param),
        "steps": [_row_document(row) for row in rows],
        "history": _history_document(grad_series(report.rows, param, selection)),
    }


def _module_of(run: Run, param: str) -> str | None:
    """The module type the latest recorded context gives the parameter (`Linear`), None if none does."""
    return next((c.modules[param] for c in reversed(run.contexts.values()) if param in c.modules), None)


def _history_document(series: Sequence[Point]) -> dict[str, Any]:
    fitted = trend(series)
    return {
        "log10_grad_norm": [point.log_norm for point in series],
        "state": [point.state for point in series],
        "trend": fitted.direction,
        "trend_decades": fitted.decades,
    }


def _row_document(row: ParamStep) -> dict[str, Any]:
    return {
        "step": row.step,
        "grad": _tensor_document(row.grad),
        "param": _tensor_document(row.value),
        "update": _tensor_document(row.update),
        "update_ratio": row.update_ratio,
        "grad_param_norm_ratio": row.grad_param_ratio,
        "layer_grad_norm": row.layer_norm,
        "layer_grad_rms": row.layer_rms,
        "depth": row.depth,
    }


def _tensor_document(tensor: Tensor | None) -> dict[str, Any] | None:
    if tensor is None:
        return None
    s = tensor.stats
    return {
        "count": s.count,
        "nan": s.nan,
        "inf": s.inf,
        "zeros": s.zeros,
        "min_abs": s.min_abs,
        "mean_abs": s.mean_abs,
        "max_abs": s.max_abs,
        "norm": s.norm,
        "file": tensor.file,
    }


def finite_values(value: Any) -> Any:
    """`value` with NaN/Inf floats replaced by None, in nested dicts and lists."""
    return _finite(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
