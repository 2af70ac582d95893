"""Mergeable per-tensor statistics of |x|, accumulated in float64."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorStats:
    """Summary of one tensor (or a chunk or shard of one); `merge` combines two summaries exactly.

    min/max/sum are over finite values only; NaN and Inf are counted apart.
    """

    count: int = 0
    nan: int = 0
    inf: int = 0
    zeros: int = 0
    abs_min: float = math.inf
    abs_max: float = 0.0
    abs_sum: float = 0.0
    sq_sum: float = 0.0

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
        return self.abs_sum / self.finite if self.finite else math.nan

    @property
    def norm(self) -> float:
        """L2 norm over finite elements, NaN when there is no finite element."""
        return math.sqrt(self.sq_sum) if self.finite else math.nan

    def merge(self, other: TensorStats) -> TensorStats:
        """Combine the summaries of two disjoint parts of one tensor."""
        return TensorStats(
            count=self.count + other.count,
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
            zeros=self.zeros + other.zeros,
            abs_min=min(self.abs_min, other.abs_min),
            abs_max=max(self.abs_max, other.abs_max),
            abs_sum=self.abs_sum + other.abs_sum,
            sq_sum=self.sq_sum + other.sq_sum,
        )


def summarize_array(values: np.ndarray, scratch: np.ndarray | None = None) -> TensorStats:
    """Summarize a floating-point array; `scratch` is an optional float64 buffer of at least its size."""
    flat = values.reshape(-1)
    n = flat.size
    if n == 0:
        return TensorStats()
    if scratch is None or scratch.size < n:
        scratch = np.empty(n, dtype=np.float64)
    mags = np.abs(flat, out=scratch[:n], casting="same_kind")
    biggest = float(mags.max())
    nan = inf = 0
    if not math.isfinite(biggest):
        # NaN and Inf both propagate to max, so only then is a second pass over the mask needed.
        finite_mask = np.isfinite(mags)
        nan = int(np.count_nonzero(np.isnan(mags)))
        inf = n - nan - int(np.count_nonzero(finite_mask))
        mags = mags[finite_mask]
        if mags.size == 0:
            return TensorStats(count=n, nan=nan, inf=inf)
        biggest = float(mags.max())
    smallest = float(mags.min())
    zeros = mags.size - int(np.count_nonzero(mags)) if smallest == 0.0 else 0
    return TensorStats(
        count=n,
        nan=nan,
        inf=inf,
        zeros=zeros,
        abs_min=smallest,
        abs_max=biggest,
        abs_sum=float(mags.sum()),
        sq_sum=float(np.dot(mags, mags)),
    )
