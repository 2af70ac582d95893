"""Parse safetensors headers: a fast path for the usual shape, a strict parser for everything else.

Both give the same verdicts and messages: anything the fast path doubts goes to the strict parser, which
follows the safetensors library's own rules (serde_json limits, u64 offsets, a contiguous data layout).
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import operator
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from .dtypes import DTYPES
from .errors import UnreadableFileError

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit (MAX_HEADER_SIZE in safetensors/src/tensor.rs)
_PREFIX_BYTES = 8  # the little-endian u64 header length
_U64_MAX = 2**64 - 1  # the library does its size arithmetic in usize; overflow there is an error
_MAX_JSON_DEPTH = 127  # serde_json's recursion limit: 127 nested containers parse, 128 do not
_METADATA_KEY = "__metadata__"
_TENSOR_FIELDS = ("dtype", "shape", "data_offsets")


class TensorEntry(NamedTuple):
    """One tensor as the header declares it; begin/end are absolute byte offsets in the file.

    A NamedTuple: a header of 1,500 tensors builds 1,500 of them, three times faster than frozen dataclasses.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class FileHeader:
    """The validated header of a safetensors file."""

    entries: tuple[TensorEntry, ...]
    metadata: dict[str, str]
    file_size: int


class _RepeatedKeys(dict):
    """A JSON object that repeated at least one key (the last value wins, as in serde_json)."""

    repeated: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, remembering repeated keys instead of silently dropping them."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    repeated: list[str] = []
    for key, _ in pairs:
        if key in seen:
            repeated.append(key)
        seen.add(key)
    result = _RepeatedKeys(obj)
    result.repeated = tuple(repeated)
    return result


def _json_int(text: str) -> int | float:
    """Read an integer like serde_json, which reads -0 and integers beyond 64 bits as floats."""
    return _json_float(text) if text == "-0" or len(text) > 20 else int(text)


def _json_float(text: str) -> float:
    """Read a float, rejecting literals too large for a double as serde_json does."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _json_constant(text: str) -> float:
    """Reject NaN and Infinity, which are not JSON."""
    raise ValueError(f"{text} is not allowed in JSON")


def _check_json_tree(root: object) -> None:
    """Reject lone surrogate escapes and nesting deeper than serde_json accepts."""
    stack: list[tuple[object, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not node.isascii():
                node.encode("utf-8")  # a lone surrogate from a \uD800 escape raises UnicodeEncodeError
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > _MAX_JSON_DEPTH:
            raise ValueError(f"nested more than {_MAX_JSON_DEPTH} levels deep")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)


def _load_json(raw: bytes | bytearray, path: str) -> object:
    """Decode the header bytes as strict UTF-8 JSON, with the library's extra restrictions."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFileError(path, "header is not valid UTF-8") from None
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_json_object,
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
        )
        _check_json_tree(obj)
    except json.JSONDecodeError as e:
        problem = f"line {e.lineno} column {e.colno}"
    except UnicodeEncodeError:
        problem = "unpaired surrogate in a \\u escape"
    except RecursionError:
        problem = "nested too deeply"
    except ValueError as e:  # raised by the hooks above, or Python's limit on the digits of an integer
        problem = str(e)
    else:
        return obj
    raise UnreadableFileError(path, f"header is not valid JSON ({problem})")


def _is_u64(value: object) -> bool:
    """Tell whether a JSON value is what serde reads as a usize on a 64-bit machine."""
    return type(value) is int and 0 <= value <= _U64_MAX


def _parse_metadata(value: object, path: str) -> dict[str, str]:
    """Validate `__metadata__`: absent or null means {}, otherwise an object of strings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UnreadableFileError(path, "__metadata__ is not a JSON object")
    for key, item in value.items():
        if not isinstance(item, str):
            raise UnreadableFileError(path, f"__metadata__ value for {key!r} is not a string")
    return dict(value)


def _parse_entry(name: str, value: object, data_start: int, path: str) -> TensorEntry:
    """Validate the fields of one tensor (types only; sizes and layout are checked later)."""
    where = f"tensor {name!r}"
    if not isinstance(value, dict):
        raise UnreadableFileError(path, f"{where}: is not a JSON object")
    if isinstance(value, _RepeatedKeys):
        repeated = [k for k in value.repeated if k in _TENSOR_FIELDS]
        if repeated:
            raise UnreadableFileError(path, f"{where}: duplicate field {repeated[0]!r}")
    missing = [field for field in _TENSOR_FIELDS if field not in value]
    if missing:
        raise UnreadableFileError(path, f"{where}: missing field {missing[0]!r}")
    dtype, shape, offsets = (value[field] for field in _TENSOR_FIELDS)
    if not isinstance(dtype, str) or dtype not in DTYPES:
        shown = repr(dtype) if isinstance(dtype, str) else json.dumps(dtype)
        raise UnreadableFileError(path, f"{where}: unknown dtype {shown}")
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise UnreadableFileError(
            path, f"{where}: shape {json.dumps(shape)} is not a list of non-negative integers"
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
        raise UnreadableFileError(
            path, f"{where}: data_offsets {json.dumps(offsets)} is not a pair of non-negative integers"
        )
    begin, end = offsets
    if end < begin:
        raise UnreadableFileError(path, f"{where}: data_offsets [{begin}, {end}] end before they begin")
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _expected_bytes(entry: TensorEntry, path: str) -> int:
    """Compute the byte size that shape and dtype imply, failing where the library's usize overflows."""
    info = DTYPES[entry.dtype]
    where = f"tensor {entry.name!r}: shape {list(entry.shape)} of {entry.dtype}"
    bits = 1
    for dim in (*entry.shape, info.bits):
        bits *= dim
        if bits > _U64_MAX:
            raise UnreadableFileError(path, f"{where} is too large (its size overflows 64 bits)")
    if bits % 8:
        raise UnreadableFileError(path, f"{where} is {bits} bits, not a whole number of bytes")
    return bits // 8


