"""The stats cache: exact round trips, every change of a file is a miss, damaged entries are misses, never errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from gradcheck.analysis import cache as cache_module
from gradcheck.analysis import cache_format
from gradcheck.analysis.cache import FileIdentity, StatsCache, default_cache_dir, file_identity
from gradcheck.analysis.columns import StatsBlock
from gradcheck.analysis.reader import FileScan, scan_file
from gradcheck.analysis.stats import TensorStats, summarize_array

RNG = np.random.default_rng(7)
ARRAYS = {
    "grad/fc.weight": RNG.standard_normal((3, 4)).astype(np.float32),
    "grad/fc.bias": np.array([np.nan, np.inf, -0.0, 0.5], dtype=np.float32),
    "grad/huge": np.array([1e308, -1e308, 1e308], dtype=np.float64),  # sums kept scaled by 2^1023
    "grad/all_nan": np.full(2, np.nan, dtype=np.float16),  # abs_min stays inf
    "grad/empty": np.zeros((0, 5), dtype=np.float32),
    "param/step_count": np.arange(3, dtype=np.int64),  # not a float: skipped with a reason
}
METADATA = {"gradcheck.format": "1", "step": "10", "note": "naïve ✓"}


def snapshot(path: Path, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write a safetensors file (with metadata) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ARRAYS if arrays is None else arrays, str(path), metadata=METADATA)
    return path


def with_stats(scan: FileScan, stats: dict[str, TensorStats]) -> FileScan:
    """The scan with other statistics (what a forger or a buggy writer could put in an entry)."""
    return FileScan(scan.path, scan.header, StatsBlock.from_stats(stats), scan.skipped)


def scanned(path: Path | str) -> tuple[str, FileIdentity, FileScan]:
    """A path as a string, its identity taken before scanning, and its scan."""
    name = os.fspath(path)
    identity = file_identity(os.stat(name))
    return name, identity, scan_file(name)


@pytest.fixture
def cache(tmp_path: Path) -> StatsCache:
    """A cache in its own directory, which does not exist yet."""
    return StatsCache(tmp_path / "cache")


@pytest.fixture
def stored(tmp_path: Path, cache: StatsCache) -> tuple[str, FileIdentity, FileScan]:
    """A snapshot whose scan is in the cache."""
    name, identity, scan = scanned(snapshot(tmp_path / "run" / "step_00000010.safetensors"))
    cache.put(name, identity, scan)
    return name, identity, scan


def test_round_trip_is_exact(stored: tuple[str, FileIdentity, FileScan], cache: StatsCache) -> None:
    name, identity, scan = stored
    got = cache.get(name, identity)
    assert got == scan
    assert got is not scan
    assert list(got.stats) == list(scan.stats) and list(got.skipped) == list(scan.skipped)
    assert all(type(e.shape) is tuple for e in got.header.entries)
    assert got.stats["grad/huge"].scale == 2.0**1023 and got.stats["grad/huge"].mean_abs == 1e308
    assert got.stats["grad/all_nan"].abs_min == np.inf
    assert got.stats["grad/fc.bias"] == TensorStats(4, 1, 1, 1, 0.0, 0.5, 0.5, 0.25)
    assert got.skipped == {"param/step_count": scan.skipped["param/step_count"]}
    assert got.header.metadata == METADATA
    assert {e.name: e.shape for e in got.header.entries}["grad/empty"] == (0, 5)


def test_floats_round_trip_to_the_bit(cache: StatsCache, tmp_path: Path) -> None:
    name, identity, scan = scanned(snapshot(tmp_path / "s.safetensors"))
    odd = TensorStats(
        scan.stats["grad/fc.weight"].count,
        0,
        0,
        0,
        5e-324,
        1.7976931348623157e308,
        0.1 + 0.2,
        float.fromhex("0x1.fffffffffffffp-1"),
    )
    scan = with_stats(scan, {**scan.stats, "grad/fc.weight": odd})
    cache.put(name, identity, scan)
    got = cache.get(name, identity)
    assert got is not None
    assert [
        float.hex(getattr(got.stats["grad/fc.weight"], f))
        for f in ("abs_min", "abs_max", "abs_sum", "sq_sum")
    ] == [float.hex(getattr(odd, f)) for f in ("abs_min", "abs_max", "abs_sum", "sq_sum")]


def test_stat_fields_are_all_stored_in_field_order() -> None:
    names = [field.name for field in dataclasses.fields(TensorStats)]
    assert names == [name for name, _ in cache_format._COLUMNS[:9]] + ["alive"]


def test_unit_bitmaps_survive_the_cache(tmp_path: Path) -> None:
    # `alive` is left out of TensorStats equality, so the round trip is checked field by field.
    grad = np.ones((40, 3), np.float32)
    grad[5:37] = 0
    path = tmp_path / "grads_1.safetensors"
    save_file({"w": grad, "b": np.zeros(7, np.float32)}, str(path))
    scan = scan_file(path)
    cache = StatsCache(tmp_path / "cache")
    identity = file_identity(os.stat(path))
    cache.put(str(path), identity, scan)
    cached = cache.get(str(path), identity)
    assert cached is not None
    assert {k: v.alive for k, v in cached.stats.items()} == {k: v.alive for k, v in scan.stats.items()}
    assert scan.stats["w"].alive == (1 << 40) - 1 - ((1 << 37) - (1 << 5)) and scan.stats["b"].alive == 0


def test_file_identity_takes_the_five_stat_fields(tmp_path: Path) -> None:
    info = os.stat(snapshot(tmp_path / "s.safetensors"))
    assert file_identity(info) == (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def test_empty_cache_is_a_miss_and_creates_nothing(tmp_path: Path, cache: StatsCache) -> None:
    name, identity, _ = scanned(snapshot(tmp_path / "s.safetensors"))
    assert cache.get(name, identity) is None
    assert not (tmp_path / "cache").exists()


def test_entry_is_private_and_written_without_leftovers(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache, tmp_path: Path
) -> None:
    name = stored[0]
    entry = cache.entry_path(name)
    assert entry.parent == tmp_path / "cache"
    assert os.listdir(tmp_path / "cache") == [entry.name]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path / "run")) == ["step_00000010.safetensors"]  # nothing next to the run


@pytest.mark.parametrize("field", FileIdentity._fields)
def test_any_changed_identity_field_is_a_miss(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache, field: str
) -> None:
    name, identity, _ = stored
    assert cache.get(name, identity._replace(**{field: getattr(identity, field) + 1})) is None
    assert cache.get(name, identity) is not None


def test_another_path_is_a_miss(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache, tmp_path: Path
) -> None:
    name, identity, _ = stored
    other = str(tmp_path / "run" / "step_00000020.safetensors")
    assert cache.get(other, identity) is None
    shutil.copy(cache.entry_path(name), cache.entry_path(other))  # as if the two names' hashes collided
    assert cache.get(other, identity) is None


def test_relative_and_absolute_paths_share_an_entry(
    stored: tuple[str, FileIdentity, FileScan],
    cache: StatsCache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, identity, scan = stored
    monkeypatch.chdir(tmp_path)
    relative = os.path.join("run", "step_00000010.safetensors")
    got = cache.get(relative, identity)
    assert got is not None and got.path == relative  # as the caller spells it
    assert got == FileScan(relative, scan.header, scan.block, scan.skipped)


def test_rewritten_file_of_the_same_size_with_a_new_mtime_is_a_miss(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache
) -> None:
    name, identity, _ = stored
    snapshot(Path(name), {key: -np.flip(value) for key, value in ARRAYS.items()})
    os.utime(name, ns=(identity.mtime_ns + 5_000_000_000, identity.mtime_ns + 5_000_000_000))
    new = file_identity(os.stat(name))
    assert new.size == identity.size and new.mtime_ns != identity.mtime_ns
    assert cache.get(name, new) is None


def test_copy_with_the_same_mtime_is_a_miss(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache
) -> None:
    name, identity, _ = stored
    os.replace(shutil.copy2(name, name + ".copy"), name)  # same size and mtime; new inode and ctime
    new = file_identity(os.stat(name))
    assert (new.size, new.mtime_ns) == (identity.size, identity.mtime_ns)
    assert (new.inode, new.ctime_ns) != (identity.inode, identity.ctime_ns)
    assert cache.get(name, new) is None


def test_truncated_entry_is_a_miss_then_put_repairs_it(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache
) -> None:
    name, identity, scan = stored
    entry = cache.entry_path(name)
    whole = entry.read_bytes()
    for length in (0, 1, 63, 64, 65, len(whole) // 2, len(whole) - 1):
        entry.write_bytes(whole[:length])
        assert cache.get(name, identity) is None, length
    cache.put(name, identity, scan)
    assert entry.read_bytes() == whole
    assert cache.get(name, identity) == scan


def test_every_flipped_byte_is_a_miss(tmp_path: Path, cache: StatsCache) -> None:
    name, identity, scan = scanned(snapshot(tmp_path / "s.safetensors", {"grad/w": np.ones(3, np.float32)}))
    cache.put(name, identity, scan)
    entry = cache.entry_path(name)
    whole = entry.read_bytes()
    for position in range(len(whole)):
        damaged = bytearray(whole)
        damaged[position] ^= 0x01
        entry.write_bytes(damaged)
        assert cache.get(name, identity) is None, position
    entry.write_bytes(whole + b"\n")
    assert cache.get(name, identity) is None


def test_entry_of_another_version_is_a_miss(
    stored: tuple[str, FileIdentity, FileScan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, identity, _ = stored
    monkeypatch.setattr(cache_module, "__version__", "999.0")
    assert StatsCache(tmp_path / "cache").get(name, identity) is None


def test_entry_of_another_format_is_a_miss(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, identity, scan = stored
    monkeypatch.setattr(cache_module, "CACHE_FORMAT", cache_module.CACHE_FORMAT + 1)
    assert cache.get(name, identity) is None
    cache.put(name, identity, scan)  # the new format overwrites the old entry in place
    assert cache.get(name, identity) == scan


def read_entry(path: Path) -> tuple[dict, bytes]:
    """The JSON head and the binary columns of a cache file."""
    payload = path.read_bytes()[65:]
    line, _, blob = payload.partition(b"\n")
    return json.loads(line), blob


def forge(path: Path, head: object, blob: bytes) -> None:
    """Write a cache file with a valid checksum but the given content."""
    payload = json.dumps(head).encode() + b"\n" + blob
    path.write_bytes(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def test_forged_entry_of_the_right_shape_is_a_hit(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache
) -> None:
    name, identity, scan = stored
    forge(cache.entry_path(name), *read_entry(cache.entry_path(name)))
    assert cache.get(name, identity) == scan  # so the misses below come from the damage alone


def _file(head: dict) -> dict:
    return head["files"][0]


def _layout(head: dict) -> dict:
    return head["layouts"][0]


@pytest.mark.parametrize(
    "damage",
    [
        lambda h, b: ([], b),
        lambda h, b: (h, b[:-1]),
        lambda h, b: (h, b + b"\0"),
        lambda h, b: (h.pop("files"), b),
        lambda h, b: (h.update(rows=h["rows"] - 1), b),
        lambda h, b: (h.update(bitmap_bytes=h["bitmap_bytes"] + 1), b),
        lambda h, b: (_layout(h).update(names=_layout(h)["names"][:-1]), b),
        lambda h, b: (_layout(h).update(names=5), b),
        lambda h, b: (_layout(h).update(names=["x"] * len(_layout(h)["names"])), b),
        lambda h, b: (_layout(h).update(dtypes=[None] * len(_layout(h)["dtypes"])), b),
        lambda h, b: (_layout(h).update(shapes=[[-1]] * len(_layout(h)["shapes"])), b),
        lambda h, b: (_layout(h).update(shapes=[[1.5]] * len(_layout(h)["shapes"])), b),
        lambda h, b: (_layout(h).update(shapes=[{}] * len(_layout(h)["shapes"])), b),
        lambda h, b: (_layout(h).update(ends=[1, 2]), b),
        lambda h, b: (_layout(h).update(begins=[-8] * len(_layout(h)["begins"])), b),
        lambda h, b: (_file(h).update(file_size="12"), b),
        lambda h, b: (_file(h).update(file_size=1), b),
        lambda h, b: (_file(h).update(path=None), b),
        lambda h, b: (_file(h).update(layout=1), b),
        lambda h, b: (_file(h).update(metadata={"step": 10}), b),
        lambda h, b: (_file(h).update(skipped=["a"]), b),
        lambda h, b: (_file(h).update(skipped={}), b),
        lambda h, b: (_file(h).update(identity=_file(h)["identity"][:4]), b),
        lambda h, b: (_file(h).update(extra=1), b),
        lambda h, b: (h.update(extra=1), b),
        lambda h, b: (h.update(format=4), b),
        lambda h, b: (h, b"\xff" * 8 + b[8:]),  # a count of -1
        lambda h, b: (h, b[: 8 * h["rows"]] + b[: 8 * h["rows"]] + b[16 * h["rows"] :]),  # nan = count
        lambda h, b: (h, b[:-1] + b"\xff"),  # a bit beyond the last unit of a bitmap
    ],
)
def test_forged_entry_with_bad_content_is_a_miss(
    stored: tuple[str, FileIdentity, FileScan], cache: StatsCache, damage: object
) -> None:
    name, identity, _ = stored
    head, blob = read_entry(cache.entry_path(name))
    result, blob = damage(head, blob)  # type: ignore[operator]
    forge(cache.entry_path(name), result if isinstance(result, list) else head, blob)
    assert cache.get(name, identity) is None


def test_put_under_a_regular_file_is_silent(tmp_path: Path) -> None:
    name, identity, scan = scanned(snapshot(tmp_path / "s.safetensors"))
    (tmp_path / "blocker").write_text("not a directory")
    cache = StatsCache(tmp_path / "blocker" / "cache")
    cache.put(name, identity, scan)
    assert cache.get(name, identity) is None


@pytest.mark.skipif(
    sys.platform == "win32" or (hasattr(os, "geteuid") and os.geteuid() == 0),
    reason="root writes into read-only directories",
)
def test_put_into_a_read_only_directory_is_silent(tmp_path: Path) -> None:
    name, identity, scan = scanned(snapshot(tmp_path / "s.safetensors"))
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o500)
    try:
        StatsCache(directory).put(name, identity, scan)
        assert StatsCache(directory).get(name, identity) is None
        assert os.listdir(directory) == []
    finally:
        directory.chmod(0o700)


def test_put_onto_a_directory_entry_is_silent_and_leaves_no_temporary(
    tmp_path: Path, cache: StatsCache
) -> None:
    name, identity, scan = scanned(snapshot(tmp_path / "s.safetensors"))
    cache.entry_path(name).mkdir(parents=True)  # os.replace cannot put a file there
    cache.put(name, identity, scan)
    assert cache.get(name, identity) is None
    assert os.listdir(tmp_path / "cache") == [cache.entry_path(name).name]


def test_two_paths_do_not_collide(tmp_path: Path, cache: StatsCache) -> None:
    first = scanned(snapshot(tmp_path / "a" / "step_1.safetensors"))
    second = scanned(snapshot(tmp_path / "b" / "step_1.safetensors", {"grad/w": np.ones(2, np.float32)}))
    for name, identity, scan in (first, second):
        cache.put(name, identity, scan)
    assert cache.entry_path(first[0]) != cache.entry_path(second[0])
    assert cache.get(first[0], first[1]) == first[2]
    assert cache.get(second[0], second[1]) == second[2]


@pytest.mark.parametrize(
    "file_name", ["step 10 (copy).safetensors", "шаг_10 ✓.safetensors", "步骤 10.safetensors"]
)
def test_paths_with_spaces_and_non_ascii_names(tmp_path: Path, cache: StatsCache, file_name: str) -> None:
    name, identity, scan = scanned(snapshot(tmp_path / "my run é" / file_name))
    cache.put(name, identity, scan)
    got = cache.get(name, identity)
    assert got == scan and got.path == name


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a file system that takes any bytes")
def test_path_that_is_not_utf8(tmp_path: Path, cache: StatsCache) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"step_\xff\xfe.safetensors")
    save_file(ARRAYS, os.fsdecode(raw), metadata=METADATA)
    name, identity, scan = scanned(os.fsdecode(raw))
    cache.put(name, identity, scan)
    assert cache.get(name, identity) == scan


def test_cache_dir_from_gradcheck_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRADCHECK_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine"


def test_cache_dir_from_xdg_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GRADCHECK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gradcheck"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="those platforms have their own cache folder")
@pytest.mark.parametrize("xdg", [None, "", "relative/cache"])
def test_cache_dir_default_under_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdg: str | None
) -> None:
    monkeypatch.delenv("GRADCHECK_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)  # empty or relative: ignored, as the XDG spec says
    assert default_cache_dir() == tmp_path / ".cache" / "gradcheck"


def test_entry_of_1500_tensors_is_compact(tmp_path: Path, cache: StatsCache) -> None:
    arrays = {f"grad/model.layers.{i}.mlp.down_proj.weight": np.ones(4, np.float32) for i in range(1500)}
    name, identity, scan = scanned(snapshot(tmp_path / "big.safetensors", arrays))
    cache.put(name, identity, scan)
    assert cache.entry_path(name).stat().st_size < 400_000  # about 200 bytes a tensor with these names
    assert cache.get(name, identity) == scan


def test_summaries_asked_for_are_kept_as_arrays(
    tmp_path: Path, cache: StatsCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradcheck.analysis import summaries as summaries_module
    from gradcheck.analysis.summaries import STATS_KEY, summary_entry

    grad = np.zeros((5, 3), np.float32)
    grad[1] = 2.0
    table = {
        "grad/w": summary_entry(summarize_array(grad), grad.shape, "BF16") | {"alive": "2"},
        "grad/b": summary_entry(TensorStats(2, 2, 0, 0), (2,), "F32"),
    }
    path = tmp_path / "step_3.safetensors"
    save_file({"param/w": np.ones(3, np.float32)}, str(path), metadata={STATS_KEY: json.dumps(table)})
    name, identity, scan = scanned(path)
    expected = scan.summaries  # asked for: from now on the cache keeps it
    assert expected is not None and expected.block.alive[0] == 2
    cache.put(name, identity, scan)
    monkeypatch.setattr(summaries_module, "summary_block", None)  # a re-parse would fail
    got = cache.get(name, identity)
    assert got is not None and got.summaries is not None
    assert got.summaries.block.as_dict() == expected.block.as_dict()
    assert list(got.summaries.block.alive) == [2, None]
    assert got.summaries.shapes == ((5, 3), (2,)) and got.summaries.dtypes == ("BF16", "F32")
    # kept once, as arrays: not also as the metadata's text (80 of 112 MB of a 200-file stats-mode run)
    assert STATS_KEY not in got.header.metadata
    assert json.dumps(table).encode() not in cache.entry_path(name).read_bytes()


def test_summaries_not_asked_for_are_parsed_when_read(tmp_path: Path, cache: StatsCache) -> None:
    from gradcheck.analysis.summaries import STATS_KEY

    path = tmp_path / "step_3.safetensors"
    save_file(
        {"param/w": np.ones(3, np.float32)}, str(path), metadata={STATS_KEY: '{"grad/w": {"count": -1}}'}
    )
    name, identity, scan = scanned(path)
    cache.put(name, identity, scan)
    got = cache.get(name, identity)
    assert got is not None and "summaries" not in got.__dict__
    with pytest.raises(ValueError, match="no field .nan."):
        _ = got.summaries
