"""Stats-only snapshots and multi-rank runs: summaries read exactly, shards merged exactly, gaps reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runs_builder import snapshot_metadata, write_file

from gradcheck.analysis.errors import RunError
from gradcheck.analysis.runs import load_run
from gradcheck.analysis.stats import summarize_array
from gradcheck.analysis.summaries import STATS_KEY, stats_from_entry, summary_entry

RNG = np.random.default_rng(3)


def _stats_file(
    path: Path, step: int, arrays: dict[str, np.ndarray], extra: dict[str, str] | None = None
) -> None:
    """A stats-only snapshot: no tensor data, only summaries in the metadata."""
    summaries = {key: summary_entry(summarize_array(a), a.shape, "F32") for key, a in arrays.items()}
    metadata = {**snapshot_metadata(step), STATS_KEY: json.dumps(summaries), **(extra or {})}
    write_file(path, {}, metadata)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, -0.0, 1.5, -3e-8, 7e30, np.nan, np.inf, -np.inf]), max_size=12),
    st.integers(0, 2**31),
)
def test_summary_entry_round_trips_exactly_through_json(values: list[float], seed: int) -> None:
    noise = np.random.default_rng(seed).standard_normal(5)
    array = np.array(values + list(noise), dtype=np.float64)
    stats = summarize_array(array)
    assert stats_from_entry(json.loads(json.dumps(summary_entry(stats, array.shape, "F64")))) == stats


def test_summary_without_finite_values_round_trips() -> None:
    stats = summarize_array(np.array([np.nan, np.inf], dtype=np.float32))
    entry = json.loads(json.dumps(summary_entry(stats, (2,), "F32"), allow_nan=False))
    assert entry["abs_min"] == "inf" and stats_from_entry(entry) == stats


def test_stats_only_run_reads_like_the_full_run(tmp_path: Path) -> None:
    arrays = {
        "grad/fc.weight": RNG.standard_normal((6, 4)).astype(np.float32),
        "param/fc.weight": np.ones((6, 4)),
    }
    write_file(tmp_path / "full" / "step_00000005.safetensors", arrays, snapshot_metadata(5))
    _stats_file(tmp_path / "stats" / "step_00000005.safetensors", 5, arrays)
    full, stats = load_run(tmp_path / "full"), load_run(tmp_path / "stats")
    assert stats.steps == (5,) and stats.params == ("fc.weight",)
    for kind in ("grad", "param"):
        a, b = full.get(5, "fc.weight", kind), stats.get(5, "fc.weight", kind)
        assert a is not None and b is not None
        assert a.stats == b.stats and a.shape == b.shape == (6, 4)


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"grad/w": {"shape": [2], "dtype": "F32", "count": -1}}),
        json.dumps({"grad/w": {"shape": [2], "dtype": "F32", "count": 2, "nan": 0, "inf": 0, "zeros": 0}}),
    ],
)
def test_malformed_summaries_make_the_file_unreadable(tmp_path: Path, bad: str) -> None:
    write_file(
        tmp_path / "step_1.safetensors", {"grad/ok": np.ones(2, np.float32)}, {"step": "1", STATS_KEY: bad}
    )
    write_file(tmp_path / "step_2.safetensors", {"grad/ok": np.ones(2, np.float32)}, {"step": "2"})
    run = load_run(tmp_path)
    assert run.steps == (2,)
    assert len(run.unreadable) == 1 and "bad gradcheck metadata" in run.unreadable[0].reason


def _shard_meta(rank: int, world: int, shards: dict[str, tuple[str, list[int], int, int]]) -> dict[str, str]:
    table = {
        local: {"global": g, "shape": shape, "index": i, "count": n}
        for local, (g, shape, i, n) in shards.items()
    }
    return {
        "gradcheck.rank": str(rank),
        "gradcheck.world_size": str(world),
        "gradcheck.shards": json.dumps(table),
    }


def _two_rank_run(root: Path, full: np.ndarray, *, ranks: tuple[int, ...] = (0, 1), index_of=None) -> None:
    """fc.weight sharded on dim 0 across two ranks; fc.bias replicated, written by rank 0 only."""
    halves = np.array_split(full, 2)
    for rank in ranks:
        index = index_of(rank) if index_of else rank
        tensors = {"grad/fc.weight": halves[index]}
        if rank == 0:
            tensors["grad/fc.bias"] = np.arange(3, dtype=np.float32)
        meta = {
            **snapshot_metadata(10),
            **_shard_meta(rank, 2, {"fc.weight": ("fc.weight", list(full.shape), index, 2)}),
        }
        write_file(root / f"rank{rank:05d}" / "step_00000010.safetensors", tensors, meta)


def test_shards_merge_to_the_statistics_of_the_whole_tensor(tmp_path: Path) -> None:
    full = RNG.standard_normal((7, 5)).astype(np.float32)
    full[2, 3], full[5, 0], full[6, 1] = np.nan, 0.0, np.inf
    _two_rank_run(tmp_path, full)
    run = load_run(tmp_path)
    assert run.unreadable == () and run.params == ("fc.bias", "fc.weight") and run.steps == (10,)
    merged, expected = run.get(10, "fc.weight", "grad"), summarize_array(full)
    assert merged is not None and merged.shape == (7, 5)
    assert (merged.stats.count, merged.stats.nan, merged.stats.inf, merged.stats.zeros) == (35, 1, 1, 1)
    assert (merged.stats.abs_min, merged.stats.abs_max) == (expected.abs_min, expected.abs_max)
    np.testing.assert_allclose(
        [merged.stats.abs_sum, merged.stats.sq_sum], [expected.abs_sum, expected.sq_sum], rtol=1e-13
    )
    assert run.get(10, "fc.bias", "grad") is not None


def test_missing_shard_is_reported_and_the_rest_analysed(tmp_path: Path) -> None:
    _two_rank_run(tmp_path, np.ones((4, 2), np.float32), ranks=(0,))
    run = load_run(tmp_path)
    assert run.get(10, "fc.weight", "grad") is None and run.get(10, "fc.bias", "grad") is not None
    [note] = run.unreadable
    assert "'fc.weight' (grad) at step 10" in note.reason and "shard(s) 1 of 2 missing" in note.reason


def test_duplicated_shard_names_both_files(tmp_path: Path) -> None:
    _two_rank_run(tmp_path, np.ones((4, 2), np.float32), index_of=lambda rank: 0)
    [note] = load_run(tmp_path).unreadable
    assert "shard 0 of 2 also in" in note.reason
    assert "rank00000" in note.reason + note.file and "rank00001" in note.reason + note.file


def test_shards_that_do_not_cover_the_global_shape_are_reported(tmp_path: Path) -> None:
    for rank in (0, 1):
        meta = {**snapshot_metadata(1), **_shard_meta(rank, 2, {"w": ("w", [10], rank, 2)})}
        write_file(
            tmp_path / f"rank{rank:05d}" / "step_1.safetensors", {"grad/w": np.ones(3, np.float32)}, meta
        )
    [note] = load_run(tmp_path).unreadable
    assert "shards hold 6 elements, the global shape needs 10" in note.reason


def test_replicated_tensor_written_by_every_rank_is_taken_once(tmp_path: Path) -> None:
    for rank in (0, 1):
        write_file(
            tmp_path / f"rank{rank:05d}" / "step_3.safetensors",
            {"grad/b": np.ones(4, np.float32)},
            {"step": "3"},
        )
    run = load_run(tmp_path)
    assert run.unreadable == () and run.get(3, "b", "grad").stats.count == 4


def test_bad_shard_metadata_makes_the_file_unreadable(tmp_path: Path) -> None:
    meta = {
        "step": "1",
        "gradcheck.shards": json.dumps({"w": {"global": "w", "shape": [4], "index": 2, "count": 2}}),
    }
    write_file(tmp_path / "step_1.safetensors", {"grad/w": np.ones(2, np.float32)}, meta)
    write_file(tmp_path / "step_2.safetensors", {"grad/w": np.ones(2, np.float32)}, {"step": "2"})
    run = load_run(tmp_path)
    assert "index 2 of count 2" in run.unreadable[0].reason and run.steps == (2,)


def test_non_rank_subfolders_are_not_merged(tmp_path: Path) -> None:
    for name in ("run_a", "run_b"):
        write_file(tmp_path / name / "step_1.safetensors", {"grad/w": np.ones(2, np.float32)}, {"step": "1"})
    with pytest.raises(RunError, match="subfolders hold runs: run_a, run_b"):
        load_run(tmp_path)
