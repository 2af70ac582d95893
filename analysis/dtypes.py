"""The safetensors dtype table: element sizes, and decoders from raw little-endian bytes to floats."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

# A decoder turns a chunk of raw bytes into a float array; `work` is a reused uint32 buffer that holds at
# least one element per input element (view decoders ignore it).
Decoder = Callable[[memoryview, np.ndarray], np.ndarray]
# A magnitude decoder turns a chunk of raw bytes into |x|: float32 in `work` (uint32) or float64 in `wide`,
# whichever holds the dtype exactly at the lower cost. Both buffers hold at least one element per input
# element; the result is scratch for its user to overwrite.
Magnitudes = Callable[[memoryview, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DtypeInfo:
    """One safetensors dtype: its size in bits and either a decoder or the reason it is not decoded."""

    name: str
    bits: int
    decode: Decoder | None = None
    magnitudes: Magnitudes | None = None
    skip: str = ""

    @property
    def itemsize(self) -> int:
        """Bytes per element of a decoded dtype (every decoded dtype is a whole number of bytes)."""
        return self.bits // 8

    @property
    def skip_reason(self) -> str:
        """The plain sentence recorded for a tensor of this dtype that is not decoded."""
        return f"{self.name} tensor skipped: {self.skip}"


def _view(numpy_dtype: str) -> Decoder:
    """Make a zero-copy decoder for a dtype numpy reads natively."""
    dtype = np.dtype(numpy_dtype)

    def decode(raw: memoryview, work: np.ndarray) -> np.ndarray:
        return np.frombuffer(raw, dtype=dtype)

    return decode


def decode_bf16(raw: memoryview, work: np.ndarray) -> np.ndarray:
    """Decode bfloat16 bytes: each value is the upper half of a float32."""
    halves = np.frombuffer(raw, dtype="<u2")
    out = work[: halves.size]
    np.left_shift(halves, np.uint32(16), out=out, dtype=np.uint32)
    return out.view(np.float32)


def f8_table(exponent_bits: int, bias: int, *, has_inf: bool) -> np.ndarray:
    """Build the float32 value of every byte of an 8-bit float with a sign bit and the given layout."""
    mantissa_bits = 7 - exponent_bits
    codes = np.arange(256, dtype=np.int64)
    exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
    fraction = (codes & ((1 << mantissa_bits) - 1)) / float(1 << mantissa_bits)
    normal = (1.0 + fraction) * np.exp2(exponent - bias)
    subnormal = fraction * np.exp2(1 - bias)
    magnitude = np.where(exponent == 0, subnormal, normal)
    top = exponent == (1 << exponent_bits) - 1
    if has_inf:
        # IEEE-like (E5M2): the all-ones exponent means Inf with a zero fraction, NaN otherwise.
        magnitude = np.where(top & (fraction == 0), np.inf, magnitude)
        magnitude = np.where(top & (fraction != 0), np.nan, magnitude)
    else:
        # "fn" formats (E4M3FN): no infinities; only the all-ones exponent and fraction is NaN.
        magnitude = np.where(top & (fraction == 1.0 - 1.0 / (1 << mantissa_bits)), np.nan, magnitude)
    signed = np.where(codes & 0x80, -magnitude, magnitude)
    table = signed.astype(np.float32)
    table.setflags(write=False)
    return table


def _lookup(table: np.ndarray) -> Decoder:
    """Make a decoder for an 8-bit float through its 256-entry table."""

    def decode(raw: memoryview, work: np.ndarray) -> np.ndarray:
        codes = np.frombuffer(raw, dtype=np.uint8)
        out = work[: codes.size].view(np.float32)
        return np.take(
            table, codes, out=out, mode="wrap"
        )  # a byte never wraps; "wrap" skips the bounds check

    return decode


def _abs_f32(raw: memoryview, work: np.ndarray, wide: np.ndarray) -> np.ndarray:
    """|x| of float32 bytes, as float32."""
    values = np.frombuffer(raw, dtype="<f4")
    return np.abs(values, out=work[: values.size].view(np.float32))


def _abs_f64(raw: memoryview, work: np.ndarray, wide: np.ndarray) -> np.ndarray:
    """|x| of float64 bytes, as float64."""
    values = np.frombuffer(raw, dtype="<f8")
    return np.abs(values, out=wide[: values.size])


# Shifted left by 13, the 15 value bits of a float16 fill a float32's exponent and mantissa fields and read
# as its value times 2**(15 - 127); multiplying by 2**112 restores it exactly, subnormals included.
_F16_BIAS_GAP = np.float32(2.0**112)
_F16_INF_BITS = 0x7C00  # the all-ones exponent: Inf and NaN, which the shift would turn into finite numbers


def _abs_f16(raw: memoryview, work: np.ndarray, wide: np.ndarray) -> np.ndarray:
    """|x| of float16 bytes: as float32 by shifting bits (6 GB/s), as float64 when Inf or NaN is present."""
    halves = np.frombuffer(raw, dtype="<u2")
    bits = np.bitwise_and(halves, np.uint16(0x7FFF), out=work[: halves.size], dtype=np.uint32)
    if halves.size and int(bits.max()) >= _F16_INF_BITS:
        out = wide[: halves.size]
        np.copyto(
            out, np.frombuffer(raw, dtype="<f2")
        )  # numpy converts half to double twice as fast as to float
        return np.abs(out, out=out)
    np.left_shift(bits, np.uint32(13), out=bits)
    return np.multiply(bits.view(np.float32), _F16_BIAS_GAP, out=bits.view(np.float32))


def _abs_bf16(raw: memoryview, work: np.ndarray, wide: np.ndarray) -> np.ndarray:
    """|x| of bfloat16 bytes, as float32: the upper half of a float32, sign bit cleared."""
    out = decode_bf16(raw, work).view(np.uint32)
    np.bitwise_and(out, np.uint32(0x7FFF_FFFF), out=out)
    return out.view(np.float32)


def _abs_lookup(table: np.ndarray) -> Magnitudes:
    """Make a magnitude decoder for an 8-bit float through the table of its magnitudes."""
    magnitudes = np.abs(table)

    def decode(raw: memoryview, work: np.ndarray, wide: np.ndarray) -> np.ndarray:
        codes = np.frombuffer(raw, dtype=np.uint8)
        return np.take(magnitudes, codes, out=work[: codes.size].view(np.float32), mode="wrap")

    return decode


F8_E4M3_TABLE = f8_table(4, 7, has_inf=False)
F8_E5M2_TABLE = f8_table(5, 15, has_inf=True)

_NOT_FLOAT = "not floating point"
_NOT_DECODED = "this float format is not decoded yet"

DTYPES: Mapping[str, DtypeInfo] = {
    info.name: info
    for info in (
        DtypeInfo("BOOL", 8, skip=_NOT_FLOAT),
        DtypeInfo("U8", 8, skip=_NOT_FLOAT),
        DtypeInfo("I8", 8, skip=_NOT_FLOAT),
        DtypeInfo("F8_E5M2", 8, decode=_lookup(F8_E5M2_TABLE), magnitudes=_abs_lookup(F8_E5M2_TABLE)),
        DtypeInfo("F8_E4M3", 8, decode=_lookup(F8_E4M3_TABLE), magnitudes=_abs_lookup(F8_E4M3_TABLE)),
        DtypeInfo("F8_E8M0", 8, skip="power-of-two scale format, not values"),
        DtypeInfo("I16", 16, skip=_NOT_FLOAT),
        DtypeInfo("U16", 16, skip=_NOT_FLOAT),
        DtypeInfo("F16", 16, decode=_view("<f2"), magnitudes=_abs_f16),
        DtypeInfo("BF16", 16, decode=decode_bf16, magnitudes=_abs_bf16),
        DtypeInfo("I32", 32, skip=_NOT_FLOAT),
        DtypeInfo("U32", 32, skip=_NOT_FLOAT),
        DtypeInfo("F32", 32, decode=_view("<f4"), magnitudes=_abs_f32),
        DtypeInfo("F64", 64, decode=_view("<f8"), magnitudes=_abs_f64),
        DtypeInfo("I64", 64, skip=_NOT_FLOAT),
        DtypeInfo("U64", 64, skip=_NOT_FLOAT),
        DtypeInfo("C64", 64, skip="complex numbers are not decoded"),
        DtypeInfo("F4", 4, skip=_NOT_DECODED),
        DtypeInfo("F6_E2M3", 6, skip=_NOT_DECODED),
        DtypeInfo("F6_E3M2", 6, skip=_NOT_DECODED),
    )
}
