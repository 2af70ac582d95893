"""Scan the files of a run: cached scans where the file is unchanged, the rest read by worker processes.

Results come back in the order of the paths, one file at a time, so a run of any size is summarised with
only a window of work in flight. Big files are cut into segments (`reader.plan_segments`) that workers scan
apart and the parent folds in segment order, so the numbers are the same with 1 worker or many.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from .cache import FileIdentity, StatsCache, file_identity
from .errors import FileChangedError, UnreadableFileError
from .header import FileHeader
from .reader import (
    SEGMENT_BYTES,
    FileScan,
    FileToken,
    Segment,
    combine,
    plan_segments,
    read_header_token,
    scan_file,
    scan_segments,
)
from .stats import TensorStats

Progress = Callable[[int, int], None]  # (bytes scanned so far, bytes to scan), after each piece of work
Result = FileScan | UnreadableFileError

PARALLEL_MIN_BYTES = 64 << 20  # less data than this is read faster than worker processes start
# Small files go to workers only when they average this much: a worker's results come back pickled, and for
# files of many small tensors (1,500 tensors in 2 MB) that costs the parent more than scanning them itself.
POOL_MIN_FILE_BYTES = 8 << 20
_BATCH_BYTES = 16 << 20  # small files go to a worker in batches of about this many bytes...
_BATCH_FILES = 64  # ...or this many files, whichever comes first


@dataclass(frozen=True)
class ScanOptions:
    """How to scan: how many worker processes, which stats cache (None: none), whom to tell of progress."""

    jobs: int = 1
    cache: StatsCache | None = None
    progress: Progress | None = None
    segment_bytes: int = SEGMENT_BYTES  # files above this are cut into pieces of about this size


def available_cores() -> int:
    """How many CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Whole:
    """Small files, each scanned whole."""

    paths: tuple[str, ...]
    nbytes: int


@dataclass(frozen=True)
class _Part:
    """Some segments of one big file, with its header cut down to their tensors."""

    path: str
    header: FileHeader
    segments: tuple[Segment, ...]
    nbytes: int
    token: FileToken  # the version the header was read from: every part must be read from it


Unit = _Whole | _Part


def _pooled(unit: Unit) -> bool:
    """Whether a unit is worth sending to a worker process."""
    return isinstance(unit, _Part) or unit.nbytes >= POOL_MIN_FILE_BYTES * len(unit.paths)


def _scan_or_error(path: str) -> Result:
    try:
        return scan_file(path)
    except UnreadableFileError as error:
        return error


def _work(unit: Unit) -> list[Result] | list[TensorStats] | UnreadableFileError:
    """What a worker does with one unit; expected problems come back as values, not exceptions."""
    if isinstance(unit, _Whole):
        return [_scan_or_error(path) for path in unit.paths]
    try:
        return scan_segments(unit.path, unit.header, unit.segments, token=unit.token)
    except UnreadableFileError as error:
        return error


@dataclass
class _File:
    """One file of the run: its result when already known, else the units that make it."""

    path: str
    identity: FileIdentity | None
    result: Result | None = None
    batch: tuple[int, int] | None = None  # a small file: (its unit, its place in that unit)
    units: list[int] = field(default_factory=list)  # a big file: its units, in segment order
    header: FileHeader | None = None
    segments: tuple[Segment, ...] = ()
    token: FileToken | None = None
    cached: bool = False  # the result came from the cache index


def _identity(path: str) -> FileIdentity | None:
    try:
        return file_identity(os.stat(path))
    except (OSError, ValueError):
        return None  # scanning says what is wrong with it


