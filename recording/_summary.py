"""Stats mode's summaries of torch tensors: the numbers the reader would compute from the written data.

Host tensors (CPU) are summarised on the training thread, in one pass per tensor, chunk by chunk through one
float64 scratch buffer (2 MiB) the summarizer keeps: each chunk is widened into it (exact), then |x|,
min/max, the sum and the dot product run on that cache-resident copy. An update is summarised from
`after - before` chunk by chunk (the subtraction in the parameter's dtype, widened on store), never
materialised. No full-size temporary is allocated: on the CPU a fresh multi-MB allocation costs more in
page faults than the arithmetic (cloning 68 MB took 45-105 ms here, copying it into an existing buffer
8-15 ms), and a writer thread doing this work competes with training for the same cores.

Device tensors are summarised on their device without synchronising (the training thread only enqueues
kernels) into a float64 row of 9 numbers; `RowsOnTheWay` brings all rows of a step back in one transfer,
which only the writer thread waits for.
"""

from __future__ import annotations

import math
from typing import Any

from gradcheck.analysis.stats import SAFE_HIGH, SAFE_LOW, TensorStats, merge_all

# Elements per host chunk: 2 MiB of float64 scratch stays in the L2/L3 cache. Summarising the 17M gradients,
# parameters and updates of the benchmark's GPT took 2^16: 33/32/38 ms, 2^17: 37/29/34, 2^18: 25/23/34,
# 2^19: 29/21/37 (thread CPU time, loaded 2-core EPYC): smaller chunks pay more per-call overhead.
HOST_CHUNK = 1 << 18
# Elements per device chunk: bounds the temporaries (two in the tensor's dtype, one float64, three bool)
# to about 60 MiB per float32 tensor, whatever its size.
DEVICE_CHUNK = 1 << 22


