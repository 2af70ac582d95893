"""Class 4: the stats cache cannot be turned against the user: an untrusted folder, odd entries, forgeries."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import healthy_run, no_traceback
from runs_builder import write_step

from gradcheck.analysis.cache import MAX_ENTRY_BYTES, StatsCache, cache_refusal, file_identity
from gradcheck.analysis.reader import scan_file
from gradcheck.analysis.stats import TensorStats
from gradcheck.cli.main import cli


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GRADCHECK_CACHE_DIR", str(folder))
    return folder


def _stored(run: Path, folder: Path) -> tuple[StatsCache, str, Path]:
    """Inspect once (filling the cache); the cache, the snapshot path and its entry file."""
    assert CliRunner().invoke(cli, ["inspect", str(run)]).exit_code == 0
    cache = StatsCache(folder)
    path = str(max(run.iterdir()))
    return cache, path, cache.entry_path(path)


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
    StatsCache(cache_dir).put(
        path, file_identity(os.stat(path)), dataclasses.replace(scan, stats={"grad/w": healthy})
    )
    result = CliRunner().invoke(cli, ["inspect", str(run)])
    assert result.exit_code == 1 and "reading without the cache" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "huge", "foreign-owner"])
def test_odd_entry_files_are_misses(tmp_path: Path, cache_dir: Path, kind: str) -> None:
    run = healthy_run(tmp_path / "run", steps=1)
    cache, path, entry = _stored(run, cache_dir)
    identity = file_identity(os.stat(path))
    entry.unlink()
    if kind == "fifo":
        os.mkfifo(entry)
    elif kind == "dev-zero":
        entry.symlink_to("/dev/zero")
    elif kind == "directory":
        entry.mkdir()
    elif kind == "huge":
        with open(entry, "wb") as handle:
            handle.truncate(MAX_ENTRY_BYTES + 1)
    else:
        entry.write_bytes(b"x")
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        os.chown(entry, 4321, 4321)
    assert cache.get(path, identity) is None  # no hang, no MemoryError, no exception
    result = CliRunner().invoke(cli, ["inspect", str(run)])
    assert result.exit_code == 0 and no_traceback(result.stderr)


def _rewrite(entry: Path, change) -> None:
    """Alter an entry's payload and give it a valid checksum again (what a forger would do)."""
    payload = json.loads(entry.read_bytes()[65:])
    change(payload)
    data = json.dumps(payload, separators=(",", ":")).encode()
    entry.write_bytes(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["scan"].pop("stats"),
        lambda p: p["scan"].update(names=["grad/w", "grad/w", "param/w"]),
        lambda p: p["scan"].update(dtypes=["F99"] * len(p["scan"]["dtypes"])),
        lambda p: p["scan"].update(shapes=[[5, 5]] * len(p["scan"]["shapes"])),
        lambda p: p["scan"]["stats"].update(names=p["scan"]["stats"]["names"][:1]),
        lambda p: p["scan"].update(file_size=1),
        lambda p: p.update(identity="x"),
        lambda p: p["scan"].update(skipped=[]),
        lambda p: p.update(scan=None),
    ],
)
def test_malformed_entries_are_misses(tmp_path: Path, cache_dir: Path, change) -> None:
    run = healthy_run(tmp_path / "run", steps=1)
    cache, path, entry = _stored(run, cache_dir)
    _rewrite(entry, change)
    assert cache.get(path, file_identity(os.stat(path))) is None


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
    ):
        forged = dataclasses.replace(scan, stats={**scan.stats, "grad/w": bad})
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
    assert len(list(cache_dir.iterdir())) == 3
