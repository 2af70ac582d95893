"""Training context stored beside a snapshot: learning rates, loss scale, clipping, accumulation, module types.

The recorders write it as JSON in `__metadata__["gradcheck.context"]`, and user or framework scalars (the loss)
in `__metadata__["gradcheck.scalars"]`; both are optional, and a file without them reads as before. Parsing is
lenient field by field: a malformed field is dropped (and named in `problems`), never the whole file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONTEXT_KEY = "gradcheck.context"
SCALARS_KEY = "gradcheck.scalars"
CONTEXT_VERSION = 1
# A snapshot lists at most this many skipped step numbers; `skipped_count` still counts all of them.
MAX_SKIPPED_LISTED = 1000


@dataclass(frozen=True)
class StepContext:
    """What the optimizer saw at one recorded step, beyond the tensors themselves."""

    framework: str | None = None  # "torch", "lightning", "transformers", "keras", "optax", ...
    optimizer: str | None = None  # the optimizer's class name, e.g. "AdamW"
    lr: Mapping[str, float] = field(default_factory=dict)  # parameter -> learning rate of its param group
    loss_scale: float | None = None  # AMP loss scale in force for this step (GradScaler, precision plugins)
    skipped_count: int = 0  # optimizer steps AMP skipped since the previous snapshot (inf/NaN gradients)
    skipped: tuple[int, ...] = ()  # their step numbers, at most MAX_SKIPPED_LISTED
    grad_norm: float | None = None  # total gradient norm before clipping
    clip_coef: float | None = None  # factor clipping multiplied the gradients by (1.0: not clipped)
    max_grad_norm: float | None = None  # the clipping threshold in force
    accumulation: int | None = None  # micro-batches accumulated into this optimizer step
    modules: Mapping[str, str] = field(default_factory=dict)  # parameter -> module type ("Linear", ...)

    @property
    def clipped(self) -> bool | None:
        """Whether clipping scaled this step's gradients down; None when nothing about clipping was recorded."""
        return None if self.clip_coef is None else self.clip_coef < 1.0


def context_metadata(context: StepContext) -> str:
    """The JSON string stored under CONTEXT_KEY; only the fields that were recorded are written."""
    out: dict[str, Any] = {"version": CONTEXT_VERSION}
    for name in (
        "framework",
        "optimizer",
        "loss_scale",
        "grad_norm",
        "clip_coef",
        "max_grad_norm",
        "accumulation",
    ):
        value = getattr(context, name)
        if value is not None:
            out[name] = _json_number(value) if isinstance(value, float) else value
    if context.lr:
        out["lr"] = {name: _json_number(float(value)) for name, value in context.lr.items()}
    if context.skipped_count:
        out["skipped_count"] = int(context.skipped_count)
        out["skipped"] = [int(step) for step in context.skipped[:MAX_SKIPPED_LISTED]]
    if context.modules:
        out["modules"] = {str(name): str(kind) for name, kind in context.modules.items()}
    return json.dumps(out, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def scalars_metadata(scalars: Mapping[str, float]) -> str:
    """The JSON string stored under SCALARS_KEY (`{"loss": 0.42}`); NaN/Inf travel as strings."""
    return json.dumps(
        {str(name): _json_number(float(value)) for name, value in scalars.items()},
        allow_nan=False, ensure_ascii=False, separators=(",", ":"),
    )  # fmt: skip


def parse_context(text: str) -> tuple[StepContext, list[str]]:
    """The context a metadata string describes, and a problem line per field that was malformed and dropped."""
    problems: list[str] = []
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return StepContext(), [f"{CONTEXT_KEY} is not valid JSON"]
    if not isinstance(raw, dict):
        return StepContext(), [f"{CONTEXT_KEY} is not a JSON object"]
    fields: dict[str, Any] = {}
    for name in ("framework", "optimizer"):
        _take(raw, name, fields, problems, lambda v: v if isinstance(v, str) else None)
    for name in ("loss_scale", "grad_norm", "clip_coef", "max_grad_norm"):
        _take(raw, name, fields, problems, _number)
    _take(raw, "accumulation", fields, problems, _positive_int)
    _take(raw, "skipped_count", fields, problems, _count)
    _take(raw, "skipped", fields, problems, _steps)
    _take(raw, "lr", fields, problems, lambda v: _mapping(v, _number))
    _take(
        raw, "modules", fields, problems, lambda v: _mapping(v, lambda k: k if isinstance(k, str) else None)
    )
    return StepContext(**fields), problems


def parse_scalars(text: str) -> tuple[dict[str, float], list[str]]:
    """The scalars a metadata string holds, and a problem line per value that was dropped."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return {}, [f"{SCALARS_KEY} is not valid JSON"]
    if not isinstance(raw, dict):
        return {}, [f"{SCALARS_KEY} is not a JSON object"]
    values = {name: _number(value) for name, value in raw.items()}
    dropped = [f"{SCALARS_KEY}: {name!r} is not a number" for name, value in values.items() if value is None]
    return {name: value for name, value in values.items() if value is not None}, dropped


def _take(
    raw: Mapping[str, Any], name: str, fields: dict[str, Any], problems: list[str], convert: Any
) -> None:
    if name not in raw:
        return
    value = convert(raw[name])
    if value is None:
        problems.append(f"{CONTEXT_KEY}: field {name!r} is malformed and was ignored")
    else:
        fields[name] = value


_SPECIAL = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _json_number(value: float) -> float | str:
    """A float for JSON: finite values as they are, NaN/Inf as the strings the reader's summaries use."""
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) < 2**1023 else None
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        return _SPECIAL.get(value)
    return None


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value < 2**63 else None


def _positive_int(value: Any) -> int | None:
    count = _count(value)
    return count if count else None


def _steps(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list) or len(value) > MAX_SKIPPED_LISTED:
        return None
    if not all(type(step) is int and abs(step) < 2**63 for step in value):
        return None
    return tuple(value)


def _mapping(value: Any, convert: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    out = {name: convert(item) for name, item in value.items()}
    return None if any(item is None for item in out.values()) else out
