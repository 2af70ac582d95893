"""Precomputed per-tensor summaries ("stats mode"): the JSON form stored in `__metadata__["gradcheck.stats"]`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from .stats import TensorStats
from .units import decode, encode, unit_count

STATS_KEY = "gradcheck.stats"
_COUNTS = ("count", "nan", "inf", "zeros")
_FLOATS = ("abs_min", "abs_max", "abs_sum", "sq_sum")
# JSON has no Inf or NaN: they travel as these strings.
_SPECIAL = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def summary_entry(stats: TensorStats, shape: tuple[int, ...], dtype: str) -> dict[str, object]:
    """The JSON-able summary of one tensor; floats round-trip exactly (repr), non-finite ones as strings."""
    entry: dict[str, object] = {"shape": [int(d) for d in shape], "dtype": dtype}
    entry.update({name: int(getattr(stats, name)) for name in _COUNTS})
    entry.update({name: _encode(getattr(stats, name)) for name in _FLOATS})
    if stats.alive is not None:  # optional: summaries without it (older recorders) read as before
        entry["alive"] = encode(stats.alive)
    return entry


def stats_from_entry(entry: Mapping[str, object]) -> TensorStats:
    """The TensorStats a summary entry describes; ValueError naming a missing or malformed field."""
    missing = [name for name in (*_COUNTS, *_FLOATS) if name not in entry]
    if missing:
        raise ValueError(f"summary has no field {missing[0]!r}")
    counts = {name: _count(entry, name) for name in _COUNTS}
    floats = {name: _float(entry, name) for name in _FLOATS}
    if counts["nan"] + counts["inf"] + counts["zeros"] > counts["count"]:
        raise ValueError("nan + inf + zeros exceed count")
    alive = decode(entry["alive"], unit_count(shape_of(entry))) if "alive" in entry else None
    return TensorStats(**counts, **floats, alive=alive)


def shape_of(entry: Mapping[str, object]) -> tuple[int, ...]:
    """The shape a summary entry declares."""
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"shape {shape!r} is not a list of non-negative integers")
    return tuple(shape)


def parse_summaries(metadata: Mapping[str, str]) -> dict[str, Mapping[str, object]]:
    """Summary entries by key from file metadata ({} when the file has none)."""
    raw = metadata.get(STATS_KEY)
    if raw is None:
        return {}
    table = json.loads(raw)
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"{STATS_KEY} is not a JSON object of objects")
    return table


def _encode(value: float) -> float | str:
    if math.isfinite(value):
        return float(value)
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _count(entry: Mapping[str, object], name: str) -> int:
    value = entry[name]
    if not _is_int(value) or value < 0:  # type: ignore[operator]
        raise ValueError(f"summary field {name!r} is {value!r}, not a non-negative integer")
    return int(value)  # type: ignore[call-overload]


def _float(entry: Mapping[str, object], name: str) -> float:
    value = entry[name]
    if isinstance(value, str) and value in _SPECIAL:
        return _SPECIAL[value]
    if not (_is_int(value) or type(value) is float):
        raise ValueError(f"summary field {name!r} is {value!r}, not a number")
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise ValueError(f"summary field {name!r} is beyond the float64 range") from None


def _is_int(value: object) -> bool:
    """A JSON integer (bool is not one)."""
    return type(value) is int
