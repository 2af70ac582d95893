"""Per-unit "ever non-zero" bitmaps: which output units of a layer got any gradient (the `dead-units` check).

A unit is one index along axis 0: a row of a Linear weight (out_features, in_features), an output channel of
a conv weight (out_channels, ...), an element of a bias. Bit i of the bitmap (a Python int) is set when unit i
holds an element that is not ±0 (NaN and Inf count as non-zero). Bits index the units of the whole tensor, so
the bitmaps of parts of one tensor merge by OR, as do those of one parameter over steps; shards of a tensor
cut along axis 0 are shifted into place first (`merge_shards`).
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

# Bitmaps are kept only for tensors of at most this many units: 2**18 bits are 32 KiB per tensor and step
# (64 KiB of hex in a summary), enough for a 128k-vocabulary output layer; a larger axis 0 is an embedding
# table or a flat buffer, which `dead-units` does not judge anyway.
MAX_UNITS = 1 << 18


def unit_count(shape: Sequence[int]) -> int:
    """How many units a tensor of this shape has: its length along axis 0 (a scalar is one unit)."""
    return int(shape[0]) if len(shape) else 1


def row_length(shape: Sequence[int]) -> int:
    """Elements per unit: the product of the dimensions after axis 0."""
    return math.prod(int(d) for d in shape[1:])


def tracked(shape: Sequence[int]) -> bool:
    """Whether a bitmap is kept for a tensor of this shape."""
    return unit_count(shape) <= MAX_UNITS and (row_length(shape) > 0 or unit_count(shape) == 0)


# Where a stretch of a tensor sits in it: (first element, elements, elements per unit).
Layout = tuple[int, int, int]


def layout(offset: int, length: int, itemsize: int, shape: Sequence[int]) -> Layout | None:
    """The Layout of `length` bytes from byte `offset` of a tensor of `shape`; None when it keeps no bitmap."""
    if not tracked(shape) or row_length(shape) == 0:
        return None
    return offset // itemsize, length // itemsize, row_length(shape)


def from_bools(rows: np.ndarray) -> int:
    """The bitmap of a boolean vector (entry i: unit i is alive)."""
    packed = np.packbits(np.asarray(rows, dtype=bool), bitorder="little")
    return int.from_bytes(packed.tobytes(), "little")


def dead_count(alive: int, units: int) -> int:
    """Units whose bit is not set."""
    return units - alive.bit_count()


class RowTracker:
    """Collects the alive units of one stretch of a tensor, fed piece by piece in element order."""

    def __init__(self, first: int, elements: int, row: int) -> None:
        self.row = row
        self.low = first // row
        high = (first + elements - 1) // row if elements else self.low - 1
        self.rows = np.zeros(high - self.low + 1, dtype=bool)
        self.next = first

    def add(self, values: np.ndarray | None, count: int) -> None:
        """The next `count` elements: `values` is their |x| (or any array zero where x is ±0), None if none is 0."""
        start, self.next = self.next, self.next + count
        first = start // self.row - self.low
        last = (start + count - 1) // self.row - self.low
        if values is None:
            self.rows[first : last + 1] = True
            return
        nonzero = values != 0
        if self.row == 1:
            self.rows[first : last + 1] |= nonzero
            return
        cuts = np.arange((self.row - start % self.row) % self.row, count, self.row)
        starts = cuts if cuts.size and cuts[0] == 0 else np.concatenate(([0], cuts))
        self.rows[first : first + starts.size] |= np.logical_or.reduceat(nonzero, starts)

    def bitmap(self) -> int:
        """The alive units seen, as a bitmap over the whole tensor's units."""
        return from_bools(self.rows) << self.low if self.rows.size else 0


def merge_shards(parts: Sequence[tuple[Sequence[int], int | None]], shape: Sequence[int]) -> int | None:
    """The bitmap of a whole tensor of `shape` from its shards' (local shape, bitmap), in shard order.

    Shards cut along axis 0 are laid end to end; shards that each hold every unit (cut along another axis)
    are ORed; anything else (flattened shards) has no bitmap.
    """
    if not parts or any(alive is None for _, alive in parts) or not tracked(shape):
        return None
    locals_ = [tuple(local) for local, _ in parts]
    if all(local[1:] == tuple(shape[1:]) for local in locals_) and sum(
        unit_count(s) for s in locals_
    ) == unit_count(shape):
        total, offset = 0, 0
        for local, alive in parts:
            total |= alive << offset  # type: ignore[operator]
            offset += unit_count(local)
        return total
    if all(len(local) == len(shape) and unit_count(local) == unit_count(shape) for local in locals_):
        total = 0
        for _, alive in parts:
            total |= alive  # type: ignore[operator]
        return total
    return None