def _plan(
    paths: Sequence[str], options: ScanOptions, index: Mapping[str, tuple[list[int], FileScan]]
) -> tuple[list[_File], list[Unit]]:
    """Files in order, and the units of work for those the run's cache index does not answer."""
    files: list[_File] = []
    units: list[Unit] = []
    batch: list[str] = []
    batch_bytes = 0
    batch_files: list[_File] = []

    def close_batch() -> None:
        nonlocal batch, batch_bytes, batch_files
        if batch:
            for position, item in enumerate(batch_files):
                item.batch = (len(units), position)
            units.append(_Whole(tuple(batch), batch_bytes))
        batch, batch_bytes, batch_files = [], 0, []

    for path in paths:
        item = _File(path, _identity(path))
        files.append(item)
        if item.identity is not None:
            hit = index.get(os.path.abspath(path))
            if hit is not None and hit[0] == list(item.identity):
                item.result = hit[1].at(path)
                item.cached = True
                continue
        size = item.identity.size if item.identity else 0
        if size <= options.segment_bytes:
            batch.append(path)
            batch_files.append(item)
            batch_bytes += size
            if batch_bytes >= _BATCH_BYTES or len(batch) >= _BATCH_FILES:
                close_batch()
            continue
        close_batch()
        _plan_big(item, units, options.segment_bytes)
    close_batch()
    return files, units


def _plan_big(item: _File, units: list[Unit], segment_bytes: int) -> None:
    """Cut a big file into units of about `segment_bytes` of tensor data each."""
    try:
        header, item.token = read_header_token(item.path)
    except UnreadableFileError as error:
        item.result = error
        return
    item.header, item.segments = header, plan_segments(header, segment_bytes)
    entries = {entry.name: entry for entry in header.entries}
    group: list[Segment] = []
    group_bytes = 0
    for segment in (*item.segments, None):
        if segment is None or (group and group_bytes + segment.end - segment.begin > segment_bytes):
            if group:
                names = dict.fromkeys(s.name for s in group)
                cut = FileHeader(tuple(entries[n] for n in names), {}, header.file_size)
                item.units.append(len(units))
                units.append(_Part(item.path, cut, tuple(group), group_bytes, item.token))
            group, group_bytes = [], 0
        if segment is not None:
            group.append(segment)
            group_bytes += segment.end - segment.begin
    if not item.units:  # no float tensor at all: nothing to read but the header
        item.result = combine(item.path, header, (), ())


