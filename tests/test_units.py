"""Per-unit "ever non-zero" bitmaps: computed while reading, in summaries, merged across shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runs_builder import snapshot_metadata, write_file
from safetensors.numpy import save_file

from gradcheck.analysis import reader
from gradcheck.analysis.runs import load_run
from gradcheck.analysis.summaries import STATS_KEY, stats_from_entry, summary_entry
from gradcheck.analysis.units import MAX_UNITS, decode, merge_shards
from gradcheck.recording.snapshot import host_tensor, summarize_host

RNG = np.random.default_rng(11)
CODES = {np.float32: "F32", np.float64: "F64", np.float16: "F16"}


def expected(array: np.ndarray) -> int:
    """The bitmap computed the obvious way: unit i alive when row i along axis 0 has a non-zero element."""
    if array.size == 0:
        return 0
    rows = (array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)) != 0
    return sum(1 << int(i) for i in np.flatnonzero(rows.any(axis=1)))


def arrays() -> dict[str, np.ndarray]:
    out = {}
    for name, shape, dtype in [
        ("linear", (300, 70), np.float32),
        ("bias", (300,), np.float32),
        ("conv", (17, 3, 5, 5), np.float64),
        ("half", (100, 33), np.float16),
        ("scalar", (), np.float32),
        ("empty", (0, 4), np.float32),
    ]:
        array = RNG.standard_normal(shape).astype(dtype)
        if array.ndim:
            array[RNG.random(shape[0]) < 0.6] = 0  # dead units
            if array.ndim > 1:
                array[..., 0] = 0  # zeros inside live units too
        out[name] = array
    out["nan_row"] = np.zeros((4, 3), np.float32)
    out["nan_row"][2, 1] = np.nan  # NaN is not zero: that unit is not dead
    return out


@pytest.mark.parametrize(("segment_bytes", "buffer_bytes"), [(1 << 30, 1 << 20), (1000, 64), (96, 8)])
def test_reader_bitmap_matches_numpy_however_the_tensor_is_cut(
    tmp_path: Path, segment_bytes: int, buffer_bytes: int
) -> None:
    data = arrays()
    path = tmp_path / "grads_1.safetensors"
    save_file(data, str(path))
    header = reader.read_header(path)
    segments = reader.plan_segments(header, segment_bytes)
    results = reader.scan_segments(path, header, segments, buffer_bytes=buffer_bytes)
    scan = reader.combine(path, header, segments, results)
    assert {k: s.alive for k, s in scan.stats.items()} == {k: expected(a) for k, a in data.items()}


def test_save_snapshot_summaries_carry_the_bitmap() -> None:
    for name, array in arrays().items():
        assert summarize_host(host_tensor(array)).alive == expected(array), name


def test_summary_entry_round_trips_the_bitmap_and_older_entries_still_read() -> None:
    array = arrays()["linear"]
    stats = summarize_host(host_tensor(array))
    entry = json.loads(json.dumps(summary_entry(stats, array.shape, "F32")))
    assert stats_from_entry(entry).alive == expected(array)
    del entry["alive"]  # a summary written before bitmaps existed
    assert stats_from_entry(entry).alive is None


@pytest.mark.parametrize("bad", ["zz", "-1", "", 7, "1" * 200, "0x1f"])
def test_malformed_bitmaps_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="alive"):
        decode(bad, 300)


def test_stats_mode_run_reads_its_bitmaps(tmp_path: Path) -> None:
    grad = np.ones((8, 2), np.float32)
    grad[1:7] = 0
    summaries = {"grad/fc.weight": summary_entry(summarize_host(host_tensor(grad)), grad.shape, "F32")}
    write_file(
        tmp_path / "step_00000001.safetensors", {}, {**snapshot_metadata(1), STATS_KEY: json.dumps(summaries)}
    )
    tensor = load_run(tmp_path).get(1, "fc.weight", "grad")
    assert tensor is not None and tensor.stats.alive == 0b10000001


def test_shards_along_axis_0_are_laid_end_to_end_and_other_cuts_ored() -> None:
    assert merge_shards([((2, 3), 0b01), ((3, 3), 0b100)], (5, 3)) == 0b10001
    assert merge_shards([((4, 1), 0b0011), ((4, 2), 0b0100)], (4, 3)) == 0b0111  # cut along axis 1
    assert merge_shards([((6,), 0b1), ((6,), 0b1)], (4, 3)) is None  # flattened shards: unknown
    assert merge_shards([((2, 3), 0b01), ((3, 3), None)], (5, 3)) is None  # one shard without a bitmap


def test_two_rank_run_merges_bitmaps(tmp_path: Path) -> None:
    full = np.ones((6, 4), np.float32)
    full[[1, 2, 4]] = 0
    for rank, half in enumerate(np.array_split(full, 2)):
        table = {"fc.weight": {"global": "fc.weight", "shape": [6, 4], "index": rank, "count": 2}}
        meta = {**snapshot_metadata(3), "gradcheck.shards": json.dumps(table)}
        write_file(tmp_path / f"rank{rank:05d}" / "step_00000003.safetensors", {"grad/fc.weight": half}, meta)
    tensor = load_run(tmp_path).get(3, "fc.weight", "grad")
    assert tensor is not None and tensor.stats.alive == expected(full) == 0b101001


def test_huge_axis_0_keeps_no_bitmap(tmp_path: Path) -> None:
    path = tmp_path / "grads_1.safetensors"
    save_file({"table": np.zeros((MAX_UNITS + 1, 1), np.float32)}, str(path))
    assert reader.scan_file(path).stats["table"].alive is None
