"""The `--format json` document, schema 2: written piece by piece, each (parameter, kind) series as arrays.

Schema 1 (jsonout.py) made one object per parameter and step, each tensor repeating its file path, and built
the whole document in memory before `json.dumps(indent=2)` (the pure-Python encoder) turned it into one string:
736 MB at 6.3 GB RSS for 1,000 steps x 500 parameters. Here the steps are listed once, each statistic of each
(parameter, kind) is one array aligned with them, file paths are indexes into one `files` list, the layer
metrics are written once per layer, and the text goes out in pieces of about 1 MB. Arrays sit on one line each
and go through the C encoder (compact separators); the fields that are not per step keep schema 1's layout.
docs/JSON.md documents both schemas.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from gradcheck.analysis.activations import signals_document
from gradcheck.analysis.atomic import output_stream
from gradcheck.analysis.columns import KINDS
from gradcheck.analysis.export import (
    COUNT_FIELDS,
    FLOAT_STATS,
    PARAM_METRICS,
    first_tensor,
    kind_block,
    kind_statistics,
    latest_modules,
    layer_of,
    layer_series,
    param_blocks,
)
from gradcheck.analysis.history import grad_history, steps_until
from gradcheck.analysis.inspection import Report
from gradcheck.analysis.thresholds import THRESHOLD_KEYS

from .common import InputError
from .jsonout import (
    _FINDING_FIELDS,
    _context_document,
    _escape_unprintable,
    document_head,
    finite_values,
    story_document,
)

SCHEMA = 2
_FLUSH_BYTES = 1 << 20  # text pieces are handed to `write` in about this size: memory stays flat, calls few


class _Pieces:
    """Collects text and hands it to `write` whenever about _FLUSH_BYTES have gathered."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self._write, self._parts, self._size = write, [], 0

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._write("".join(self._parts))
            self._parts, self._size = [], 0


def write_document(
    report: Report,
    step: int | None,
    exit_code: int,
    write: Callable[[str], object],
    selection: Sequence[int] | None = None,
) -> None:
    """Write the schema 2 document of `report` through `write`, in pieces; the same arguments as schema 1."""
    run = report.run
    if selection is None:
        selection = steps_until(run.steps, step)
    out = _Pieces(write)
    out.add("{\n")
    _members(out, document_head(report, exit_code, SCHEMA))
    _member(out, "steps", _compact(list(run.steps)))
    _member(out, "shown_step", _compact(step))
    _member(out, "selected_steps", _compact(list(selection)))
    findings = [{key: asdict(f)[key] for key in _FINDING_FIELDS} for f in report.findings]
    _members(out, {"findings": findings, "story": story_document(report)})
    _member(out, "files", _compact(list(run.columns.files)))
    _layers(out, report)
    _params(out, report, selection)
    tail = {
        "unreadable": [{"file": note.file, "reason": note.reason} for note in run.unreadable],
        "skipped": [{"file": n.file, "tensor": n.tensor, "reason": n.reason} for n in run.skipped],
        "thresholds": {key: getattr(report.config.thresholds, name) for key, name in THRESHOLD_KEYS.items()},
        "context": _context_document(run),
    } | signals_document(run.signals)
    _members(out, tail, last=True)
    out.add("}\n")
    out.flush()


def stream_json(report: Report, selection: Sequence[int], exit_code: int, output: Path | None) -> None:
    """Write the schema 2 document to stdout, or to `output` (replaced atomically); InputError if unwritable."""
    shown = selection[-1] if selection else None
    if output is None:
        write_document(report, shown, exit_code, lambda text: click.echo(text, nl=False), selection or None)
        return
    try:
        with output_stream(output, mode=0o666 & ~_umask()) as file:
            write_document(
                report, shown, exit_code, lambda text: file.write(text.encode()), selection or None
            )
    except OSError as error:
        raise InputError(f"{output}: cannot write --output file: {error.strerror or error}") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _members(out: _Pieces, fields: dict[str, Any], *, last: bool = False) -> None:
    """Top-level fields in schema 1's layout (indented, one value per line)."""
    for i, (key, value) in enumerate(fields.items()):
        _member(out, key, _pretty(value, 1), last=last and i == len(fields) - 1)


def _member(out: _Pieces, key: str, text: str, *, last: bool = False, level: int = 1) -> None:
    out.add(f"{'  ' * level}{_compact(key)}: {text}{'' if last else ','}\n")


def _pretty(value: Any, level: int) -> str:
    """`value` as schema 1 writes it (indent 2, NaN/Inf as null), nested `level` deep."""
    text = json.dumps(finite_values(value), indent=2, allow_nan=False, ensure_ascii=False)
    return _clean(text.replace("\n", "\n" + "  " * level))