class HostSummarizer:
    """TensorStats of CPU tensors, summarised through a float64 scratch buffer reused across tensors and steps."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._scratch: Any = None

    def summarize(self, tensor: Any, before: Any = None) -> TensorStats:
        """TensorStats of `tensor`, or of `tensor - before` (an update, computed in `tensor`'s dtype)."""
        return self._pass(tensor, before, with_before=False)[0]

    def summarize_step(self, after: Any, before: Any) -> tuple[TensorStats, TensorStats]:
        """TensorStats of `after - before` and of `before`, in one pass: each chunk of `before` is read once."""
        return self._pass(after, before, with_before=True)  # type: ignore[return-value]

    def _pass(self, tensor: Any, before: Any, with_before: bool) -> list[TensorStats]:
        torch = self._torch
        flat, base = tensor.reshape(-1), None if before is None else before.reshape(-1)
        if self._scratch is None or self._scratch.numel() != HOST_CHUNK:
            self._scratch = torch.empty(HOST_CHUNK, dtype=torch.float64)
        parts: list[list[TensorStats]] = [[], []]
        for start in range(0, flat.numel(), HOST_CHUNK):
            chunk = flat[start : start + HOST_CHUNK]
            mags = self._scratch[: chunk.numel()]
            # Widened into the scratch exactly (abs has no widening form); the subtraction computes in the
            # tensor's dtype and widens on store, so both are exact as the reader sees the written tensor.
            if base is None:
                mags.copy_(chunk).abs_()
            else:
                base_chunk = base[start : start + HOST_CHUNK]
                if with_before:  # while this chunk of `before` is in the cache
                    parts[1].append(_chunk_stats(torch, mags.copy_(base_chunk).abs_()))
                torch.sub(chunk, base_chunk, out=mags).abs_()
            parts[0].append(_chunk_stats(torch, mags))
        return [merge_all(part) for part in parts[: 1 + with_before]]


def _chunk_stats(torch: Any, mags: Any) -> TensorStats:
    """As analysis.stats.summarize_array on float64 |x|: only a chunk holding NaN or Inf is masked."""
    low, high = (float(value) for value in mags.aminmax())  # NaN propagates into both
    if not math.isfinite(high):
        return _non_finite_stats(torch, mags)
    count, scale = mags.numel(), _scale_of(high)
    if scale != 1.0:  # float64 values whose squares leave float64: sums of |x| / scale (analysis/stats.py)
        zeros = count - int(torch.count_nonzero(mags)) if low == 0.0 else 0  # before a tiny |x| rounds to 0
        mags.div_(scale)
        return TensorStats(count, 0, 0, zeros, low, high, float(mags.sum()), float(mags.dot(mags)), scale)
    total, square = float(mags.sum()), float(mags.dot(mags))
    # sign() of |x| is 1 or 0: its float64 sum counts the non-zeros exactly, 4x faster than count_nonzero.
    zeros = count - int(mags.sign_().sum()) if low == 0.0 else 0
    return TensorStats(count, 0, 0, zeros, low, high, total, square)


def _scale_of(high: float) -> float:
    """1, or a power of two near `high` when |x| up to `high` would over- or underflow its square (F64 only)."""
    if high > SAFE_HIGH or 0 < high < SAFE_LOW:
        return math.ldexp(1.0, math.frexp(high)[1] - 1)
    return 1.0


def _non_finite_stats(torch: Any, mags: Any) -> TensorStats:
    """Summarise a chunk of |x| holding NaN or Inf: count them, summarise the finite values."""
    count = mags.numel()
    nan = int(torch.isnan(mags).sum())
    finite = mags[torch.isfinite(mags)]
    inf = count - nan - finite.numel()
    if finite.numel() == 0:
        return TensorStats(count=count, nan=nan, inf=inf)
    low, high = (float(value) for value in finite.aminmax())
    zeros = finite.numel() - int(torch.count_nonzero(finite)) if low == 0.0 else 0
    scale = _scale_of(high)
    finite = finite / scale if scale != 1.0 else finite
    return TensorStats(
        count, nan, inf, zeros, low, high, float(finite.sum()), float(finite.dot(finite)), scale
    )


def device_row(torch: Any, tensor: Any) -> Any:
    """TensorStats of a device tensor as a float64 row of 9 on the device; reads nothing back (no sync)."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        row = torch.zeros(9, dtype=torch.float64, device=flat.device)  # fills, not host-to-device copies
        row[4], row[8] = math.inf, 1.0
        return row
    rows = [_device_chunk_row(torch, chunk) for chunk in flat.split(DEVICE_CHUNK)]
    if len(rows) == 1:
        return rows[0]
    table = torch.stack(rows)
    total = table.sum(dim=0)
    # Sums of chunks with different scales (float64 only) are re-expressed at the largest, as TensorStats.merge
    # does; with every scale 1 the factors are 1 and the sums are the plain ones.
    scale = table[:, 8].max()
    factor = table[:, 8] / scale
    sums = torch.stack([(table[:, 6] * factor).sum(), (table[:, 7] * factor * factor).sum()])
    extremes = torch.stack([table[:, 4].min(), table[:, 5].max()])
    return torch.cat([total[:4], extremes, sums, scale.reshape(1)])


def _device_chunk_row(torch: Any, chunk: Any) -> Any:
    """count, nan, inf, zeros, abs_min, abs_max, abs_sum, sq_sum, scale of a non-empty chunk, float64, on its device.

    Branch-free (a branch on a value would synchronise): NaN and Inf count as 0 for the maximum, the zero
    count and the sums, and as Inf for the minimum, which stays Inf when no element is finite. Only the
    sums need float64; min and max are exact in the tensor's own dtype. Only float64 values can leave the
    range where their squares fit float64: for them the sums are of |x| / scale (analysis/stats.py).
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
    scale = torch.ones(1, dtype=torch.float64, device=chunk.device)
    if chunk.dtype == torch.float64:
        high = extremes[1].reshape(1)
        beyond = (high > SAFE_HIGH) | ((high > 0) & (high < SAFE_LOW))
        power = torch.ldexp(scale, torch.frexp(high).exponent - 1)
        scale = torch.where(beyond, power, scale)
        wide = wide / scale
    return torch.cat(
        [
            torch.full((1,), float(numel), dtype=torch.float64, device=chunk.device),
            counts,
            extremes.to(torch.float64),
            torch.stack([wide.sum(), wide.dot(wide)]),
            scale,
        ]
    )


class RowsOnTheWay:
    """Device rows being copied to the host in one transfer, without making the training thread wait.

    The copy is enqueued after the kernels that compute the rows, and an event after it; `stats()`, called
    on the writer thread, waits for that event only. A `.cpu()` on the training thread would instead stall
    it until the device has finished all queued work, once per recorded step.
    """

    def __init__(self, torch: Any, rows: dict[str, Any]) -> None:
        self._keys = list(rows)
        table = torch.stack(list(rows.values()))
        self._host, self._done = table, None
        if table.device.type == "cpu":  # rows computed on the host (tests): nothing to wait for
            return
        try:
            done = torch.Event(device=table.device)
        except RuntimeError:  # a backend without events: copy now, which waits for the device
            self._host = table.cpu()
            return
        self._host = table.to("cpu", non_blocking=True)
        done.record()
        self._done = done

    def stats(self) -> dict[str, TensorStats]:
        """key -> TensorStats, once the copy has arrived (counts are exact in float64 below 2**53)."""
        if self._done is not None:
            self._done.synchronize()
        values = self._host.tolist()
        return {
            key: TensorStats(*(int(v) for v in row[:4]), *row[4:])
            for key, row in zip(self._keys, values, strict=True)
        }
