"""Host copies of framework tensors, flattened parameter trees, and the summaries stats mode writes."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gradcheck.analysis.dtypes import DTYPES
from gradcheck.analysis.errors import GradcheckError
from gradcheck.analysis.reader import summarize_bytes
from gradcheck.analysis.stats import TensorStats

# The summary format belongs to the reader; re-exported here for the recorders.
from gradcheck.analysis.summaries import stats_from_entry, summary_entry

__all__ = [
    "HostTensor", "RecordingError", "flatten", "float_dtype_code", "host_tensor", "stats_from_entry",
    "summarize_host", "summary_entry",
]  # fmt: skip

# numpy / ml_dtypes / torch dtype names (torch's without the "torch." prefix) -> safetensors dtype.
_DTYPE_NAMES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
    "bool": "BOOL", "complex64": "C64",
}  # fmt: skip


class RecordingError(GradcheckError):
    """A snapshot that cannot be recorded; the message names the run directory and the step."""


@dataclass(frozen=True)
class HostTensor:
    """A tensor as host bytes: safetensors dtype, shape and C-contiguous little-endian raw data."""

    dtype: str
    shape: tuple[int, ...]
    data: memoryview


def float_dtype_code(name: str) -> str | None:
    """The safetensors name of a floating dtype gradcheck analyses (`bfloat16` -> BF16), else None."""
    code = _DTYPE_NAMES.get(name)
    return code if code is not None and DTYPES[code].decode is not None else None


def _dtype_code(name: str, itemsize: int) -> str:
    """Map a framework dtype name to its safetensors name, refusing dtypes the format cannot hold."""
    code = _DTYPE_NAMES.get(name)
    if code is None or DTYPES[code].bits != 8 * itemsize:
        raise RecordingError(f"dtype {name} has no safetensors equivalent")
    return code


def _is_torch_tensor(value: object) -> bool:
    """Tell a torch.Tensor (or subclass such as Parameter) without importing torch."""
    return any(cls.__name__ == "Tensor" and cls.__module__ == "torch" for cls in type(value).__mro__)


def _from_torch(value: object, copy: bool) -> HostTensor:
    """Copy a torch tensor to host memory and take its raw bytes (works for bf16/float8 without numpy)."""
    torch = sys.modules["torch"]  # already imported: `value` is a torch tensor
    t = value.detach()  # type: ignore[attr-defined]
    code = _dtype_code(str(t.dtype).removeprefix("torch."), t.element_size())
    fresh = False  # whether `t` is already a private copy
    if t.layout != torch.strided:
        t, fresh = t.to_dense(), True
    if t.is_conj() or t.is_neg():
        t, fresh = t.resolve_conj().resolve_neg(), True
    if t.device.type != "cpu":
        t, fresh = t.cpu(), True
    if copy and not fresh:
        t = t.clone(memory_format=torch.contiguous_format)
    t = t.contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy()
    return HostTensor(code, tuple(int(d) for d in t.shape), memoryview(raw))


def _from_numpy(value: object, copy: bool) -> HostTensor:
    """Take the bytes of anything numpy can convert (arrays, JAX arrays, scalars), little-endian."""
    try:
        array = np.array(value, order="C", copy=True) if copy else np.asarray(value, order="C")
    except (TypeError, ValueError, OverflowError) as e:
        raise RecordingError(f"cannot convert {type(value).__name__} to an array: {e}") from e
    code = _dtype_code(array.dtype.name, array.dtype.itemsize)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    raw = array.reshape(-1).view(np.uint8)
    return HostTensor(code, tuple(int(d) for d in array.shape), memoryview(raw))


def host_tensor(value: object, *, copy: bool = True) -> HostTensor:
    """Convert a numpy/torch/JAX array or a Python scalar to host bytes with its dtype unchanged.

    A HostTensor is returned as it is (it is immutable), which lets raw BF16/F8 bytes through save_snapshot.
    With `copy` (the default) the result never shares memory with `value`, so later in-place changes to
    `value` (an optimizer step) do not alter it; `copy=False` skips the copy where one is not needed.
    """
    if isinstance(value, HostTensor):
        return value
    if _is_torch_tensor(value):
        return _from_torch(value, copy)
    if value is None or isinstance(value, (str, bytes, Mapping)):
        raise RecordingError(f"{type(value).__name__} is not an array")
    return _from_numpy(value, copy)


def flatten(tree: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Turn nested mappings (Flax/Haiku trees) into dotted names -> leaves, keeping insertion order."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        items = flatten(value, name).items() if isinstance(value, Mapping) else [(name, value)]
        for item_name, item in items:
            if item_name in flat:
                raise RecordingError(f"two entries of the tree are both named {item_name!r}")
            flat[item_name] = item
    return flat


def summarize_host(tensor: HostTensor) -> TensorStats:
    """Summarize a host tensor bit for bit as the reader would; dtypes the reader skips only get their count."""
    if DTYPES[tensor.dtype].decode is None:
        return TensorStats(count=math.prod(tensor.shape))
    return summarize_bytes(tensor.data, tensor.dtype, shape=tensor.shape)
