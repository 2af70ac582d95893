"""Hypothesis properties of the reader: it never crashes, never hangs and never lies about the data.

test_reader.py holds the hand-made cases and small parity properties; these run thousands of examples each.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference import reference
from st_files import DTYPE_BITS, bf16_bits, library_accepts, packed_header, write_arrays

from gradcheck.analysis.errors import GradcheckError, UnreadableFileError
from gradcheck.analysis.reader import FileHeader, FileScan, parse_header, scan_file
from gradcheck.analysis.runs import load_run
from gradcheck.analysis.stats import TensorStats
from gradcheck.analysis.summaries import summary_entry

EXAMPLES = int(os.environ.get("PROP_EXAMPLES", "2000"))  # lower it for a quick local run
# A slow example is a failure; a hang is caught by the alarm below rather than by waiting for ever.
DEADLINE = timedelta(seconds=5)
HANG_SECONDS = 20
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
# Saving examples costs a sixth of the run time and CI starts from a fresh clone anyway; a failure prints
# its @reproduce_failure blob instead.
NO_DATABASE = {"database": None, "print_blob": True}

# Raw storage of each decoded dtype: the tests write bit patterns so that every value, NaN payloads included,
# can occur; the expected values are then decoded here, independently of analysis/dtypes.py.
RAW = {"F64": "<u8", "F32": "<u4", "F16": "<u2", "BF16": "<u2", "F8_E4M3": "u1", "F8_E5M2": "u1"}
DECODED = tuple(RAW)
NUMPY_FLOAT = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}


def _e4m3fn(code: int) -> float:
    """The float8 E4M3FN value of one byte, from the OCP spec: bias 7, no infinities, NaN at S.1111.111."""
    sign = -1.0 if code & 0x80 else 1.0
    exponent, mantissa = (code >> 3) & 0xF, code & 0x7
    if exponent == 0xF and mantissa == 0x7:
        return math.nan
    if exponent == 0:
        return sign * math.ldexp(mantissa, -9)  # subnormal: (m / 8) * 2**-6
    return sign * math.ldexp(8 + mantissa, exponent - 10)  # (1 + m / 8) * 2**(e - 7)


E4M3FN = np.array([_e4m3fn(code) for code in range(256)])


def decoded(dtype: str, bits: np.ndarray) -> np.ndarray:
    """The float64 values of raw bit patterns, computed without the reader's decoders."""
    bits = np.asarray(bits, dtype=RAW[dtype]).reshape(-1)
    if dtype == "BF16":
        return (bits.astype("<u4") << 16).view("<f4").astype(np.float64)
    if dtype == "F8_E5M2":  # E5M2 is exactly the upper byte of an IEEE half
        return (bits.astype("<u2") << 8).view("<f2").astype(np.float64)
    if dtype == "F8_E4M3":
        return E4M3FN[bits]
    return bits.view(NUMPY_FLOAT[dtype]).astype(np.float64)


def _float_bits(dtype: str, values: list[float]) -> list[int]:
    return np.array(values, dtype=dtype).view(f"<u{np.dtype(dtype).itemsize}").tolist()


_SPECIAL_FLOATS = [0.0, -0.0, math.inf, -math.inf, math.nan, 1.0, -1.0]
# Zeros, infinities, quiet and signalling NaNs, the largest and the smallest (subnormal) magnitudes.
SPECIAL_BITS = {
    "F64": _float_bits("<f8", _SPECIAL_FLOATS)
    + [0x7FF0000000000001, 0x7FEFFFFFFFFFFFFF, 1, 0x8000000000000001],
    "F32": _float_bits("<f4", _SPECIAL_FLOATS) + [0x7F800001, 0xFFC00000, 0x7F7FFFFF, 1, 0x80000001],
    "F16": _float_bits("<f2", _SPECIAL_FLOATS) + [0x7C01, 0xFE00, 0x7BFF, 1, 0x8001],
    "BF16": [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFC1, 0x7F7F, 0x0001, 0x8001, 0x3F80],
    "F8_E4M3": [0x00, 0x80, 0x7F, 0xFF, 0x7E, 0xFE, 0x01, 0x81, 0x08, 0x38],
    "F8_E5M2": [0x00, 0x80, 0x7C, 0xFC, 0x7D, 0x7E, 0xFF, 0x7B, 0x01, 0x3C],
}


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail with TimeoutError instead of hanging (a no-op where SIGALRM is missing or off the main thread)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder for the examples' files, in memory where possible: a disk write costs more than a scan."""
    memory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="gradcheck-props-", dir=memory) as folder:
        yield Path(folder)


