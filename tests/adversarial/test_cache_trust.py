"""Class 4: the stats cache cannot be turned against the user: an untrusted folder, odd entries, forgeries."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import healthy_run, no_traceback
from runs_builder import write_step

from gradcheck.analysis.cache import MAX_INDEX_BYTES, StatsCache, cache_refusal, file_identity
from gradcheck.analysis.columns import StatsBlock
from gradcheck.analysis.reader import FileScan, scan_file
from gradcheck.analysis.stats import TensorStats
from gradcheck.cli.main import cli


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GRADCHECK_CACHE_DIR", str(folder))
    return folder


def _stored(run: Path, folder: Path) -> tuple[StatsCache, str, Path]:
    """Inspect once (filling the cache); the cache, a snapshot path and the run's index file."""
    assert CliRunner().invoke(cli, ["inspect", str(run)]).exit_code == 0
    cache = StatsCache(folder)
    path = str(max(run.iterdir()))
    assert os.path.abspath(path) in cache.load_index(str(run))
    return cache, path, cache.index_path(str(run))


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_folder_others_can_write_is_not_used(tmp_path: Path, cache_dir: Path, mode: int) -> None:
    run = healthy_run(tmp_path / "run")
    cache_dir.mkdir()
    os.chmod(cache_dir, mode)
    result = CliRunner().invoke(cli, ["inspect", str(run)])
    assert result.exit_code == 0
    (line,) = result.stderr.splitlines()
    assert line == (
        f"gradcheck: warning: {cache_dir}: the cache folder is writable by others (mode {mode:o}); "
        "reading without the cache"
    )
    assert list(cache_dir.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_a_folder_of_another_user_is_not_used(tmp_path: Path, cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o700)
    os.chown(cache_dir, 4321, 4321)
    assert cache_refusal(cache_dir) == "the cache folder belongs to user id 4321, not to you"
    result = CliRunner().invoke(cli, ["inspect", str(healthy_run(tmp_path / "run"))])
    assert result.exit_code == 0 and "reading without the cache" in result.stderr


def test_a_forged_entry_cannot_make_a_nan_run_healthy(tmp_path: Path, cache_dir: Path) -> None:
    """A consistent forgery needs write access to the folder, which the folder check refuses to trust."""
    run = tmp_path / "run"
    write_step(run, 0, {"grad": {"w": np.full((4, 4), np.nan, np.float32)}})
    assert CliRunner().invoke(cli, ["inspect", str(run)]).exit_code == 1
    path = str(next(run.iterdir()))
    scan = scan_file(path)
    healthy = TensorStats(16, 0, 0, 0, 0.01, 0.02, 0.2, 0.003)
    cache_dir.chmod(0o777)  # a co-tenant could write here: e.g. a shared /tmp cache
    forged = FileScan(scan.path, scan.header, StatsBlock.from_stats({"grad/w": healthy}), scan.skipped)
    identity = file_identity(os.stat(path))
    StatsCache(cache_dir).store_index(str(run), [(os.path.abspath(path), identity, forged)])
    result = CliRunner().invoke(cli, ["inspect", str(run)])
    assert result.exit_code == 1 and "reading without the cache" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "huge", "foreign-owner"])
def test_odd_entry_files_are_misses(tmp_path: Path, cache_dir: Path, kind: str) -> None:
    run = healthy_run(tmp_path / "run", steps=1)
    cache, _, entry = _stored(run, cache_dir)
    entry.unlink()
    if kind == "fifo":
        os.mkfifo(entry)
    elif kind == "dev-zero":
        entry.symlink_to("/dev/zero")
    elif kind == "directory":
        entry.mkdir()
    elif kind == "huge":
        with open(entry, "wb") as handle:
            handle.truncate(MAX_INDEX_BYTES + 1)
    else:
        entry.write_bytes(b"x")
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        os.chown(entry, 4321, 4321)
    assert cache.load_index(str(run)) == {}  # no hang, no MemoryError, no exception
    result = CliRunner().invoke(cli, ["inspect", str(run)])
    assert result.exit_code == 0 and no_traceback(result.stderr)


