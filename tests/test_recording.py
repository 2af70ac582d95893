"""Tests for gradcheck.recording: host tensors, flattening, summaries and the files save_snapshot writes."""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import reference
from safetensors import safe_open

from gradcheck.analysis.reader import scan_file
from gradcheck.analysis.runs import load_run
from gradcheck.analysis.stats import TensorStats, summarize_array
from gradcheck.recording import (
    HostTensor,
    RecordingError,
    flatten,
    host_tensor,
    save_snapshot,
    stats_from_entry,
    summarize_host,
    summary_entry,
    write_snapshot,
)


def assert_stats_close(got: TensorStats, want: TensorStats) -> None:
    """Counts and extremes exactly, sums up to the summation order."""
    assert (got.count, got.nan, got.inf, got.zeros) == (want.count, want.nan, want.inf, want.zeros)
    assert (got.abs_min, got.abs_max) == (want.abs_min, want.abs_max)
    np.testing.assert_allclose([got.abs_sum, got.sq_sum], [want.abs_sum, want.sq_sum], rtol=1e-6)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (truncated float32) as uint16, without any bfloat16 dtype."""
    return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """Decode uint16 bfloat16 patterns independently of analysis.dtypes."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def raw(dtype: str, array: np.ndarray) -> HostTensor:
    """A host tensor from the bytes of a plain numpy array (used for BF16/F8 bit patterns)."""
    return HostTensor(dtype, array.shape, memoryview(np.ascontiguousarray(array).view(np.uint8).ravel()))


@pytest.fixture
def rng() -> np.random.Generator:
    """Seeded random numbers."""
    return np.random.default_rng(1234)