def _compact(value: Any) -> str:
    """`value` on one line with the C encoder (no indent); NaN/Inf must already be None."""
    return _clean(json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False))


def _clean(text: str) -> str:
    """Strings as schema 1 escapes them: `##[` defused for GitHub's log parser, unprintables \\u-escaped."""
    text = text.replace("##[", "#\\u0023[")
    return text if text.replace("\n", "").isprintable() else _escape_unprintable(text)


def _floats(values: np.ndarray) -> str:
    """A float64 array as one JSON line; NaN and ±Inf become null (as schema 1)."""
    items = values.tolist()
    bad = ~np.isfinite(values)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            items[i] = None
    return json.dumps(items, separators=(",", ":"), allow_nan=False)


def _ints(values: np.ndarray, present: np.ndarray) -> str:
    """An integer array as one JSON line, null where the tensor was not recorded."""
    items = values.tolist()
    if not present.all():
        for i in np.flatnonzero(~present).tolist():
            items[i] = None
    return json.dumps(items, separators=(",", ":"))


def _layers(out: _Pieces, report: Report) -> None:
    """`layers`: per layer its parameters and, per step, the gradient norm, RMS and depth."""
    out.add('  "layers": [')
    for i, layer in enumerate(layer_series(report.run.columns, report.derived)):
        out.add(("\n" if i == 0 else ",\n") + "    {\n")
        _member(out, "name", _compact(layer.name), level=3)
        _member(out, "params", _compact(list(layer.params)), level=3)
        _member(out, "grad_norm", _floats(layer.grad_norm), level=3)
        _member(out, "grad_rms", _floats(layer.grad_rms), level=3)
        _member(out, "depth", _floats(layer.depth), last=True, level=3)
        out.add("    }")
    out.add("\n  ],\n" if report.derived.layers else "],\n")


def _params(out: _Pieces, report: Report, selection: Sequence[int]) -> None:
    """`params`: one object per parameter, computed a block of parameters at a time."""
    run, columns, derived = report.run, report.run.columns, report.derived
    grad_norms = grad_history(columns, selection)  # every parameter's ‖g‖ history, as the table's
    modules = latest_modules(run.contexts)
    out.add('  "params": [')
    for block in param_blocks(len(columns.params)):
        statistics = {}
        for name in KINDS:
            part = kind_block(columns.kinds[name], (slice(None), block))
            statistics[name] = (part, kind_statistics(part))
        for j, p in enumerate(range(block.start, block.stop)):
            param = columns.params[p]
            out.add(("\n" if p == 0 else ",\n") + "    {\n")
            first = first_tensor(columns, p)
            head = {
                "name": param,
                "layer": layer_of(derived, p, param),
                "shape": list(first[0]) if first else None,
                "dtype": first[1] if first else None,
                "module": modules.get(param),
            }
            for key, value in head.items():
                _member(out, key, _compact(value), level=3)
            for key, source in PARAM_METRICS.items():
                _member(out, key, _floats(getattr(derived, source)[:, p]), level=3)
            for name, (part, stats) in statistics.items():
                _kind(out, name, part.present[:, j], stats, j, columns.kinds[name].file[:, p])
            series = grad_norms.series(p)
            log_norm, states = [point.log_norm for point in series], [point.state for point in series]
            fitted = grad_norms.trend(p)
            history = {
                "log10_grad_norm": _compact(log_norm),
                "state": _compact(states),
                "trend": _compact(fitted.direction),
                "trend_decades": _compact(finite_values(fitted.decades)),
            }
            out.add('      "history": {\n')
            _lines(out, history.items(), level=4)
            out.add("      }\n    }")
    out.add("\n  ],\n" if columns.params else "],\n")


def _kind(
    out: _Pieces, name: str, present: np.ndarray, stats: dict[str, np.ndarray], j: int, files: np.ndarray
) -> None:
    """One kind's statistics of one parameter as arrays over the steps; null if never recorded."""
    if not present.any():
        _member(out, name, "null", level=3)
        return
    lines = [(key, _ints(stats[key][:, j], present)) for key in COUNT_FIELDS]
    lines += [(key, _floats(stats[key][:, j])) for key in FLOAT_STATS]
    lines.append(("file", _ints(files, present)))
    out.add(f'      "{name}": {{\n')
    _lines(out, lines, level=4)
    out.add("      },\n")


def _lines(out: _Pieces, items: Iterable[tuple[str, str]], *, level: int) -> None:
    items = list(items)
    for i, (key, text) in enumerate(items):
        _member(out, key, text, last=i == len(items) - 1, level=level)
