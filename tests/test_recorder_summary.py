"""The recorder's summaries (recording/_summary.py) equal the reader's, for every float dtype it records."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradcheck.recording._summary as summary_module
from gradcheck.analysis.stats import TensorStats, summarize_array
from gradcheck.recording._summary import HostSummarizer, RowsOnTheWay, device_row

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn]
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-30, 448.0]


def values(dtype: torch.dtype, count: int, special: bool, seed: int) -> torch.Tensor:
    """Random values of `dtype` (finite for float8), with NaN, Inf and zeros spread in if `special`."""
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.randn(count, generator=generator, dtype=torch.float64) * 4
    if special and count:
        where = torch.randint(0, count, (len(SPECIAL),), generator=generator)
        tensor[where] = torch.tensor(SPECIAL, dtype=torch.float64)
    if dtype == torch.float8_e4m3fn:  # no Inf in e4m3fn: the cast makes NaN of it
        tensor = tensor.nan_to_num(nan=math.nan, posinf=math.nan, neginf=math.nan)
    return tensor.to(dtype)


def reference(tensor: torch.Tensor) -> TensorStats:
    """The reader's summary of the tensor's values (exact in float64)."""
    return summarize_array(tensor.to(torch.float64).numpy())


def assert_equal_stats(actual: TensorStats, expected: TensorStats) -> None:
    counts = ("count", "nan", "inf", "zeros", "abs_min", "abs_max")
    assert [getattr(actual, f) for f in counts] == [getattr(expected, f) for f in counts]
    assert actual.abs_sum == pytest.approx(expected.abs_sum, rel=1e-12, abs=0)
    assert actual.sq_sum == pytest.approx(expected.sq_sum, rel=1e-12, abs=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("special", [False, True], ids=["finite", "special"])
@pytest.mark.parametrize("count", [0, 1, 5, 64, 1000])
def test_host_and_device_summaries_equal_the_readers(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, special: bool, count: int
) -> None:
    monkeypatch.setattr(summary_module, "HOST_CHUNK", 16)  # several chunks, some with NaN, some without
    monkeypatch.setattr(summary_module, "DEVICE_CHUNK", 16)
    after, before = values(dtype, count, special, 1), values(dtype, count, special, 2)
    cases = [(after, None, after)]
    if dtype.itemsize > 1:  # torch cannot subtract float8 tensors (nor can a float8 model be trained)
        cases.append((after, before, after - before))
    summarizer = HostSummarizer(torch)
    for tensor, base, expected in cases:
        assert_equal_stats(summarizer.summarize(tensor, base), reference(expected))
        row = device_row(torch, expected)
        assert_equal_stats(RowsOnTheWay(torch, {"key": row}).stats()["key"], reference(expected))
        if base is not None:  # the update and the parameter before it, in one pass
            update, param = summarizer.summarize_step(tensor, base)
            assert_equal_stats(update, reference(expected))
            assert_equal_stats(param, reference(base))


def test_all_non_finite_and_shapes() -> None:
    tensor = torch.full((3, 4), math.nan)
    tensor[0, 0] = math.inf
    stats = HostSummarizer(torch).summarize(tensor)
    assert (stats.count, stats.nan, stats.inf, stats.finite) == (12, 11, 1, 0)
    assert math.isnan(stats.max_abs)
    assert np.isinf(RowsOnTheWay(torch, {"k": device_row(torch, tensor)}).stats()["k"].abs_min)


@pytest.mark.parametrize(
    "magnitudes",
    [[1e300, 3e299, 0.0], [1e-300, 5e-310, 0.0], [1e300, 1e-300, 2.0], [1.5, 2.5, 0.0]],
    ids=["huge", "tiny", "mixed", "ordinary"],
)
def test_float64_beyond_the_safe_range_keeps_norm_and_mean(
    monkeypatch: pytest.MonkeyPatch, magnitudes: list[float]
) -> None:
    """Squares of 1e300 overflow float64 and those of 1e-300 underflow: stats mode must scale them as the reader does."""
    monkeypatch.setattr(summary_module, "HOST_CHUNK", 4)  # chunks of different scales, merged
    monkeypatch.setattr(summary_module, "DEVICE_CHUNK", 4)
    tensor = torch.tensor(magnitudes * 5, dtype=torch.float64) * torch.tensor([1.0, -1.0] * 7 + [1.0])
    expected = reference(tensor)
    host = HostSummarizer(torch).summarize(tensor)
    device = RowsOnTheWay(torch, {"k": device_row(torch, tensor)}).stats()["k"]
    for found in (host, device):
        assert (found.count, found.zeros, found.abs_min, found.abs_max) == (
            expected.count,
            expected.zeros,
            expected.abs_min,
            expected.abs_max,
        )
        assert math.isfinite(found.norm) and found.norm == pytest.approx(expected.norm, rel=1e-12, abs=0)
        assert found.mean_abs == pytest.approx(expected.mean_abs, rel=1e-12, abs=0)
