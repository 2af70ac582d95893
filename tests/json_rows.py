"""Schema 2 `--format json` documents read back as schema 1's per-step rows, for tests that check values.

`per_step(doc)` adds to each `params[]` entry of a schema 2 document the `steps` list schema 1 writes (one row per
step at which the parameter has a tensor, each tensor with its `file` path), so a test can read either schema the
same way; test_json_schema2.py checks that the result equals the schema 1 document of the same run.
"""

from __future__ import annotations

from typing import Any

KINDS = ("grad", "param", "update")
STATS = ("count", "nan", "inf", "zeros", "min_abs", "mean_abs", "max_abs", "norm")


def per_step(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with schema 1's `params[].steps` rows (schema 1 documents are returned as they are)."""
    if doc["schema"] == 1:
        return doc
    layers = {layer["name"]: layer for layer in doc["layers"]}
    for param in doc["params"]:
        layer = layers.get(param["layer"])
        rows = []
        for i, step in enumerate(doc["steps"]):
            tensors = {kind: _tensor(param[kind], i, doc["files"]) for kind in KINDS}
            if all(tensor is None for tensor in tensors.values()):
                continue
            rows.append(
                {
                    "step": step,
                    **tensors,
                    "update_ratio": param["update_ratio"][i],
                    "grad_param_norm_ratio": param["grad_param_norm_ratio"][i],
                    "layer_grad_norm": layer["grad_norm"][i] if layer else None,
                    "layer_grad_rms": layer["grad_rms"][i] if layer else None,
                    "depth": layer["depth"][i] if layer else None,
                }
            )
        param["steps"] = rows
    return doc


def _tensor(series: dict[str, list] | None, i: int, files: list[str]) -> dict[str, Any] | None:
    if series is None or series["count"][i] is None:
        return None
    return {**{name: series[name][i] for name in STATS}, "file": files[series["file"][i]]}
