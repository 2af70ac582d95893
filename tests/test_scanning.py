"""The run scanner: same numbers with 1 or N workers, results in order, the cache trusted only when unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from runs_builder import write_step
from st_files import bf16_bits, write_arrays

from gradcheck.analysis import scanning
from gradcheck.analysis.cache import StatsCache
from gradcheck.analysis.errors import UnreadableFileError
from gradcheck.analysis.reader import FileScan, scan_file
from gradcheck.analysis.scanning import ScanOptions, scan_files

SMALL_SEGMENTS = 4096  # bytes: cuts the test tensors into many segments, as 64 MiB cuts real ones


def make_run(root: Path) -> list[str]:
    """Small step files, one file with big tensors (F32, BF16, NaN/Inf), and a truncated file."""
    rng = np.random.default_rng(7)
    paths = []
    for step in range(5):
        grads = {
            "a.weight": rng.standard_normal((16, 8)).astype(np.float32),
            "a.bias": np.zeros(8, np.float32),
        }
        paths.append(write_step(root, step, {"grad": grads}))
    big = rng.standard_normal(50_000).astype(np.float32)
    big[[5, 40_000]] = [np.nan, np.inf]
    paths.append(
        write_arrays(
            root / "step_00000005.safetensors",
            {
                "grad/big": ("F32", big),
                "grad/half": ("BF16", bf16_bits(rng.standard_normal(30_001).astype(np.float32))),
                "grad/tiny": ("F32", np.ones(3, np.float32)),
                "grad/ids": ("I64", np.arange(10)),
            },
            {"step": "5"},
        )
    )
    broken = write_step(root, 6, {"grad": {"a.weight": np.ones((16, 8), np.float32)}})
    broken.write_bytes(broken.read_bytes()[:-7])
    paths.append(broken)
    return [str(p) for p in paths]


def scan_all(paths: list[str], **options: object) -> list[tuple[str, FileScan | UnreadableFileError]]:
    return list(scan_files(paths, ScanOptions(**options)))  # type: ignore[arg-type]


@pytest.fixture
def run_paths(tmp_path: Path) -> list[str]:
    return make_run(tmp_path / "run")


@pytest.fixture
def always_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use worker processes even for the few kilobytes of a test run."""
    monkeypatch.setattr(scanning, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(scanning, "POOL_MIN_FILE_BYTES", 0)


def as_comparable(results: list[tuple[str, FileScan | UnreadableFileError]]) -> list[object]:
    return [(path, str(r) if isinstance(r, UnreadableFileError) else r) for path, r in results]


def test_one_worker_gives_what_scan_file_gives(run_paths: list[str]) -> None:
    results = scan_all(run_paths)
    assert [path for path, _ in results] == run_paths
    for path, result in results[:-1]:
        assert result == scan_file(path)
    broken = results[-1][1]
    assert isinstance(broken, UnreadableFileError)
    assert broken.path == run_paths[-1]
    assert "cut short" in broken.problem


@pytest.mark.usefixtures("always_parallel")
def test_workers_give_the_same_numbers_in_the_same_order(run_paths: list[str]) -> None:
    serial = scan_all(run_paths, segment_bytes=SMALL_SEGMENTS)
    parallel = scan_all(run_paths, jobs=2, segment_bytes=SMALL_SEGMENTS)
    assert as_comparable(parallel) == as_comparable(serial)
    big = dict(parallel)[run_paths[5]]
    assert isinstance(big, FileScan)
    assert big.stats["grad/big"].count == 50_000
    assert (big.stats["grad/big"].nan, big.stats["grad/big"].inf) == (1, 1)
    assert big.stats["grad/half"].count == 30_001
    assert "grad/ids" in big.skipped


@pytest.mark.usefixtures("always_parallel")
def test_cut_tensors_sum_up_to_the_whole(run_paths: list[str]) -> None:
    cut = dict(scan_all(run_paths, jobs=2, segment_bytes=SMALL_SEGMENTS))[run_paths[5]]
    whole = scan_file(run_paths[5])
    assert isinstance(cut, FileScan)
    for name, stats in whole.stats.items():
        other = cut.stats[name]
        assert (other.count, other.nan, other.inf, other.zeros) == (
            stats.count,
            stats.nan,
            stats.inf,
            stats.zeros,
        )
        assert (other.abs_min, other.abs_max) == (stats.abs_min, stats.abs_max)
        assert other.abs_sum == pytest.approx(stats.abs_sum, rel=1e-12)
        assert other.sq_sum == pytest.approx(stats.sq_sum, rel=1e-12)


def test_progress_counts_every_byte_read_once(run_paths: list[str]) -> None:
    calls: list[tuple[int, int]] = []
    scan_all(
        run_paths, segment_bytes=SMALL_SEGMENTS, progress=lambda done, total: calls.append((done, total))
    )
    dones = [done for done, _ in calls]
    assert dones == sorted(dones)
    totals = {total for _, total in calls}
    assert len(totals) == 1
    assert (
        dones[-1]
        == totals.pop()
        >= sum(os.path.getsize(p) for p in run_paths) - os.path.getsize(run_paths[5])
    )


def test_a_second_scan_comes_from_the_cache(
    run_paths: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = StatsCache(tmp_path / "cache")
    first = scan_all(run_paths, cache=cache)

    def no_reading(*args: object, **kwargs: object) -> object:
        raise AssertionError("read a file the cache holds")

    monkeypatch.setattr(scanning, "scan_file", no_reading)
    monkeypatch.setattr(scanning, "scan_segments", no_reading)
    readable = run_paths[:-1]  # unreadable files are not cached
    assert as_comparable(scan_all(readable, cache=cache)) == as_comparable(first[:-1])


def test_a_changed_file_is_read_again(run_paths: list[str], tmp_path: Path) -> None:
    cache = StatsCache(tmp_path / "cache")
    scan_all(run_paths, cache=cache)
    path = run_paths[0]
    write_step(
        Path(path).parent, 0, {"grad": {"a.weight": np.full((16, 8), 3, np.float32)}}, name=Path(path).name
    )
    (_, again), *_ = scan_all(run_paths, cache=cache)
    assert isinstance(again, FileScan)
    assert again.stats["grad/a.weight"].abs_max == 3.0


def test_a_file_that_vanished_is_reported_not_raised(run_paths: list[str], tmp_path: Path) -> None:
    gone = str(tmp_path / "run" / "step_00000099.safetensors")
    (_, result), *_ = scan_all([gone, *run_paths[:1]], cache=StatsCache(tmp_path / "cache"))
    assert isinstance(result, UnreadableFileError)
    assert "no such file" in result.problem


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the files scan_files reads (instead of taking from the cache)."""
    read: list[str] = []

    def recording(path: str, **kwargs: object) -> FileScan:
        read.append(os.path.basename(path))
        return scan_file(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scanning, "scan_file", recording)
    return read


def test_a_grown_run_reads_only_its_new_snapshots_and_keeps_one_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, cache = tmp_path / "run", StatsCache(tmp_path / "cache")
    paths = [str(write_step(run, step, {"grad": {"w": np.full(4, step, np.float32)}})) for step in range(3)]
    first = scan_all(paths, cache=cache)
    read = _reads(monkeypatch)
    paths.append(str(write_step(run, 3, {"grad": {"w": np.full(4, 3, np.float32)}})))
    grown = scan_all(paths, cache=cache)
    assert read == ["step_00000003.safetensors"]
    assert as_comparable(grown[:3]) == as_comparable(first)
    # the new scan went to the index's tail: the run's index file was not written again
    assert sorted(entry.suffix for entry in (tmp_path / "cache").iterdir()) == [".run", ".tail"]
    assert sorted(cache.load_index(str(run))) == sorted(os.path.abspath(p) for p in paths)
    read.clear()
    assert as_comparable(scan_all(paths, cache=cache)) == as_comparable(grown)
    assert read == []


def test_a_tail_past_a_quarter_of_the_index_is_folded_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradcheck.analysis import cache as cache_module

    monkeypatch.setattr(cache_module, "_TAIL_MIN_FILES", 0)  # so a quarter of 40 files decides
    run, cache = tmp_path / "run", StatsCache(tmp_path / "cache")
    paths = [str(write_step(run, step, {"grad": {"w": np.ones(4, np.float32)}})) for step in range(40)]
    scan_all(paths, cache=cache)
    index = cache.index_path(str(run))
    written = index.stat().st_mtime_ns
    for step in range(40, 50):  # ten files: a quarter of 40, into the tail
        paths.append(str(write_step(run, step, {"grad": {"w": np.ones(4, np.float32)}})))
        scan_all(paths, cache=StatsCache(tmp_path / "cache"))
        assert index.stat().st_mtime_ns == written and cache.tail_path(str(run)).exists()
    paths.append(str(write_step(run, 50, {"grad": {"w": np.ones(4, np.float32)}})))
    scan_all(paths, cache=StatsCache(tmp_path / "cache"))  # the 11th: written whole, no tail
    assert not cache.tail_path(str(run)).exists()
    assert sorted(cache.load_index(str(run))) == sorted(os.path.abspath(p) for p in paths)


def test_new_files_are_added_without_reading_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradcheck.analysis import cache as cache_module

    run, cache = tmp_path / "run", StatsCache(tmp_path / "cache")
    paths = [str(write_step(run, step, {"grad": {"w": np.ones(4, np.float32)}})) for step in range(40)]
    scan_all(paths, cache=cache)
    opened: list[str] = []
    real = cache_module._read_entry
    monkeypatch.setattr(
        cache_module, "_read_entry", lambda path, *a: opened.append(path.suffix) or real(path, *a)
    )
    new = str(write_step(run, 40, {"grad": {"w": np.ones(4, np.float32)}}))
    ((_, scan),) = scan_files([new], ScanOptions(cache=cache), folder=str(run), new=True)
    assert isinstance(scan, FileScan) and opened == [".tail"]  # the index itself is not read
    monkeypatch.undo()
    assert sorted(cache.load_index(str(run))) == sorted(os.path.abspath(p) for p in [*paths, new])


def test_a_caller_reading_part_of_a_run_keeps_the_rest_of_its_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, cache = tmp_path / "run", StatsCache(tmp_path / "cache")
    paths = [str(write_step(run, step, {"grad": {"w": np.ones(4, np.float32)}})) for step in range(3)]
    scan_all(paths, cache=cache)
    os.remove(paths[0])  # gone: dropped from the index when it is next rewritten
    new = str(write_step(run, 3, {"grad": {"w": np.ones(4, np.float32)}}))
    list(scan_files([new], ScanOptions(cache=cache), folder=str(run)))  # as load_run(previous=...) will
    assert sorted(cache.load_index(str(run))) == sorted(os.path.abspath(p) for p in [*paths[1:], new])
    read = _reads(monkeypatch)
    scan_all([*paths[1:], new], cache=cache)
    assert read == []


def test_a_damaged_index_is_read_around_and_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, cache = tmp_path / "run", StatsCache(tmp_path / "cache")
    paths = [str(write_step(run, step, {"grad": {"w": np.ones(4, np.float32)}})) for step in range(2)]
    first = scan_all(paths, cache=cache)
    index = cache.index_path(str(run))
    index.write_bytes(index.read_bytes()[:-1])
    read = _reads(monkeypatch)
    assert as_comparable(scan_all(paths, cache=cache)) == as_comparable(first)
    assert len(read) == 2 and len(cache.load_index(str(run))) == 2


def test_runs_of_small_files_are_read_without_workers(
    run_paths: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pickling the scans of many small tensors back from a worker costs more than scanning them here.
    monkeypatch.setattr(scanning, "PARALLEL_MIN_BYTES", 0)

    def no_pool(*args: object, **kwargs: object) -> object:
        raise AssertionError("started worker processes for small files")

    monkeypatch.setattr(scanning, "ProcessPoolExecutor", no_pool)
    small = run_paths[:5]
    assert as_comparable(scan_all(small, jobs=2)) == as_comparable(scan_all(small))


def test_summaries_read_once_come_back_from_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from gradcheck.analysis import summaries as summaries_module
    from gradcheck.analysis.stats import TensorStats
    from gradcheck.analysis.summaries import STATS_KEY, summary_entry

    table = {"grad/w": summary_entry(TensorStats(3, 0, 0, 1, 0.0, 2.0, 3.0, 5.0, alive=0b101), (3,), "F32")}
    run, cache = tmp_path / "run", StatsCache(tmp_path / "cache")
    run.mkdir()
    path = write_arrays(run / "step_1.safetensors", {"param/w": ("F32", np.ones(3, np.float32))}, {
        STATS_KEY: json.dumps(table)
    })  # fmt: skip
    ((_, first),) = scan_all([str(path)], cache=cache)
    assert isinstance(first, FileScan) and first.summaries is not None  # read, so the index keeps it
    monkeypatch.setattr(summaries_module, "summary_block", None)  # parsing again would fail
    ((_, again),) = scan_all([str(path)], cache=cache)
    assert isinstance(again, FileScan) and again.summaries is not None
    assert again.summaries.block.as_dict() == first.summaries.block.as_dict()
    assert list(again.summaries.block.alive) == [0b101]
