"""Baseline files: a run's per-layer diff measures in a few KB, so `diff` can compare against them.

Two kinds stand in for a run: the file `gradcheck baseline RUN -o FILE` writes (`"gradcheck_baseline": 1`),
and the document of `gradcheck inspect RUN --format json`, whose per-parameter statistics give the same
measures. Log10 values are stored layer by layer, one entry per step: null when the layer had no value at
that step, the string "-inf" for an all-zero gradient (JSON has no infinities).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .atomic import read_regular
from .diff import LayerValues, Measures
from .errors import RunError

FORMAT = 1
_KEY = "gradcheck_baseline"
# A baseline of a 53-parameter, 30-step run is ~10 KB and an `inspect --format json` document of 1,000
# parameters x 1,000 steps ~200 MB; past this the file is not one of ours (issue #13, class 5: size-capped reads)
MAX_BASELINE_BYTES = 512 << 20


def baseline_document(measures: Measures, version: str) -> dict[str, Any]:
    """The JSON-ready dict of a baseline file."""
    return {
        _KEY: FORMAT,
        "gradcheck_version": version,
        "run": measures.path,
        "steps": list(measures.steps),
        "layers": list(measures.layers),
        "grad_norm_log10": _columns(measures, measures.norms),
        "update_ratio_log10": _columns(measures, measures.updates),
    }


def load_baseline(path: str | Path) -> Measures:
    """Measures from a baseline file or an `inspect --format json` document; RunError naming what is wrong."""
    try:  # non-blocking, regular files only, capped: a FIFO or /dev/zero cannot hang or swamp us
        document = json.loads(read_regular(path, MAX_BASELINE_BYTES).decode("utf-8"))
    except OSError as error:
        raise RunError(f"{path}: cannot read the baseline file ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path}: not a JSON baseline file ({error})") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser's stack
        raise RunError(f"{path}: not a JSON baseline file (nested too deeply)") from None
    try:
        if isinstance(document, Mapping) and document.get(_KEY) == FORMAT:
            return _from_baseline(document, str(path))
        if isinstance(document, Mapping) and "params" in document and "schema" in document:
            return _from_report(document, str(path))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:  # int(1e400): Overflow
        raise RunError(f"{path}: malformed baseline file ({type(error).__name__}: {error})") from None
    raise RunError(f"{path}: neither a gradcheck baseline file nor an `inspect --format json` document")


def _columns(measures: Measures, values: LayerValues) -> dict[str, list[float | str | None]]:
    return {
        layer: [_encode(values.get(step, {}).get(layer)) for step in measures.steps]
        for layer in measures.layers
    }


def _encode(value: float | None) -> float | str | None:
    if value is None or math.isnan(value):
        return None
    return "-inf" if value == -math.inf else "inf" if value == math.inf else value


def _decode(value: object) -> float | None:
    if value is None:
        return None
    if value in ("-inf", "inf"):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _from_baseline(document: Mapping[str, Any], path: str) -> Measures:
    steps = tuple(int(step) for step in document["steps"])
    layers = tuple(str(layer) for layer in document["layers"])
    values = []
    for key in ("grad_norm_log10", "update_ratio_log10"):
        table: LayerValues = {step: {} for step in steps}
        for layer, column in document[key].items():
            if len(column) != len(steps):
                raise ValueError(f"{key}[{layer!r}] has {len(column)} values for {len(steps)} steps")
            for step, raw in zip(steps, column, strict=True):
                value = _decode(raw)
                if value is not None:
                    table[step][layer] = value
        values.append(table)
    return Measures(f"{path} (baseline of {document.get('run', '?')})", steps, layers, values[0], values[1])


def _report_rows(
    document: Mapping[str, Any],
) -> Iterator[tuple[Mapping[str, Any], Iterable[Mapping[str, Any]]]]:
    """Each parameter with its per-step rows as schema 1 has them; schema 2's arrays are read as such rows."""
    if document["schema"] == 1:
        yield from ((param, param["steps"]) for param in document["params"])
        return
    layers = {layer["name"]: layer for layer in document["layers"]}
    for param in document["params"]:
        norms = layers[param["layer"]]["grad_norm"] if param["layer"] in layers else None
        yield (
            param,
            (
                {
                    "step": step,
                    "layer_grad_norm": norms[i] if norms is not None else None,
                    "update": _cell(param["update"], i),
                    "param": _cell(param["param"], i),
                }
                for i, step in enumerate(document["steps"])
            ),
        )


def _cell(series: Mapping[str, Any] | None, i: int) -> dict[str, Any] | None:
    """One step of a schema 2 tensor series, with the fields the update ratios need; None if not recorded."""
    if series is None or series["count"][i] is None:
        return None
    return {name: series[name][i] for name in ("count", "nan", "inf", "mean_abs")}


def _from_report(document: Mapping[str, Any], path: str) -> Measures:
    """Layer norms from `layer_grad_norm`; update ratios from the finite |sum| of updates and parameters."""
    steps = tuple(int(step) for step in document["steps"])
    layers: dict[str, None] = {}
    norms: LayerValues = {step: {} for step in steps}
    sums: dict[tuple[int, str], list[float]] = {}
    for param, rows in _report_rows(document):
        layer = str(param["layer"])
        layers.setdefault(layer)
        for row in rows:
            step = int(row["step"])
            norm = row.get("layer_grad_norm")
            if norm is not None and step in norms:
                norms[step][layer] = math.log10(norm) if norm > 0 else -math.inf
            update, value = row.get("update"), row.get("param")
            if update and value:
                both = sums.setdefault((step, layer), [0.0, 0.0, 0.0, 0.0])
                for i, tensor in enumerate((update, value)):
                    finite = tensor["count"] - tensor["nan"] - tensor["inf"]
                    both[2 * i] += (tensor["mean_abs"] or 0.0) * finite
                    both[2 * i + 1] += finite
    updates: LayerValues = {step: {} for step in steps}
    for (step, layer), (u_sum, u_count, p_sum, p_count) in sums.items():
        if u_count and p_count and u_sum > 0 and p_sum > 0 and step in updates:
            updates[step][layer] = math.log10((u_sum / u_count) / (p_sum / p_count))
    return Measures(f"{path} (report of {document.get('run', '?')})", steps, tuple(layers), norms, updates)
