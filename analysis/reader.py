"""Read safetensors files: a streaming, constant-memory tensor scanner over the validated header.

A scan is four steps, which a parallel scanner runs apart: read the header, plan_segments (a tensor over
SEGMENT_BYTES is cut), scan_segments (in any grouping: a segment's result depends on its bytes only), and
combine. The header parser itself is in header.py.
"""

from __future__ import annotations

import errno
import functools
import operator
import os
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .columns import STAT_FIELDS, StatsBlock
from .dtypes import DTYPES, DtypeInfo
from .errors import FileChangedError, UnreadableFileError
from .header import (
    _PREFIX_BYTES,
    FileHeader,
    TensorEntry,
    _check_header_length,
    _collector_paused,
    parse_header,
)
from .piece_summaries import DTYPE, summarize_reads
from .piece_summaries import layouts as layouts_of
from .stats import TensorStats
from .summaries import Summaries, parse_summaries, summary_block
from .units import PackedBitmaps

SEGMENT_BYTES = 64 << 20  # a tensor larger than this is split; constant, independent of any job count
BUFFER_BYTES = 1 << 20  # bytes read at a time; the float scratch takes twice that, the decoded floats as much


@dataclass(frozen=True, eq=False)
class FileScan:
    """Statistics of every float tensor of one file (a StatsBlock in header order), and why others were skipped."""

    path: str
    header: FileHeader
    block: StatsBlock
    skipped: dict[str, str]

    @functools.cached_property
    def stats(self) -> dict[str, TensorStats]:
        """{key: TensorStats}: the per-object view of `block`, built on first use (for older callers)."""
        block = self.block
        columns = [getattr(block, name).tolist() for name in STAT_FIELDS]  # one conversion per column
        return {
            key: TensorStats(*values, alive=alive)
            for key, *values, alive in zip(block.keys, *columns, block.alive, strict=True)
        }

    @functools.cached_property
    def summaries(self) -> Summaries | None:
        """The stats-mode summaries in the metadata as one block, None when there are none.

        Raises what `parse_summaries` and `summary_block` raise for bad metadata (json.JSONDecodeError,
        ValueError, TypeError, RecursionError). The stats cache keeps it once it has been asked for.
        """
        table = parse_summaries(self.header.metadata)
        return summary_block(table) if table else None

    def at(self, path: str) -> FileScan:
        """The same scan under another spelling of its path (a cached scan asked for as `path`)."""
        moved = FileScan(path, self.header, self.block, self.skipped)
        for name in ("stats", "summaries"):  # what was already worked out comes along
            if name in self.__dict__:
                moved.__dict__[name] = self.__dict__[name]
        return moved

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileScan):
            return NotImplemented
        return (self.path, self.header, self.skipped, self.stats) == (
            other.path,
            other.header,
            other.skipped,
            other.stats,
        )

    __hash__ = None  # type: ignore[assignment]


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


# What identifies one version of a file: device, inode, size, mtime. A rename puts another inode in place,
# a rewrite in place changes the mtime; both mean that parts read through two opens may not fit together.
FileToken = tuple[int, int, int, int]


def _token(info: os.stat_result) -> FileToken:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _changed(path: str) -> FileChangedError:
    return FileChangedError(path, "changed during read (replaced or rewritten while being read): run again")


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
    return read_header_token(path)[0]


def read_header_token(path: str | os.PathLike[str]) -> tuple[FileHeader, FileToken]:
    """The header and the identity of the version it was read from (for `scan_segments`)."""
    name = os.fspath(path)
    fd, size = _open_regular(name)
    try:
        return _read_header_fd(fd, size, name), _fd_token(fd, name)
    finally:
        os.close(fd)


def _fd_token(fd: int, path: str) -> FileToken:
    try:
        return _token(os.fstat(fd))
    except OSError as e:
        raise UnreadableFileError(path, f"cannot stat: {(e.strerror or str(e)).lower()}") from None


