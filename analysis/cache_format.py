"""Cache format 5: the scans of many files as one checked JSON head line and little-endian arrays.

An entry is the sha256 of its payload (64 hex digits and a newline) followed by the payload: one line of
ASCII JSON (the key, the files with their identity, metadata and skipped tensors, and each distinct tensor
layout of their headers once), a newline, then the statistics of every file's tensors back to back as
little-endian int64/float64 columns and the packed unit bitmaps. A run of 1,000 snapshots of one model
stores its header layout once and its numbers as arrays that load without a Python object per tensor.
No pickle: an entry is data, never code. Everything is checked when decoded; anything unexpected makes
the whole entry a miss (None), never an error.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .columns import FLOAT_FIELDS, INT_FIELDS, STAT_FIELDS, StatsBlock
from .dtypes import DTYPES
from .header import FileHeader, TensorEntry, _collector_paused
from .reader import FileScan
from .summaries import STATS_KEY, Summaries
from .units import PackedBitmaps, pack_bitmaps, unit_count

_DIGEST_CHARS = 64  # a sha256 in hex
_COLUMNS = (
    *((name, "<i8") for name in INT_FIELDS),
    *((name, "<f8") for name in FLOAT_FIELDS),
    ("alive_known", "u1"),
    ("alive_bytes", "<i8"),
)
_HEAD_KEYS = {"layouts", "summary_layouts", "files", "rows", "bitmap_bytes"}
_FILE_KEYS = {"path", "identity", "file_size", "layout", "metadata", "skipped", "summaries"}
_LAYOUT_KEYS = {"names", "dtypes", "shapes", "begins", "ends"}

# One stored file: (absolute path, identity as a list of ints, scan).
Stored = tuple[str, Sequence[int], FileScan]


@_collector_paused()
def encode(key: dict[str, Any], files: Sequence[Stored]) -> bytes:
    """An entry holding `files` under `key` (a JSON object of its own: format, version, what it is for)."""
    layouts: list[dict[str, Any]] = []
    by_entries: dict[tuple[TensorEntry, ...], int] = {}
    by_id: dict[int, int] = {}
    summary_layouts: dict[tuple[Any, ...], int] = {}
    lazy_units: dict[int, _LazyUnits] = {}
    heads, blocks, bitmaps = [], [], []
    for path, identity, scan in files:
        entries = scan.header.entries
        layout = by_id.get(id(entries))
        if layout is None:
            layout = by_entries.setdefault(entries, len(by_entries))
            if layout == len(layouts):
                layouts.append(_layout_head(entries))
            by_id[id(entries)] = layout
        units = lazy_units.setdefault(layout, _LazyUnits(entries))  # only bitmaps made as ints need them
        summaries = scan.__dict__.get(
            "summaries"
        )  # kept only when a reader asked for them (and they were good)
        heads.append({
            "path": path,
            "identity": list(identity),
            "file_size": scan.header.file_size,
            "layout": layout,
            "metadata": scan.header.metadata if summaries is None else _without_summaries(scan.header.metadata),
            "skipped": scan.skipped,
            "summaries": None if summaries is None else _summary_layout(summaries, summary_layouts),
        })  # fmt: skip
        blocks.append(scan.block)
        bitmaps.append(pack_bitmaps(scan.block.alive, units).compact())
        if summaries is not None:
            blocks.append(summaries.block)
            bitmaps.append(
                pack_bitmaps(summaries.block.alive, list(map(unit_count, summaries.shapes))).compact()
            )
    columns = {
        name: _joined([getattr(b, name) for b in blocks], np.dtype(code)) for name, code in _COLUMNS[:9]
    }
    columns["alive_known"] = _joined([b.known for b in bitmaps], np.dtype("u1"))
    columns["alive_bytes"] = _joined([b.ends - b.starts for b in bitmaps], np.dtype("<i8"))
    data = _joined([b.data for b in bitmaps], np.dtype("u1"))
    head = {
        **key,
        "layouts": layouts,
        "summary_layouts": [
            {"keys": list(keys), "shapes": [list(shape) for shape in shapes], "dtypes": list(dtypes)}
            for keys, shapes, dtypes in summary_layouts
        ],
        "files": heads,
        "rows": len(columns["count"]),
        "bitmap_bytes": len(data),
    }
    text = json.dumps(head, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode("ascii")
    parts = [text, b"\n", *(memoryview(columns[name]).cast("B") for name, _ in _COLUMNS), memoryview(data)]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return b"".join([digest.hexdigest().encode("ascii"), b"\n", *parts])  # one copy of the columns


def _without_summaries(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata without the stats-mode summaries' text: they are stored as arrays (and restored as the
    scan's `summaries`), and the text held them again: 80 of the 112 MB of a 200-file stats-mode entry."""
    return {name: value for name, value in metadata.items() if name != STATS_KEY}