@pytest.fixture
def arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One array per numpy dtype save_snapshot must keep as it is, with NaN/Inf/zeros in the floats."""
    f64 = rng.normal(size=(3, 5))
    f64[0, 0], f64[1, 1], f64[2, 2] = np.nan, -np.inf, 0.0
    return {
        "f64": f64,
        "f32": rng.normal(size=(7,)).astype(np.float32) * 1e-30,
        "f16": np.array([[1.0, -2.5], [65504.0, 0.0]], dtype=np.float16),
        "i64": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
        "i32": np.array([7], dtype=np.int32),
        "u8": np.array([0, 255], dtype=np.uint8),
        "flag": np.array([True, False]),
    }


EXPECTED_DTYPES = {
    "f64": "F64",
    "f32": "F32",
    "f16": "F16",
    "i64": "I64",
    "i32": "I32",
    "u8": "U8",
    "flag": "BOOL",
}


def test_numpy_round_trip(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = save_snapshot(tmp_path, 3, grads=arrays)
    assert path == tmp_path / "step_00000003.safetensors"
    scan = scan_file(path)
    dtypes = {e.name: (e.dtype, e.shape) for e in scan.header.entries}
    for name, array in arrays.items():
        assert dtypes[f"grad/{name}"] == (EXPECTED_DTYPES[name], array.shape)
    for name in ("f64", "f32", "f16"):
        assert_stats_close(scan.stats[f"grad/{name}"], reference(arrays[name]))
    assert set(scan.skipped) == {"grad/i64", "grad/i32", "grad/u8", "grad/flag"}
    with safe_open(path, "np") as f:
        for name, array in arrays.items():
            got = f.get_tensor(f"grad/{name}")
            assert got.dtype == array.dtype
            np.testing.assert_array_equal(got, array)


def test_bf16_and_float8_from_raw_bytes(tmp_path: Path, rng: np.random.Generator) -> None:
    bits = bf16_bits(rng.normal(size=(4, 6)) * 1e3)
    bits[0, 0] = 0x7FC0  # NaN
    bits[0, 1] = 0xFF80  # -Inf
    # Hand-decoded codes: E4M3FN 0x38 = 1.0, 0x7E = 448 (max), 0x7F = NaN, 0x01 = 2^-9, 0x80 = -0;
    # E5M2 0x3C = 1.0, 0x7B = 57344 (max), 0x7C = Inf, 0x7D = NaN, 0x01 = 2^-16.
    e4m3 = np.array([0x38, 0x7E, 0x7F, 0x01, 0x80, 0xB8], dtype=np.uint8)
    e4m3_values = np.array([1.0, 448.0, np.nan, 2.0**-9, -0.0, -1.0])
    e5m2 = np.array([0x3C, 0x7B, 0x7C, 0x7D, 0x01], dtype=np.uint8)
    e5m2_values = np.array([1.0, 57344.0, np.inf, np.nan, 2.0**-16])
    tensors = {"grad/b": raw("BF16", bits), "grad/e4": raw("F8_E4M3", e4m3), "grad/e5": raw("F8_E5M2", e5m2)}
    scan = scan_file(write_snapshot(tmp_path, 0, tensors))
    assert {e.name: e.dtype for e in scan.header.entries} == {
        "grad/b": "BF16",
        "grad/e4": "F8_E4M3",
        "grad/e5": "F8_E5M2",
    }
    assert_stats_close(scan.stats["grad/b"], reference(bf16_values(bits)))
    assert scan.stats["grad/e4"] == reference(e4m3_values)
    assert scan.stats["grad/e5"] == reference(e5m2_values)
    for key, tensor in tensors.items():  # stats mode must summarise exactly what the reader reads
        assert summarize_host(tensor) == scan.stats[key]


def test_ml_dtypes_arrays(tmp_path: Path) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([1.5, -3.0, 0.0, 1e30], dtype=np.float32)
    bf16 = values.astype(ml_dtypes.bfloat16)
    tensor = host_tensor(bf16)
    assert (tensor.dtype, tensor.shape) == ("BF16", (4,))
    assert bytes(tensor.data) == bf16.view(np.uint16).tobytes()  # ml_dtypes rounds; its bits pass unchanged
    assert host_tensor(values.astype(ml_dtypes.float8_e4m3fn)).dtype == "F8_E4M3"
    assert host_tensor(values.astype(ml_dtypes.float8_e5m2)).dtype == "F8_E5M2"
    with pytest.raises(RecordingError, match="float8_e4m3fnuz"):
        host_tensor(values.astype(ml_dtypes.float8_e4m3fnuz))


def test_torch_tensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 100
    tensors = {
        "w_bf16": base.to(torch.bfloat16),
        "w_e4m3": (base / 10).to(torch.float8_e4m3fn),
        "w_e5m2": base.to(torch.float8_e5m2),
        "w_t": base.t(),  # not contiguous
        "w_p": torch.nn.Parameter(base.clone()),  # requires grad
        "scalar": torch.tensor(2.5, dtype=torch.float16),
        "steps": torch.tensor([1, 2, 3]),
    }
    path = save_snapshot(tmp_path, 1, params=tensors)
    scan = scan_file(path)
    shapes = {e.name: (e.dtype, e.shape) for e in scan.header.entries}
    want = {"w_bf16": "BF16", "w_e4m3": "F8_E4M3", "w_e5m2": "F8_E5M2", "w_t": "F32", "w_p": "F32"}
    want |= {"scalar": "F16", "steps": "I64"}
    for name, tensor in tensors.items():
        assert shapes[f"param/{name}"] == (want[name], tuple(tensor.shape))
        if tensor.is_floating_point():
            values = tensor.detach().to(torch.float64).numpy()
            assert_stats_close(scan.stats[f"param/{name}"], reference(values))
    with safe_open(path, "pt") as f:  # the library reads our bytes back as the same tensors
        for name, tensor in tensors.items():
            got = f.get_tensor(f"param/{name}")
            assert (got.dtype, got.shape) == (tensor.dtype, tensor.shape)
            assert torch.equal(
                got.reshape(-1).view(torch.uint8), tensor.detach().reshape(-1).view(torch.uint8)
            )


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_host_tensor_is_a_snapshot(framework: str) -> None:
    if framework == "torch":
        torch = pytest.importorskip("torch")
        value = torch.ones(4)
    else:
        value = np.ones(4, dtype=np.float32)
    tensor = host_tensor(value)
    value += 1  # an optimizer step after the snapshot was taken
    assert np.frombuffer(tensor.data, dtype=np.float32).tolist() == [1.0] * 4


@pytest.mark.parametrize(
    ("value", "dtype", "payload"),
    [
        (1.5, "F64", struct.pack("<d", 1.5)),
        (3, "I64", struct.pack("<q", 3)),
        (True, "BOOL", b"\x01"),
        (np.float32(0.25), "F32", struct.pack("<f", 0.25)),
        (np.array([1.0, 2.0], dtype=">f4"), "F32", struct.pack("<2f", 1.0, 2.0)),  # big-endian input
    ],
)
def test_host_tensor_scalars_and_byte_order(value: object, dtype: str, payload: bytes) -> None:
    tensor = host_tensor(value)
    assert tensor.dtype == dtype
    assert tensor.shape == np.shape(value)
    assert bytes(tensor.data) == payload


class ArrayLike:
    """An object that is an array only through __array__, as JAX arrays are."""

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return np.arange(6, dtype=np.float16).reshape(2, 3)


def test_host_tensor_array_protocol() -> None:
    tensor = host_tensor(ArrayLike())
    assert (tensor.dtype, tensor.shape) == ("F16", (2, 3))
    assert bytes(tensor.data) == np.arange(6, dtype="<f2").tobytes()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("text", "str is not an array"),
        (None, "NoneType is not an array"),
        (np.array([1 + 2j]), "complex128 has no safetensors equivalent"),
        (np.array(["a"]), "has no safetensors equivalent"),
        (np.array([object()]), "object has no safetensors equivalent"),
        (2**70, "dtype object has no safetensors equivalent"),
    ],
)
def test_host_tensor_rejects(value: object, words: str) -> None:
    with pytest.raises(RecordingError, match=words):
        host_tensor(value)


def test_bad_tensor_names_dir_step_and_key(tmp_path: Path) -> None:
    with pytest.raises(RecordingError) as info:
        save_snapshot(tmp_path / "run", 12, grads={"ok": np.ones(2), "bad": "text"})
    assert (
        str(info.value)
        == f"cannot write step 12 to {tmp_path / 'run'}: tensor 'grad/bad': str is not an array"
    )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


class FrozenTree(Mapping[str, object]):
    """A read-only mapping like Flax's FrozenDict (not a dict subclass)."""

    def __init__(self, items: dict[str, object]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> object:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_flatten_nested_trees_in_order() -> None:
    tree = FrozenTree(
        {"params": FrozenTree({"Dense_1": {"kernel": 1, "bias": 2}, "Dense_0": {"kernel": 3}}), "top": 4}
    )
    assert list(flatten(tree).items()) == [
        ("params.Dense_1.kernel", 1),
        ("params.Dense_1.bias", 2),
        ("params.Dense_0.kernel", 3),
        ("top", 4),
    ]
    assert flatten({"w": 1}, prefix="model") == {"model.w": 1}
    assert flatten({"mlp/~/linear_0": {"w": 1}}) == {"mlp/~/linear_0.w": 1}  # Haiku names keep their slashes
    assert flatten({"a": {}}) == {}


def test_flatten_rejects_colliding_names() -> None:
    with pytest.raises(RecordingError, match="'a.b'"):
        flatten({"a.b": 1, "a": {"b": 2}})


def test_order_and_user_metadata(tmp_path: Path) -> None:
    one = np.ones(2, dtype=np.float32)
    path = save_snapshot(
        tmp_path,
        40,
        grads={"enc": {"w": one, "b": None}, "dec.w": one},  # enc.b has no gradient
        params={"enc": {"b": one, "w": one}, "head.w": one},
        updates={"z.w": one, "dec.w": one},
        metadata={"lr": "0.001"},
    )
    metadata = scan_file(path).header.metadata
    assert json.loads(metadata.pop("order")) == ["enc.w", "dec.w", "enc.b", "head.w", "z.w"]
    assert metadata == {"lr": "0.001", "gradcheck.format": "1", "step": "40"}
    keys = {e.name for e in scan_file(path).header.entries}
    assert "grad/enc.b" not in keys and {"param/enc.b", "update/z.w", "grad/dec.w"} <= keys
    run = load_run(tmp_path)
    assert run.steps == (40,)
    assert run.params == ("enc.w", "dec.w", "enc.b", "head.w", "z.w")
    assert run.get(40, "enc.w", "grad") is not None


def test_user_order_wins(tmp_path: Path) -> None:
    path = save_snapshot(
        tmp_path, 0, grads={"b": np.ones(1), "a": np.ones(1)}, metadata={"order": '["a", "b"]'}
    )
    assert scan_file(path).header.metadata["order"] == '["a", "b"]'


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({"lr": 0.1}, "metadata 'lr': float value, safetensors needs str -> str"),
        ({1: "x"}, "metadata 1: str value"),
        ({"step": "5"}, "metadata 'step' is reserved"),
        ({"gradcheck.format": "2"}, "metadata 'gradcheck.format' is reserved"),
        ({"gradcheck.stats": "{}"}, "metadata 'gradcheck.stats' is reserved"),
        ({"note": "\ud800"}, "surrogate"),
    ],
)
def test_bad_metadata(tmp_path: Path, metadata: dict[object, object], words: str) -> None:
    with pytest.raises(RecordingError) as info:
        save_snapshot(tmp_path, 7, grads={"w": np.ones(1)}, metadata=metadata)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"cannot write step 7 to {tmp_path}: ")
    assert words in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_file_layout(tmp_path: Path) -> None:
    tensors = {
        "b": raw("F32", np.ones(3, np.float32)),
        "a": raw("F16", np.ones(1, np.float16)),
        "e": raw("F32", np.ones(0, np.float32)),
    }
    data = write_snapshot(tmp_path, 2, tensors, metadata={"k": "v"}).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert (8 + length) % 8 == 0
    header = json.loads(data[8 : 8 + length])
    assert [k for k in header if k != "__metadata__"] == ["a", "b", "e"]  # sorted, laid out in that order
    assert [header[k]["data_offsets"] for k in ("a", "b", "e")] == [[0, 2], [2, 14], [14, 14]]
    assert len(data) == 8 + length + 14


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        (HostTensor("F32", (3,), memoryview(b"\0" * 8)), "needs 12 bytes, data has 8"),
        (HostTensor("F8_E4M3FNUZ", (1,), memoryview(b"\0")), "unknown dtype 'F8_E4M3FNUZ'"),
        (HostTensor("F32", (-1,), memoryview(b"")), "not a tuple of non-negative integers"),
        (HostTensor("F32", (2,), memoryview(np.ones((2, 2), np.float32)[:, 0])), "not C-contiguous"),
    ],
)
def test_write_snapshot_validates_tensors(tmp_path: Path, tensor: HostTensor, words: str) -> None:
    with pytest.raises(RecordingError, match=words):
        write_snapshot(tmp_path, 0, {"grad/w": tensor})
    with pytest.raises(RecordingError, match="'__metadata__'"):
        write_snapshot(tmp_path, 0, {"__metadata__": raw("F32", np.ones(1, np.float32))})