def assert_stats_equal(got: TensorStats, want: TensorStats) -> None:
    """Counts and extremes exactly; sums to rounding (both overflowed to inf, or close; tiny sums absolutely)."""
    assert (got.count, got.nan, got.inf, got.zeros) == (want.count, want.nan, want.inf, want.zeros)
    assert (got.abs_min, got.abs_max) == (want.abs_min, want.abs_max)
    for name in ("abs_sum", "sq_sum"):
        a, b = getattr(got, name), getattr(want, name)
        if math.isinf(a) or math.isinf(b):
            assert a == b, f"{name}: {a} != {b}"
        else:  # chunked and one-shot float64 sums of non-negative terms differ only in the last bits
            assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), f"{name}: {a} != {b}"


_PROBLEM_KIND = re.compile(r"'[^']*'|[0-9]+")  # names and numbers out, to group messages in statistics


def scan_or_error(path: Path, buffer_bytes: int = 64) -> FileScan | UnreadableFileError:
    """scan_file's result or its UnreadableFileError; any other exception, or a hang, fails the test."""
    with time_limit(HANG_SECONDS):
        try:
            result = scan_file(path, buffer_bytes=buffer_bytes)
        except UnreadableFileError as error:
            assert error.path == str(path) and error.problem
            event(f"rejected: {_PROBLEM_KIND.sub('#', error.problem)[:40]}")
            return error
    event("accepted")
    return result


def expected(dtype: str, bits: np.ndarray) -> TensorStats:
    """The reference statistics of raw bits (overflow to inf and NaN casts are the point, not a warning)."""
    with np.errstate(all="ignore"):
        return reference(decoded(dtype, bits))


def assert_true_to_the_file(path: Path, content: bytes, result: FileScan | UnreadableFileError) -> None:
    """Check a scan against the file itself, parsed with plain json and decoded by this module.

    Also check the verdict against the safetensors library: we accept exactly what it accepts, except
    that we refuse repeated tensor names, which it silently resolves to the last one.
    """
    accepted = not isinstance(result, UnreadableFileError)
    if library_accepts(path) != accepted:
        assert not accepted and "duplicate tensor name" in result.problem, result
    if not accepted:
        return
    (length,) = struct.unpack_from("<Q", content)
    header = json.loads(content[8 : 8 + length])
    assert result.header.metadata == (header.pop("__metadata__", None) or {})
    assert {e.name: (e.dtype, list(e.shape)) for e in result.header.entries} == {
        name: (e["dtype"], e["shape"]) for name, e in header.items()
    }
    start, want = 8 + length, {}
    for name, e in header.items():
        if e["dtype"] in RAW:
            begin, end = e["data_offsets"]
            want[name] = expected(
                e["dtype"], np.frombuffer(content[start + begin : start + end], RAW[e["dtype"]])
            )
    assert set(result.stats) == set(want)
    assert set(result.skipped) == set(header) - set(want)
    for name, stats in want.items():
        assert_stats_equal(result.stats[name], stats)


# --- 1. parse_header on arbitrary bytes ---------------------------------------------------------------

