"""Tests for the safetensors header parser and the streaming scanner."""

from __future__ import annotations

import errno
import gc
import json
import os
import socket
import stat
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from st_files import entry, file_bytes, header_bytes, library_accepts, packed_header, write, write_arrays

from gradcheck.analysis import header as header_parser
from gradcheck.analysis import reader
from gradcheck.analysis.errors import UnreadableFileError
from gradcheck.analysis.header import MAX_HEADER_BYTES, TensorEntry, parse_header
from gradcheck.analysis.reader import read_header, scan_file
from gradcheck.analysis.stats import TensorStats, summarize_array

Z = b"\0"


@dataclass(frozen=True)
class Case:
    """A crafted file; `words` is None when it is valid, else what the error message must contain."""

    name: str
    content: bytes
    words: tuple[str, ...] | None = None
    library_agrees: bool = True  # False where we are deliberately stricter than safetensors


def ok(name: str, header: object, data: bytes = b"", **kw: object) -> Case:
    """A file that must be accepted."""
    return Case(name, file_bytes(header, data, **kw))  # type: ignore[arg-type]


def bad(
    name: str, header: object, data: bytes, *words: str, library_agrees: bool = True, **kw: object
) -> Case:
    """A file that must be rejected with a message containing every one of `words`."""
    return Case(name, file_bytes(header, data, **kw), words, library_agrees)  # type: ignore[arg-type]