def _check_layout(entries: tuple[TensorEntry, ...], data_start: int, file_size: int, path: str) -> None:
    """Check sizes, that tensors tile the data section from 0 without gap or overlap, and its exact size."""
    position = data_start
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            kind = "overlap" if entry.begin < position else "gap"
            previous = (
                f"the previous tensor ends at {position - data_start}"
                if position > data_start
                else "the data section starts at 0"
            )
            raise UnreadableFileError(
                path,
                f"tensor {entry.name!r}: data starts at byte {entry.begin - data_start} "
                f"but {previous} ({kind})",
            )
        needed = _expected_bytes(entry, path)
        if entry.end - entry.begin != needed:
            raise UnreadableFileError(
                path,
                f"tensor {entry.name!r}: shape {list(entry.shape)} of {entry.dtype} needs {needed} bytes "
                f"but its offsets span {entry.end - entry.begin}",
            )
        position = entry.end
    used, present = position - data_start, file_size - data_start
    if used < present:
        raise UnreadableFileError(
            path, f"data section is {present} bytes but tensors use {used} (trailing bytes)"
        )
    if used > present:
        raise UnreadableFileError(
            path, f"file is cut short: tensors need {used} data bytes but only {present} are present"
        )


def _check_header_length(length: int, file_size: int, path: str) -> None:
    """Check the declared header length against the file size and the library's limit."""
    if length > file_size - _PREFIX_BYTES:
        raise UnreadableFileError(
            path,
            f"header length {length} is larger than the file ({file_size} bytes): "
            "cut short, or not a safetensors file",
        )
    if length > MAX_HEADER_BYTES:
        raise UnreadableFileError(path, f"header is larger than {MAX_HEADER_BYTES // 1_000_000} MB")


# The fast path hands a header to the strict one when its text has a \u escape of a UTF-16 surrogate or
# of a colon (which would hide from the colon count), or an integer -0 (which the strict path reads as -0.0).
_DOUBTFUL = (re.compile(rb"\\u(?:[dD][89a-fA-F]|003[aA])"), re.compile(rb"-0[,\]}\s]"))
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_BITS = {name: info.bits for name, info in DTYPES.items()}
_SUB_BYTE = {name for name, bits in _BITS.items() if bits % 8}


def _all_of_type(values: Iterable[object], kind: type) -> bool:
    """Tell whether every value is exactly of type `kind` (a bool is not an int here)."""
    return set(map(type, values)) <= {kind}


def _all_u64(values: list[Any]) -> bool:
    """Tell whether every value is an int from 0 to 2**64 - 1."""
    return _all_of_type(values, int) and (not values or (min(values) >= 0 and max(values) <= _U64_MAX))


