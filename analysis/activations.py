"""Forward-activation summaries and logged scalars stored beside a snapshot (the `act/` kind), and reading them.

The recorders write one entry per module output in `__metadata__["gradcheck.activations"]`, a JSON object whose
keys are `act/<module name>` (the root module is `act/<model>`); the loss and other user scalars travel in
`gradcheck.scalars` (its format and parser, `parse_scalars`, in analysis/context.py). Both are optional: a file
without them reads exactly as before. Parsing is lenient entry by entry: a malformed entry is dropped and named in
`problems`, never the whole file.

`Signals` is the one owner of a run's scalars: readers take `run.signals.scalars` / `run.signals.losses()`.
`Run.scalars` (analysis/runs.py) is a compat alias that still parses the key a second time until runs.py reads
`signals.scalars` instead (tests/test_signals_scalars.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .context import SCALARS_KEY, parse_scalars

ACTIVATIONS_KEY = "gradcheck.activations"
ACT_PREFIX = "act/"
ROOT_NAME = "<model>"
ACTIVATIONS_VERSION = 1
# Bound families whose saturation is measured: sigmoid-like outputs live in [0, 1], tanh-like in [-1, 1], a
# softmax row in the simplex (saturated: one value takes nearly all the mass).
BOUNDS = ("sigmoid", "tanh", "softmax")
_COUNTS = ("count", "nan", "inf", "zeros", "calls")
_FLOATS = ("mean", "std", "min", "max")


@dataclass(frozen=True)
class ModuleActivation:
    """Statistics of one module's forward output over one recorded step (all its calls in that step)."""

    module: str
    type: str  # the module's class name, "Linear"
    order: int  # position in forward order: the index at which the module's first call returned
    count: int
    nan: int
    inf: int
    zeros: int
    mean: float  # over finite values; NaN when none
    std: float
    min: float
    max: float
    inputs_finite: bool  # every float tensor passed to the module was finite, at every call
    calls: int = 1
    bound: str | None = None  # one of BOUNDS for bounded activations
    saturated: float | None = None  # share of values (softmax: rows) at the bounds, 0..1
    units: int | None = None  # ReLU family: number of units (channels for 4-D/5-D outputs, else last dim)
    alive: bytes | None = None  # ReLU family: bit i set when unit i was non-zero for some input of the step

    @property
    def finite(self) -> bool:
        """Whether the output held no NaN or Inf."""
        return self.nan + self.inf == 0

    def dead_units(self, alive: bytes | None = None) -> int | None:
        """Units never non-zero, from this step's bitmap or a merged one; None without a bitmap."""
        bits = self.alive if alive is None else alive
        if bits is None or self.units is None:
            return None
        return self.units - sum(byte.bit_count() for byte in bits)


@dataclass
class Signals:
    """Activations and scalars (the loss, ...) of a run, by step; empty for runs recorded without them."""

    activations: dict[int, dict[str, ModuleActivation]] = field(default_factory=dict)
    scalars: dict[int, dict[str, float]] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, problem)

    def add(self, file: str, step: int, metadata: Mapping[str, str]) -> None:
        """Take a file's activations and scalars (the first file of a step that carries them wins)."""
        found: list[str] = []
        if ACTIVATIONS_KEY in metadata and step not in self.activations:
            self.activations[step], found = parse_activations(metadata[ACTIVATIONS_KEY])
        if SCALARS_KEY in metadata and step not in self.scalars:
            self.scalars[step], more = parse_scalars(metadata[SCALARS_KEY])
            found += more
        self.problems += [(file, problem) for problem in found]

    def losses(self) -> list[tuple[int, float]]:
        """(step, loss) in step order, from the scalar named `loss`."""
        return [(step, values["loss"]) for step, values in sorted(self.scalars.items()) if "loss" in values]

    def steps(self) -> list[int]:
        """Steps with activations, in order."""
        return sorted(self.activations)