def nested(depth: int) -> str:
    """A header whose only tensor carries an unknown field nested so that the whole JSON has `depth` levels."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    return '{"w":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":' + inner + "}}"


F32_W = {"w": entry("F32", [2, 3], 0, 24)}

CASES = [
    ok("one f32 tensor", F32_W, Z * 24),
    ok("empty header", {}),
    ok("no padding", F32_W, Z * 24, align=0),
    ok(
        "leading and trailing whitespace",
        ' \t\n{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}\r\n',
        Z * 4,
    ),
    ok("metadata", {"__metadata__": {"step": "3"}, **F32_W}, Z * 24),
    ok("metadata null", {"__metadata__": None}),
    ok("metadata key repeated (last wins, like the library)", '{"__metadata__":{"a":"1","a":"2"}}'),
    ok("offsets not in header order", {"b": entry("F32", [1], 4, 8), "a": entry("F32", [1], 0, 4)}, Z * 8),
    ok(
        "zero-size tensors anywhere",
        {"a": entry("F16", [0], 0, 0), "b": entry("F32", [1], 0, 4), "c": entry("I8", [3, 0], 4, 4)},
        Z * 4,
    ),
    ok("scalar", {"s": entry("F64", [], 0, 8)}, Z * 8),
    ok("unknown fields ignored", {"w": entry("F32", [1], 0, 4, note=[1, {"k": None}])}, Z * 4),
    ok(
        "repeated key inside an unknown field",
        '{"w":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":{"a":1,"a":2}}}',
        Z * 4,
    ),
    ok("nesting 127 deep", nested(127), Z * 4),
    ok(
        "surrogate pair escape in a name",
        '{"\\ud83d\\ude00":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}',
        Z * 4,
    ),
    ok("empty tensor name", {"": entry("F32", [1], 0, 4)}, Z * 4),
    ok("u64 max dimension times zero", {"w": entry("F32", [2**64 - 1, 0], 0, 0)}),
    ok("zero dimension first", {"w": entry("F32", [0, 2**32, 2**32], 0, 0)}),
    ok("F4 even count", {"w": entry("F4", [4], 0, 2)}, Z * 2),
    ok("F6 four elements", {"w": entry("F6_E2M3", [4], 0, 3)}, Z * 3),
    ok(
        "every other dtype",
        packed_header([(d, d, [2]) for d in ("BOOL", "U64", "C64", "F8_E8M0")])[0],
        Z * 36,
    ),
    Case("empty file", b"", ("empty file (0 bytes): not a safetensors file",)),
    Case("five bytes", b"\x01\0\0\0\0", ("only 5 bytes",)),
    bad(
        "length u64 max",
        b"{}",
        b"",
        "header length 18446744073709551615 is larger than the file (10 bytes)",
        declared_length=2**64 - 1,
        align=0,
    ),
    bad(
        "length one past the file",
        b"{}",
        b"",
        "header length 3 is larger than the file (10 bytes)",
        declared_length=3,
        align=0,
    ),
    bad("not utf-8", b'{"\xff":1}', b"", "header is not valid UTF-8"),
    bad("not json", b"{oops}", b"", "header is not valid JSON (line 1 column 2)"),
    bad("empty json", b"", b"", "header is not valid JSON", align=0),
    bad("NUL padding", b"{}\0\0\0\0\0\0", b"", "header is not valid JSON"),
    bad("byte order mark", "\ufeff{}", b"", "header is not valid JSON"),
    bad(
        "NaN literal",
        '{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}',
        Z * 4,
        "not valid JSON",
        "NaN",
    ),
    bad(
        "huge float in unknown field",
        '{"w":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1e999}}',
        Z * 4,
        "not valid JSON",
        "out of range",
    ),
    bad(
        "5000-digit integer",
        '{"w":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":%s}}' % ("1" * 5000),
        Z * 4,
        "not valid JSON",
    ),
    bad("lone surrogate", '{"\\ud800":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', Z * 4, "surrogate"),
    bad(
        "control character in a name",
        b'{"w\x01":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}',
        Z * 4,
        "not valid JSON",
    ),
    bad("nesting 128 deep", nested(128), Z * 4, "not valid JSON", "nested more than 127"),
    bad("nesting 5000 deep", nested(5000), Z * 4, "not valid JSON"),
    bad("not an object", "[1]", b"", "header is not a JSON object"),
    bad("string header", '"hi"', b"", "header is not a JSON object"),
    bad("tensor not an object", {"w": 1}, b"", "tensor 'w'", "not a JSON object"),
    bad("unknown dtype", {"w": entry("F99", [1], 0, 4)}, Z * 4, "tensor 'w': unknown dtype 'F99'"),
    bad("lower-case dtype", {"w": entry("f32", [1], 0, 4)}, Z * 4, "unknown dtype 'f32'"),
    bad("null dtype", {"w": entry(None, [1], 0, 4)}, Z * 4, "unknown dtype null"),  # type: ignore[arg-type]
    bad(
        "negative dimension",
        {"w": entry("F32", [-1, 3], 0, 4)},
        Z * 4,
        "tensor 'w': shape [-1, 3] is not a list of non-negative integers",
    ),
    bad(
        "minus zero dimension", '{"w":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', b"", "shape [-0.0]"
    ),
    bad("float dimension", {"w": entry("F32", [2.0], 0, 8)}, Z * 8, "shape [2.0]"),  # type: ignore[list-item]
    bad(
        "exponent dimension", '{"w":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}', Z * 8, "shape [2.0]"
    ),
    bad("bool dimension", {"w": entry("F32", [True], 0, 4)}, Z * 4, "shape [true]"),
    bad("dimension 2**64", {"w": entry("F32", [2**64, 0], 0, 0)}, b"", "non-negative integers"),
    bad(
        "shape is a string", {"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, Z * 8, 'shape "2"'
    ),  # type: ignore[arg-type]
    bad("shape null", {"w": {"dtype": "F32", "shape": None, "data_offsets": [0, 4]}}, Z * 4, "shape null"),
    bad(
        "three offsets",
        {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 4]}},
        Z * 4,
        "data_offsets [0, 4, 4] is not a pair",
    ),
    bad(
        "float offset", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}, Z * 4, "data_offsets"
    ),
    bad("offset 2**64", {"w": entry("F32", [0], 2**64, 2**64)}, b"", "data_offsets"),
    bad("end before begin", {"w": entry("F32", [0], 4, 0)}, Z * 4, "tensor 'w'", "end before they begin"),
    bad(
        "missing offsets",
        {"w": {"dtype": "F32", "shape": [1]}},
        Z * 4,
        "tensor 'w': missing field 'data_offsets'",
    ),
    bad(
        "repeated field",
        '{"w":{"dtype":"F32","shape":[1],"shape":[1],"data_offsets":[0,4]}}',
        Z * 4,
        "tensor 'w': duplicate field 'shape'",
    ),
    bad(
        "size mismatch",
        {"w": entry("F32", [2, 3], 0, 20)},
        Z * 20,
        "tensor 'w': shape [2, 3] of F32 needs 24 bytes but its offsets span 20",
    ),
    bad("overflowing shape", {"w": entry("F32", [2**40, 2**40, 0], 0, 0)}, b"", "tensor 'w'", "overflows"),
    bad("overflowing byte count", {"w": entry("F32", [2**62], 0, 0)}, b"", "overflows"),
    bad(
        "F4 odd count",
        {"w": entry("F4", [3], 0, 2)},
        Z * 2,
        "tensor 'w'",
        "12 bits, not a whole number of bytes",
    ),
    bad("F6 three elements", {"w": entry("F6_E3M2", [3], 0, 3)}, Z * 3, "18 bits"),
    bad(
        "overlap",
        {"a": entry("F32", [12], 0, 48), "b": entry("F32", [2], 40, 48)},
        Z * 48,
        "tensor 'b': data starts at byte 40 but the previous tensor ends at 48 (overlap)",
    ),
    bad(
        "gap",
        {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)},
        Z * 12,
        "tensor 'b': data starts at byte 8 but the previous tensor ends at 4 (gap)",
    ),
    bad(
        "gap at the start",
        {"a": entry("F32", [1], 4, 8)},
        Z * 8,
        "tensor 'a': data starts at byte 4",
        "(gap)",
    ),
    bad(
        "trailing bytes",
        {"w": entry("F32", [24], 0, 96)},
        Z * 100,
        "data section is 100 bytes but tensors use 96 (trailing bytes)",
    ),
    bad(
        "cut short",
        {"w": entry("F32", [100], 0, 400)},
        Z * 120,
        "file is cut short: tensors need 400 data bytes but only 120 are present",
    ),
    bad(
        "duplicate tensor name",
        '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        '"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        Z * 4,
        "duplicate tensor name 'w' in header",
        library_agrees=False,
    ),
    bad("duplicate __metadata__", '{"__metadata__":{},"__metadata__":{}}', b"", "duplicate __metadata__"),
    bad(
        "metadata value not a string",
        {"__metadata__": {"step": 3}},
        b"",
        "__metadata__ value for 'step' is not a string",
    ),
    bad("metadata not an object", {"__metadata__": ["a"]}, b"", "__metadata__ is not a JSON object"),
]


def parity_cases() -> list[Case]:
    """The cases where our verdict must equal the library's."""
    return [c for c in CASES if c.library_agrees]


