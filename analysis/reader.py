"""Read safetensors files: a strict header parser and a streaming, constant-memory tensor scanner.

A scan is four steps, which a parallel scanner runs apart: read the header, plan_segments (a tensor over
SEGMENT_BYTES is cut), scan_segments (in any grouping: a segment's result depends on its bytes only), and
combine.
"""

from __future__ import annotations

import errno
import gc
import itertools
import json
import math
import operator
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dtypes import DTYPES, DtypeInfo
from .errors import UnreadableFileError
from .stats import TensorStats, summarize_pieces

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit (MAX_HEADER_SIZE in safetensors/src/tensor.rs)
_PREFIX_BYTES = 8  # the little-endian u64 header length
_U64_MAX = 2**64 - 1  # the library does its size arithmetic in usize; overflow there is an error
_MAX_JSON_DEPTH = 127  # serde_json's recursion limit: 127 nested containers parse, 128 do not
_METADATA_KEY = "__metadata__"
_TENSOR_FIELDS = ("dtype", "shape", "data_offsets")
SEGMENT_BYTES = 64 << 20  # a tensor larger than this is split; constant, independent of any job count
BUFFER_BYTES = 1 << 20  # bytes read at a time; the float scratch takes twice that, the decoded floats as much


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it; begin/end are absolute byte offsets in the file."""

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


@dataclass(frozen=True)
class FileScan:
    """Statistics of every float tensor of one file, and why the others were skipped."""

    path: str
    header: FileHeader
    stats: dict[str, TensorStats]
    skipped: dict[str, str]


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
        entries = _plain_entries(names, *fields, _PREFIX_BYTES + len(raw), file_size)
    except (KeyError, TypeError):  # a missing field, an unhashable dtype
        return None
    return None if entries is None else FileHeader(entries=entries, metadata=metadata, file_size=file_size)


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


def _os_problem(error: OSError, path: str) -> str:
    """Turn an OSError from opening a path into plain words."""
    if isinstance(error, FileNotFoundError):
        return "broken symbolic link" if os.path.islink(path) else "no such file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a file"
    if error.errno == errno.ENXIO:  # what opening a Unix socket gives
        return "is a FIFO/socket/device, not a regular file"
    return f"cannot open: {(error.strerror or str(error)).lower()}"


def _open_regular(path: str) -> tuple[int, int]:
    """Open a regular file for reading without blocking on FIFOs; return the fd and the file size."""
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise UnreadableFileError(path, _os_problem(e, path)) from None
    except ValueError:  # an embedded NUL byte
        raise UnreadableFileError(path, "the path contains a NUL byte") from None
    try:
        size = _regular_size(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def _regular_size(fd: int, path: str) -> int:
    """Return the size of an open file, refusing anything but a regular file."""
    try:
        info = os.fstat(fd)
    except OSError as e:
        raise UnreadableFileError(path, f"cannot stat: {(e.strerror or str(e)).lower()}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UnreadableFileError(path, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableFileError(path, "is a FIFO/socket/device, not a regular file")
    return info.st_size


def _read_at(fd: int, view: memoryview, offset: int) -> int:
    """Read into `view` at a file offset once; return how many bytes arrived (0 at end of file)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    if hasattr(os, "pread"):
        data = os.pread(fd, len(view), offset)
    else:  # Windows has neither; the fd is ours alone, so seeking is safe
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def _read_exactly(
    fd: int, view: memoryview, offset: int, path: str, what: str | Callable[[int], str]
) -> None:
    """Fill `view` from a file offset, looping on short reads; a premature end of file is an error."""
    done = 0
    while done < len(view):
        try:
            got = _read_at(fd, view[done:], offset + done)
        except OSError as e:
            problem = (e.strerror or str(e)).lower()
            where = what if isinstance(what, str) else what(offset + done)
            raise UnreadableFileError(
                path, f"read error ({where} at byte {offset + done}): {problem}"
            ) from None
        if got == 0:
            where = what if isinstance(what, str) else what(offset + done)
            raise UnreadableFileError(
                path, f"file was truncated while being read ({where} at byte {offset + done})"
            )
        done += got


def _read_header_fd(fd: int, file_size: int, path: str) -> FileHeader:
    """Read and validate the prefix and the header of an open file."""
    if file_size == 0:
        raise UnreadableFileError(path, "empty file (0 bytes): not a safetensors file")
    if file_size < _PREFIX_BYTES:
        raise UnreadableFileError(
            path,
            f"file is only {file_size} byte{'s' if file_size != 1 else ''}: too short to be a safetensors file",
        )
    prefix = bytearray(_PREFIX_BYTES)
    _read_exactly(fd, memoryview(prefix), 0, path, "header length")
    (length,) = struct.unpack("<Q", prefix)
    _check_header_length(length, file_size, path)
    raw = bytearray(length)
    _read_exactly(fd, memoryview(raw), _PREFIX_BYTES, path, "header")
    return parse_header(raw, file_size, path)


