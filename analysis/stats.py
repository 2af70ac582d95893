"""Mergeable per-tensor statistics of |x|, accumulated in float64.

F64 values can be so large or small that their squares leave the float64 range (1e308 squared overflows,
1e-170 squared underflows to 0): the sums of such a piece are kept of |x| / scale, with `scale` a power of two
near its largest |x|, so that norms and means stay right. Dividing by a power of two is exact, and every F32,
F16 and BF16 value is far inside the safe range, so their sums are unscaled (scale 1) and unchanged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class TensorStats:
    """Summary of one tensor (or a chunk or shard of one); `merge` combines two summaries exactly.

    min/max/sum are over finite values only; NaN and Inf are counted apart. `alive` is the per-unit "ever
    non-zero" bitmap (analysis/units.py): bit i set when unit i (index i along axis 0) holds an element that
    is not ±0; None when it was not computed (older summaries, tensors past units.MAX_UNITS). Bits index
    units of the whole tensor, so parts of one tensor merge by OR; equality ignores it.
    """

    count: int = 0
    nan: int = 0
    inf: int = 0
    zeros: int = 0
    abs_min: float = math.inf
    abs_max: float = 0.0
    abs_sum: float = 0.0  # sum of |x| / scale
    sq_sum: float = 0.0  # sum of (|x| / scale)^2
    scale: float = 1.0  # a power of two; 1 unless the values are beyond SAFE_LOW..SAFE_HIGH
    alive: int | None = field(default=None, compare=False)

    @property
    def finite(self) -> int:
        """How many elements are finite."""
        return self.count - self.nan - self.inf

    @property
    def min_abs(self) -> float:
        """Smallest finite |x|, NaN when there is no finite element."""
        return self.abs_min if self.finite else math.nan

    @property
    def max_abs(self) -> float:
        """Largest finite |x|, NaN when there is no finite element."""
        return self.abs_max if self.finite else math.nan

    @property
    def mean_abs(self) -> float:
        """Mean of finite |x|, NaN when there is no finite element."""
        return self.abs_sum / self.finite * self.scale if self.finite else math.nan

    @property
    def norm(self) -> float:
        """L2 norm over finite elements (Inf only if it exceeds float64), NaN when there is no finite element."""
        return math.sqrt(self.sq_sum) * self.scale if self.finite else math.nan  # float * overflows to Inf

    @property
    def rms(self) -> float:
        """Root mean square of the finite elements, NaN when there is none."""
        return math.sqrt(self.sq_sum / self.finite) * self.scale if self.finite else math.nan

    @property
    def log10_norm(self) -> float | None:
        """log10 of the L2 norm, right even where the norm itself leaves float64; None for a zero norm."""
        if not self.sq_sum > 0 or math.isinf(self.sq_sum):
            return math.inf if math.isinf(self.sq_sum) else None
        return math.log10(self.sq_sum) / 2 + math.log10(self.scale)

    def merge(self, other: TensorStats) -> TensorStats:
        """Combine the summaries of two disjoint parts of one tensor (sums kept at the larger part's scale)."""
        to = self.scale if (self.abs_max, self.scale) >= (other.abs_max, other.scale) else other.scale
        return TensorStats(
            count=self.count + other.count,
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
            zeros=self.zeros + other.zeros,
            abs_min=min(self.abs_min, other.abs_min),
            abs_max=max(self.abs_max, other.abs_max),
            abs_sum=_rescaled(self.abs_sum, self.scale, to, 1) + _rescaled(other.abs_sum, other.scale, to, 1),
            sq_sum=_rescaled(self.sq_sum, self.scale, to, 2) + _rescaled(other.sq_sum, other.scale, to, 2),
            scale=to,
            alive=_either_or(self.alive, other.alive),
        )


# |x| in this range has a square and a sum of 2^63 squares well inside float64 (2^-1022 .. 2^1024).
SAFE_LOW, SAFE_HIGH = 2.0**-400, 2.0**400


def _rescaled(value: float, scale: float, to: float, power: int) -> float:
    """A sum of (|x|/scale)^power re-expressed as a sum of (|x|/to)^power (exact but for underflow)."""
    if scale == to or value == 0 or math.isinf(value):
        return value
    shift = power * (math.frexp(scale)[1] - math.frexp(to)[1])
    try:
        return math.ldexp(value, shift)
    except OverflowError:
        return math.inf


def _either_or(one: int | None, other: int | None) -> int | None:
    """OR of two unit bitmaps; an unknown (None) one, such as the empty summary's, adds nothing."""
    if one is None or other is None:
        return other if one is None else one
    return one | other


def merge_all(parts: Iterable[TensorStats]) -> TensorStats:
    """One summary of disjoint parts (chunks, shards, the parameters of a layer), merged in the order given."""
    return functools.reduce(TensorStats.merge, parts, TensorStats())


def summarize_array(values: np.ndarray, scratch: np.ndarray | None = None) -> TensorStats:
    """Summarize a floating-point array; `scratch` is an optional float64 buffer of at least its size."""
    flat = values.reshape(-1)
    n = flat.size
    if n == 0:
        return TensorStats()
    if scratch is None or scratch.size < n:
        scratch = np.empty(n, dtype=np.float64)
    magnitudes = np.abs(flat, out=scratch[:n], casting="same_kind")
    with np.errstate(invalid="ignore", over="ignore"):
        return summarize_pieces(magnitudes, [n], magnitudes)[0]


def summarize_pieces(magnitudes: np.ndarray, counts: Sequence[int], wide: np.ndarray) -> list[TensorStats]:
    """Summarize pieces of an array of |x| laid back to back, counts[i] >= 1 elements each, independently.

    `magnitudes` is float32 or float64 and is overwritten; `wide` is a float64 buffer at least as long (it
    may be `magnitudes`). The per-object form of `piece_arrays`.
    """
    arrays, _ = piece_arrays(magnitudes, np.asarray(counts, dtype=np.intp), wide)
    columns = [arrays[name].tolist() for name in _FIELDS]
    return [TensorStats(*values) for values in zip(*columns, strict=True)]


_FIELDS = ("count", "nan", "inf", "zeros", "abs_min", "abs_max", "abs_sum", "sq_sum", "scale")


def piece_arrays(
    magnitudes: np.ndarray, counts: np.ndarray, wide: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Summaries of pieces of |x| laid back to back (counts[i] >= 1 elements each) as arrays by field name.

    Also returns `magnitudes == 0` (taken before `magnitudes` is overwritten) when any piece holds a zero,
    else None. numpy's reduceat sums each piece on its own, so a piece's result depends on its values only,
    never on its neighbours: many small tensors are summarized in one call. No BLAS call: a threaded dot
    product takes other cores and sums in an order that depends on their number.
    """
    index = np.zeros(counts.size, dtype=np.intp)
    np.cumsum(counts[:-1], out=index[1:])
    highest = np.maximum.reduceat(magnitudes, index)  # NaN and Inf propagate to the maximum
    lowest = np.minimum.reduceat(magnitudes, index)
    special = {}  # the rare pieces holding NaN or Inf, summarized before `magnitudes` is overwritten
    if not np.isfinite(highest).all():
        for i in np.flatnonzero(~np.isfinite(highest)).tolist():
            special[i] = _summarize_non_finite(magnitudes[index[i] : index[i] + counts[i]])
    if magnitudes.dtype == np.float64:  # only F64 values can leave the safe range
        unsafe = (highest > SAFE_HIGH) | ((highest > 0) & (highest < SAFE_LOW))
        for i in np.flatnonzero(unsafe).tolist():
            if i not in special:
                piece = magnitudes[index[i] : index[i] + counts[i]]
                special[i] = _summarize_scaled(piece, float(lowest[i]), float(highest[i]))
    zero = None
    if (lowest == 0).any() or any(stats.zeros for stats in special.values()):
        zero = magnitudes == 0
        zeros = np.add.reduceat(zero, index, dtype=np.int64)
    else:
        zeros = np.zeros(counts.size, dtype=np.int64)
    values = magnitudes if magnitudes.dtype == np.float64 else wide[: magnitudes.size]
    if values is not magnitudes:
        np.copyto(values, magnitudes)
    sums = np.add.reduceat(values, index)
    np.multiply(values, values, out=values)
    squares = np.add.reduceat(values, index)
    arrays = {
        "count": counts.astype(np.int64),
        "nan": np.zeros(counts.size, dtype=np.int64),
        "inf": np.zeros(counts.size, dtype=np.int64),
        "zeros": zeros,
        "abs_min": lowest.astype(np.float64),
        "abs_max": highest.astype(np.float64),
        "abs_sum": sums,
        "sq_sum": squares,
        "scale": np.ones(counts.size, dtype=np.float64),
    }
    for i, stats in special.items():
        for name in _FIELDS:
            arrays[name][i] = getattr(stats, name)
    return arrays, zero


def _summarize_scaled(magnitudes: np.ndarray, low: float, high: float) -> TensorStats:
    """Summarize a piece of finite float64 |x| whose squares would leave float64, with sums of |x| / 2^e."""
    scale = math.ldexp(1.0, math.frexp(high)[1] - 1)  # |x| / scale < 2; 2^1023 at most, no overflow
    scaled = np.divide(magnitudes, scale)  # exact: a power of two (tiny quotients may round, negligibly)
    stats = summarize_pieces(scaled, [scaled.size], scaled)[0]
    zeros = int(np.count_nonzero(magnitudes == 0))  # not of `scaled`, where the tiniest may round to 0
    return replace(stats, zeros=zeros, abs_min=low, abs_max=high, scale=scale)


def _summarize_non_finite(magnitudes: np.ndarray) -> TensorStats:
    """Summarize a piece of |x| holding NaN or Inf: count them, summarize the finite values."""
    finite = magnitudes[np.isfinite(magnitudes)].astype(np.float64)
    nan = int(np.count_nonzero(np.isnan(magnitudes)))
    inf = magnitudes.size - nan - finite.size
    if finite.size == 0:
        return TensorStats(count=magnitudes.size, nan=nan, inf=inf)
    stats = summarize_pieces(finite, [finite.size], finite)[0]
    return replace(stats, count=magnitudes.size, nan=nan, inf=inf)