KEYS = st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "w", "", "a\u00e9", "\\ud800"])
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, -1, 4, 2**32, 2**64 - 1, 2**64, -(2**63), 10**30])
    | st.integers(-5, 50)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([*DTYPE_BITS, "F99", "f32"])
    | st.text(max_size=6)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=8,
)
DIMS = st.integers(0, 5) | st.sampled_from([2**31, 2**32, 2**63, 2**64 - 1])
NEAR_ENTRIES = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([*DTYPE_BITS, "F99"]),
        "shape": st.lists(DIMS, max_size=3),
        "data_offsets": st.lists(
            st.integers(0, 64) | st.sampled_from([2**64 - 1, 2**64]), min_size=2, max_size=2
        ),
    },
    optional={"x": JSON_LEAVES | st.lists(JSON_LEAVES, max_size=2)},
)
NEAR_HEADERS = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), NEAR_ENTRIES, max_size=4) | st.builds(
    lambda entries, meta: {"__metadata__": meta, **entries},
    st.dictionaries(st.sampled_from("abc"), NEAR_ENTRIES, max_size=3),
    st.dictionaries(st.text(max_size=4), JSON_LEAVES, max_size=3) | JSON_LEAVES,
)
VALID_HEADERS = st.builds(
    lambda tensors, metadata: packed_header(tensors, metadata)[0],
    st.lists(
        st.tuples(
            st.text(max_size=3),
            st.sampled_from(list(DTYPE_BITS)),
            # Multiples of 4 elements, so that F4 and F6 tensors fill whole bytes.
            st.lists(st.integers(0, 4), min_size=1, max_size=2).map(lambda s: [d * 4 for d in s]),
        ),
        max_size=4,
        unique_by=lambda t: t[0],
    ).filter(lambda ts: all(t[0] != "__metadata__" for t in ts)),
    st.none() | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
JSON_PIECES = st.sampled_from(
    [
        *'{}[]":,0123456789-.eE \t\n',
        "\\u",
        "\\ud800",
        "\\ude00",
        "1e999",
        "-0",
        "NaN",
        "\x00",
        "\x7f",
        "\u00e9",
    ]
)


@st.composite
def edited(draw: st.DrawFn, text: str) -> str:
    """JSON text with a few pieces inserted and removed at random places."""
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + "".join(draw(st.lists(JSON_PIECES, max_size=3))) + text[at + cut :]
    return text


HEADER_BYTES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    NEAR_HEADERS.map(json.dumps).flatmap(edited).map(lambda t: t.encode("utf-8", "surrogatepass")),
    NEAR_HEADERS.map(lambda h: json.dumps(h).encode()),
    VALID_HEADERS.map(lambda h: json.dumps(h).encode()),
    VALID_HEADERS.map(json.dumps).flatmap(edited).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def declared_size(raw: bytes) -> int:
    """The data size a header's offsets call for (0 when it is not a JSON object of tensors)."""
    try:
        ends = [e["data_offsets"][1] for k, e in json.loads(raw).items() if k != "__metadata__"]
        return max(ends, default=0) if all(type(end) is int and 0 <= end < 1 << 20 for end in ends) else 0
    except (ValueError, AttributeError, TypeError, KeyError, IndexError, RecursionError):
        return 0


@settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SLOW_OK, **NO_DATABASE)
@given(raw=HEADER_BYTES, data=st.none() | st.integers(0, 128) | st.sampled_from([-9, -8, 2**64]))
@example(raw=b"{" * 100_000, data=0)
@example(raw=b'{"a":' + b"[" * 200 + b"]" * 200 + b"}", data=0)
def test_parse_header_returns_a_header_or_raises_unreadable(raw: bytes, data: int | None) -> None:
    file_size = 8 + len(raw) + (declared_size(raw) if data is None else data)
    try:
        header = parse_header(raw, file_size, "p.safetensors")
    except UnreadableFileError as error:
        assert error.path == "p.safetensors" and error.problem
        event(f"rejected: {_PROBLEM_KIND.sub('#', error.problem)[:40]}")
        return
    event(f"accepted, {len(header.entries)} tensors")
    assert isinstance(header, FileHeader) and header.file_size == file_size
    # Never lies about the layout: the tensors tile the data section exactly, each with its declared size.
    position = 8 + len(raw)
    for e in sorted(header.entries, key=lambda e: (e.begin, e.end)):
        assert e.begin == position
        assert (e.end - e.begin) * 8 == math.prod(e.shape) * DTYPE_BITS[e.dtype]
        position = e.end
    assert position == file_size