class Segment(NamedTuple):
    """A byte range [begin, end) of one float tensor of a file, whole elements, absolute file offsets.

    A NamedTuple, not a frozen dataclass: a file of 1,500 small tensors makes 1,500 of them per scan, and a
    frozen dataclass costs four times as much to build.
    """

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
    plan = functools.partial(_plan_segments, header.entries, segment_bytes)
    return _memo("segments", (header.entries, segment_bytes), plan)  # type: ignore[return-value]


def _plan_segments(entries: tuple[TensorEntry, ...], segment_bytes: int) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    for entry in sorted(entries, key=_BEGIN):  # file order: sequential reads
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


def _scan_fd(
    fd: int, path: str, header: FileHeader, segments: Sequence[Segment], buffer_bytes: int
) -> Callable[[], StatsBlock]:
    """Read and summarize segments of an open file whose header is `header`; return what merges the rows."""
    reads, layouts = _layout_plan(header.entries, tuple(segments), buffer_bytes)
    raw = memoryview(bytearray(max((read.end - read.begin for read in reads), default=0)))

    def fetch(read: _Read) -> memoryview:
        view = raw[: read.end - read.begin]
        _read_exactly(fd, view, read.begin, path, lambda offset: _tensor_at(read, segments, offset))
        return view

    return summarize_reads(segments, reads, fetch, layouts)


# What depends only on a file's layout (its tensor entries), kept for the next file: the files of a run
# share one layout, and redoing the plans cost ~8 ms per file of 1,500 tensors (issue 14). One slot per
# kind, replaced whole (key, value): threads see either the old or the new one. The key compares entries
# by value; a file's own checks (size, identity, data) are never skipped.
_LAST_PLANS: dict[str, tuple[tuple, object]] = {}


def _memo(kind: str, key: tuple, make: Callable[[], object]) -> object:
    """The value last made for `kind` if it was made for an equal key, else a new one."""
    last = _LAST_PLANS.get(kind)
    if last is not None and last[0] == key:
        return last[1]
    value = make()
    _LAST_PLANS[kind] = (key, value)
    return value


def _layout_plan(
    entries: tuple[TensorEntry, ...], segments: tuple[Segment, ...], buffer_bytes: int
) -> tuple[list[_Read], object]:
    """The reads and unit layouts of a file of these entries cut into these segments (never mutated)."""

    def make() -> tuple[list[_Read], object]:
        dtypes = {entry.name: DTYPES[entry.dtype] for entry in entries}
        reads = _plan_reads(segments, [dtypes[segment.name] for segment in segments], buffer_bytes)
        header = FileHeader(entries, {}, 0)  # layouts_of reads only the entries
        return reads, layouts_of(header, segments)

    return _memo("reads", (entries, segments, buffer_bytes), make)  # type: ignore[return-value]


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
    token: FileToken | None = None,
) -> list[TensorStats]:
    """Open `path`, check it is still the file the header was read from, and summarize each segment.

    With `token` (from `read_header_token`) the check is the file's identity, before and after reading:
    a file replaced or rewritten meanwhile raises FileChangedError. Without it, only the size is compared.
    """
    name = os.fspath(path)
    fd, size = _open_regular(name)
    try:
        if token is not None and _fd_token(fd, name) != token:
            raise _changed(name)
        _check_size(header, size, name)
        merge = _scan_fd(fd, name, header, segments, buffer_bytes)
        if token is not None and _fd_token(fd, name) != token:
            raise _changed(name)
    finally:
        os.close(fd)
    results = merge()
    return [results.stats(i) for i in range(len(results))]


@_collector_paused()
def combine(
    path: str | os.PathLike[str],
    header: FileHeader,
    segments: Sequence[Segment],
    results: Sequence[TensorStats] | StatsBlock,
) -> FileScan:
    """Fold per-segment results (in segment order) into the FileScan that scan_file returns."""
    if len(segments) != len(results):
        raise ValueError(f"{len(segments)} segments but {len(results)} results")
    block = results if isinstance(results, StatsBlock) else _segment_block(segments, results)
    plan = functools.partial(_combine_plan, header.entries, tuple(segments))
    skipped, keys, order = _memo("combine", (header.entries, tuple(segments)), plan)  # type: ignore[misc]
    skipped = dict(skipped)  # the FileScan's own
    if order is not None:  # one segment per tensor: only put them in header order
        fields = {name: getattr(block, name)[order] for name in STAT_FIELDS}
        alive = (
            block.alive.take(order)
            if isinstance(block.alive, PackedBitmaps)
            else tuple(block.alive[i] for i in order.tolist())
        )
        tensors = StatsBlock(keys=tuple(keys), **fields, alive=alive)
    else:
        tensors = _merge_segments(block, keys)
    return FileScan(path=os.fspath(path), header=header, block=tensors, skipped=skipped)


