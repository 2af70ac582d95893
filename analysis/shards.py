"""Multi-rank runs: shard metadata, and merging the shards of one parameter into exact whole-tensor stats."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from .errors import RunError
from .stats import TensorStats, merge_all
from .units import merge_shards

SHARDS_KEY = "gradcheck.shards"
MAX_SHARDS = 1 << 20  # far above any world size; merging works from the shards present, never from `count`
_DIM_CAP = 1 << 63  # dimensions and element counts beyond int64 describe no tensor that exists


def _short(value: object) -> str:
    """repr of a value from a file, cut to one readable line (no 4,000-digit numbers)."""
    if type(value) is int and abs(value) >= 10**30:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class Shard:
    """Where a local tensor sits in its global parameter: shard `index` of `count`."""

    global_name: str
    shape: tuple[int, ...]
    index: int
    count: int


@dataclass(frozen=True, slots=True)
class Piece:
    """One tensor read from one file: whole, or one shard of a parameter."""

    step: int
    kind: str
    param: str  # the global parameter name
    stats: TensorStats
    shape: tuple[int, ...]
    dtype: str
    file: str
    folder: str
    shard: Shard | None = None


def parse_shards(metadata: Mapping[str, str]) -> dict[str, Shard]:
    """Shard descriptions by local parameter name; ValueError/TypeError naming what is malformed."""
    raw = metadata.get(SHARDS_KEY)
    if raw is None:
        return {}
    table = json.loads(raw)
    if not isinstance(table, dict):
        raise TypeError(f"{SHARDS_KEY} is not a JSON object")
    return {name: _shard(name, entry) for name, entry in table.items()}


def _shard(name: str, entry: object) -> Shard:
    if not isinstance(entry, dict):
        raise TypeError(f"{SHARDS_KEY} entry for {name!r} is not an object")
    shape, index, count = entry.get("shape"), entry.get("index"), entry.get("count")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < _DIM_CAP for d in shape):
        raise ValueError(f"shard {name!r}: shape {_short(shape)} is not a list of non-negative integers")
    if math.prod(shape) >= _DIM_CAP:
        raise ValueError(f"shard {name!r}: global shape {_short(shape)} is too large (over 2^63 elements)")
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count <= MAX_SHARDS):
        raise ValueError(
            f"shard {name!r}: index {_short(index)} of count {_short(count)} is not a valid shard position"
        )
    return Shard(str(entry.get("global", name)), tuple(shape), index, count)


def assemble(pieces: Iterable[Piece]) -> tuple[dict[tuple[int, str, str], Piece], list[tuple[str, str]]]:
    """Whole tensors keyed (step, param, kind), and (file, problem) for shards that could not be merged.

    A whole tensor found in several rank folders (replicated, written by every rank on request) is taken from
    the first folder; twice in the same folder is an error naming both files.
    """
    whole: dict[tuple[int, str, str], Piece] = {}
    sharded: dict[tuple[int, str, str], list[Piece]] = {}
    for piece in pieces:
        key = (piece.step, piece.param, piece.kind)
        if piece.shard is not None:
            sharded.setdefault(key, []).append(piece)
            continue
        earlier = whole.get(key)
        if earlier is None:
            whole[key] = piece
        elif earlier.folder == piece.folder:
            raise RunError(
                f"{piece.param!r} ({piece.kind}) at step {piece.step} is in two files: {earlier.file} and {piece.file}"
            )
    merged = dict(whole)
    problems: list[tuple[str, str]] = []
    for key, group in sharded.items():
        if key in merged:
            problems.append(
                (group[0].file, f"{_what(key)} is both whole (in {merged[key].file}) and sharded")
            )
            continue
        result = _merge_shards(key, group)
        if isinstance(result, Piece):
            merged[key] = result
        else:
            problems.append(result)
    return merged, problems


def _merge_shards(key: tuple[int, str, str], group: list[Piece]) -> Piece | tuple[str, str]:
    """Merge the shards of one tensor exactly, or say which shard is missing, duplicated or inconsistent."""
    first = group[0]
    assert first.shard is not None
    by_index: dict[int, Piece] = {}
    for piece in group:
        shard = piece.shard
        assert shard is not None
        if (shard.count, shard.shape) != (first.shard.count, first.shard.shape):
            return piece.file, f"{_what(key)}: shards disagree on the shard count or global shape"
        if shard.index in by_index:
            return (
                piece.file,
                f"{_what(key)}: shard {shard.index} of {shard.count} also in {by_index[shard.index].file}",
            )
        by_index[shard.index] = piece
    if len(by_index) < first.shard.count:  # from the indices present: never a list of `count` numbers
        missing = first.shard.count - len(by_index)
        shown = ", ".join(map(str, _first_missing(by_index, first.shard.count, 10))) + (
            f" and {missing - 10} more" if missing > 10 else ""
        )
        return first.file, f"{_what(key)}: shard(s) {shown} of {first.shard.count} missing"
    ordered = [by_index[index] for index in sorted(by_index)]
    alive = merge_shards([(piece.shape, piece.stats.alive) for piece in ordered], first.shard.shape)
    stats = replace(merge_all(piece.stats for piece in ordered), alive=alive)
    expected = math.prod(first.shard.shape)
    if stats.count != expected:
        return (
            first.file,
            f"{_what(key)}: shards hold {stats.count} elements, the global shape needs {expected}",
        )
    return replace(first, stats=stats, shape=first.shard.shape, shard=None)


def _first_missing(present: Mapping[int, object], count: int, wanted: int) -> list[int]:
    """The first `wanted` indices below `count` not in `present`: at most len(present) + wanted steps."""
    found: list[int] = []
    index = 0
    while len(found) < wanted and index < count:
        if index not in present:
            found.append(index)
        index += 1
    return found


def _what(key: tuple[int, str, str]) -> str:
    step, param, kind = key
    return f"{param!r} ({kind}) at step {step}"