def encode(alive: int) -> str:
    """A bitmap as lowercase hex (bit 0 is the lowest bit of the last digit)."""
    return format(alive, "x")


def decode(text: object, units: int) -> int:
    """A bitmap from its hex form, checked against the unit count; ValueError otherwise."""
    if not isinstance(text, str) or not text or len(text) > MAX_UNITS // 4 + 1:
        raise ValueError(f"alive {str(text)[:40]!r} is not a hex bitmap")
    try:
        alive = int(text, 16)
    except ValueError:
        raise ValueError(f"alive {text[:40]!r} is not a hex bitmap") from None
    if text.strip() != text or text.startswith(("-", "+", "0x", "0X")) or alive.bit_length() > units:
        raise ValueError(f"alive bitmap has bits beyond the {units} unit(s) of the shape")
    return alive


class PackedBitmaps(Sequence[int | None]):
    """The unit bitmaps of a file's tensors packed in one byte buffer; each becomes a Python int only when read.

    Row i is `data[starts[i]:ends[i]]` as a little-endian integer where `known[i]`, else None. A scan or a
    cache load of thousands of tensors thus makes no object per bitmap; `dead-units` reads the gradients' few.
    """

    __slots__ = ("data", "ends", "known", "starts")

    def __init__(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, known: np.ndarray) -> None:
        self.data, self.starts, self.ends, self.known = data, starts, ends, known

    def __len__(self) -> int:
        return len(self.known)

    @overload
    def __getitem__(self, index: int) -> int | None: ...
    @overload
    def __getitem__(self, index: slice) -> PackedBitmaps: ...

    def __getitem__(self, index: int | slice) -> int | None | PackedBitmaps:
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        if not self.known[index]:
            return None
        return int.from_bytes(self.data[self.starts[index] : self.ends[index]].tobytes(), "little")

    def __iter__(self) -> Iterator[int | None]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def take(self, rows: np.ndarray) -> PackedBitmaps:
        """The bitmaps of `rows`, in that order (sharing the buffer)."""
        return PackedBitmaps(self.data, self.starts[rows], self.ends[rows], self.known[rows])

    def compact(self) -> PackedBitmaps:
        """The same bitmaps with the bytes of the known ones back to back, in row order (for storing)."""
        lengths = np.where(self.known, self.ends - self.starts, 0)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        index = np.repeat(self.starts - starts, lengths) + np.arange(int(ends[-1]) if ends.size else 0)
        return PackedBitmaps(self.data[index], starts, ends, self.known.copy())


class BitmapList(Sequence[int | None]):
    """A list of bitmaps extended by whole blocks (PackedBitmaps kept packed), each made an int when read.

    The columns hold every (step, parameter)'s bitmap, but the checks read few of them (dead-units looks at
    the last steps of a parameter): converting all 300,000 of a 200-file run up front took 0.9 s (issue 14).
    """

    __slots__ = ("_chunks", "_ends")

    def __init__(self, items: Iterable[int | None] = ()) -> None:
        self._chunks: list[Sequence[int | None]] = []
        self._ends: list[int] = []
        self.extend(items)

    def extend(self, items: Iterable[int | None]) -> None:
        """Append `items`: a PackedBitmaps or another BitmapList's blocks are shared, not converted."""
        if isinstance(items, BitmapList):  # its blocks as they are: a watch refresh copies thousands
            base = len(self)
            self._chunks.extend(items._chunks)
            self._ends.extend([end + base for end in items._ends] if base else items._ends)
            return
        kept = items if isinstance(items, PackedBitmaps | tuple) else list(items)
        if len(kept):
            self._chunks.append(kept)
            self._ends.append(len(self) + len(kept))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> int | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[int | None]: ...

    def __getitem__(self, index: int | slice) -> int | None | list[int | None]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = operator.index(index)
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(index)
        chunk = bisect.bisect_right(self._ends, position)
        return self._chunks[chunk][position - (self._ends[chunk - 1] if chunk else 0)]


def pack_bitmaps(alive: Sequence[int | None], units: Sequence[int]) -> PackedBitmaps:
    """Bitmaps as a PackedBitmaps, row i in (units[i] + 7) // 8 bytes (already packed ones are kept)."""
    if isinstance(alive, PackedBitmaps):
        return alive
    lengths = [(u + 7) // 8 if a is not None else 0 for a, u in zip(alive, units, strict=True)]
    data = b"".join(a.to_bytes(n, "little") for a, n in zip(alive, lengths, strict=True) if a is not None)
    ends = np.cumsum(np.array(lengths, dtype=np.int64))
    return PackedBitmaps(
        np.frombuffer(data, dtype=np.uint8),
        ends - np.array(lengths, dtype=np.int64),
        ends,
        np.array([a is not None for a in alive], dtype=bool),
    )