def our_verdict(path: Path) -> UnreadableFileError | None:
    """Our header verdict: None when the file is accepted."""
    try:
        read_header(path)
    except UnreadableFileError as e:
        return e
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_crafted_header(tmp_path: Path, case: Case) -> None:
    path = tmp_path / "case.safetensors"
    path.write_bytes(case.content)
    error = our_verdict(path)
    if case.words is None:
        assert error is None, f"rejected a valid file: {error}"
        scan = scan_file(path)
        assert set(scan.stats) | set(scan.skipped) == {e.name for e in scan.header.entries}
        return
    assert error is not None, "accepted an invalid file"
    assert str(path) in str(error) and error.path == str(path)
    for words in case.words:
        assert words in error.problem
    with pytest.raises(UnreadableFileError):
        scan_file(path)


@pytest.mark.parametrize("case", parity_cases(), ids=lambda c: c.name)
def test_verdict_matches_safetensors(tmp_path: Path, case: Case) -> None:
    path = tmp_path / "case.safetensors"
    path.write_bytes(case.content)
    assert (our_verdict(path) is None) == library_accepts(path)


def test_duplicate_tensor_names_are_stricter_than_the_library(tmp_path: Path) -> None:
    (case,) = [c for c in CASES if c.name == "duplicate tensor name"]
    path = tmp_path / "dup.safetensors"
    path.write_bytes(case.content)
    assert library_accepts(path)  # the library keeps the last one silently; we refuse the ambiguity
    assert our_verdict(path) is not None