def test_stats_mode_is_small_and_equals_the_full_scan(tmp_path: Path, rng: np.random.Generator) -> None:
    big = rng.normal(size=1_000_000).astype(np.float32)  # several reader chunks
    big[::1000] = 0.0
    grads = {
        "big": big,
        "bf": raw("BF16", bf16_bits(rng.normal(size=(1000, 700)))),  # a HostTensor passes through as it is
        "small": np.array([np.nan, np.inf, 2.0]),
    }
    full = scan_file(save_snapshot(tmp_path / "full", 9, grads=grads))
    stats_path = save_snapshot(tmp_path / "stats", 9, grads=grads, mode="stats")
    assert stats_path.stat().st_size < 1024 * len(grads)
    scan = scan_file(stats_path)
    assert scan.header.entries == ()
    summaries = json.loads(scan.header.metadata["gradcheck.stats"])
    assert summaries["grad/big"]["shape"] == [1_000_000] and summaries["grad/big"]["dtype"] == "F32"
    assert summaries["grad/bf"]["shape"] == [1000, 700] and summaries["grad/bf"]["dtype"] == "BF16"
    for key in full.stats:
        assert stats_from_entry(summaries[key]) == full.stats[key]  # bit for bit, not just close
    assert json.loads(scan.header.metadata["order"]) == ["big", "bf", "small"]


