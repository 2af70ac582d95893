"""Tests for the segment API: scanning segments in any grouping gives scan_file's result bit for bit."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from st_files import bf16_bits, write_arrays

from gradcheck.analysis import reader
from gradcheck.analysis.dtypes import DTYPES
from gradcheck.analysis.errors import UnreadableFileError
from gradcheck.analysis.header import FileHeader
from gradcheck.analysis.reader import (
    Segment,
    combine,
    plan_segments,
    read_header,
    scan_file,
    scan_segments,
    summarize_bytes,
)
from gradcheck.analysis.stats import TensorStats

SKIPPED = {"steps", "mask"}


def sprinkled(rng: np.random.Generator, n: int, dtype: type) -> np.ndarray:
    """Normal values over several orders of magnitude with NaN, +-Inf and +-0 at random places."""
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
    for special in (np.nan, np.inf, -np.inf, 0.0, -0.0):
        x[rng.integers(0, n, 3)] = special
    return x


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file of every decoded dtype, NaN/Inf/zeros, empty and scalar tensors, and skipped integer tensors."""
    rng = np.random.default_rng(0)
    e4m3 = rng.integers(0, 256, 5000).astype(np.uint8)
    e4m3[:256] = np.arange(256)  # every code, NaN included
    tensors = {
        "f32": ("F32", sprinkled(rng, 70_001, np.float32)),
        "steps": ("I64", np.arange(7, dtype=np.int64)),
        "bf16": ("BF16", bf16_bits(sprinkled(rng, 2500, np.float32))),
        "empty": ("F32", np.zeros((0, 4), dtype=np.float32)),
        "f16": ("F16", sprinkled(rng, 1777, np.float16)),
        "e4m3": ("F8_E4M3", e4m3),
        "e5m2": ("F8_E5M2", rng.integers(0, 256, 4001).astype(np.uint8)),
        "mask": ("BOOL", np.ones(3, dtype=np.uint8)),
        "f64": ("F64", sprinkled(rng, 999, np.float64)),
        "clean": ("F32", rng.standard_normal((30, 40)).astype(np.float32)),
        "scalar": ("F32", np.array(-2.5, dtype=np.float32)),
        "empty_bf16": ("BF16", np.zeros(0, dtype=np.uint16)),
    }
    return write_arrays(tmp_path_factory.mktemp("segments") / "mixed.safetensors", tensors)


def random_groups(segments: tuple[Segment, ...], rng: np.random.Generator) -> list[list[int]]:
    """Split segment indices into random groups (some empty, not contiguous), in a random order."""
    count = int(rng.integers(1, 6))
    labels = rng.integers(0, count, len(segments))
    groups = [np.flatnonzero(labels == g).tolist() for g in range(count)]
    return [groups[g] for g in rng.permutation(count)]


def scan_in_groups(
    path: Path, header: FileHeader, segments: tuple[Segment, ...], groups: list[list[int]]
) -> list:
    """Scan each group in its own call and put every result back at its segment's place."""
    results: list[TensorStats | None] = [None] * len(segments)
    for group in groups:
        for index, result in zip(
            group, scan_segments(path, header, [segments[i] for i in group]), strict=True
        ):
            results[index] = result
    assert all(result is not None for result in results)
    return results