# --- 2. scan_file on arbitrary whole files -------------------------------------------------------------


@st.composite
def whole_files(draw: st.DrawFn) -> bytes:
    """Prefix + header + data, the prefix mostly right (else nothing gets past it), the data often sized."""
    raw = draw(HEADER_BYTES)
    data = draw(st.binary(max_size=96))
    needed = declared_size(raw)
    if draw(st.booleans()):  # the size the layout declares, often enough to reach the scan
        data = (data * (needed // max(len(data), 1) + 1))[:needed] if data else bytes(needed)
    length = draw(
        st.just(len(raw))
        | st.integers(0, len(raw) + len(data) + 8)
        | st.sampled_from([2**64 - 1, 2**63, 100_000_001])
    )
    return struct.pack("<Q", length) + raw + data


@settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SLOW_OK, **NO_DATABASE)
@given(content=whole_files() | st.binary(max_size=64), buffer_bytes=st.integers(8, 256))
def test_scan_file_returns_or_raises_unreadable(scratch: Path, content: bytes, buffer_bytes: int) -> None:
    path = scratch / "any.safetensors"
    path.write_bytes(content)
    assert_true_to_the_file(path, content, scan_or_error(path, buffer_bytes))


# --- 3. valid files, mutated -------------------------------------------------------------------------

NAMES = ["w", "grad/b", "param/layer.0.weight", "a\u00e9", "x" * 40]


SHAPES = st.lists(st.integers(0, 9), max_size=3)


@st.composite
def bit_arrays(draw: st.DrawFn, dtype: str, max_elements: int = 64) -> np.ndarray:
    """Raw bit patterns of `dtype` in a random shape: any bits, with a random share of special values.

    The bits come from a drawn seed rather than one draw per element: that keeps 2000 examples fast, and
    a failure still replays exactly. Small arrays also come element by element, for hypothesis to shrink.
    """
    raw = np.dtype(RAW[dtype])
    if draw(st.integers(0, 3)) == 0:
        elements = st.integers(0, 2 ** (8 * raw.itemsize) - 1) | st.sampled_from(SPECIAL_BITS[dtype])
        return draw(arrays(raw, draw(st.integers(0, 12)), elements=elements))
    shape = draw(SHAPES.filter(lambda s: math.prod(s) <= max_elements))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = math.prod(shape)
    bits = rng.integers(0, 2 ** (8 * raw.itemsize), n, dtype=raw.newbyteorder("="), endpoint=False)
    special = rng.random(n) < draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    bits[special] = rng.choice(np.array(SPECIAL_BITS[dtype], dtype=bits.dtype), int(special.sum()))
    return bits.reshape(shape)


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[dict[str, tuple[str, np.ndarray]], dict[str, str] | None]:
    """Tensors of random decoded dtypes (and sometimes a skipped one) with optional metadata."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=0, max_size=4, unique=True))
    tensors = {}
    for name in names:
        dtype = draw(st.sampled_from([*DECODED, "I32"]))
        raw_dtype = "F32" if dtype == "I32" else dtype
        tensors[name] = (dtype, draw(bit_arrays(raw_dtype)))
    metadata = draw(
        st.none() | st.dictionaries(st.sampled_from(["step", "order", "k"]), st.text(max_size=5), max_size=2)
    )
    return tensors, metadata


_NUMBER = re.compile(r"-?[0-9]+")
_DTYPE = re.compile(r'"dtype":"([^"]*)"')
_MEMBER = re.compile(r'"(?:[^"\\]|\\.)*":\{"dtype":[^{}]*\}')


@st.composite
def mutated(draw: st.DrawFn, content: bytes) -> bytes:
    """Apply 1 to 3 mutations; header-text ones rewrite the length prefix, so the file may stay valid."""
    (length,) = struct.unpack_from("<Q", content)
    text, data = content[8 : 8 + length].decode(), content[8 + length :]
    byte_level = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(
                ["dtype", "number", "duplicate", "swap", "flip", "truncate", "insert", "delete", "length"]
            )
        )
        if kind == "dtype" and _DTYPE.search(text):
            m = draw(st.sampled_from(list(_DTYPE.finditer(text))))
            new = draw(st.sampled_from([*DTYPE_BITS, "F99", "f32", ""]))
            text = text[: m.start(1)] + new + text[m.end(1) :]
        elif kind == "number" and _NUMBER.search(text):
            m = draw(st.sampled_from(list(_NUMBER.finditer(text))))
            value = int(m.group())
            new = draw(
                st.sampled_from([value + 1, value - 1, value + 2, value * 2, 0, 2**64 - 1, 2**64])
                | st.integers(0, 80)
            )
            text = text[: m.start()] + str(new) + text[m.end() :]
        elif kind == "duplicate" and _MEMBER.search(text):
            m = draw(st.sampled_from(list(_MEMBER.finditer(text))))
            at = draw(st.sampled_from([m.start(), m.end()]))
            text = text[:at] + ("," + m.group() if at == m.end() else m.group() + ",") + text[at:]
        elif kind == "swap" and len(_DTYPE.findall(text)) >= 2:  # two tensors trade their offsets
            spans = re.findall(r'"data_offsets":\[[0-9]+,[0-9]+\]', text)
            i, j = draw(st.permutations(range(len(spans))))[:2]
            text = text.replace(spans[i], "\0").replace(spans[j], spans[i]).replace("\0", spans[j])
        else:
            byte_level.append(kind)
    out = bytearray(struct.pack("<Q", len(text.encode())) + text.encode() + data)
    for kind in byte_level:
        at = draw(st.integers(0, len(out)))
        if kind == "flip" and out:
            out[at % len(out)] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b" ", b"{", b"\0", b"\xff"])
            )
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 8))]
        elif kind == "length":
            new = draw(st.integers(0, len(out)) | st.sampled_from([0, 2**64 - 1, 2**63, 100_000_001]))
            out[:8] = struct.pack("<Q", new)[: min(8, len(out))]
    return bytes(out)


@settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SLOW_OK, **NO_DATABASE)
@given(valid=valid_files(), data=st.data(), buffer_bytes=st.integers(8, 300))
def test_mutated_files_give_true_stats_or_unreadable(
    scratch: Path, valid, data: st.DataObject, buffer_bytes: int
) -> None:
    tensors, metadata = valid
    path = write_arrays(scratch / "valid.safetensors", tensors, metadata)
    original = path.read_bytes()
    content = data.draw(mutated(original), label="mutated")
    path.write_bytes(content)
    result = scan_or_error(path, buffer_bytes)
    accepted = not isinstance(result, UnreadableFileError)
    if content == original:
        assert accepted, f"rejected an unmutated file: {result}"
        for name, (dtype, bits) in tensors.items():
            if dtype in RAW:
                assert_stats_equal(result.stats[name], expected(dtype, bits))
    assert_true_to_the_file(path, content, result)


# --- 4. statistics never lie ---------------------------------------------------------------------------


@st.composite
def realistic(draw: st.DrawFn, dtype: str) -> np.ndarray:
    """Bit patterns of normal-looking gradients (spread over decades) with specials sprinkled in."""
    n = draw(st.integers(0, 700))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 4, n)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        bits = rng.integers(0, 256, n).astype(np.uint8)
    elif dtype == "BF16":
        bits = bf16_bits(values)
    else:
        with np.errstate(over="ignore"):
            bits = values.astype(NUMPY_FLOAT[dtype]).view(RAW[dtype])
    specials = draw(
        st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.sampled_from(SPECIAL_BITS[dtype])), max_size=20)
    )
    for at, value in specials:
        if n:
            bits[at] = value
    return bits


ALL_F8 = np.arange(256, dtype=np.uint8)


@settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SLOW_OK, **NO_DATABASE)
@given(
    tensors=st.lists(
        st.sampled_from(DECODED).flatmap(lambda d: st.tuples(st.just(d), bit_arrays(d, 400) | realistic(d))),
        min_size=1,
        max_size=3,
    ),
    buffer_bytes=st.integers(8, 4096),
)
@example(tensors=[("F8_E4M3", ALL_F8), ("F8_E5M2", ALL_F8[::-1].copy())], buffer_bytes=9)
@example(tensors=[("BF16", np.arange(2**16, dtype=np.uint16))], buffer_bytes=4096)
@example(tensors=[("F16", np.arange(2**16, dtype=np.uint16))], buffer_bytes=10)
def test_streamed_stats_equal_the_reference(scratch: Path, tensors: list, buffer_bytes: int) -> None:
    named = {f"t{i}": (dtype, bits) for i, (dtype, bits) in enumerate(tensors)}
    path = write_arrays(scratch / "stats.safetensors", named)
    with time_limit(HANG_SECONDS):
        scan = scan_file(path, buffer_bytes=buffer_bytes)
    assert list(scan.stats) == list(named) and not scan.skipped
    for name, (dtype, bits) in named.items():
        assert_stats_equal(scan.stats[name], expected(dtype, bits))


# --- known bugs found by the fuzzer (tests/fuzz): load_run must turn bad metadata into notes, not crash ---


def loads_cleanly(run_dir: Path) -> None:
    """load_run may answer a bad file with a note or a GradcheckError, never another exception."""
    try:
        load_run(run_dir)
    except GradcheckError:
        pass


def one_file_run(folder: Path, metadata: dict[str, str], name: str = "w") -> Path:
    """A run directory holding one small grads file with the given metadata and tensor name."""
    folder.mkdir()
    write_arrays(folder / "grads_1.safetensors", {name: ("F32", np.ones(2, np.float32))}, metadata)
    return folder


def test_fuzz_find_step_with_5000_digits(tmp_path: Path) -> None:
    loads_cleanly(one_file_run(tmp_path / "run", {"step": "1" * 5000}))


def test_fuzz_find_summary_float_field_past_the_double_range(tmp_path: Path) -> None:
    summary = summary_entry(TensorStats(2, 0, 0, 0, 1.0, 1.0, 2.0, 2.0), (2,), "F32")
    summary["abs_sum"] = 10**400
    loads_cleanly(one_file_run(tmp_path / "run", {"gradcheck.stats": json.dumps({"grad/v": summary})}))


def test_fuzz_find_deeply_nested_order(tmp_path: Path) -> None:
    loads_cleanly(one_file_run(tmp_path / "run", {"order": "[" * 100_000}))


def test_fuzz_find_tensor_name_with_5000_digits(tmp_path: Path) -> None:
    loads_cleanly(one_file_run(tmp_path / "run", {}, name="layer" + "1" * 5000))


def test_fuzz_find_file_name_with_a_superscript_digit(tmp_path: Path) -> None:
    run_dir = one_file_run(tmp_path / "run", {})
    (run_dir / "notes_1²2.txt").write_text("a stray file is enough: the listing is sorted before filtering")
    loads_cleanly(run_dir)


@pytest.mark.skipif(sys.platform != "linux", reason="caps the child's memory with RLIMIT_AS")
def test_fuzz_find_huge_shard_count(tmp_path: Path) -> None:
    shards = {"w": {"shape": [2], "index": 0, "count": 2**40}}
    run_dir = one_file_run(tmp_path / "run", {"gradcheck.shards": json.dumps(shards)})
    # In a child process capped at 1 GiB, so that the bug is a quick MemoryError rather than a swapping machine.
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from gradcheck.analysis.runs import load_run\n"
        "print(load_run(sys.argv[1]).unreadable)\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(run_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-300:]
