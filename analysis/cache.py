"""A per-file cache of scans in the user cache dir, so re-inspecting an unchanged run reads no tensor data.

One entry file per snapshot file, named from a sha256 of its absolute path. An entry is the sha256 of its
payload (64 hex digits and a newline) followed by the payload: ASCII JSON holding the key (format, gradcheck
version, absolute path, file identity) and the scan in columns; numeric columns are base64 of little-endian
uint64/float64 arrays, exact to the bit and fast to load. No pickle: an entry is data, never code.

The folder is trusted only if this user owns it and nobody else may write to it (`refusal`): whoever can
write an entry decides what gradcheck reports. Entries are opened without following symlinks and without
blocking, must be regular files under a size cap, and are checked completely when decoded: anything
unexpected is a miss, never an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import stat
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import replace
from importlib import metadata
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

from .atomic import replace_atomically
from .dtypes import DTYPES
from .header import FileHeader, TensorEntry
from .reader import FileScan
from .stats import TensorStats
from .units import unit_count

# Bump whenever the stats computation or this layout changes: a dev install keeps its version number.
CACHE_FORMAT = 4  # 3: the sums' scale (stats.py); 4: per-unit "ever non-zero" bitmaps (TensorStats.alive)
_DIGEST_CHARS = 64  # a sha256 in hex
_SUFFIX = ".scan"
_COUNT_FIELDS = ("count", "nan", "inf", "zeros")  # then the float fields: TensorStats' field order
_FLOAT_FIELDS = ("abs_min", "abs_max", "abs_sum", "sq_sum", "scale")
_SWAP = sys.byteorder == "big"  # columns are stored little-endian
# About 200 bytes per tensor: 256 MiB is a million tensors in one file, far beyond any snapshot.
MAX_ENTRY_BYTES = 256 << 20
_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)


class FileIdentity(NamedTuple):
    """What must be unchanged for a cached scan of a file to be trusted."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def file_identity(info: os.stat_result) -> FileIdentity:
    """The identity of a file from its stat result."""
    return FileIdentity(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def default_cache_dir() -> Path:
    """$GRADCHECK_CACHE_DIR, else $XDG_CACHE_HOME/gradcheck, else ~/.cache/gradcheck (platform equivalents)."""
    explicit = os.environ.get("GRADCHECK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore a relative value
        return Path(xdg) / "gradcheck"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "gradcheck" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gradcheck"
    return Path.home() / ".cache" / "gradcheck"


def _tool_version() -> str:
    """The installed gradcheck version, part of every key."""
    try:
        return metadata.version("gradcheck")
    except metadata.PackageNotFoundError:
        return "unknown"


def _pack(values: Iterable[float], code: str) -> str:
    """A column of uint64 ("Q") or float64 ("d") values as base64 of its little-endian bytes."""
    column = array(code, values)
    if _SWAP:
        column.byteswap()
    return base64.b64encode(column.tobytes()).decode("ascii")


def _encode_scan(scan: FileScan) -> dict[str, Any]:
    """The scan as JSON-ready columns (compact, and fast to check and rebuild)."""
    entries, stats = scan.header.entries, scan.stats.values()
    columns = {name: _pack([getattr(s, name) for s in stats], "Q") for name in _COUNT_FIELDS}
    columns.update({name: _pack([getattr(s, name) for s in stats], "d") for name in _FLOAT_FIELDS})
    columns["alive"] = [None if s.alive is None else format(s.alive, "x") for s in stats]
    return {
        "path": scan.path,
        "file_size": scan.header.file_size,
        "metadata": scan.header.metadata,
        "names": [e.name for e in entries],
        "dtypes": [e.dtype for e in entries],
        "shapes": [e.shape for e in entries],  # ragged, so plain JSON lists
        "begins": _pack([e.begin for e in entries], "Q"),
        "ends": _pack([e.end for e in entries], "Q"),
        "stats": {"names": list(scan.stats), **columns},
        "skipped": scan.skipped,
    }


class _BadEntry(ValueError):
    """An entry whose checksum holds but whose content is not what `put` writes."""


def _check(condition: bool) -> None:
    """Reject an entry unless `condition` holds."""
    if not condition:
        raise _BadEntry


def _strings(column: Any) -> list[str]:
    """A JSON list of strings, checked."""
    _check(type(column) is list and set(map(type, column)) <= {str})
    return column


def _unpack(text: Any, code: str) -> list[Any]:
    """A column written by `_pack`."""
    _check(type(text) is str)
    column = array(code)
    column.frombytes(base64.b64decode(text, validate=True))  # ValueError unless whole, valid base64 items
    if _SWAP:
        column.byteswap()
    return column.tolist()


def _string_map(value: Any) -> dict[str, str]:
    """A JSON object of strings, checked."""
    _check(type(value) is dict and set(map(type, value.values())) <= {str})
    return value


def _same_lengths(columns: Sequence[list[Any]]) -> None:
    """Reject columns of different lengths, which map() would silently truncate."""
    _check(len({len(column) for column in columns}) <= 1)


def _decode_entries(obj: Any, file_size: int) -> tuple[TensorEntry, ...]:
    """The header's tensor entries from their columns: known dtypes, byte ranges that fit their shapes."""
    shapes = obj["shapes"]
    _check(type(shapes) is list and set(map(type, shapes)) <= {list})
    dims = list(chain.from_iterable(shapes))
    _check(set(map(type, dims)) <= {int} and (not dims or min(dims) >= 0))
    names, dtypes = _strings(obj["names"]), _strings(obj["dtypes"])
    begins, ends = _unpack(obj["begins"], "Q"), _unpack(obj["ends"], "Q")
    _same_lengths([names, dtypes, shapes, begins, ends])
    _check(len(set(names)) == len(names))
    for dtype, shape, begin, end in zip(dtypes, shapes, begins, ends, strict=True):
        _check(dtype in DTYPES and begin <= end <= file_size)
        _check(math.prod(shape) * DTYPES[dtype].bits == (end - begin) * 8)
    return tuple(map(TensorEntry, names, dtypes, map(tuple, shapes), begins, ends))


def _decode_stats(obj: Any, entries: dict[str, TensorEntry]) -> dict[str, TensorStats]:
    """The per-tensor stats from their columns, in TensorStats field order, each possible for its tensor."""
    _check(type(obj) is dict)
    columns = [_unpack(obj[name], "Q") for name in _COUNT_FIELDS]
    columns += [_unpack(obj[name], "d") for name in _FLOAT_FIELDS]
    names = _strings(obj["names"])
    alive = obj["alive"]
    _check(type(alive) is list and set(map(type, alive)) <= {str, type(None)})
    _same_lengths([names, *columns, alive])
    stats = {
        name: replace(s, alive=_bitmap(a))
        for name, s, a in zip(names, map(TensorStats, *columns), alive, strict=True)
    }
    _check(len(stats) == len(names))
    for name, value in stats.items():
        _check(name in entries and value.count == math.prod(entries[name].shape))
        _check(_possible(value))
        _check(value.alive is None or value.alive.bit_length() <= unit_count(entries[name].shape))
    return stats


def _possible(stats: TensorStats) -> bool:
    """Counts that fit and sums and extremes that |x| can have (what a scan can produce)."""
    floats = (stats.abs_min, stats.abs_max, stats.abs_sum, stats.sq_sum)
    return (
        stats.nan + stats.inf + stats.zeros <= stats.count
        and all(value >= 0 for value in floats)  # also no NaN
        and math.isfinite(stats.abs_max)
        and 0 < stats.scale < math.inf
        and math.frexp(stats.scale)[0] == 0.5
    )


def _bitmap(text: str | None) -> int | None:
    """A unit bitmap column value (hex, as `_encode_scan` writes it)."""
    if text is None:
        return None
    _check(0 < len(text) and all(c in "0123456789abcdef" for c in text))
    return int(text, 16)


def _decode_scan(obj: Any) -> FileScan:
    """Rebuild a FileScan from `_encode_scan`'s output, raising on anything else."""
    _check(type(obj) is dict and type(obj["path"]) is str and type(obj["file_size"]) is int)
    entries = _decode_entries(obj, obj["file_size"])
    header = FileHeader(entries, _string_map(obj["metadata"]), obj["file_size"])
    by_name = {entry.name: entry for entry in entries}
    stats, skipped = _decode_stats(obj["stats"], by_name), _string_map(obj["skipped"])
    # every tensor is either summarized (a decoded float dtype) or skipped, never both
    decoded = {entry.name for entry in entries if DTYPES[entry.dtype].decode is not None}
    _check(set(stats) == decoded and set(skipped) == set(by_name) - decoded)
    return FileScan(obj["path"], header, stats, skipped)


def cache_refusal(directory: Path) -> str | None:
    """Why a cache folder cannot be trusted (owned by someone else, writable by others); None if it can.

    A folder that does not exist yet is fine: `put` creates it with mode 0700.
    """
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"cannot check the cache folder: {getattr(error, 'strerror', None) or error}"
    if not stat.S_ISDIR(info.st_mode):
        return "the cache path is not a folder"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return f"the cache folder belongs to user id {info.st_uid}, not to you"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"the cache folder is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _read_entry(path: Path) -> bytes | None:
    """The bytes of an entry file: a regular file of ours under the size cap, opened without following links."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
            return None
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            return None
        chunks, total = [], 0
        while total <= MAX_ENTRY_BYTES:  # the size may grow while we read
            chunk = os.read(fd, min(1 << 20, MAX_ENTRY_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks) if total <= MAX_ENTRY_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


def decode_entry(raw: bytes, key: dict[str, Any]) -> FileScan | None:
    """The scan an entry holds if its checksum holds and it was stored under `key`; None for anything else."""
    payload = _payload(raw)
    if payload is None:
        return None
    try:
        entry = json.loads(payload)
        _check(type(entry) is dict and "scan" in entry)
        scan = entry.pop("scan")
        if entry != key:
            return None
        decoded = _decode_scan(scan)
        identity = key.get("identity")
        _check(isinstance(identity, list) and len(identity) == len(FileIdentity._fields))
        _check(decoded.header.file_size == identity[FileIdentity._fields.index("size")])
        return decoded
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError):
        return None


def _payload(raw: bytes) -> bytes | None:
    """The payload of an entry if its checksum matches; None for a truncated or altered entry."""
    head, payload = raw[: _DIGEST_CHARS + 1], raw[_DIGEST_CHARS + 1 :]
    if head != hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n":
        return None
    return payload


class StatsCache:
    """Scans stored one file per snapshot path under `directory`, valid for one file identity."""

    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)
        self._version = _tool_version()

    def entry_path(self, path: str) -> Path:
        """Where the entry for a snapshot path lives (the absolute path, symlinks not resolved, hashed)."""
        key = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()
        return self._directory / (key + _SUFFIX)

    def _key(self, path: str, identity: FileIdentity) -> dict[str, Any]:
        """Everything an entry must match besides its checksum."""
        return {
            "format": CACHE_FORMAT,
            "version": self._version,
            "path": os.path.abspath(path),
            "identity": list(identity),
        }

    def get(self, path: str, identity: FileIdentity) -> FileScan | None:
        """The cached scan of `path` if it was stored for this exact identity and tool version; None otherwise."""
        raw = _read_entry(self.entry_path(path))
        return None if raw is None else decode_entry(raw, self._key(path, identity))

    def put(self, path: str, identity: FileIdentity, scan: FileScan) -> None:
        """Store a scan; never raises (an unwritable cache just caches nothing)."""
        entry = {**self._key(path, identity), "scan": _encode_scan(scan)}
        payload = json.dumps(entry, separators=(",", ":"), allow_nan=False).encode("ascii")
        data = hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n" + payload
        try:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_atomically(self.entry_path(path), data)
        except OSError:
            return
