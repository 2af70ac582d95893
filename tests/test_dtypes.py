"""Tests for the dtype table and the decoders, against numpy, hand-picked bit patterns and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import reference
from safetensors.numpy import save_file
from st_files import DTYPE_BITS, bf16_bits, write_arrays

from gradcheck.analysis.dtypes import DTYPES, F8_E4M3_TABLE, F8_E5M2_TABLE, decode_bf16
from gradcheck.analysis.reader import scan_file
from gradcheck.analysis.stats import TensorStats

DECODED = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def decode(dtype: str, raw: bytes) -> np.ndarray:
    """Decode raw bytes with the table's decoder and a fresh work buffer."""
    decoder = DTYPES[dtype].decode
    assert decoder is not None
    return decoder(memoryview(raw), np.empty(len(raw), dtype=np.uint32)).copy()


def assert_stats_match(got: TensorStats, want: TensorStats) -> None:
    """Counts must match exactly; float summaries to rounding."""
    assert (got.count, got.nan, got.inf, got.zeros) == (want.count, want.nan, want.inf, want.zeros)
    np.testing.assert_allclose(
        [got.abs_min, got.abs_max, got.abs_sum, got.sq_sum],
        [want.abs_min, want.abs_max, want.abs_sum, want.sq_sum],
        rtol=1e-12,
    )


def sprinkled(seed: int, n: int, dtype: type) -> np.ndarray:
    """Random normal values with NaN, +-Inf and +-0 put in at random places."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
    for special in (np.nan, np.inf, -np.inf, 0.0, -0.0):
        x[rng.integers(0, n, 7)] = special
    return x


def test_table_covers_every_library_dtype_with_its_bit_width() -> None:
    assert {name: info.bits for name, info in DTYPES.items()} == DTYPE_BITS


def test_exactly_the_float_types_are_decoded() -> None:
    assert {name for name, info in DTYPES.items() if info.decode is not None} == DECODED
    for name, info in DTYPES.items():
        if info.decode is None:
            assert info.skip_reason.startswith(f"{name} tensor skipped: ")


@pytest.mark.parametrize(
    ("dtype", "code", "value"),
    [
        ("F8_E4M3", 0x7E, 448.0),
        ("F8_E4M3", 0xFE, -448.0),
        ("F8_E4M3", 0x01, 2.0**-9),
        ("F8_E4M3", 0x08, 2.0**-6),
        ("F8_E4M3", 0x38, 1.0),
        ("F8_E4M3", 0x78, 256.0),
        ("F8_E4M3", 0x80, -0.0),
        ("F8_E5M2", 0x7C, math.inf),
        ("F8_E5M2", 0xFC, -math.inf),
        ("F8_E5M2", 0x7B, 57344.0),
        ("F8_E5M2", 0x3C, 1.0),
        ("F8_E5M2", 0x01, 2.0**-16),
        ("F8_E5M2", 0x04, 2.0**-14),
    ],
)
def test_f8_known_bit_patterns(dtype: str, code: int, value: float) -> None:
    got = decode(dtype, bytes([code]))[0]
    assert got == value
    assert math.copysign(1.0, got) == math.copysign(1.0, value)


@pytest.mark.parametrize(
    ("dtype", "nan_codes"), [("F8_E4M3", {0x7F, 0xFF}), ("F8_E5M2", {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF})]
)
def test_f8_nan_codes_and_no_other_non_finite(dtype: str, nan_codes: set[int]) -> None:
    values = decode(dtype, bytes(range(256)))
    assert set(np.flatnonzero(np.isnan(values)).tolist()) == nan_codes
    expected_inf = {0x7C, 0xFC} if dtype == "F8_E5M2" else set()
    assert set(np.flatnonzero(np.isinf(values)).tolist()) == expected_inf


def test_e4m3_has_no_infinity_and_max_448() -> None:
    finite = F8_E4M3_TABLE[np.isfinite(F8_E4M3_TABLE)]
    assert finite.size == 254
    assert np.abs(finite).max() == 448.0


@pytest.mark.parametrize(
    ("bits", "value"),
    [(0x3F80, 1.0), (0xBF80, -1.0), (0x4049, 3.140625), (0x7F80, math.inf), (0x0001, 2.0**-133)],
)
def test_bf16_known_bit_patterns(bits: int, value: float) -> None:
    assert decode("BF16", bits.to_bytes(2, "little"))[0] == value


def test_bf16_nan_pattern_decodes_to_nan() -> None:
    assert np.isnan(decode("BF16", (0x7FC0).to_bytes(2, "little"))[0])


def test_bf16_decoder_reuses_the_work_buffer() -> None:
    work = np.empty(16, dtype=np.uint32)
    out = decode_bf16(memoryview(np.array([0x3F80, 0x4000], dtype="<u2").tobytes()), work)
    assert out.tolist() == [1.0, 2.0]
    assert np.shares_memory(out, work)


@pytest.mark.parametrize(("dtype", "torch_name"), [("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")])
def test_f8_tables_match_torch(dtype: str, torch_name: str) -> None:
    torch = pytest.importorskip("torch")
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    expected = codes.view(getattr(torch, torch_name)).to(torch.float32).numpy()
    table = F8_E4M3_TABLE if dtype == "F8_E4M3" else F8_E5M2_TABLE
    np.testing.assert_array_equal(table, expected)  # NaN positions must agree too


def test_bf16_matches_torch_on_all_bit_patterns() -> None:
    torch = pytest.importorskip("torch")
    every = np.arange(1 << 16, dtype=np.uint32).astype("<u2")
    expected = torch.from_numpy(every.view(np.int16).copy()).view(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(decode("BF16", every.tobytes()), expected)


def test_bf16_rounding_helper_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    x = sprinkled(5, 4000, np.float32)
    expected = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = bf16_bits(x)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], expected[~nan])
    assert np.isnan(decode("BF16", got[nan].astype("<u2").tobytes())).all()


@pytest.mark.parametrize(
    ("dtype", "numpy_dtype"), [("F64", np.float64), ("F32", np.float32), ("F16", np.float16)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_float_stats_match_reference(tmp_path, dtype: str, numpy_dtype: type, seed: int) -> None:
    x = sprinkled(seed, 5000, numpy_dtype).reshape(50, 100)
    path = tmp_path / "a.safetensors"
    save_file({"w": x}, str(path))
    scan = scan_file(path, buffer_bytes=4096)
    assert scan.header.entries[0].dtype == dtype
    assert_stats_match(scan.stats["w"], reference(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_stats_match_reference(tmp_path, seed: int) -> None:
    bits = bf16_bits(sprinkled(seed, 3001, np.float32))
    path = write_arrays(tmp_path / "b.safetensors", {"w": ("BF16", bits.reshape(-1, 1))})
    expected = reference((bits.astype(np.uint32) << 16).view(np.float32))
    assert_stats_match(scan_file(path, buffer_bytes=1000).stats["w"], expected)


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_f8_stats_match_reference(tmp_path, dtype: str, seed: int) -> None:
    codes = np.random.default_rng(seed).integers(0, 256, 7777).astype(np.uint8)
    codes[:256] = np.arange(256)  # every code at least once
    path = write_arrays(tmp_path / "c.safetensors", {"w": (dtype, codes)})
    table = F8_E4M3_TABLE if dtype == "F8_E4M3" else F8_E5M2_TABLE
    assert_stats_match(scan_file(path, buffer_bytes=333).stats["w"], reference(table[codes]))


def test_f8_e4m3_stats_from_hand_computed_values(tmp_path) -> None:
    codes = np.array([0x7E, 0x01, 0x00, 0x7F, 0xB8], dtype=np.uint8)  # 448, 2**-9, 0, NaN, -1
    stats = scan_file(write_arrays(tmp_path / "d.safetensors", {"w": ("F8_E4M3", codes)})).stats["w"]
    assert (stats.count, stats.nan, stats.inf, stats.zeros) == (5, 1, 0, 1)
    assert (stats.abs_min, stats.abs_max) == (0.0, 448.0)
    assert stats.abs_sum == 448.0 + 2.0**-9 + 1.0


def magnitudes(dtype: str, raw: bytes) -> np.ndarray:
    """The dtype's magnitude decoder on raw bytes, as float64, with fresh buffers."""
    decoder = DTYPES[dtype].magnitudes
    assert decoder is not None
    n = len(raw) // DTYPES[dtype].itemsize
    with np.errstate(invalid="ignore"):  # signalling NaN bit patterns
        return decoder(memoryview(raw), np.empty(n, dtype=np.uint32), np.empty(n)).astype(np.float64)


