"""Precomputed per-tensor summaries ("stats mode"): the JSON form stored in `__metadata__["gradcheck.stats"]`."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .columns import StatsBlock
from .stats import TensorStats
from .units import decode, encode, unit_count

STATS_KEY = "gradcheck.stats"
_COUNTS = ("count", "nan", "inf", "zeros")
_FLOATS = ("abs_min", "abs_max", "abs_sum", "sq_sum")
# JSON has no Inf or NaN: they travel as these strings.
_SPECIAL = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_COUNT_CAP = 1 << 63  # counts and dimensions beyond int64 describe no tensor that exists


def summary_entry(stats: TensorStats, shape: tuple[int, ...], dtype: str) -> dict[str, object]:
    """The JSON-able summary of one tensor; floats round-trip exactly (repr), non-finite ones as strings."""
    entry: dict[str, object] = {"shape": [int(d) for d in shape], "dtype": dtype}
    entry.update({name: int(getattr(stats, name)) for name in _COUNTS})
    entry.update({name: _encode(getattr(stats, name)) for name in _FLOATS})
    if stats.scale != 1.0:  # sums of |x|/scale (F64 values whose squares leave the float64 range)
        entry["scale"] = stats.scale
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
    if math.isinf(floats["abs_max"]):
        raise ValueError("abs_max is infinite, but it is the largest finite |x|")
    scale = _scale(entry)
    alive = decode(entry["alive"], unit_count(shape_of(entry))) if "alive" in entry else None
    return TensorStats(**counts, **floats, scale=scale, alive=alive)


def shape_of(entry: Mapping[str, object]) -> tuple[int, ...]:
    """The shape a summary entry declares; it must hold `count` elements."""
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d < _COUNT_CAP for d in shape):
        raise ValueError(f"shape {_short(shape)} is not a list of non-negative integers")
    size = math.prod(shape)
    if size != entry.get("count"):
        raise ValueError(f"count {_short(entry.get('count'))} does not match shape {_short(shape)} ({size})")
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
    if not _is_int(value) or not 0 <= value < _COUNT_CAP:  # type: ignore[operator]
        raise ValueError(f"summary field {name!r} is {_short(value)}, not an integer from 0 to 2^63-1")
    return int(value)  # type: ignore[call-overload]


def _float(entry: Mapping[str, object], name: str) -> float:
    """A non-negative number or "inf" (a sum that overflowed; abs_min of no finite element)."""
    value = entry[name]
    if isinstance(value, str) and value in _SPECIAL:
        number = _SPECIAL[value]
    elif _is_int(value) or type(value) is float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:
            raise ValueError(f"summary field {name!r} is beyond the float64 range") from None
    else:
        raise ValueError(f"summary field {name!r} is {_short(value)}, not a number")
    if not number >= 0:  # also NaN: these are sums and extremes of |x|
        raise ValueError(f"summary field {name!r} is {_short(value)}, not a number >= 0")
    return number


def _scale(entry: Mapping[str, object]) -> float:
    """The optional power-of-two scale of the sums (absent: 1)."""
    value = entry.get("scale", 1.0)
    if type(value) is not float or not (0 < value < math.inf) or math.frexp(value)[0] != 0.5:
        raise ValueError(f"summary field 'scale' is {_short(value)}, not a positive power of two")
    return value


def _short(value: object) -> str:
    """repr of a value from a file, cut so a 5,000-digit number or a long list stays one readable line."""
    if _is_int(value) and abs(value) >= 10**30:  # type: ignore[arg-type]
        return f"a {value.bit_length()}-bit integer"  # type: ignore[union-attr]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: object) -> bool:
    """A JSON integer (bool is not one)."""
    return type(value) is int


@dataclass(frozen=True, eq=False)
class Summaries:
    """A file's precomputed summaries as one StatsBlock (keys in the table's order), with shapes and dtypes."""

    block: StatsBlock
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]


def summary_block(table: Mapping[str, Mapping[str, object]]) -> Summaries:
    """The summaries of a `parse_summaries` table, checked as `stats_from_entry` and `shape_of` check them.

    The checks run over columns; a table they refuse is read entry by entry instead, which raises the
    first entry's own message (so both ways give the same result and the same error).
    """
    try:
        fast = _columns(table)
    except (ValueError, TypeError, OverflowError):
        fast = None
    if fast is not None:
        return fast
    stats, shapes = {}, []
    for key, entry in table.items():  # in the order runs.py reads them: the first problem is raised
        stats[key] = stats_from_entry(entry)
        shapes.append(shape_of(entry))
    dtypes = tuple(str(entry.get("dtype", "?")) for entry in table.values())
    return Summaries(StatsBlock.from_stats(stats), tuple(shapes), dtypes)


# Counts below this add up (nan + inf + zeros) without leaving int64; larger ones take the slow path.
_FAST_COUNT_CAP = 1 << 61


def _columns(table: Mapping[str, Mapping[str, object]]) -> Summaries | None:
    """The Summaries of a table every entry of which is valid, built column by column; None otherwise."""
    entries = list(table.values())
    counts = {}
    for name in _COUNTS:
        column = [entry.get(name) for entry in entries]
        if not set(map(type, column)) <= {int}:
            return None
        counts[name] = np.array(column, dtype=np.int64)
        if not ((counts[name] >= 0) & (counts[name] < _FAST_COUNT_CAP)).all():
            return None
    floats = {name: _float_column([entry.get(name) for entry in entries]) for name in _FLOATS}
    if any(column is None for column in floats.values()):
        return None
    scale = [entry.get("scale", 1.0) for entry in entries]
    if not set(map(type, scale)) <= {float}:
        return None
    scales = np.array(scale, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        good = (
            (counts["nan"] + counts["inf"] + counts["zeros"] <= counts["count"]).all()
            and np.isfinite(floats["abs_max"]).all()  # type: ignore[arg-type]
            and ((scales > 0) & (scales < math.inf)).all()
            and (np.frexp(scales)[0] == 0.5).all()
        )
    shapes = [entry.get("shape") for entry in entries]
    if not good or not set(map(type, shapes)) <= {list}:
        return None
    dims = list(itertools.chain.from_iterable(shapes))  # type: ignore[arg-type]
    if not set(map(type, dims)) <= {int} or (dims and not 0 <= min(dims) <= max(dims) < _COUNT_CAP):
        return None
    if list(map(math.prod, shapes)) != counts["count"].tolist():  # type: ignore[arg-type]
        return None
    shape_tuples = tuple(map(tuple, shapes))  # type: ignore[arg-type]
    alive = tuple(
        decode(entry["alive"], unit_count(shape)) if "alive" in entry else None
        for entry, shape in zip(entries, shape_tuples, strict=True)
    )
    block = StatsBlock(keys=tuple(table), **counts, **floats, scale=scales, alive=alive)  # type: ignore[arg-type]
    dtypes = tuple(str(entry.get("dtype", "?")) for entry in entries)
    return Summaries(block, shape_tuples, dtypes)


def _float_column(column: list[object]) -> np.ndarray | None:
    """Numbers >= 0 or "inf" as float64; None when any is something else (the slow path then says what)."""
    kinds = set(map(type, column))
    if str in kinds:
        column = [math.inf if value == "inf" else value for value in column]
        kinds = set(map(type, column))
    if not kinds <= {int, float}:
        return None
    values = np.array(column, dtype=np.float64)  # OverflowError beyond the float64 range
    with np.errstate(invalid="ignore"):
        return values if (values >= 0).all() else None
