"""The reader's StatsBlock: arrays in header order, packed unit bitmaps, the per-object view on demand."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from st_files import write_arrays

from gradcheck.analysis import reader
from gradcheck.analysis.reader import FileScan, plan_segments, scan_file, summarize_bytes
from gradcheck.analysis.units import PackedBitmaps, from_bools, pack_bitmaps

RNG = np.random.default_rng(11)


def many_tensors(path: Path) -> Path:
    """Small and large tensors, zeros (whole rows too), NaN and Inf, F64 beyond the safe range, an I64."""
    tensors = {}
    for i in range(60):
        shape = [(5, 7), (9,), (3, 4, 2), (1,), ()][i % 5]
        values = RNG.standard_normal(shape).astype(np.float32)
        if i % 3 == 0 and values.ndim:
            values[: max(1, len(values) // 2)] = 0  # dead units
        if i % 7 == 0:
            values.reshape(-1)[0] = np.nan
        tensors[f"grad/t{i}"] = ("F32", values)
    big = RNG.standard_normal((300, 700)).astype(np.float32)  # four pieces of 2**16
    big[100:200] = 0
    tensors["param/big"] = ("F32", big)
    tensors["update/huge"] = ("F64", np.array([1e300, -1e-300, 0.0, 3.0]))
    tensors["update/half"] = ("F16", RNG.standard_normal((6, 5)).astype(np.float16))
    tensors["grad/ids"] = ("I64", np.arange(4))
    return write_arrays(path, tensors, {"step": "1"})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return many_tensors(tmp_path_factory.mktemp("block") / "mixed.safetensors")


def test_block_is_arrays_in_header_order_with_packed_bitmaps(mixed: Path) -> None:
    scan = scan_file(mixed)
    decoded = [e.name for e in scan.header.entries if e.dtype != "I64"]
    assert list(scan.block.keys) == decoded and set(scan.skipped) == {"grad/ids"}
    assert scan.block.count.dtype == np.int64 and scan.block.abs_sum.dtype == np.float64
    assert isinstance(scan.block.alive, PackedBitmaps)
    assert [scan.block.stats(i) for i in range(len(scan.block))] == list(scan.stats.values())


def test_each_tensor_is_what_summarize_bytes_gives_alone(mixed: Path) -> None:
    scan, content = scan_file(mixed), memoryview(mixed.read_bytes())
    for entry in scan.header.entries:
        if entry.dtype == "I64":
            continue
        alone = summarize_bytes(content[entry.begin : entry.end], entry.dtype, shape=entry.shape)
        got = scan.stats[entry.name]
        assert got == alone and got.alive == alone.alive, entry.name


def test_unit_bitmaps_are_the_rows_holding_a_non_zero(mixed: Path) -> None:
    scan = scan_file(mixed)
    content = mixed.read_bytes()
    for entry in scan.header.entries:
        if entry.dtype != "F32":
            continue
        values = np.frombuffer(content[entry.begin : entry.end], dtype="<f4").reshape(entry.shape)
        rows = values.reshape(len(values), -1) if values.ndim else values.reshape(1, 1)
        assert scan.stats[entry.name].alive == from_bools((rows != 0).any(axis=1)), entry.name


@pytest.mark.parametrize("segment_bytes", [64, 4096, 1 << 20])
def test_tensors_cut_into_segments_give_the_same_block(
    mixed: Path, monkeypatch: pytest.MonkeyPatch, segment_bytes: int
) -> None:
    whole = scan_file(mixed)
    monkeypatch.setattr(
        reader, "plan_segments", functools.partial(plan_segments, segment_bytes=segment_bytes)
    )
    cut = scan_file(mixed)
    # Sums depend on where pieces start (each segment's start), so only they may differ, in the last bits.
    for name in ("count", "nan", "inf", "zeros", "abs_min", "abs_max", "scale"):
        np.testing.assert_array_equal(getattr(cut.block, name), getattr(whole.block, name), err_msg=name)
    for name in ("abs_sum", "sq_sum"):
        np.testing.assert_allclose(getattr(cut.block, name), getattr(whole.block, name), rtol=1e-12)
    assert list(cut.block.alive) == list(whole.block.alive)


def test_filescan_compares_by_content_and_keeps_stats_as_a_view(mixed: Path) -> None:
    one, two = scan_file(mixed), scan_file(mixed)
    assert one == two and one is not two and one.stats is one.stats  # built once
    other = FileScan(one.path, one.header, one.block, {})
    assert other != one


def test_packed_bitmaps_take_compact_and_round_trip() -> None:
    ints = [5, None, 0, (1 << 70) | 1, None, 255]
    packed = pack_bitmaps(ints, [3, 2, 4, 71, 1, 8])
    assert list(packed) == ints and len(packed) == 6 and packed == ints
    order = np.array([3, 0, 5])
    taken = packed.take(order)
    assert list(taken) == [ints[3], ints[0], ints[5]] and list(packed[1:3]) == ints[1:3]
    compact = taken.compact()
    assert list(compact) == list(taken) and compact.data.size == (71 + 7) // 8 + 1 + 1
    assert pack_bitmaps(packed, [0] * 6) is packed
