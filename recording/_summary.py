"""Stats mode's summaries of torch tensors: the numbers the reader would compute from the written data.

Host tensors (CPU) are summarised on the training thread, in one pass per tensor, chunk by chunk through two
scratch buffers the summarizer keeps: |x| in the tensor's own dtype (exact, so min and max need no cast),
then a float64 copy of the chunk for the two sums. No full-size temporary is allocated: on the CPU a fresh
multi-MB allocation costs more in page faults than the arithmetic (cloning 68 MB took 45-105 ms here,
copying it into an existing buffer 15 ms), and a writer thread doing this work competes with training for
the same cores. An update is summarised from `after - before` chunk by chunk, without materialising it.

Device tensors are summarised on their device without synchronising (the training thread only enqueues
kernels) into a float64 row of 8 numbers; `rows_to_stats` brings all rows of a step back in one transfer.
"""

from __future__ import annotations

import math
from typing import Any

from gradcheck.analysis.stats import TensorStats, merge_all

# Elements per host chunk: 512 KiB of float32 and 1 MiB of float64 scratch stay in the L2/L3 cache; larger
# chunks measured no faster (17M float32 elements: 2^16 45 ms, 2^17 29 ms, 2^18 36 ms, 2^19 32 ms, loaded
# 2-core EPYC), smaller ones pay more per-call overhead.
HOST_CHUNK = 1 << 17
# Elements per device chunk: bounds the temporaries (two in the tensor's dtype, one float64, three bool)
# to about 60 MiB per float32 tensor, whatever its size.
DEVICE_CHUNK = 1 << 22


class HostSummarizer:
    """TensorStats of CPU tensors, summarised through scratch buffers reused across tensors and steps."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._scratch: dict[Any, Any] = {}

    def summarize(self, tensor: Any, before: Any = None) -> TensorStats:
        """TensorStats of `tensor`, or of `tensor - before` (an update, computed in `tensor`'s dtype)."""
        flat = tensor.reshape(-1)
        if before is not None and tensor.element_size() == 1:
            flat, before = (tensor - before).reshape(-1), None  # float8 has no subtraction kernel to fuse
        base = None if before is None else before.reshape(-1)
        parts = []
        for start in range(0, flat.numel(), HOST_CHUNK):
            piece = slice(start, start + HOST_CHUNK)
            parts.append(self._chunk(flat[piece], None if base is None else base[piece]))
        return merge_all(parts)

    def _buffer(self, dtype: Any, count: int) -> Any:
        buffer = self._scratch.get(dtype)
        if buffer is None:
            buffer = self._scratch[dtype] = self._torch.empty(HOST_CHUNK, dtype=dtype)
        return buffer[:count]

    def _chunk(self, chunk: Any, before: Any) -> TensorStats:
        """As analysis.stats.summarize_array: only a chunk holding NaN or Inf takes the masking pass."""
        torch, count = self._torch, chunk.numel()
        if chunk.element_size() == 1:  # float8 has few kernels; float32 holds its values exactly
            mags = self._buffer(torch.float32, count).copy_(chunk).abs_()
        elif before is None:
            mags = torch.abs(chunk, out=self._buffer(chunk.dtype, count))
        else:
            mags = torch.sub(chunk, before, out=self._buffer(chunk.dtype, count)).abs_()
        low, high = (float(value) for value in mags.aminmax())  # NaN propagates into both
        if not math.isfinite(high):
            return _non_finite_stats(torch, mags)
        zeros = count - int(torch.count_nonzero(mags)) if low == 0.0 else 0
        wide = mags if mags.dtype == torch.float64 else self._buffer(torch.float64, count).copy_(mags)
        return TensorStats(count, 0, 0, zeros, low, high, float(wide.sum()), float(wide.dot(wide)))


def _non_finite_stats(torch: Any, mags: Any) -> TensorStats:
    """Summarise a chunk of |x| holding NaN or Inf: count them, summarise the finite values."""
    count = mags.numel()
    nan = int(torch.isnan(mags).sum())
    finite = mags[torch.isfinite(mags)].to(torch.float64)
    inf = count - nan - finite.numel()
    if finite.numel() == 0:
        return TensorStats(count=count, nan=nan, inf=inf)
    low, high = (float(value) for value in finite.aminmax())
    zeros = finite.numel() - int(torch.count_nonzero(finite)) if low == 0.0 else 0
    return TensorStats(count, nan, inf, zeros, low, high, float(finite.sum()), float(finite.dot(finite)))


def device_row(torch: Any, tensor: Any) -> Any:
    """TensorStats of a device tensor as a float64 row on the device; reads nothing back (no sync)."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        row = torch.zeros(8, dtype=torch.float64, device=flat.device)  # fills, not host-to-device copies
        row[4] = math.inf
        return row
    rows = [_device_chunk_row(torch, chunk) for chunk in flat.split(DEVICE_CHUNK)]
    if len(rows) == 1:
        return rows[0]
    table = torch.stack(rows)
    total = table.sum(dim=0)
    return torch.cat([total[:4], table[:, 4].min().reshape(1), table[:, 5].max().reshape(1), total[6:]])


def _device_chunk_row(torch: Any, chunk: Any) -> Any:
    """count, nan, inf, zeros, abs_min, abs_max, abs_sum, sq_sum of a non-empty chunk, float64, on its device.

    Branch-free (a branch on a value would synchronise): NaN and Inf count as 0 for the maximum, the zero
    count and the sums, and as Inf for the minimum, which stays Inf when no element is finite. Only the
    sums need float64; min and max are exact in the tensor's own dtype.
    """
    if chunk.element_size() == 1:
        chunk = chunk.float()  # float8 has few kernels; float32 holds its values exactly
    mags = chunk.abs()
    kept = torch.nan_to_num(mags, nan=0.0, posinf=0.0)
    wide = kept.to(torch.float64)
    numel = chunk.numel()
    nan, inf = torch.isnan(mags).sum(), torch.isinf(mags).sum()
    counts = torch.stack([nan, inf, numel - nan - inf - kept.count_nonzero()]).to(torch.float64)
    extremes = torch.stack([torch.nan_to_num(mags, nan=math.inf, posinf=math.inf).min(), kept.max()])
    return torch.cat(
        [
            torch.full((1,), float(numel), dtype=torch.float64, device=chunk.device),
            counts,
            extremes.to(torch.float64),
            torch.stack([wide.sum(), wide.dot(wide)]),
        ]
    )


def rows_to_stats(torch: Any, rows: list[Any]) -> list[TensorStats]:
    """TensorStats of device rows, fetched in one transfer (counts are exact in float64 below 2**53)."""
    if not rows:
        return []
    values = torch.stack(rows).cpu().tolist()
    return [TensorStats(*(int(value) for value in row[:4]), *row[4:]) for row in values]