def test_plan_covers_every_decodable_tensor_in_file_order(mixed: Path) -> None:
    header = read_header(mixed)
    segments = plan_segments(header, segment_bytes=1000)
    assert [s.begin for s in segments] == sorted(s.begin for s in segments)
    entries = {e.name: e for e in header.entries}
    assert {s.name for s in segments} == set(entries) - SKIPPED
    for name, entry in entries.items():
        mine = [s for s in segments if s.name == name]
        if name in SKIPPED:
            continue
        itemsize = DTYPES[entry.dtype].itemsize
        assert mine[0].begin == entry.begin and mine[-1].end == entry.end
        assert all(a.end == b.begin for a, b in itertools.pairwise(mine))  # contiguous, no overlap
        assert all((s.end - s.begin) % itemsize == 0 and s.end - s.begin <= 1000 for s in mine)
        assert len(mine) == max(1, -(-(entry.end - entry.begin) // (1000 // itemsize * itemsize)))


def test_tensors_are_cut_at_whole_elements_even_below_one_element(mixed: Path) -> None:
    header = read_header(mixed)
    segments = plan_segments(header, segment_bytes=3)
    f64 = [s for s in segments if s.name == "f64"]
    assert len(f64) == 999 and all(s.end - s.begin == 8 for s in f64)
    with pytest.raises(ValueError, match="segment_bytes"):
        plan_segments(header, segment_bytes=0)


def test_default_plan_keeps_small_tensors_whole(mixed: Path) -> None:
    header = read_header(mixed)
    assert len(plan_segments(header)) == len(header.entries) - len(SKIPPED)


@pytest.mark.parametrize(
    ("segment_bytes", "seed"), [(5, 0), (64, 1), (64, 2), (1000, 3), (1000, 4), (4096, 5), (1 << 20, 6)]
)
def test_groups_scanned_apart_equal_scan_file(
    mixed: Path, monkeypatch: pytest.MonkeyPatch, segment_bytes: int, seed: int
) -> None:
    monkeypatch.setattr(
        reader, "plan_segments", functools.partial(plan_segments, segment_bytes=segment_bytes)
    )
    expected = scan_file(mixed)  # now cuts tensors at segment_bytes too
    header = read_header(mixed)
    segments = plan_segments(header, segment_bytes=segment_bytes)
    assert len(segments) > len(header.entries) - len(SKIPPED) or segment_bytes == 1 << 20
    groups = random_groups(segments, np.random.default_rng(seed))
    got = combine(mixed, header, segments, scan_in_groups(mixed, header, segments, groups))
    assert got == expected  # bit for bit: dataclass equality of every float
    assert set(got.skipped) == SKIPPED and got.stats["empty"] == TensorStats()


@pytest.mark.parametrize("buffer_bytes", [8, 100, 4096])
def test_each_segment_alone_equals_all_at_once(mixed: Path, buffer_bytes: int) -> None:
    header = read_header(mixed)
    segments = plan_segments(header, segment_bytes=777)
    together = scan_segments(mixed, header, segments, buffer_bytes=buffer_bytes)
    alone = [scan_segments(mixed, header, [s], buffer_bytes=buffer_bytes)[0] for s in segments]
    assert alone == together


def test_segments_scanned_in_worker_processes_equal_scan_file(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = read_header(mixed)
    segments = plan_segments(header, segment_bytes=4096)
    groups = [segments[0::2], segments[1::2]]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(scan_segments, [mixed] * 2, [header] * 2, groups))
    results = [parts[i % 2][i // 2] for i in range(len(segments))]
    monkeypatch.setattr(reader, "plan_segments", functools.partial(plan_segments, segment_bytes=4096))
    assert combine(mixed, header, segments, results) == scan_file(mixed)


@pytest.mark.parametrize("segment_bytes", [reader.SEGMENT_BYTES, 4096, 10])
def test_summarize_bytes_equals_scan_file(
    mixed: Path, monkeypatch: pytest.MonkeyPatch, segment_bytes: int
) -> None:
    monkeypatch.setattr(reader, "SEGMENT_BYTES", segment_bytes)
    monkeypatch.setattr(
        reader, "plan_segments", functools.partial(plan_segments, segment_bytes=segment_bytes)
    )
    scan = scan_file(mixed)
    content = memoryview(mixed.read_bytes())
    for entry in scan.header.entries:
        if entry.name not in SKIPPED:
            assert summarize_bytes(content[entry.begin : entry.end], entry.dtype) == scan.stats[entry.name]


def test_summarize_bytes_takes_any_memoryview_of_whole_elements() -> None:
    x = np.arange(-6, 6, dtype=np.float32).reshape(3, 4)
    assert summarize_bytes(memoryview(x), "F32") == summarize_bytes(memoryview(x.tobytes()), "F32")
    with pytest.raises(ValueError, match="whole F32 elements"):
        summarize_bytes(memoryview(b"\0" * 6), "F32")
    with pytest.raises(ValueError, match="not decoded"):
        summarize_bytes(memoryview(b"\0" * 8), "I64")


@pytest.mark.parametrize(
    ("change", "words"), [(-4, "truncated while being read"), (4, "changed while being read")]
)
def test_scan_segments_refuses_a_file_whose_size_changed(
    tmp_path: Path, mixed: Path, change: int, words: str
) -> None:
    path = tmp_path / "x.safetensors"
    content = mixed.read_bytes()
    path.write_bytes(content)
    header = read_header(path)
    path.write_bytes(content[:change] if change < 0 else content + b"\0" * change)
    with pytest.raises(UnreadableFileError, match=words) as info:
        scan_segments(path, header, plan_segments(header))
    assert info.value.path == str(path)


def test_scan_segments_names_the_tensor_being_read_when_the_file_is_cut(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = read_header(mixed)
    segments = plan_segments(header, segment_bytes=1000)
    entry = next(e for e in header.entries if e.name == "f16")
    cut = entry.begin + 1002
    real = reader._read_at

    def shrinking(fd: int, view: memoryview, offset: int) -> int:
        return 0 if offset >= cut else real(fd, view[: cut - offset], offset)

    monkeypatch.setattr(reader, "_read_at", shrinking)
    with pytest.raises(
        UnreadableFileError, match=rf"truncated while being read \(tensor 'f16' at byte {cut}\)"
    ):
        scan_segments(mixed, header, segments)


def test_scan_segments_of_a_missing_file(tmp_path: Path, mixed: Path) -> None:
    header = read_header(mixed)
    with pytest.raises(UnreadableFileError, match="no such file"):
        scan_segments(tmp_path / "gone.safetensors", header, plan_segments(header))


def test_combine_needs_one_result_per_segment_and_every_tensor(mixed: Path) -> None:
    header = read_header(mixed)
    segments = plan_segments(header)
    results = scan_segments(mixed, header, segments)
    with pytest.raises(ValueError, match="segments but"):
        combine(mixed, header, segments, results[:-1])
    with pytest.raises(ValueError, match="no segment of tensor"):
        combine(mixed, header, segments[1:], results[1:])
    assert combine(str(mixed), header, segments, results).path == str(mixed)
