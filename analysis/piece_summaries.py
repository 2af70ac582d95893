"""Summaries of the pieces a scan reads, merged into its segments as one StatsBlock, with unit bitmaps.

The vectorised part of reader.py: a read's pieces are summarized by one call per statistic (stats.piece_arrays),
and the unit bitmaps of every small tensor of a read come from one logical_and.reduceat, so a file of
thousands of small tensors makes no Python object per tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .columns import EMPTY, INT_FIELDS, STAT_FIELDS, StatsBlock
from .dtypes import DTYPES
from .header import FileHeader
from .stats import TensorStats, merge_all, piece_arrays
from .units import PackedBitmaps, RowTracker, row_length, tracked

if TYPE_CHECKING:
    from .reader import Segment, _Read


def summarize_reads(
    segments: Sequence[Segment],
    reads: Sequence[_Read],
    fetch: Callable[[_Read], memoryview],
    layouts: _Layouts | None = None,
) -> Callable[[], StatsBlock]:
    """Fetch each read's bytes and summarize its pieces; return what merges them, in order, into segments.

    The merge is returned, not done, so that a caller checks the file's identity right after its last
    read. It gives one row per segment (keys: the segments' tensor names); a segment with a layout also
    gets its units' "ever non-zero" bitmap (TensorStats.alive). All of it is numpy over a read's pieces at
    once: a file of thousands of small tensors makes no Python object per tensor.
    """
    plan = _plan(reads, len(segments), layouts)
    units = _UnitCollector(layouts, plan)
    elements = max((read.elements for read in reads), default=0)
    work, wide = np.empty(elements, dtype=np.uint32), np.empty(elements, dtype=np.float64)
    parts: list[dict[str, np.ndarray]] = []
    # Signalling NaNs (e.g. random BF16 bits) and sums past the float64 range are data, not warnings.
    with np.errstate(invalid="ignore", over="ignore"):
        for read, table, read_units in zip(reads, plan.pieces, plan.units, strict=True):
            magnitudes = read.info.magnitudes(fetch(read), work, wide)  # type: ignore[misc]
            arrays, zero = piece_arrays(magnitudes, table[:, 1], wide)
            units.add(read_units, table[:, 0], table[:, 1], arrays["zeros"], zero)
            parts.append(arrays)

    def merged() -> StatsBlock:
        fields: dict[str, np.ndarray] | None = parts[0] if parts else None
        if len(parts) > 1:
            fields = {name: np.concatenate([a[name] for a in parts]) for name in STAT_FIELDS}
        return StatsBlock(
            keys=tuple(s.name for s in segments), **_fold_pieces(plan, fields), alive=units.bitmaps()
        )

    return merged


def _fold_pieces(plan: _Plan, fields: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Per-segment arrays from per-piece ones: a single piece is its segment's summary, more are merged in order."""
    if fields is not None and plan.one_each:  # the usual case: the pieces are the segments
        return {name: fields[name] for name in STAT_FIELDS}
    owners, per_segment = plan.owners, plan.per_segment
    out = {name: np.full(per_segment.size, EMPTY[name], dtype=DTYPE[name]) for name in STAT_FIELDS}
    if fields is None:
        return out
    single = per_segment[owners] == 1
    for name in STAT_FIELDS:
        out[name][owners[single]] = fields[name][single]
    for segment in np.flatnonzero(per_segment > 1).tolist():  # a tensor larger than one piece
        rows = np.flatnonzero(owners == segment)
        pieces = zip(*(fields[name][rows].tolist() for name in STAT_FIELDS), strict=True)
        total = merge_all(TensorStats(*values) for values in pieces)  # in order, as the pieces were read
        for name in STAT_FIELDS:
            out[name][segment] = getattr(total, name)
    return out


DTYPE = {name: np.int64 if name in INT_FIELDS else np.float64 for name in STAT_FIELDS}


@dataclass(frozen=True)
class _Layouts:
    """Where each segment sits in its tensor (units.Layout) as arrays; `row` is 0 where no bitmap is kept."""

    first: np.ndarray  # the segment's first element in its tensor
    elements: np.ndarray
    row: np.ndarray  # elements per unit


@dataclass(frozen=True)
class _ReadUnits:
    """What the unit bitmaps of one read's one-piece segments need; the same for every file of a plan."""

    mine: np.ndarray  # which of the read's pieces these are
    starts: np.ndarray  # where each starts in the read
    segments: np.ndarray
    first: np.ndarray  # the segment's first element in its tensor
    row: np.ndarray  # elements per unit
    n: np.ndarray  # elements
    low: np.ndarray  # the first unit the piece touches
    units: np.ndarray  # units it touches


@dataclass(frozen=True)
class _Plan:
    """A plan's reads as arrays, made once per plan: the files of a run share one (reader._layout_plan)."""

    pieces: list[np.ndarray]  # each read's (segment, elements) rows
    owners: np.ndarray  # every piece's segment
    per_segment: np.ndarray  # pieces per segment
    one_each: bool  # one piece per segment, in segment order
    units: list[_ReadUnits | None]  # per read; None: no one-piece segment of it keeps a bitmap
    tracked: list[int]  # segments of many pieces that keep a bitmap
    empty: list[int]  # empty segments that keep a bitmap: no unit is alive


# The last plan with the (reads, layouts) it was made for, kept alive so that identity is a safe key:
# reader._layout_plan hands every file of a shared layout the same plan objects. One slot, replaced whole:
# threads see either the old or the new entry.
_LAST_PLAN: dict[str, tuple[Sequence[_Read], _Layouts | None, int, _Plan]] = {}


def _plan(reads: Sequence[_Read], count: int, layouts: _Layouts | None) -> _Plan:
    """The arrays of a plan of `count` segments (the last one made, when it is for these reads and layouts)."""
    last = _LAST_PLAN.get("plan")
    if last is not None and last[0] is reads and last[1] is layouts and last[2] == count:
        return last[3]
    pieces = [np.array(read.pieces, dtype=np.intp).reshape(-1, 2) for read in reads]
    owners = np.concatenate([p[:, 0] for p in pieces]) if pieces else np.zeros(0, dtype=np.intp)
    per_segment = np.bincount(owners, minlength=count)
    one_each = owners.size == per_segment.size and bool((owners[1:] > owners[:-1]).all())
    if layouts is None:
        plan = _Plan(pieces, owners, per_segment, one_each, [None] * len(pieces), [], [])
    else:
        kept, single = layouts.row > 0, per_segment == 1
        plan = _Plan(
            pieces,
            owners,
            per_segment,
            one_each,
            [_read_units(table, kept & single, layouts) for table in pieces],
            np.flatnonzero(kept & ~single).tolist(),
            np.flatnonzero(kept & (layouts.elements == 0)).tolist(),
        )
    _LAST_PLAN["plan"] = (reads, layouts, count, plan)
    return plan


def _read_units(table: np.ndarray, vector: np.ndarray, layouts: _Layouts) -> _ReadUnits | None:
    """The _ReadUnits of a read's (segment, elements) rows; `vector`: the one-piece segments keeping a bitmap."""
    owners, counts = table[:, 0], table[:, 1]
    mine = vector[owners]
    if not mine.any():
        return None
    segments = owners[mine]
    first, row, n = layouts.first[segments], layouts.row[segments], counts[mine]
    low = first // row
    units = (first + n - 1) // row - low + 1
    return _ReadUnits(mine, (np.cumsum(counts) - counts)[mine], segments, first, row, n, low, units)


class _UnitCollector:
    """The unit bitmaps of a scan's segments, from the pieces of each read as they pass.

    A segment of one piece (every small tensor) gets its units with one logical_and.reduceat per read over
    all such segments; a segment of many pieces is followed piece by piece by a RowTracker.
    """

    def __init__(self, layouts: _Layouts | None, plan: _Plan) -> None:
        self.layouts = layouts
        self.alive: dict[int, int] = dict.fromkeys(plan.empty, 0)  # bitmaps made as ints, by segment
        self.parts: list[
            tuple[np.ndarray, np.ndarray, np.ndarray]
        ] = []  # (segments, starts, ends) in buffers
        self.buffers: list[np.ndarray] = []
        self.size = 0
        self.count = plan.per_segment.size
        self.trackers: dict[int, RowTracker] = {}
        if layouts is not None:
            for index in plan.tracked:
                self.trackers[index] = RowTracker(
                    int(layouts.first[index]), int(layouts.elements[index]), int(layouts.row[index])
                )

    def add(
        self,
        read: _ReadUnits | None,
        owners: np.ndarray,
        counts: np.ndarray,
        zeros: np.ndarray,
        zero: np.ndarray | None,
    ) -> None:
        """One read's pieces: their segments, sizes and zero counts, and `magnitudes == 0` (None: no zero)."""
        if self.layouts is None:
            return
        if self.trackers:
            self._track(owners, counts, zeros, zero)
        if read is None:
            return
        alive = self._alive_units(
            read.starts, read.n, read.first, read.row, read.units, zero, zeros[read.mine]
        )
        self._store(read.segments, read.low, read.units, alive)

    def _track(
        self, owners: np.ndarray, counts: np.ndarray, zeros: np.ndarray, zero: np.ndarray | None
    ) -> None:
        start = 0
        for owner, count, zero_count in zip(owners.tolist(), counts.tolist(), zeros.tolist(), strict=True):
            tracker = self.trackers.get(owner)
            if tracker is not None:  # a piece without zeros makes every unit it touches alive
                marks = None if zero_count == 0 or zero is None else ~zero[start : start + count]
                tracker.add(marks, count)
            start += count

    @staticmethod
    def _alive_units(
        starts: np.ndarray,
        n: np.ndarray,
        first: np.ndarray,
        row: np.ndarray,
        units: np.ndarray,
        zero: np.ndarray | None,
        zeros: np.ndarray,
    ) -> np.ndarray:
        """Per unit of the given pieces, in order: whether it holds an element that is not +-0."""
        total = int(units.sum())
        if zero is None or not zeros.any():
            return np.ones(total, dtype=bool)
        # Each piece contributes its unit starts and one end marker (whose result is dropped), so that no
        # unit's range runs into the bytes of another tensor.
        marks = units + 1
        piece = np.repeat(np.arange(units.size), marks)
        k = np.arange(int(marks.sum())) - np.repeat(np.cumsum(marks) - marks, marks)
        offset = np.where(k == 0, 0, k * row[piece] - first[piece] % row[piece])
        is_start = k < units[piece]
        offset = np.where(is_start, offset, n[piece])
        index = starts[piece] + offset
        keep = index < zero.size  # an end marker at the very end of the read is not needed
        all_zero = np.logical_and.reduceat(zero, index[keep])
        return ~all_zero[is_start[keep]]

    def _store(self, segments: np.ndarray, low: np.ndarray, units: np.ndarray, alive: np.ndarray) -> None:
        """Bitmaps of the segments from their units' flags: one packbits for all, kept packed."""
        whole = low == 0
        if whole.all() and alive.all():  # the usual case: files of a run repeat it, so it is made once
            key = units.tobytes()
            packed_at = _ALL_ALIVE.get(key)
            if packed_at is None:
                packed_at = _ALL_ALIVE[key] = _packed(units, alive)
                if len(_ALL_ALIVE) > 64:
                    _ALL_ALIVE.pop(next(iter(_ALL_ALIVE)))
        else:
            packed_at = _packed(units, alive)
        packed, starts, ends = packed_at
        self.parts.append((segments[whole], starts[whole] + self.size, ends[whole] + self.size))
        self.buffers.append(packed)
        self.size += packed.size
        for index in np.flatnonzero(~whole).tolist():  # the later part of a cut tensor: bits shifted in place
            raw = packed[int(starts[index]) : int(ends[index])].tobytes()
            self.alive[int(segments[index])] = int.from_bytes(raw, "little") << int(low[index])

    def bitmaps(self) -> PackedBitmaps:
        """Every segment's bitmap (None where none is kept), packed."""
        for index, tracker in self.trackers.items():
            self.alive[index] = tracker.bitmap()
        count = self.count
        starts, ends = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
        known = np.zeros(count, dtype=bool)
        for segments, begin, end in self.parts:
            starts[segments], ends[segments], known[segments] = begin, end, True
        for index, bits in self.alive.items():  # the few bitmaps made as ints: appended as bytes
            data = bits.to_bytes((bits.bit_length() + 7) // 8, "little")
            self.buffers.append(np.frombuffer(data, dtype=np.uint8))
            starts[index], ends[index], known[index] = self.size, self.size + len(data), True
            self.size += len(data)
        data = np.concatenate(self.buffers) if self.buffers else np.zeros(0, dtype=np.uint8)
        return PackedBitmaps(data, starts, ends, known)


def _packed(units: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flags of consecutive segments' units (`units` each) packed, each segment from a whole byte; where
    each segment's bytes start and end."""
    padded = (units + 7) // 8 * 8
    ends = np.cumsum(padded)
    place = np.repeat(ends - padded, units) + (
        np.arange(alive.size) - np.repeat(np.cumsum(units) - units, units)
    )
    flags = np.zeros(int(ends[-1]), dtype=bool)
    flags[place] = alive
    return np.packbits(flags, bitorder="little"), (ends - padded) // 8, ends // 8


# Packed all-alive bitmaps by the segments' units (_store), for the few layouts a run's files share.
_ALL_ALIVE: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def layouts(header: FileHeader, segments: Sequence[Segment]) -> _Layouts:
    """Where each segment sits in its tensor, as arrays; row 0 for tensors that keep no unit bitmap."""
    entries = {entry.name: entry for entry in header.entries}
    rows: dict[tuple[int, ...], int] = {}  # shapes repeat: a model has few distinct ones
    first, length, row = [], [], []
    for segment in segments:
        entry = entries[segment.name]
        size = DTYPES[entry.dtype].itemsize
        first.append((segment.begin - entry.begin) // size)
        length.append((segment.end - segment.begin) // size)
        found = rows.get(entry.shape)
        if found is None:
            found = rows[entry.shape] = _row_if_tracked(entry.shape)
        row.append(found)
    return _Layouts(*(np.array(values, dtype=np.int64) for values in (first, length, row)))


def _row_if_tracked(shape: Sequence[int]) -> int:
    """Elements per unit of a tensor that keeps a unit bitmap, 0 for one that keeps none (units.layout).

    Capped to fit int64: only an empty tensor (no unit: `(0, 2**40, 2**40)`) has a longer row, and for it
    only "keeps a bitmap" matters.
    """
    return min(row_length(shape), 1 << 62) if tracked(shape) else 0