def test_stats_mode_non_float_tensor_gets_a_count(tmp_path: Path) -> None:
    path = save_snapshot(tmp_path, 0, params={"n": np.arange(5)}, mode="stats")
    entry = json.loads(scan_file(path).header.metadata["gradcheck.stats"])["param/n"]
    assert entry["dtype"] == "I64" and stats_from_entry(entry) == TensorStats(count=5)


def test_bad_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'full', 'stats'"):
        save_snapshot(tmp_path, 0, grads={}, mode="summary")


def test_summary_entry_shape() -> None:
    entry = summary_entry(TensorStats(count=3, nan=3), (3,), "BF16")
    assert entry == {
        "shape": [3], "dtype": "BF16", "count": 3, "nan": 3, "inf": 0, "zeros": 0,
        "abs_min": "inf", "abs_max": 0.0, "abs_sum": 0.0, "sq_sum": 0.0,
    }  # fmt: skip
    json.dumps(entry, allow_nan=False)


def float_bits(value: float) -> str:
    """An exact identity for floats: NaN equals NaN, -0.0 differs from 0.0."""
    return "nan" if math.isnan(value) else struct.pack("<d", value).hex()


counts = st.integers(min_value=0, max_value=2**61 - 1)  # four of them still sum below 2^63
any_float = st.floats(min_value=0.0, allow_infinity=True)  # sums and extremes of |x| (Inf: an overflow)