def merge_alive(bitmaps: list[bytes]) -> bytes:
    """Units non-zero at any of several steps: the bitwise OR of their bitmaps (same unit count)."""
    out = bytearray(bitmaps[0])
    for bits in bitmaps[1:]:
        for i, byte in enumerate(bits[: len(out)]):
            out[i] |= byte
    return bytes(out)


def activations_metadata(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The JSON string stored under ACTIVATIONS_KEY: module name -> fields; `alive` as a hex string."""
    out: dict[str, Any] = {"version": ACTIVATIONS_VERSION}
    for name, entry in entries.items():
        row = {key: _json(value) for key, value in entry.items() if value is not None}
        out[ACT_PREFIX + (name or ROOT_NAME)] = row
    return json.dumps(out, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def parse_activations(text: str) -> tuple[dict[str, ModuleActivation], list[str]]:
    """The module activations a metadata string describes, and a problem line per entry that was dropped."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return {}, [f"{ACTIVATIONS_KEY} is not valid JSON"]
    if not isinstance(raw, dict):
        return {}, [f"{ACTIVATIONS_KEY} is not a JSON object"]
    out: dict[str, ModuleActivation] = {}
    problems = []
    for key, entry in raw.items():
        if not key.startswith(ACT_PREFIX):
            continue
        module = key[len(ACT_PREFIX) :]
        parsed = _entry(module, entry)
        if parsed is None:
            problems.append(f"{ACTIVATIONS_KEY}: entry {key!r} is malformed and was ignored")
        else:
            out[module] = parsed
    return out, problems


def _entry(module: str, entry: object) -> ModuleActivation | None:
    if not isinstance(entry, dict):
        return None
    counts = {name: entry.get(name, 1 if name == "calls" else None) for name in _COUNTS}
    floats = {name: _number(entry.get(name)) for name in _FLOATS}
    if not all(type(v) is int and v >= 0 for v in counts.values()) or None in floats.values():
        return None
    if counts["nan"] + counts["inf"] + counts["zeros"] > counts["count"]:
        return None
    kind, order, finite = entry.get("type"), entry.get("order"), entry.get("inputs_finite")
    if not isinstance(kind, str) or type(order) is not int or not isinstance(finite, bool):
        return None
    bound, saturated = entry.get("bound"), _number(entry.get("saturated"))
    if (bound is None) != (saturated is None) or (bound is not None and bound not in BOUNDS):
        return None
    units, alive = entry.get("units"), _bitmap(entry.get("alive"))
    if (units is None) != (alive is None) or (units is not None and not _fits(units, alive)):
        return None
    return ModuleActivation(
        module, kind, order, **counts, **floats, inputs_finite=finite,  # type: ignore[arg-type]
        bound=bound, saturated=saturated, units=units, alive=alive,
    )  # fmt: skip


def _fits(units: object, alive: bytes | None) -> bool:
    return type(units) is int and units > 0 and alive is not None and len(alive) == (units + 7) // 8


_SPECIAL = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return _SPECIAL.get(value) if isinstance(value, str) else None


def _bitmap(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def signals_document(signals: Signals) -> dict[str, Any]:
    """The JSON fields of the loss and activations (docs/JSON.md): `{}` for a run that recorded neither."""
    if not signals.activations and not signals.scalars:
        return {}
    modules: dict[str, list[dict[str, Any]]] = {}
    for step in signals.steps():
        for name, act in sorted(signals.activations[step].items(), key=lambda item: item[1].order):
            modules.setdefault(name, []).append(_act_document(step, act))
    scalars = [{"step": step, **values} for step, values in sorted(signals.scalars.items())]
    return {"scalars": scalars, "activations": modules}


def _act_document(step: int, act: ModuleActivation) -> dict[str, Any]:
    dead = act.dead_units()
    return {
        "step": step, "type": act.type, "order": act.order, "calls": act.calls, "count": act.count,
        "nan": act.nan, "inf": act.inf, "zeros": act.zeros, "mean": act.mean, "std": act.std, "min": act.min,
        "max": act.max, "inputs_finite": act.inputs_finite, "bound": act.bound, "saturated": act.saturated,
        "units": act.units, "dead_units": dead,
    }  # fmt: skip