def _parse_plain(raw: bytes | bytearray, file_size: int) -> FileHeader | None:
    """Parse a header of the usual shape with C-level checks; None when the strict path must decide.

    A header comes back only when the strict path would return the same one: every JSON object is a plain
    mapping without repeated keys (the colons of the text are exactly its keys plus the colons inside its
    strings), every tensor has the three fields and no other, every integer is a u64, every size is right
    and the tensors tile the data section. Anything else, valid or not, gets the strict path's verdict.
    """
    if any(pattern.search(raw) for pattern in _DOUBTFUL):  # two patterns: each is a fast literal search
        return None
    try:
        obj = json.loads(raw.decode("utf-8"), parse_float=_json_float, parse_constant=_json_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors too
        return None
    if type(obj) is not dict:
        return None
    keys = len(obj)
    metadata = obj.pop(_METADATA_KEY, None)
    if metadata is None:
        metadata = {}
    elif type(metadata) is not dict or not _all_of_type(metadata.values(), str):
        return None
    names, values = list(obj), list(obj.values())
    if not _all_of_type(values, dict) or not set(map(len, values)) <= {len(_TENSOR_FIELDS)}:
        return None
    keys += len(metadata) + len(_TENSOR_FIELDS) * len(values)
    colons_in_strings = "".join([*names, *metadata, *metadata.values()]).count(":")
    if raw.count(b":") != keys + colons_in_strings:  # a repeated key somewhere
        return None
    try:
        fields = [list(map(operator.itemgetter(field), values)) for field in _TENSOR_FIELDS]
        layout = (_PREFIX_BYTES + len(raw), file_size)
        entries = _same_entries(obj, layout, fields) or _plain_entries(names, *fields, *layout)
    except (KeyError, TypeError):  # a missing field, an unhashable dtype
        return None
    if entries is None:
        return None
    _LAST_LAYOUT[:] = [(obj, layout, entries)]
    return FileHeader(entries=entries, metadata=metadata, file_size=file_size)


# The last plain header's tensors (without __metadata__), data start and file size, and its entries: the
# files of a run share one layout, and rebuilding 1,500 entries cost ~3 ms per file (issue 14). One slot,
# replaced whole, so threads see either the old or the new one.
_LAST_LAYOUT: list[tuple[dict[str, Any], tuple[int, int], tuple[TensorEntry, ...]]] = []


def _same_entries(
    obj: dict[str, Any], layout: tuple[int, int], fields: list[list[Any]]
) -> tuple[TensorEntry, ...] | None:
    """The last plain header's entries if this header's tensors equal its tensors exactly, else None.

    Dict equality is C-level but lets 1 == 1.0 == True: the shapes and offsets must also be lists of
    exact ints, as the last header's were (every check of _plain_entries then has the same verdict).
    """
    last = _LAST_LAYOUT[0] if _LAST_LAYOUT else None
    if last is None or last[1] != layout or last[0] != obj:
        return None
    _, shapes, offsets = fields
    if not _all_of_type(shapes, list) or not _all_of_type(offsets, list):
        return None
    numbers = itertools.chain(itertools.chain(*shapes), itertools.chain(*offsets))
    return last[2] if _all_of_type(numbers, int) else None


def _plain_entries(
    names: list[str], dtypes: list, shapes: list, offsets: list, data_start: int, file_size: int
) -> tuple[TensorEntry, ...] | None:
    """Check the fields, sizes and layout of the tensors with C-level loops; None at the first doubt."""
    kinds = set(dtypes)
    if not kinds <= DTYPES.keys() or not _all_of_type(shapes, list) or not _all_of_type(offsets, list):
        return None
    dims, bounds = list(itertools.chain(*shapes)), list(itertools.chain(*offsets))
    if not set(map(len, offsets)) <= {2} or not _all_u64(dims) or not _all_u64(bounds):
        return None
    if 0 in dims and any(0 in s and math.prod(s[: s.index(0)]) > _U64_MAX for s in shapes):
        return None  # the library multiplies left to right: a dimension 0 after a huge prefix still overflows
    bits = list(map(operator.mul, map(math.prod, shapes), map(_BITS.__getitem__, dtypes)))
    if (bits and max(bits) > _U64_MAX) or (kinds & _SUB_BYTE and any(b & 7 for b in bits)):
        return None
    starts, stops = list(map(_FIRST, offsets)), list(map(_SECOND, offsets))
    if list(map(operator.sub, stops, starts)) != [b >> 3 for b in bits]:
        return None
    tiles = sorted(zip(starts, stops, strict=True))
    if tiles:
        ordered_starts, ordered_stops = list(map(_FIRST, tiles)), list(map(_SECOND, tiles))
        if ordered_starts[0] != 0 or ordered_starts[1:] != ordered_stops[:-1]:
            return None
    if data_start + (tiles[-1][1] if tiles else 0) != file_size:
        return None
    begins = list(map(operator.add, itertools.repeat(data_start), starts))
    ends = list(map(operator.add, itertools.repeat(data_start), stops))
    return tuple(map(TensorEntry, names, dtypes, map(tuple, shapes), begins, ends))


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, which would otherwise rescan the growing results again and again.

    A header allocates about ten containers per tensor and frees none of them, and a scan a few more; with
    the collector on, a 100,000-tensor header took 630 ms instead of 360 and its scan_file 940 ms instead of
    730. It is switched back on only if it was on. Used as a decorator too.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_header(raw: bytes | bytearray, file_size: int, path: str) -> FileHeader:
    """Validate the JSON header bytes (without the 8-byte prefix) of a file of `file_size` bytes."""
    _check_header_length(len(raw), file_size, path)
    with _collector_paused():
        return _parse_plain(raw, file_size) or _parse_strict(raw, file_size, path)


def _parse_strict(raw: bytes | bytearray, file_size: int, path: str) -> FileHeader:
    """Validate a header with every check in order, giving the first problem's message."""
    obj = _load_json(raw, path)
    if not isinstance(obj, dict):
        raise UnreadableFileError(path, "header is not a JSON object")
    if isinstance(obj, _RepeatedKeys):
        key = obj.repeated[0]
        what = "__metadata__" if key == _METADATA_KEY else f"tensor name {key!r}"
        raise UnreadableFileError(path, f"duplicate {what} in header")
    data_start = _PREFIX_BYTES + len(raw)
    metadata = _parse_metadata(obj.get(_METADATA_KEY), path)
    entries = tuple(
        _parse_entry(name, value, data_start, path) for name, value in obj.items() if name != _METADATA_KEY
    )
    _check_layout(entries, data_start, file_size, path)
    return FileHeader(entries=entries, metadata=metadata, file_size=file_size)