def _joined(arrays: Sequence[np.ndarray], dtype: np.dtype) -> np.ndarray:
    return np.concatenate(arrays, dtype=dtype, casting="same_kind") if arrays else np.zeros(0, dtype=dtype)


class _LazyUnits(Sequence[int]):
    """The unit counts of a header's decoded tensors, worked out only if asked for."""

    def __init__(self, entries: Sequence[TensorEntry]) -> None:
        self._entries = entries
        self._units: list[int] | None = None

    def _all(self) -> list[int]:
        if self._units is None:
            self._units = [unit_count(e.shape) for e in self._entries if DTYPES[e.dtype].decode is not None]
        return self._units

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        return self._all()[index]


def _summary_layout(summaries: Summaries, known: dict[tuple[Any, ...], int]) -> int:
    """The index of the summaries' (keys, shapes, dtypes) among those of the entry, adding it if new."""
    return known.setdefault((summaries.block.keys, summaries.shapes, summaries.dtypes), len(known))


def _layout_head(entries: Sequence[TensorEntry]) -> dict[str, Any]:
    return {
        "names": [e.name for e in entries],
        "dtypes": [e.dtype for e in entries],
        "shapes": [list(e.shape) for e in entries],
        "begins": [e.begin for e in entries],
        "ends": [e.end for e in entries],
    }


class _Bad(ValueError):
    """An entry whose checksum holds but whose content is not what `encode` writes."""


def _check(condition: object) -> None:
    if not condition:
        raise _Bad


@_collector_paused()  # the JSON head of a long run's index is thousands of small containers
def decode(raw: bytes, key: dict[str, Any]) -> dict[str, tuple[list[int], FileScan]] | None:
    """{path: (identity, scan)} of an entry stored under `key` whose checksum holds; None for anything else."""
    head, payload = raw[: _DIGEST_CHARS + 1], memoryview(raw)[_DIGEST_CHARS + 1 :]
    if head != hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n":
        return None
    try:
        line = bytes(payload[: raw.index(b"\n", _DIGEST_CHARS + 1) - _DIGEST_CHARS - 1])
        obj = json.loads(line)
        _check(type(obj) is dict and set(obj) == set(key) | _HEAD_KEYS)
        if {name: obj[name] for name in key} != key:
            return None
        return _decode_files(obj, payload[len(line) + 1 :])
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError):
        return None