@settings(max_examples=300, deadline=None)
@st.composite
def consistent_stats(draw: st.DrawFn) -> TensorStats:
    """Any TensorStats whose NaN, Inf and zero counts fit in its element count."""
    nan, inf, zeros, spare = (draw(counts) for _ in range(4))
    floats = [draw(any_float) for _ in range(4)]
    floats[1] = min(floats[1], 1.7976931348623157e308)  # abs_max is a finite |x|
    return TensorStats(nan + inf + zeros + spare, nan, inf, zeros, *floats)


@given(consistent_stats())
def test_summary_round_trip_any_stats(stats: TensorStats) -> None:
    entry = json.loads(json.dumps(summary_entry(stats, (2, 3), "F32"), allow_nan=False))
    back = stats_from_entry(entry)
    fields = ("abs_min", "abs_max", "abs_sum", "sq_sum")
    assert [float_bits(getattr(back, f)) for f in fields] == [float_bits(getattr(stats, f)) for f in fields]
    assert (back.count, back.nan, back.inf, back.zeros) == (stats.count, stats.nan, stats.inf, stats.zeros)
    assert back == stats


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("sq_sum", -1.0, "not a number >= 0"),
        ("abs_sum", "nan", "not a number >= 0"),
        ("abs_max", "inf", "abs_max is infinite"),
        ("count", 2**63, "not an integer from 0 to 2^63-1"),
        ("nan", 10**400, "not an integer from 0 to 2^63-1"),
        ("scale", 3.0, "not a positive power of two"),
    ],
)
def test_summary_with_impossible_numbers_is_refused(field: str, value: object, problem: str) -> None:
    entry = summary_entry(TensorStats(4, 0, 0, 0, 0.5, 2.0, 4.0, 6.0), (4,), "F32")
    entry[field] = value
    with pytest.raises(ValueError, match=re.escape(problem)):
        stats_from_entry(entry)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float16, np.float32, np.float64]), hnp.array_shapes(min_dims=0, max_side=6)
    )
)
def test_summary_round_trip_real_arrays(values: np.ndarray) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        stats = summarize_array(values)
    assert stats_from_entry(json.loads(json.dumps(summary_entry(stats, values.shape, "F64")))) == stats


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"count": None}, "no field 'count'"),
        ({"nan": True}, "'nan' is True, not an integer from 0 to 2\\^63-1"),
        ({"zeros": -1}, "'zeros' is -1"),
        ({"abs_max": "Infinity"}, "'abs_max' is 'Infinity', not a number"),
        ({"sq_sum": [1.0]}, "'sq_sum' is [1.0]"),
    ],
)
def test_stats_from_entry_rejects(change: dict[str, object], words: str) -> None:
    entry = summary_entry(
        TensorStats(count=1, abs_min=1.0, abs_max=1.0, abs_sum=1.0, sq_sum=1.0), (1,), "F32"
    )
    entry.update(change)
    entry = {k: v for k, v in entry.items() if v is not None}
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        stats_from_entry(entry)


def test_import_loads_no_framework_and_no_cli() -> None:
    code = (
        "import sys, gradcheck.recording; print(sorted({'torch', 'jax', 'click', 'rich'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_negative_step_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="step must be 0 or more"):
        save_snapshot(tmp_path, -5, grads={"w": np.ones(2, np.float32)})
    assert list(tmp_path.iterdir()) == []
