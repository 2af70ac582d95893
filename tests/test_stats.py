"""Tests for TensorStats and summarize_array: counts, finite-only summaries, float64 and exact merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import reference

from gradcheck.analysis.stats import TensorStats, summarize_array


def assert_same(got: TensorStats, want: TensorStats, rtol: float = 1e-12) -> None:
    """Counts exactly equal, float summaries equal to rounding."""
    assert (got.count, got.nan, got.inf, got.zeros) == (want.count, want.nan, want.inf, want.zeros)
    np.testing.assert_allclose(
        [got.abs_min, got.abs_max, got.abs_sum, got.sq_sum, got.scale],
        [want.abs_min, want.abs_max, want.abs_sum, want.sq_sum, want.scale],
        rtol=rtol,
        atol=0.0,
    )


def sprinkled(seed: int, n: int, dtype: type = np.float32) -> np.ndarray:
    """Normal values over several orders of magnitude, with NaN, +-Inf and +-0 at random places."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
    for special in (np.nan, np.inf, -np.inf, 0.0, -0.0):
        x[rng.integers(0, n, 5)] = special
    return x


def merged(parts: list[np.ndarray]) -> TensorStats:
    """Summaries of the parts merged left to right."""
    total = TensorStats()
    for part in parts:
        total = total.merge(summarize_array(part))
    return total


def test_hand_computed_values() -> None:
    stats = summarize_array(np.array([3.0, -4.0, 0.0, -0.0, np.nan, np.inf, -np.inf, 1.0]))
    assert (stats.count, stats.nan, stats.inf, stats.zeros, stats.finite) == (8, 1, 2, 2, 5)
    assert (stats.min_abs, stats.max_abs) == (0.0, 4.0)
    assert stats.mean_abs == pytest.approx(8.0 / 5)
    assert stats.norm == pytest.approx(math.sqrt(26.0))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_for_each_float_dtype(dtype: type, seed: int) -> None:
    x = sprinkled(seed, 3000, dtype).reshape(30, 100)
    assert_same(summarize_array(x), reference(x))


def test_clean_array_has_no_nan_inf_or_zero() -> None:
    x = np.random.default_rng(3).uniform(0.5, 2.0, size=(7, 11)).astype(np.float32)
    stats = summarize_array(x)
    assert (stats.nan, stats.inf, stats.zeros) == (0, 0, 0)
    np.testing.assert_allclose(stats.mean_abs, np.abs(x.astype(np.float64)).mean(), rtol=1e-12)
    np.testing.assert_allclose(stats.norm, np.linalg.norm(x.astype(np.float64)), rtol=1e-12)


def test_accumulates_in_float64_where_float32_would_overflow() -> None:
    x = np.full(
        1000, 3e38, dtype=np.float32
    )  # float32 max is 3.4e38: the sum and squares overflow in float32
    stats = summarize_array(x)
    assert stats.inf == 0
    np.testing.assert_allclose(stats.abs_sum, 1000 * float(np.float32(3e38)), rtol=1e-12)
    np.testing.assert_allclose(stats.norm, math.sqrt(1000) * float(np.float32(3e38)), rtol=1e-12)


def test_accumulates_in_float64_where_float16_would_lose_the_sum() -> None:
    x = np.full(100_000, 1.0, dtype=np.float16)  # a float16 running sum stalls at 2048
    stats = summarize_array(x)
    assert stats.abs_sum == 100_000.0
    assert stats.mean_abs == 1.0


def test_empty_array_is_the_empty_summary() -> None:
    stats = summarize_array(np.zeros((0, 4), dtype=np.float32))
    assert stats == TensorStats()
    assert stats.count == 0
    assert math.isnan(stats.mean_abs) and math.isnan(stats.min_abs) and math.isnan(stats.max_abs)
    assert math.isnan(stats.norm)


def test_only_non_finite_values_give_nan_summaries_but_counts() -> None:
    stats = summarize_array(np.array([np.nan, np.inf, -np.inf, np.nan], dtype=np.float32))
    assert (stats.count, stats.nan, stats.inf, stats.finite, stats.zeros) == (4, 2, 2, 0, 0)
    assert math.isnan(stats.mean_abs) and math.isnan(stats.min_abs) and math.isnan(stats.max_abs)
    assert math.isnan(stats.norm)  # no finite element: no norm, rather than a misleading 0


def test_all_zero_array_counts_every_zero() -> None:
    stats = summarize_array(np.zeros((3, 5), dtype=np.float32))
    assert (stats.count, stats.zeros) == (15, 15)
    assert (stats.mean_abs, stats.max_abs, stats.min_abs, stats.norm) == (0.0, 0.0, 0.0, 0.0)


def test_scratch_buffer_gives_the_same_result_and_may_be_larger() -> None:
    x = sprinkled(4, 500)
    scratch = np.full(2000, 123.0)  # stale content must not leak into the result
    assert_same(summarize_array(x, scratch), summarize_array(x), rtol=0)
    too_small = np.empty(10)
    assert_same(summarize_array(x, too_small), reference(x))


def test_non_contiguous_input() -> None:
    x = sprinkled(5, 400).reshape(20, 20).T[::2]
    assert_same(summarize_array(x), reference(x))


def test_merge_with_empty_is_identity() -> None:
    stats = summarize_array(sprinkled(6, 100))
    assert stats.merge(TensorStats()) == stats
    assert TensorStats().merge(stats) == stats


@pytest.mark.parametrize("seed", range(5))
def test_merge_of_chunks_equals_one_shot(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = sprinkled(seed, 2000, np.float64)
    cuts = np.sort(rng.integers(0, x.size, 6))
    parts = np.split(x, cuts)  # may include empty parts
    assert_same(merged(parts), summarize_array(x))


def test_merge_of_a_chunk_without_finite_values() -> None:
    x = np.array([1.0, -2.0, np.nan, np.inf, 0.0])
    assert_same(merged([x[:2], x[2:4], x[4:]]), summarize_array(x), rtol=0)


def test_merge_is_commutative() -> None:
    a, b = summarize_array(sprinkled(7, 300)), summarize_array(sprinkled(8, 300))
    assert_same(a.merge(b), b.merge(a))


def test_stats_are_frozen() -> None:
    stats = TensorStats()
    with pytest.raises(AttributeError):
        stats.count = 3  # type: ignore[misc]


SPECIALS = st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf])
# float64 magnitudes stay below 1e150 so that squares do not overflow even float64 accumulation.
ELEMENTS = {
    np.float16: st.floats(width=16) | SPECIALS,
    np.float32: st.floats(width=32) | SPECIALS,
    np.float64: st.floats(min_value=-1e150, max_value=1e150) | SPECIALS,
}
arrays_with_specials = st.sampled_from(list(ELEMENTS)).flatmap(
    lambda dtype: hnp.arrays(
        dtype=dtype,
        shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=40),
        elements=ELEMENTS[dtype],
    )
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=arrays_with_specials, cuts=st.lists(st.integers(min_value=0, max_value=1600), max_size=6))
def test_merge_equals_one_shot_property(x: np.ndarray, cuts: list[int]) -> None:
    flat = x.reshape(-1)
    parts = np.split(flat, sorted(c % (flat.size + 1) for c in cuts))
    one_shot = summarize_array(x)
    assert_same(one_shot, reference(x), rtol=1e-9)
    assert_same(merged(parts), one_shot, rtol=1e-9)