def every_code(dtype: str) -> bytes:
    """Every bit pattern of a decoded dtype up to 16 bits wide, once."""
    bits = DTYPES[dtype].bits
    return np.arange(1 << bits, dtype=np.uint32).astype(f"<u{bits // 8}").tobytes()


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_magnitudes_are_abs_of_the_decoded_values_for_every_bit_pattern(dtype: str) -> None:
    raw = every_code(dtype)
    with np.errstate(invalid="ignore"):  # signalling NaN bit patterns
        expected = np.abs(decode(dtype, raw).astype(np.float64))
    np.testing.assert_array_equal(magnitudes(dtype, raw), expected)


def test_f16_magnitudes_without_inf_or_nan_take_the_bit_shift_exactly() -> None:
    codes = np.arange(1 << 16, dtype=np.uint32).astype("<u2")
    finite = codes[(codes & 0x7C00) != 0x7C00]  # subnormals, zeros and normals of both signs
    got = magnitudes("F16", finite.tobytes())
    assert got.dtype == np.float64 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, np.abs(finite.view(np.float16).astype(np.float64)))


@pytest.mark.parametrize("dtype", ["F32", "F64"])
def test_magnitudes_of_wide_floats(dtype: str) -> None:
    x = sprinkled(9, 1000, np.float32 if dtype == "F32" else np.float64)
    np.testing.assert_array_equal(magnitudes(dtype, x.tobytes()), np.abs(x.astype(np.float64)))


def test_clean_f16_stats_match_reference(tmp_path) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(5000) * 10.0 ** rng.uniform(-7, 4, 5000)).astype(np.float16)
    x[::50] = 0
    assert np.isfinite(x).all() and (np.abs(x[x != 0]) < 2.0**-14).any()  # subnormals, no Inf or NaN
    path = tmp_path / "h.safetensors"
    save_file({"w": x}, str(path))
    assert_stats_match(scan_file(path).stats["w"], reference(x))
