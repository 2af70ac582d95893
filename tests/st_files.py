"""Build safetensors files byte by byte, including malformed ones, for tests."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

# Bits per element of every dtype the safetensors library knows, written out independently of analysis/.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "F64": 64, "I64": 64, "U64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


def entry(dtype: str, shape: Iterable[int], begin: int, end: int, **extra: Any) -> dict[str, Any]:
    """Make one raw header entry; extra keys are added as they are (the library ignores unknown ones)."""
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end], **extra}


def nbytes(dtype: str, shape: Iterable[int]) -> int:
    """Bytes that a tensor of this dtype and shape occupies (sub-byte dtypes must fill whole bytes)."""
    bits = DTYPE_BITS[dtype] * int(np.prod(list(shape), dtype=object))
    assert bits % 8 == 0, "sub-byte tensor does not end on a byte boundary"
    return bits // 8


def packed_header(
    tensors: Iterable[tuple[str, str, Iterable[int]]], metadata: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], int]:
    """Lay (name, dtype, shape) tensors out contiguously; return the raw header dict and the data size."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in tensors:
        size = nbytes(dtype, shape)
        header[name] = entry(dtype, shape, offset, offset + size)
        offset += size
    return header, offset


def header_bytes(header: Mapping[str, Any] | str | bytes, *, align: int = 8) -> bytes:
    """Serialize a header (a dict, or JSON text/bytes taken literally) and pad it with spaces to `align`."""
    if isinstance(header, Mapping):
        raw = json.dumps(header, separators=(",", ":")).encode()
    elif isinstance(header, str):
        raw = header.encode()
    else:
        raw = bytes(header)
    return raw + b" " * (-len(raw) % align if align else 0)


def file_bytes(
    header: Mapping[str, Any] | str | bytes,
    data: bytes = b"",
    *,
    declared_length: int | None = None,
    align: int = 8,
) -> bytes:
    """Assemble prefix + header + data; `declared_length` overrides the u64 length to build broken files."""
    raw = header_bytes(header, align=align)
    length = len(raw) if declared_length is None else declared_length
    return struct.pack("<Q", length) + raw + data


def write(
    path: str | Path,
    header: Mapping[str, Any] | str | bytes,
    data: bytes = b"",
    *,
    declared_length: int | None = None,
    align: int = 8,
) -> Path:
    """Write a hand-built safetensors file and return its path."""
    target = Path(path)
    target.write_bytes(file_bytes(header, data, declared_length=declared_length, align=align))
    return target


def write_arrays(
    path: str | Path, tensors: Mapping[str, tuple[str, np.ndarray]], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write tensors given as name -> (safetensors dtype, array of raw element values) in that order.

    The array's bytes are written as they are (little-endian), so pass e.g. uint16 bit patterns for BF16
    and uint8 codes for F8 dtypes.
    """
    header, _ = packed_header(((n, dt, a.shape) for n, (dt, a) in tensors.items()), metadata)
    data = b"".join(
        np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes() for _, a in tensors.values()
    )
    return write(path, header, data)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even; NaN kept quiet) and return the uint16 bit patterns."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    quiet_nan = (bits >> 16) | 0x0040
    return np.where(nan, quiet_nan, rounded).astype(np.uint16)


def library_accepts(path: Path) -> bool:
    """Whether safetensors itself opens the file."""
    try:
        with safe_open(str(path), "np") as f:
            f.keys()
    except Exception:  # noqa: BLE001 - the library raises several types (SafetensorError, OSError, ...)
        return False
    return True