def _decode_files(obj: dict[str, Any], blob: memoryview) -> dict[str, tuple[list[int], FileScan]]:
    layouts = obj["layouts"]
    _check(type(layouts) is list and type(obj["files"]) is list)
    decoded = [_decode_layout(layout) for layout in layouts]
    _check(type(obj["summary_layouts"]) is list)
    summary_layouts = [_decode_summary_layout(layout) for layout in obj["summary_layouts"]]
    rows, extra = obj["rows"], obj["bitmap_bytes"]
    _check(type(rows) is int and type(extra) is int and rows >= 0 and extra >= 0)
    columns, offset = {}, 0
    for name, code in _COLUMNS:
        dtype = np.dtype(code)
        columns[name] = np.frombuffer(blob, dtype=dtype, count=rows, offset=offset)
        offset += rows * dtype.itemsize
    _check(len(blob) == offset + extra)
    data = np.frombuffer(blob, dtype=np.uint8, count=extra, offset=offset)
    files, start, expected = [], 0, []
    for head in obj["files"]:
        _check(type(head) is dict and set(head) == _FILE_KEYS)
        layout, summaries = head["layout"], head["summaries"]
        _check(type(layout) is int and 0 <= layout < len(decoded))
        _check(summaries is None or (type(summaries) is int and 0 <= summaries < len(summary_layouts)))
        files.append((head, start))
        start += len(decoded[layout][1])
        expected.append(decoded[layout][2])
        if summaries is not None:
            start += len(summary_layouts[summaries][0])
            expected.append(summary_layouts[summaries][3])
    _check(start == rows)
    counts = np.concatenate(expected) if expected else np.zeros((0, 2), dtype=np.int64)
    _check_numbers(columns, counts[:, 0])
    ends = np.cumsum(columns["alive_bytes"])
    _check_bitmaps(columns, ends, counts[:, 1], data)
    bitmaps = PackedBitmaps(data, ends - columns["alive_bytes"], ends, columns["alive_known"] == 1)
    out: dict[str, tuple[list[int], FileScan]] = {}
    for head, first in files:
        keys = decoded[head["layout"]][1]
        scan = _scan(head, decoded[head["layout"]], columns, bitmaps, first)
        if head["summaries"] is not None:
            names, shapes, dtypes, _ = summary_layouts[head["summaries"]]
            rows = np.arange(first + len(keys), first + len(keys) + len(names))
            fields = {name: columns[name][rows] for name in STAT_FIELDS}
            block = StatsBlock(keys=names, **fields, alive=bitmaps.take(rows))
            scan.__dict__["summaries"] = Summaries(block, shapes, dtypes)  # the cached_property's value
        out[_file_path(head, out)] = (head["identity"], scan)
    return out


def _file_path(head: dict[str, Any], seen: dict[str, Any]) -> str:
    path, identity = head["path"], head["identity"]
    _check(type(path) is str and path not in seen)
    _check(type(identity) is list and len(identity) == 5 and all(type(v) is int for v in identity))
    _check(type(head["file_size"]) is int and head["file_size"] == identity[2])
    return path


def _scan(
    head: dict[str, Any], layout: _Layout, columns: dict[str, np.ndarray], bitmaps: PackedBitmaps, first: int
) -> FileScan:
    """One file's scan from its rows [first, first + len(keys)) of the columns."""
    entries, keys, _, end, undecoded = layout
    size = head["file_size"]
    _check(end <= size)
    metadata, skipped = _string_map(head["metadata"]), _string_map(head["skipped"])
    _check(skipped.keys() == undecoded)
    rows = slice(first, first + len(keys))
    fields = {name: columns[name][rows] for name in STAT_FIELDS}
    block = StatsBlock(keys=keys, **fields, alive=bitmaps.take(np.arange(first, first + len(keys))))
    return FileScan(head["path"], FileHeader(entries, metadata, size), block, skipped)


def _string_map(value: Any) -> dict[str, str]:
    _check(type(value) is dict and set(map(type, value.values())) <= {str})
    return value


# A stored header layout: its entries, the keys of its decoded tensors, their (element count, unit count),
# the end of its last tensor and the names of the tensors not decoded.
_Layout = tuple[tuple[TensorEntry, ...], tuple[str, ...], np.ndarray, int, set[str]]