def read_header(path: str | os.PathLike[str]) -> FileHeader:
    """Read and validate the header of a safetensors file without touching the tensor data."""
    name = os.fspath(path)
    fd, size = _open_regular(name)
    try:
        return _read_header_fd(fd, size, name)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Segment:
    """A byte range [begin, end) of one float tensor of a file, whole elements, absolute file offsets."""

    name: str
    begin: int
    end: int


# Pieces of this many elements (fewer at a segment's end), counted from each segment's start, are summarized
# apart and merged in order: float sums depend on this grouping, which depends on nothing else. Four F32
# pieces fill a 1 MiB read; larger reads (2 MiB: +3%) or smaller ones (256 KiB: -20%) bought nothing.
PIECE_ELEMENTS = 1 << 16
_BEGIN = operator.attrgetter("begin")


@dataclass
class _Read:
    """One read of consecutive pieces of segments of one dtype: bytes [begin, end) of the file."""

    info: DtypeInfo
    begin: int
    end: int
    pieces: list[tuple[int, int]] = field(default_factory=list)  # (segment index, elements) in file order
    elements: int = 0


def _cut(name: str, begin: int, end: int, itemsize: int, segment_bytes: int) -> list[Segment]:
    """Cut one tensor into segments of whole elements, at multiples of segment_bytes from its start."""
    if begin == end:
        return [Segment(name, begin, end)]
    step = max(segment_bytes // itemsize, 1) * itemsize
    return [Segment(name, start, min(start + step, end)) for start in range(begin, end, step)]


@_collector_paused()
def plan_segments(header: FileHeader, segment_bytes: int = SEGMENT_BYTES) -> tuple[Segment, ...]:
    """Every decodable tensor of the header in file order, cut into pieces of at most segment_bytes."""
    if segment_bytes < 1:
        raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
    segments: list[Segment] = []
    for entry in sorted(header.entries, key=_BEGIN):  # file order: sequential reads
        info = DTYPES[entry.dtype]
        if info.decode is None:
            continue
        if entry.end - entry.begin <= segment_bytes:  # whole elements: it fits one segment
            segments.append(Segment(entry.name, entry.begin, entry.end))
        else:
            segments.extend(_cut(entry.name, entry.begin, entry.end, info.itemsize, segment_bytes))
    return tuple(segments)


def _plan_reads(segments: Sequence[Segment], infos: Sequence[DtypeInfo], buffer_bytes: int) -> list[_Read]:
    """Cut segments into pieces and group consecutive pieces of one dtype into reads of at most buffer_bytes.

    A read holds at most buffer_bytes // max(itemsize, 4) elements (the decoded floats take 4 or 8 bytes
    each), so a small tensor shares its read with its neighbours while a large one takes many reads.
    """
    if buffer_bytes < 8:
        raise ValueError(f"buffer_bytes must be at least 8, got {buffer_bytes}")
    layouts = {  # itemsize, elements per read, elements per piece
        name: (info.itemsize, capacity, min(PIECE_ELEMENTS, capacity))
        for name, info in DTYPES.items()
        for capacity in [buffer_bytes // max(info.itemsize, 4)]
    }
    reads: list[_Read] = []
    read = _Read(DTYPES["F32"], -1, -1)  # no piece continues this one
    for index, (segment, info) in enumerate(zip(segments, infos, strict=True)):
        size, capacity, piece = layouts[info.name]
        begin, total = segment.begin, (segment.end - segment.begin) // size
        if total == 0:
            continue  # an empty tensor has no piece: its result stays the empty summary
        counts = (
            [total] if total <= piece else [min(piece, total - start) for start in range(0, total, piece)]
        )
        for count in counts:
            if read.info is not info or read.end != begin or read.elements + count > capacity:
                read = _Read(info, begin, begin)
                reads.append(read)
            begin += count * size
            read.end = begin
            read.pieces.append((index, count))
            read.elements += count
    return reads


def _tensor_at(read: _Read, segments: Sequence[Segment], offset: int) -> str:
    """Name the tensor of a read that holds byte `offset`, for an error message."""
    position = read.begin
    for index, count in read.pieces:
        position += count * read.info.itemsize
        if offset < position:
            return f"tensor {segments[index].name!r}"
    return f"tensor {segments[read.pieces[-1][0]].name!r}"


def _summarize_reads(
    segments: Sequence[Segment], reads: Sequence[_Read], fetch: Callable[[_Read], memoryview]
) -> list[TensorStats]:
    """Fetch each read's bytes, summarize its pieces and merge them, in order, into their segments."""
    results: list[TensorStats | None] = [None] * len(segments)
    elements = max((read.elements for read in reads), default=0)
    work, wide = np.empty(elements, dtype=np.uint32), np.empty(elements, dtype=np.float64)
    # Signalling NaNs (e.g. random BF16 bits) and sums past the float64 range are data, not warnings.
    with np.errstate(invalid="ignore", over="ignore"):
        for read in reads:
            magnitudes = read.info.magnitudes(fetch(read), work, wide)  # type: ignore[misc]
            counts = [count for _, count in read.pieces]
            for (index, _), stats in zip(
                read.pieces, summarize_pieces(magnitudes, counts, wide), strict=True
            ):
                earlier = results[index]
                results[index] = stats if earlier is None else earlier.merge(stats)
    return [TensorStats() if result is None else result for result in results]


def _scan_fd(
    fd: int, path: str, header: FileHeader, segments: Sequence[Segment], buffer_bytes: int
) -> list[TensorStats]:
    """Summarize segments of an open file whose header is `header`."""
    dtypes = {entry.name: DTYPES[entry.dtype] for entry in header.entries}
    reads = _plan_reads(segments, [dtypes[segment.name] for segment in segments], buffer_bytes)
    raw = memoryview(bytearray(max((read.end - read.begin for read in reads), default=0)))

    def fetch(read: _Read) -> memoryview:
        view = raw[: read.end - read.begin]
        _read_exactly(fd, view, read.begin, path, lambda offset: _tensor_at(read, segments, offset))
        return view

    return _summarize_reads(segments, reads, fetch)


def _check_size(header: FileHeader, size: int, path: str) -> None:
    """Refuse a file whose size changed since its header was read: it is no longer that file."""
    sizes = f"{size} bytes now, {header.file_size} when its header was read"
    if size < header.file_size:
        raise UnreadableFileError(path, f"file was truncated while being read ({sizes})")
    if size > header.file_size:
        raise UnreadableFileError(path, f"file changed while being read ({sizes})")


@_collector_paused()
def scan_segments(
    path: str | os.PathLike[str],
    header: FileHeader,
    segments: Sequence[Segment],
    *,
    buffer_bytes: int = BUFFER_BYTES,
) -> list[TensorStats]:
    """Open `path`, check it is still the file the header was read from (same size), and summarize each segment."""
    name = os.fspath(path)
    fd, size = _open_regular(name)
    try:
        _check_size(header, size, name)
        return _scan_fd(fd, name, header, segments, buffer_bytes)
    finally:
        os.close(fd)


@_collector_paused()
def combine(
    path: str | os.PathLike[str],
    header: FileHeader,
    segments: Sequence[Segment],
    results: Sequence[TensorStats],
) -> FileScan:
    """Fold per-segment results (in segment order) into the FileScan that scan_file returns."""
    if len(segments) != len(results):
        raise ValueError(f"{len(segments)} segments but {len(results)} results")
    totals: dict[str, TensorStats] = {}
    for segment, result in zip(segments, results, strict=True):
        earlier = totals.get(segment.name)
        totals[segment.name] = result if earlier is None else earlier.merge(result)
    stats: dict[str, TensorStats] = {}
    skipped: dict[str, str] = {}
    for entry in header.entries:
        info = DTYPES[entry.dtype]
        if info.decode is None:
            skipped[entry.name] = info.skip_reason
        elif entry.name in totals:
            stats[entry.name] = totals[entry.name]
        else:
            raise ValueError(f"no segment of tensor {entry.name!r}")
    return FileScan(path=os.fspath(path), header=header, stats=stats, skipped=skipped)


@_collector_paused()
def scan_file(path: str | os.PathLike[str], *, buffer_bytes: int = BUFFER_BYTES) -> FileScan:
    """Validate a safetensors file and summarize every float tensor, reading it in bounded chunks.

    The steps of a parallel scan on one open file: read the header, plan_segments, scan_segments, combine.
    """
    if buffer_bytes < 8:
        raise ValueError(f"buffer_bytes must be at least 8, got {buffer_bytes}")
    name = os.fspath(path)
    fd, size = _open_regular(name)
    try:  # one open file for all steps: a file replaced meanwhile is read whole, in the version opened
        header = _read_header_fd(fd, size, name)
        segments = plan_segments(header)
        results = _scan_fd(fd, name, header, segments, buffer_bytes)
    finally:
        os.close(fd)
    return combine(name, header, segments, results)


def summarize_bytes(raw: memoryview, dtype: str, *, buffer_bytes: int = BUFFER_BYTES) -> TensorStats:
    """Summarize the bytes of one whole tensor bit for bit as scan_file summarizes a tensor holding them."""
    info = DTYPES[dtype]
    if info.decode is None:
        raise ValueError(f"{dtype} tensors are not decoded")
    data = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
    if len(data) % info.itemsize:
        raise ValueError(f"{len(data)} bytes are not whole {dtype} elements")
    segments = _cut("", 0, len(data), info.itemsize, SEGMENT_BYTES)
    reads = _plan_reads(segments, [info] * len(segments), buffer_bytes)
    total = TensorStats()
    for result in _summarize_reads(segments, reads, lambda read: data[read.begin : read.end]):
        total = total.merge(result)
    return total