class _Runner:
    """Runs units inline or in a process pool, a bounded window ahead of the one being waited for."""

    def __init__(self, units: list[Unit], jobs: int) -> None:
        self._units = units
        self._done: dict[int, object] = {}
        self._futures: dict[int, Future[object]] = {}
        self._submitted = 0
        pooled = [unit for unit in units if _pooled(unit)]
        workers = min(jobs, len(pooled))
        parallel = workers > 1 and sum(unit.nbytes for unit in pooled) >= PARALLEL_MIN_BYTES
        self._pool = ProcessPoolExecutor(max_workers=workers) if parallel else None
        self._window = 2 * workers

    def result(self, index: int) -> object:
        """The outcome of unit `index`, computing or waiting as needed."""
        if index in self._done:
            return self._done[index]
        if self._pool is None or not _pooled(self._units[index]):
            outcome: object = _work(self._units[index])
        else:
            try:
                while self._submitted < min(len(self._units), index + self._window + 1):
                    if _pooled(self._units[self._submitted]):
                        unit = self._units[self._submitted]
                        self._futures[self._submitted] = self._pool.submit(_work, unit)
                    self._submitted += 1
                outcome = self._futures.pop(index).result()
            except BrokenProcessPool:  # a worker was killed (OOM killer, a signal): read the rest here
                self._abandon_pool()
                outcome = _work(self._units[index])
        self._done[index] = outcome
        return outcome

    def _abandon_pool(self) -> None:
        """Drop a broken pool: every unit not yet done is then read in this process, in order."""
        pool, self._pool = self._pool, None
        self._futures.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def forget_before(self, index: int) -> None:
        """Drop kept outcomes of units before `index`, which no later file needs."""
        for old in [i for i in self._done if i < index]:
            del self._done[old]

    def close(self) -> None:
        """Stop the workers, abandoning work not yet started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def scan_files(
    paths: Sequence[str], options: ScanOptions | None = None, *, folder: str | None = None, new: bool = False
) -> Iterator[tuple[str, Result]]:
    """Yield (path, FileScan or UnreadableFileError) for every path, in order.

    With a cache, the files' scans are kept in one index for `folder` (default: the deepest folder holding
    them all; a caller reading a run a part at a time passes the run folder, so that all parts share it).
    `new`: the caller knows these files are new or changed since it last read the run (`watch`): they are
    not looked up, and their scans are added to the index at a cost that does not grow with the run.
    """
    options = options or ScanOptions()
    folder = os.path.abspath(folder) if folder is not None else _folder(paths)
    cache = options.cache if folder else None
    stored = cache.load_index(folder) if cache is not None and not new else {}
    files, units = _plan(paths, options, stored)
    total = sum(unit.nbytes for unit in units)
    done = 0
    reported: set[int] = set()
    runner = _Runner(units, max(1, options.jobs))
    try:
        for item in files:
            if item.result is None:
                item.result = _outcome(item, runner)
                used = [item.batch[0]] if item.batch else item.units
                for index in used:
                    if index not in reported:
                        reported.add(index)
                        done += units[index].nbytes
                        if options.progress is not None:
                            options.progress(done, total)
                runner.forget_before(used[0])
            result = item.result
            if cache is None:  # nothing is stored at the end: the scan is the caller's alone
                item.result = None
            yield item.path, result
    finally:
        runner.close()
    if cache is not None and new:
        cache.add_to_index(folder, [entry for entry in _unchanged(files) if entry])
    elif cache is not None:
        _store_index(cache, folder, files, stored)


def _outcome(item: _File, runner: _Runner) -> Result:
    """Put together a file's result from its units' outcomes."""
    if item.batch is not None:
        index, position = item.batch
        outcomes = runner.result(index)
        assert isinstance(outcomes, list)
        result = outcomes[position]
        assert isinstance(result, (FileScan, UnreadableFileError))
        return result
    stats: list[TensorStats] = []
    changed = False
    for index in item.units:  # every unit is waited for, so none is left running
        outcome = runner.result(index)
        changed = changed or isinstance(outcome, FileChangedError)
        if isinstance(outcome, UnreadableFileError) and not changed:
            return outcome
        if isinstance(outcome, list):
            stats.extend(outcome)  # type: ignore[arg-type]
    if changed:  # replaced between the parts: read it again through one descriptor, one version whole
        return _scan_or_error(item.path)
    return combine(item.path, item.header, item.segments, stats)


def _folder(paths: Sequence[str]) -> str | None:
    """The folder whose index holds these files: the deepest one holding them all (None for no path)."""
    if not paths:
        return None
    names = [os.path.abspath(path) for path in paths]
    try:
        return os.path.commonpath([os.path.dirname(name) for name in names])
    except ValueError:  # paths on different Windows drives share no folder
        return None


def _unchanged(files: Sequence[_File]) -> Iterator[tuple[str, FileIdentity, FileScan] | None]:
    """(absolute path, identity, scan) of each file read now and unchanged since (None for the others)."""
    for item in files:
        fresh = isinstance(item.result, FileScan) and item.identity is not None and not item.cached
        if fresh and _identity(item.path) == item.identity:  # not changed while it was read
            yield os.path.abspath(item.path), item.identity, item.result  # type: ignore[misc]
        else:
            yield None


def _store_index(
    cache: StatsCache, folder: str, files: Sequence[_File], index: Mapping[str, tuple[list[int], FileScan]]
) -> None:
    """Rewrite the folder's index when this scan read something new or found stored files changed or gone.

    It keeps the fresh scans of files unchanged since they were read, the cached ones, and the stored
    scans of files not asked for this time (a caller that skips files it already has) that are unchanged.
    """
    kept: dict[str, tuple[str, Sequence[int], FileScan]] = {}
    fresh = False
    for item, entry in zip(files, _unchanged(files), strict=True):
        if entry is not None:
            kept[entry[0]], fresh = entry, True
        elif item.cached and isinstance(item.result, FileScan) and item.identity is not None:
            name = os.path.abspath(item.path)
            kept[name] = (name, item.identity, item.result)
    dropped = False
    for name, (identity, scan) in index.items():
        if name in kept:
            continue
        now = _identity(name)
        if now is not None and list(now) == identity:
            kept[name] = (name, identity, scan)
        else:
            dropped = True
    if fresh or dropped:
        cache.store_index(folder, list(kept.values()))