def _decode_layout(obj: Any) -> _Layout:
    """A header layout as `encode` stores it, checked."""
    _check(type(obj) is dict and set(obj) == _LAYOUT_KEYS)
    names, dtypes, shapes, begins, ends = (
        obj[name] for name in ("names", "dtypes", "shapes", "begins", "ends")
    )
    for column in (names, dtypes, shapes, begins, ends):
        _check(type(column) is list and len(column) == len(names))
    _check(set(map(type, names)) <= {str} and len(set(names)) == len(names))
    _check(set(map(type, begins)) <= {int} and set(map(type, ends)) <= {int})
    entries, keys, counts = [], [], []
    for name, dtype, shape, begin, end in zip(names, dtypes, shapes, begins, ends, strict=True):
        _check(type(dtype) is str and dtype in DTYPES and type(shape) is list and 0 <= begin <= end)
        _check(all(type(d) is int and d >= 0 for d in shape))
        _check(math.prod(shape) * DTYPES[dtype].bits == (end - begin) * 8)
        entries.append(TensorEntry(name, dtype, tuple(shape), begin, end))
        if DTYPES[dtype].decode is not None:
            keys.append(name)
            counts.append((math.prod(shape), unit_count(shape)))
    table = np.array(counts, dtype=np.int64).reshape(-1, 2)
    undecoded = {e.name for e in entries if DTYPES[e.dtype].decode is None}
    return tuple(entries), tuple(keys), table, max(ends, default=0), undecoded


def _decode_summary_layout(
    obj: Any,
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], tuple[str, ...], np.ndarray]:
    """Keys, shapes and dtypes of stored summaries, and their (element count, unit count)."""
    _check(type(obj) is dict and set(obj) == {"keys", "shapes", "dtypes"})
    keys, shapes, dtypes = obj["keys"], obj["shapes"], obj["dtypes"]
    for column in (keys, shapes, dtypes):
        _check(type(column) is list and len(column) == len(keys))
    _check(set(map(type, keys)) <= {str} and set(map(type, dtypes)) <= {str} and len(set(keys)) == len(keys))
    _check(set(map(type, shapes)) <= {list})
    _check(all(type(d) is int and 0 <= d < 1 << 63 for shape in shapes for d in shape))
    table = np.array([(math.prod(s), unit_count(s)) for s in shapes], dtype=np.int64).reshape(-1, 2)
    return tuple(keys), tuple(map(tuple, shapes)), tuple(dtypes), table


def _check_numbers(columns: dict[str, np.ndarray], counts: np.ndarray) -> None:
    """Counts that fit their shapes and sums and extremes that |x| can have (what a scan can produce)."""
    count, nan, inf, zeros = (columns[name] for name in INT_FIELDS)
    _check((count == counts).all() and (nan >= 0).all() and (inf >= 0).all() and (zeros >= 0).all())
    _check((nan + inf + zeros <= count).all())
    with np.errstate(invalid="ignore"):
        for name in ("abs_min", "abs_max", "abs_sum", "sq_sum"):
            _check((columns[name] >= 0).all())  # also no NaN
        scale = columns["scale"]
        _check(np.isfinite(columns["abs_max"]).all() and ((scale > 0) & (scale < math.inf)).all())
        _check((np.frexp(scale)[0] == 0.5).all())


def _check_bitmaps(
    columns: dict[str, np.ndarray], ends: np.ndarray, units: np.ndarray, data: np.ndarray
) -> None:
    """Bitmaps of at most (units + 7) // 8 bytes with no bit beyond the tensor's units; none where unknown."""
    known, size = columns["alive_known"], columns["alive_bytes"]
    _check(((known == 0) | (known == 1)).all() and (size >= 0).all())
    _check(((known == 1) | (size == 0)).all() and (int(ends[-1]) if ends.size else 0) == len(data))
    full = (units + 7) // 8
    _check((size <= full).all())
    last = (size == full) & (size > 0) & (units % 8 != 0)
    if last.any():
        spare = data[ends[last] - 1] >> (units[last] % 8).astype(np.uint8)
        _check((spare == 0).all())