def _combine_plan(
    entries: tuple[TensorEntry, ...], segments: tuple[Segment, ...]
) -> tuple[dict[str, str], tuple[str, ...], np.ndarray | None]:
    """The skipped tensors, the decoded tensors in header order, and their segments' rows (None: some cut)."""
    row = {segment.name: i for i, segment in enumerate(segments)}
    skipped: dict[str, str] = {}
    keys: list[str] = []
    for entry in entries:
        info = DTYPES[entry.dtype]
        if info.decode is None:
            skipped[entry.name] = info.skip_reason
        elif entry.name in row:
            keys.append(entry.name)
        else:
            raise ValueError(f"no segment of tensor {entry.name!r}")
    if len(row) != len(segments):
        return skipped, tuple(keys), None
    order = np.array([row[key] for key in keys], dtype=np.intp)
    order.flags.writeable = False
    return skipped, tuple(keys), order


def _segment_block(segments: Sequence[Segment], results: Sequence[TensorStats]) -> StatsBlock:
    """Per-segment TensorStats (from scan_segments) as a block keyed by the segments' tensor names."""
    fields = {name: np.array([getattr(r, name) for r in results], dtype=DTYPE[name]) for name in STAT_FIELDS}
    return StatsBlock(keys=tuple(s.name for s in segments), **fields, alive=tuple(r.alive for r in results))


def _merge_segments(block: StatsBlock, keys: Sequence[str]) -> StatsBlock:
    """A block of tensors from the rows of their segments (a tensor cut into several is merged in order)."""
    totals: dict[str, TensorStats] = {}
    for i, name in enumerate(block.keys):
        earlier = totals.get(name)
        totals[name] = block.stats(i) if earlier is None else earlier.merge(block.stats(i))
    return StatsBlock.from_stats({key: totals[key] for key in keys})


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
        before = _fd_token(fd, name)
        header = _read_header_fd(fd, size, name)
        segments = plan_segments(header)
        merge = _scan_fd(fd, name, header, segments, buffer_bytes)
        if _fd_token(fd, name) != before:  # rewritten in place (same inode) while we read it
            raise _changed(name)
    finally:
        os.close(fd)
    return combine(name, header, segments, merge())


def summarize_bytes(
    raw: memoryview,
    dtype: str,
    *,
    buffer_bytes: int = BUFFER_BYTES,
    shape: Sequence[int] | None = None,
) -> TensorStats:
    """Summarize the bytes of one whole tensor bit for bit as scan_file summarizes a tensor holding them.

    With its `shape`, the summary has the per-unit bitmap too (TensorStats.alive), as scan_file's has.
    """
    info = DTYPES[dtype]
    if info.decode is None:
        raise ValueError(f"{dtype} tensors are not decoded")
    data = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
    if len(data) % info.itemsize:
        raise ValueError(f"{len(data)} bytes are not whole {dtype} elements")
    segments = _cut("", 0, len(data), info.itemsize, SEGMENT_BYTES)
    reads = _plan_reads(segments, [info] * len(segments), buffer_bytes)
    total = TensorStats()
    layouts = None
    if shape is not None:
        header = FileHeader((TensorEntry("", dtype, tuple(shape), 0, len(data)),), {}, len(data))
        layouts = layouts_of(header, segments)
    block = summarize_reads(segments, reads, lambda read: data[read.begin : read.end], layouts)()
    for i in range(len(block)):
        total = total.merge(block.stats(i))
    return total