def test_header_larger_than_100_mb(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        f.truncate(MAX_HEADER_BYTES + 100)  # sparse: no real disk use
    with pytest.raises(UnreadableFileError, match="header is larger than 100 MB"):
        read_header(path)
    assert not library_accepts(path)


def test_parse_header_is_pure_and_gives_absolute_offsets() -> None:
    raw = json.dumps(
        {"__metadata__": {"k": "v"}, "b": entry("F16", [3], 8, 14), "a": entry("F64", [1], 0, 8)}
    )
    header = parse_header(raw.encode(), 8 + len(raw) + 14, "x.safetensors")
    start = 8 + len(raw)
    assert header.entries == (
        TensorEntry("b", "F16", (3,), start + 8, start + 14),
        TensorEntry("a", "F64", (1,), start, start + 8),
    )
    assert header.metadata == {"k": "v"}
    assert header.file_size == start + 14


def test_parse_header_rejects_inconsistent_file_size() -> None:
    with pytest.raises(UnreadableFileError, match="larger than the file"):
        parse_header(b"{}", 9, "x.safetensors")


def test_entries_point_at_the_tensor_bytes(tmp_path: Path) -> None:
    arrays = {"a": np.arange(5, dtype=np.float32), "b": np.arange(3, dtype=np.float64)}
    path = tmp_path / "x.safetensors"
    save_file(arrays, str(path), metadata={"step": "7"})
    header = read_header(path)
    content = path.read_bytes()
    assert header.metadata == {"step": "7"}
    assert header.file_size == len(content)
    for e in header.entries:
        assert content[e.begin : e.end] == arrays[e.name].tobytes()


def scan_in_thread(path: Path, timeout: float = 5.0) -> BaseException | None:
    """Run scan_file in a daemon thread so that a hang fails the test instead of blocking it."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            scan_file(path)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert outcome, f"scan_file({path}) did not return within {timeout} s"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    os.mkfifo(path)
    error = scan_in_thread(path)
    assert isinstance(error, UnreadableFileError)
    assert "is a FIFO/socket/device, not a regular file" in str(error)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
def test_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    with socket.socket(socket.AF_UNIX) as server:
        try:
            server.bind(str(path))
        except OSError:
            pytest.skip("path too long for a Unix socket")
        error = scan_in_thread(path)
    assert isinstance(error, UnreadableFileError)
    assert "not a regular file" in str(error)


def test_device_is_refused() -> None:
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    with pytest.raises(UnreadableFileError, match="not a regular file"):
        scan_file("/dev/null")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.mkdir(), "is a directory, not a file"),
        (lambda p: p.symlink_to(p.parent / "missing"), "broken symbolic link"),
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file (0 bytes): not a safetensors file"),
    ],
    ids=["directory", "dangling symlink", "missing", "empty"],
)
def test_unreadable_paths(tmp_path: Path, make, words: str) -> None:
    path = tmp_path / "x.safetensors"
    make(path)
    for call in (read_header, scan_file):
        with pytest.raises(UnreadableFileError) as info:
            call(path)
        assert info.value.problem == words
        assert str(path) in str(info.value)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads everything")
def test_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path / "x.safetensors", {})
    path.chmod(0)
    try:
        with pytest.raises(UnreadableFileError, match="permission denied"):
            scan_file(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EACCES, "permission denied"),
        (errno.ENXIO, "is a FIFO/socket/device, not a regular file"),
        (errno.ELOOP, "cannot open: too many levels of symbolic links"),
    ],
)
def test_open_errors_in_plain_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    path = write(tmp_path / "x.safetensors", {})

    def refuse(*args: object) -> int:
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(UnreadableFileError) as info:
        scan_file(path)
    assert info.value.problem == words


def test_nul_in_path() -> None:
    with pytest.raises(UnreadableFileError, match="NUL"):
        scan_file("a\0b.safetensors")


def test_file_truncated_while_being_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"w": np.ones(1000, dtype=np.float32)}, str(path))
    (e,) = read_header(path).entries
    real = reader._read_at
    cut = e.begin + 1000

    def shrinking(fd: int, view: memoryview, offset: int) -> int:
        if offset >= cut:
            return 0
        return real(fd, view[: cut - offset], offset)  # someone truncated the file after we checked its size

    monkeypatch.setattr(reader, "_read_at", shrinking)
    with pytest.raises(
        UnreadableFileError, match=f"file was truncated while being read \\(tensor 'w' at byte {cut}\\)"
    ):
        scan_file(path, buffer_bytes=4096)


def test_read_errors_become_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"w": np.ones(10, dtype=np.float32)}, str(path))

    def failing(fd: int, view: memoryview, offset: int) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(reader, "_read_at", failing)
    with pytest.raises(UnreadableFileError, match="input/output error"):
        scan_file(path)


def test_short_reads_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(3).standard_normal(999).astype(np.float32)
    path = tmp_path / "x.safetensors"
    save_file({"w": x}, str(path))
    expected = scan_file(path, buffer_bytes=64).stats["w"]
    real = reader._read_at
    calls: list[int] = []

    def dribbling(fd: int, view: memoryview, offset: int) -> int:
        calls.append(offset)
        return real(fd, view[:3], offset)  # at most 3 bytes per call, like a slow network file system

    monkeypatch.setattr(reader, "_read_at", dribbling)
    assert scan_file(path, buffer_bytes=64).stats["w"] == expected
    assert len(calls) > x.nbytes // 3
    assert_same(expected, summarize_array(x))


@pytest.mark.parametrize("missing", [("preadv",), ("preadv", "pread")])
def test_fallback_without_preadv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...]
) -> None:
    x = np.random.default_rng(4).standard_normal(5000)
    path = tmp_path / "x.safetensors"
    save_file({"w": x}, str(path))
    expected = scan_file(path, buffer_bytes=256).stats["w"]
    for name in missing:
        monkeypatch.delattr(os, name, raising=False)
    assert scan_file(path, buffer_bytes=256).stats["w"] == expected


def assert_same(got: TensorStats, want: TensorStats) -> None:
    """Counts and extremes exactly, sums to rounding (chunked float64 sums differ in the last bits)."""
    assert (got.count, got.nan, got.inf, got.zeros, got.abs_min, got.abs_max) == (
        want.count,
        want.nan,
        want.inf,
        want.zeros,
        want.abs_min,
        want.abs_max,
    )
    np.testing.assert_allclose([got.abs_sum, got.sq_sum], [want.abs_sum, want.sq_sum], rtol=1e-12)


@pytest.mark.parametrize("buffer_bytes", [8, 64, 100, 1000])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_small_buffers_give_the_same_stats(tmp_path: Path, buffer_bytes: int, dtype: type) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(10_007).astype(dtype)
    x[rng.integers(0, x.size, 20)] = np.nan
    x[rng.integers(0, x.size, 20)] = np.inf
    x[rng.integers(0, x.size, 20)] = 0
    path = tmp_path / "x.safetensors"
    save_file({"w": x}, str(path))
    big = scan_file(path, buffer_bytes=1 << 22).stats["w"]
    small = scan_file(path, buffer_bytes=buffer_bytes).stats["w"]
    assert x.nbytes > 8 * buffer_bytes  # many chunks per tensor
    assert_same(small, big)
    assert_same(big, summarize_array(x))


def test_bf16_and_f8_chunks_merge_like_one_shot(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    bf16 = rng.integers(0, 1 << 16, 3000).astype(np.uint16)
    f8 = rng.integers(0, 256, 3000).astype(np.uint8)
    path = write_arrays(tmp_path / "x.safetensors", {"h": ("BF16", bf16), "e": ("F8_E5M2", f8)})
    one = scan_file(path, buffer_bytes=1 << 20).stats
    for buffer_bytes in (8, 63, 1000):
        many = scan_file(path, buffer_bytes=buffer_bytes).stats
        for name in ("h", "e"):
            assert_same(many[name], one[name])


def test_buffer_bytes_below_one_element_is_a_programming_error(tmp_path: Path) -> None:
    path = write(tmp_path / "x.safetensors", {})
    with pytest.raises(ValueError, match="buffer_bytes"):
        scan_file(path, buffer_bytes=4)


def test_non_float_tensors_are_skipped_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    arrays = {
        "ints": np.arange(6, dtype=np.int64),
        "mask": np.array([True, False]),
        "w": np.ones(3, dtype=np.float32),
        "u": np.arange(4, dtype=np.uint8),
    }
    save_file(arrays, str(path))
    scan = scan_file(path)
    assert list(scan.stats) == ["w"]
    assert scan.skipped == {
        "ints": "I64 tensor skipped: not floating point",
        "mask": "BOOL tensor skipped: not floating point",
        "u": "U8 tensor skipped: not floating point",
    }


def test_zero_length_and_scalar_tensors(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file(
        {"empty": np.zeros((0, 4), dtype=np.float32), "scalar": np.array(-2.5, dtype=np.float64)}, str(path)
    )
    scan = scan_file(path)
    assert scan.stats["empty"] == TensorStats()
    assert scan.stats["scalar"].count == 1
    assert scan.stats["scalar"].abs_max == 2.5
    assert {e.name: e.shape for e in scan.header.entries} == {"empty": (0, 4), "scalar": ()}


def test_stats_and_skipped_follow_header_order(tmp_path: Path) -> None:
    header, size = packed_header([("z", "F32", [2]), ("m", "I32", [2]), ("a", "F16", [2]), ("b", "U8", [2])])
    reordered = {k: header[k] for k in ("b", "a", "z", "m")}
    path = write(tmp_path / "x.safetensors", reordered, Z * size)
    scan = scan_file(path)
    assert list(scan.stats) == ["a", "z"]
    assert list(scan.skipped) == ["b", "m"]
    assert scan.path == str(path)


# Strategies for header fuzzing: near-valid values so the layout checks, not just JSON parsing, get exercised.
DIMS = st.one_of(st.integers(0, 4), st.sampled_from([-1, 2**32, 2**63, 2**64 - 1, 2**64]))
ENTRIES = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F4", "F6_E2M3", "I64", "F8_E4M3", "F99"]),
        "shape": st.lists(DIMS, max_size=3),
        "data_offsets": st.lists(st.integers(0, 40), min_size=2, max_size=2).map(sorted),
    }
)
HEADERS = st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]), ENTRIES, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=HEADERS, data_len=st.integers(0, 48), tweak=st.integers(0, 2))
def test_fuzzed_headers_match_the_library(tmp_path: Path, header: dict, data_len: int, tweak: int) -> None:
    if tweak == 1 and header:  # make the layout valid often enough to matter
        layout, data_len = packed_header(
            (n, e["dtype"] if e["dtype"] != "F99" else "F32", [d for d in e["shape"] if 0 <= d <= 4])
            for n, e in header.items()
            if n != "__metadata__" and not (e["dtype"] in ("F4", "F6_E2M3"))
        )
        header = layout
    path = write(tmp_path / "fuzz.safetensors", header, Z * data_len)
    assert (our_verdict(path) is None) == library_accepts(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 200), replacement=st.binary(min_size=0, max_size=3), cut=st.integers(0, 8))
def test_mutated_files_raise_only_unreadable(
    tmp_path: Path, position: int, replacement: bytes, cut: int
) -> None:
    header, size = packed_header([("w", "F32", [3]), ("b", "BF16", [2]), ("i", "I8", [4])], {"step": "1"})
    content = bytearray(file_bytes(header, bytes(range(size))))
    position %= len(content)
    content[position : position + len(replacement)] = replacement
    path = tmp_path / "mut.safetensors"
    path.write_bytes(bytes(content[: len(content) - cut]))
    verdict = our_verdict(path)
    assert (verdict is None) == library_accepts(path)
    if verdict is None:
        scan_file(path, buffer_bytes=8)
    else:
        with pytest.raises(UnreadableFileError):
            scan_file(path, buffer_bytes=8)


JSON_PIECES = st.sampled_from(
    [*'{}[]":,0123456789-.eE tfnul\\', "\\u", "\\ud800", "1e999", "null", '"a"', "\x00", "é"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    position=st.integers(0, 150),
    insert=st.lists(JSON_PIECES, max_size=3).map("".join),
    delete=st.integers(0, 3),
)
def test_edited_json_matches_the_library(tmp_path: Path, position: int, insert: str, delete: int) -> None:
    header, size = packed_header([("w", "F32", [3]), ("b", "BF16", [2])], {"step": "1"})
    text = json.dumps(header)
    position %= len(text) + 1
    path = write(
        tmp_path / "edit.safetensors", text[:position] + insert + text[position + delete :], Z * size
    )
    assert (our_verdict(path) is None) == library_accepts(path)


def both_verdicts(content: bytes) -> tuple[object, object] | None:
    """parse_header's verdict and the strict path's alone (a FileHeader or the problem), or None without one."""
    if len(content) < 8:
        return None
    (length,) = struct.unpack("<Q", content[:8])
    raw = content[8 : 8 + length]
    if len(raw) != length:
        return None
    verdicts = []
    for parse in (parse_header, header_parser._parse_strict):
        try:
            verdicts.append(parse(raw, len(content), "x.safetensors"))
        except UnreadableFileError as e:
            verdicts.append(e.problem)
    return verdicts[0], verdicts[1]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fast_path_gives_the_strict_verdict(case: Case) -> None:
    verdicts = both_verdicts(case.content)
    if verdicts is not None:
        fast, strict = verdicts
        assert fast == strict


ONE = json.dumps(entry("F32", [1], 0, 4))
TRICKY = [
    ("colon in names and metadata", {"__metadata__": {"a:b": "c:d"}, "x:y": entry("F32", [1], 0, 4)}, True),
    ("repeated name with a colon", f'{{"a:b":{ONE},"a:b":{ONE}}}', False),
    ("repeated field", '{"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', False),
    ("repeated metadata key", f'{{"__metadata__":{{"k":"a:b","k":"c"}},"w":{ONE}}}', False),
    ("escaped colon", f'{{"a\\u003ab":{ONE}}}', False),
    ("minus zero offset", '{"w":{"dtype":"F32","shape":[0],"data_offsets":[-0,0]}}', False),
    ("minus zero in a name", {"layer-0,1": entry("F32", [1], 0, 4)}, False),
    ("unknown field", {"w": entry("F32", [1], 0, 4, note="x")}, False),
    ("zero-size tensors", {"a": entry("F16", [0], 0, 0), "b": entry("F32", [1], 0, 4)}, True),
    ("huge prefix before a zero", {"w": entry("F32", [2**40, 2**40, 0], 0, 0)}, False),
    ("bool dimension", {"w": entry("F32", [True], 0, 4)}, False),
    ("sub-byte dtype", {"w": entry("F4", [4], 0, 2)}, True),
    ("odd sub-byte count", {"w": entry("F4", [3], 0, 2)}, False),
    ("not in file order", {"b": entry("F32", [1], 4, 8), "a": entry("F32", [1], 0, 4)}, True),
    ("metadata null", {"__metadata__": None, "w": entry("F32", [1], 0, 4)}, True),
]


@pytest.mark.parametrize(("name", "header", "fast"), TRICKY, ids=[t[0] for t in TRICKY])
def test_fast_path_takes_only_what_it_can_vouch_for(name: str, header: object, fast: bool) -> None:
    raw = header_bytes(header)  # type: ignore[arg-type]
    tensors = [e for k, e in json.loads(raw).items() if k != "__metadata__"]
    used = max((e["data_offsets"][1] for e in tensors), default=0)
    for data in (used, 0, used + 4):  # the right size, and wrong ones for the strict path to report
        verdicts = both_verdicts(struct.pack("<Q", len(raw)) + raw + Z * data)
        assert verdicts is not None and verdicts[0] == verdicts[1]
    plain = header_parser._parse_plain(raw, 8 + len(raw) + used)
    assert (plain is not None) == fast
    if plain is not None:
        assert plain == header_parser._parse_strict(raw, 8 + len(raw) + used, "x")


def test_fast_path_reads_what_the_library_writes(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file(
        {f"layer.{i}:w": np.ones((i % 3, 2), dtype=np.float32) for i in range(50)}, str(path), {"k": "v"}
    )
    content = path.read_bytes()
    (length,) = struct.unpack("<Q", content[:8])
    plain = header_parser._parse_plain(content[8 : 8 + length], len(content))
    assert plain is not None and plain == read_header(path)


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(0, 300),
    insert=st.lists(
        JSON_PIECES | st.sampled_from(['"a:b"', ":", "-0", '"dtype"', "\\u003a"]), max_size=3
    ).map("".join),
    delete=st.integers(0, 3),
)
def test_edited_headers_get_the_strict_verdict(position: int, insert: str, delete: int) -> None:
    header, size = packed_header(
        [("w", "F32", [3]), ("b:1", "BF16", [2, 0]), ("i", "I8", [4])], {"step": "1", "t": "12:00"}
    )
    text = json.dumps(header)
    position %= len(text) + 1
    raw = header_bytes(text[:position] + insert + text[position + delete :])
    verdicts = both_verdicts(struct.pack("<Q", len(raw)) + raw + Z * size)
    assert verdicts is not None and verdicts[0] == verdicts[1]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_left_as_it_was(tmp_path: Path, enabled: bool) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"w": np.ones(3, dtype=np.float32)}, str(good))
    bad = write(tmp_path / "bad.safetensors", "[1]")
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        scan_file(good)
        assert gc.isenabled() == enabled
        with pytest.raises(UnreadableFileError):
            scan_file(bad)
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()