def _rewrite(entry: Path, change) -> None:
    """Alter a cache file's JSON head and give it a valid checksum again (what a forger would do)."""
    line, _, blob = entry.read_bytes()[65:].partition(b"\n")
    head = json.loads(line)
    change(head)
    data = json.dumps(head, separators=(",", ":")).encode() + b"\n" + blob
    entry.write_bytes(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h.pop("layouts"),
        lambda h: h["layouts"][0].update(names=["grad/w", "grad/w", "param/w"]),
        lambda h: h["layouts"][0].update(dtypes=["F99"] * len(h["layouts"][0]["dtypes"])),
        lambda h: h["layouts"][0].update(shapes=[[5, 5]] * len(h["layouts"][0]["shapes"])),
        lambda h: h.update(rows=1),
        lambda h: h["files"][0].update(file_size=1),
        lambda h: h["files"][0].update(identity="x"),
        lambda h: h["files"][0].update(skipped=[]),
        lambda h: h.update(files=None),
        lambda h: h.update(folder="/elsewhere"),
    ],
)
def test_malformed_entries_are_misses(tmp_path: Path, cache_dir: Path, change) -> None:
    run = healthy_run(tmp_path / "run", steps=1)
    cache, _, entry = _stored(run, cache_dir)
    _rewrite(entry, change)
    assert cache.load_index(str(run)) == {}
    result = CliRunner().invoke(cli, ["inspect", str(run)])
    assert result.exit_code == 0 and no_traceback(result.stderr)


def test_impossible_statistics_in_an_entry_are_a_miss(tmp_path: Path, cache_dir: Path) -> None:
    run = healthy_run(tmp_path / "run", steps=1)
    path = str(next(run.iterdir()))
    identity = file_identity(os.stat(path))
    cache = StatsCache(cache_dir)
    scan = scan_file(path)
    for bad in (
        TensorStats(16, 20, 0, 0, 0.0, 1.0, 1.0, 1.0),  # more NaN than elements
        TensorStats(16, 0, 0, 0, 0.0, 1.0, 1.0, -1.0),  # negative sum of squares
        TensorStats(17, 0, 0, 0, 0.0, 1.0, 1.0, 1.0),  # not the shape's count
        TensorStats(16, 0, 0, 0, 0.0, 1.0, 1.0, 1.0, scale=3.0),  # not a power of two
        TensorStats(16, 0, 0, 0, 0.0, math.inf, 1.0, 1.0),  # an infinite largest finite value
        TensorStats(16, 0, 0, 0, math.nan, 1.0, 1.0, 1.0),  # a NaN smallest value
        TensorStats(16, 0, 0, 0, 0.0, 1.0, 1.0, 1.0, alive=1 << 4),  # a unit beyond the 4 of the shape
    ):
        forged = FileScan(
            scan.path, scan.header, StatsBlock.from_stats({**scan.stats, "grad/w": bad}), scan.skipped
        )
        cache.put(path, identity, forged)
        assert cache.get(path, identity) is None
    cache.put(path, identity, scan)
    assert cache.get(path, identity) == scan


def test_watch_has_no_cache(tmp_path: Path, cache_dir: Path) -> None:
    run = healthy_run(tmp_path / "run")
    result = CliRunner().invoke(
        cli, ["watch", str(run), "--no-cache", "--timeout", "0", "--interval", "0.01"]
    )
    assert result.exit_code == 0, result.stderr
    assert not cache_dir.exists()
    CliRunner().invoke(cli, ["watch", str(run), "--timeout", "0", "--interval", "0.01"])
    assert [entry.suffix for entry in cache_dir.iterdir()] == [".run"]  # one index for the run
