"""The stats cache in the user cache dir, so re-inspecting an unchanged run reads no tensor data.

One index file per run folder (`StatsCache.load_index` / `store_index`) holds the scan of every snapshot of
the run, each valid for one file identity: an unchanged run opens one cache file, and a run that grew reads
only its new snapshots, then the index is rewritten whole (atomically) with them. `get` / `put` keep the
scan of one file on its own, in the same format. The layout of a cache file is in cache_format.py.

The folder is trusted only if this user owns it and nobody else may write to it (`refusal`): whoever can
write an entry decides what gradcheck reports. Cache files are opened without following symlinks and
without blocking, must be regular files under a size cap, and are checked completely when decoded:
anything unexpected is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from . import __version__, cache_format
from .atomic import replace_atomically
from .cache_format import Stored
from .reader import FileScan

# Bump whenever the stats computation or the layout changes: a dev install keeps its version number.
# 3: the sums' scale (stats.py); 4: per-unit "ever non-zero" bitmaps; 5: binary columns, one index per run.
CACHE_FORMAT = 5
_SUFFIX = ".scan"  # one file's scan
_INDEX_SUFFIX = ".run"  # a run folder's index
_TAIL_SUFFIX = ".tail"  # scans added to it since it was last written whole
_TAIL_MIN_FILES = 16  # a tail may always hold this many files, however small the index
# About 100 bytes per tensor: 256 MiB is two million tensors in one file, far beyond any snapshot; an index
# of a whole run may hold a thousand such files (1,000 x 1,500 tensors: about 150 MB).
MAX_ENTRY_BYTES = 256 << 20
MAX_INDEX_BYTES = 4 << 30
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
    """The gradcheck version, part of every key (pyproject.toml takes it from the same constant)."""
    return __version__


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


def _read_entry(path: Path, cap: int = MAX_ENTRY_BYTES) -> bytes | None:
    """The bytes of a cache file: a regular file of ours under the size cap, opened without following links."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > cap:
            return None
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            return None
        chunks, total = [], 0
        while total <= cap:  # the size may grow while we read
            chunk = os.read(fd, min(16 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks) if total <= cap else None
    except OSError:
        return None
    finally:
        os.close(fd)


class StatsCache:
    """Scans stored under `directory`: one index per run folder, or one file's scan alone."""

    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)
        self._version = _tool_version()
        self._main: dict[str, dict[str, list[int]]] = {}  # by folder: the identities in its index file

    def entry_path(self, path: str) -> Path:
        """Where the scan of one file lives (the absolute path, symlinks not resolved, hashed)."""
        return self._directory / (_hashed(path) + _SUFFIX)

    def index_path(self, folder: str) -> Path:
        """Where the index of a run folder lives (its absolute path, hashed)."""
        return self._directory / (_hashed(folder) + _INDEX_SUFFIX)

    def _key(self, what: str, path: str) -> dict[str, Any]:
        """Everything a cache file must match besides its checksum and the identities of its files."""
        return {"format": CACHE_FORMAT, "version": self._version, what: os.path.abspath(path)}

    def get(self, path: str, identity: FileIdentity) -> FileScan | None:
        """The cached scan of `path` if it was stored for this exact identity and tool version; None otherwise."""
        raw = _read_entry(self.entry_path(path))
        files = None if raw is None else cache_format.decode(raw, self._key("file", path))
        if not files or set(files) != {os.path.abspath(path)}:
            return None
        stored, scan = files[os.path.abspath(path)]
        return scan.at(os.fspath(path)) if stored == list(identity) else None

    def put(self, path: str, identity: FileIdentity, scan: FileScan) -> None:
        """Store the scan of one file; never raises (an unwritable cache just caches nothing)."""
        key = self._key("file", path)
        self._write(self.entry_path(path), cache_format.encode(key, [(key["file"], identity, scan)]))

    def tail_path(self, folder: str) -> Path:
        """Where the scans added to a run folder's index since it was last written whole live."""
        return self._directory / (_hashed(folder) + _TAIL_SUFFIX)

    def load_index(self, folder: str) -> dict[str, tuple[list[int], FileScan]]:
        """{absolute path: (identity, scan)} of a run folder's index and its tail; {} where damaged or absent."""
        main = self._load(self.index_path(folder), folder)
        self._main[os.path.abspath(folder)] = {path: identity for path, (identity, _) in main.items()}
        return {**main, **self._load(self.tail_path(folder), folder)}

    def store_index(self, folder: str, files: Sequence[Stored]) -> None:
        """Make a run folder's index hold exactly these (absolute path, identity, scan); never raises.

        After `load_index`, a few scans more than the index holds go to its tail, a small file of their
        own, so that a run growing one snapshot at a time does not rewrite its whole index each time;
        anything else (the first write, files gone or changed, a tail of more than a quarter of the
        index) writes the index whole and removes the tail.
        """
        main = self._main.get(os.path.abspath(folder))
        if main:
            extra = [item for item in files if main.get(item[0]) != list(item[1])]
            kept = len(files) - len(extra)
            if kept == len(main) and len(extra) <= max(_TAIL_MIN_FILES, len(main) // 4):
                self._write(self.tail_path(folder), self._encode(folder, extra))
                return
        self._write(self.index_path(folder), self._encode(folder, files))
        self._main[os.path.abspath(folder)] = {path: list(identity) for path, identity, _ in files}
        with contextlib.suppress(OSError):
            os.unlink(self.tail_path(folder))

    def add_to_index(self, folder: str, files: Sequence[Stored]) -> None:
        """Add scans of files new to the caller to a run folder's index, reading only its tail; never raises.

        For a caller that reads a run a part at a time (`watch`): the cost does not grow with the run,
        but with what was added since the index was last written whole; when the tail grows past a
        quarter of the index, both are read and the index written whole again.
        """
        tail = self._load(self.tail_path(folder), folder)
        tail.update({path: (list(identity), scan) for path, identity, scan in files})
        merged = [(path, identity, scan) for path, (identity, scan) in tail.items()]
        data = self._encode(folder, merged)
        try:
            main_bytes = os.stat(self.index_path(folder)).st_size
        except (OSError, ValueError):
            main_bytes = 0
        if main_bytes and len(data) <= main_bytes // 4:
            self._write(self.tail_path(folder), data)
            return
        everything = self.load_index(folder)
        everything.update(tail)
        self.store_index(folder, [(path, ident, scan) for path, (ident, scan) in everything.items()])

    def _load(self, target: Path, folder: str) -> dict[str, tuple[list[int], FileScan]]:
        raw = _read_entry(target, MAX_INDEX_BYTES)
        files = None if raw is None else cache_format.decode(raw, self._key("folder", folder))
        return files or {}

    def _encode(self, folder: str, files: Sequence[Stored]) -> bytes:
        return cache_format.encode(self._key("folder", folder), files)

    def _write(self, target: Path, data: bytes) -> None:
        try:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_atomically(target, data)
        except OSError:
            return


def _hashed(path: str) -> str:
    return hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()
