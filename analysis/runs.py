"""Run directories: find snapshot files, tell kind and step of each tensor, and assemble the run."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from .activations import Signals
from .columns import KINDS, Columns, Tensor
from .context import StepContext
from .errors import RunError, UnreadableFileError
from .filling import Filled, declared_order, fill, fill_sharded
from .loading import FileRead, identity_of, read_file
from .naming import natural_key
from .reader import FileScan
from .scanning import ScanOptions, scan_files
from .shards import Piece
from .views import TensorsView

FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
# Words that name a kind, in key prefixes (`grad/w`) and in file names (`grads_100.safetensors`).
_KIND_WORDS = {
    "grad": "grad", "grads": "grad", "gradient": "grad", "gradients": "grad",
    "param": "param", "params": "param", "parameter": "param", "parameters": "param",
    "weights": "param",
    "update": "update", "updates": "update",
}  # fmt: skip
_INTEGER = re.compile(r"[0-9]+")
_MAX_STEP_DIGITS = 18  # a step fits in an int64; longer digit runs are not step numbers
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Note:
    """Something skipped or unreadable, with the file and the reason in plain words."""

    file: str
    reason: str
    tensor: str | None = None


@dataclass(frozen=True)
class Run:
    """Everything read from a run directory: its statistics as [step, param] columns, and notes."""

    path: str
    steps: tuple[int, ...]
    params: tuple[str, ...]
    columns: Columns  # the run as [step, param] arrays (analysis/columns.py): what vectorised code reads
    unreadable: tuple[Note, ...]
    skipped: tuple[Note, ...]
    ordered: bool = False  # whether `params` follows a recorded model order (`order` metadata)
    modules: Mapping[str, str] = field(default_factory=dict)  # parameter -> module type, when recorded
    # Training context (analysis/context.py) by step, from the first file of the step that carries it; empty
    # for runs recorded without context.
    contexts: dict[int, StepContext] = field(default_factory=dict)
    signals: Signals = field(default_factory=Signals)  # loss and activations (analysis/activations.py)
    # What `load_run(..., previous=run)` reuses: the files read (their rows live in `columns`) and each raw
    # parameter name's display name. Empty for sharded runs, which are read whole every time.
    _reads: tuple[FileRead, ...] = field(default=(), repr=False, compare=False)
    _names: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # When `columns` copied the rows of a previous run (`_base`), the step rows that differ from its (else None).
    _fresh: np.ndarray | None = field(default=None, repr=False, compare=False)
    _base: Columns | None = field(default=None, repr=False, compare=False)

    @property
    def scalars(self) -> dict[int, dict[str, float]]:
        """Logged scalars (`gradcheck.scalars`: loss, ...) by step, in step order: those of `signals`, their one owner."""
        return dict(sorted(self.signals.scalars.items()))

    @cached_property
    def tensors(self) -> Mapping[tuple[int, str, str], Tensor]:
        """{(step, param, kind): Tensor}: a per-object view of `columns`, each Tensor built when asked for."""
        return TensorsView(self.columns)

    def get(self, step: int, param: str, kind: str) -> Tensor | None:
        """The tensor of `kind` for `param` at `step`, or None when it was not recorded."""
        return self.tensors.get((step, param, kind))


def is_snapshot_name(name: str) -> bool:
    """Whether a directory entry name is a finished snapshot file (not hidden, not an in-progress write)."""
    return name.endswith(SUFFIX) and not name.startswith(".")


_RANK_FOLDER = re.compile(r"rank[0-9]+")


def is_rank_folder(name: str) -> bool:
    """Whether a directory name is one rank's folder of a multi-rank run (`rank00001`)."""
    return _RANK_FOLDER.fullmatch(name) is not None


def find_snapshot_files(run_dir: Path) -> list[Path]:
    """The snapshot files of a run, in natural order: directly inside `run_dir`, or in its rank folders."""
    return find_snapshots(run_dir)[0]


def find_snapshots(run_dir: Path) -> tuple[list[Path], list[Note]]:
    """The snapshot files of a run, and the rank folders that could not be listed (a note each)."""
    files, notes = snapshot_paths(run_dir)
    return [Path(file) for file in files], notes


def snapshot_paths(run_dir: Path) -> tuple[list[str], list[Note]]:
    """find_snapshots as strings (`str(run_dir / name)`): a refresh of a long run lists thousands."""
    entries = _list(run_dir)
    base = str(run_dir)
    prefix = "" if base == "." else os.path.join(base, "")  # Path(".") / name is `name`
    files = [prefix + name for name in entries if is_snapshot_name(name)]
    if files:
        return files, []
    listings = {name: _listing(run_dir / name) for name in entries if (run_dir / name).is_dir()}
    nested = [
        name for name, listing in listings.items() if listing is None or any(map(is_snapshot_name, listing))
    ]
    ranks = [name for name in nested if is_rank_folder(name)]
    if ranks:
        unreadable = [
            Note(str(run_dir / rank), f"rank folder cannot be listed: {problem}")
            for rank in ranks
            for problem in [_list_problem(run_dir / rank)]
            if listings[rank] is None
        ]
        found = [
            str(run_dir / rank / name)
            for rank in ranks
            for name in listings[rank] or ()
            if is_snapshot_name(name)
        ]
        return found, unreadable
    nested = [name for name in nested if listings[name] is not None]
    if nested:
        shown = ", ".join(nested[:5]) + (", ..." if len(nested) > 5 else "")
        raise RunError(f"{run_dir}: no .safetensors files here, but these subfolders hold runs: {shown}")
    raise RunError(f"{run_dir}: no .safetensors snapshot files in this directory")


def _list(folder: Path) -> list[str]:
    if not folder.exists():
        raise RunError(f"{folder}: no such directory")
    if not folder.is_dir():
        raise RunError(
            f"{folder}: not a directory (give the run directory that holds the .safetensors files)"
        )
    try:
        return natural_sorted(os.listdir(folder))
    except OSError as error:
        raise RunError(f"{folder}: cannot list the directory ({error.strerror or error})") from None


def _listing(folder: Path) -> list[str] | None:
    """A folder's entries in natural order, None if it cannot be listed (permission denied, vanished)."""
    try:
        return natural_sorted(os.listdir(folder))
    except OSError:
        return None


def natural_sorted(names: list[str]) -> list[str]:
    """Names in natural order; sorted as text first, which makes the natural sort of padded step numbers
    a single pass (and orders names of one natural key, `a01` and `a1`, the same way every time)."""
    return sorted(sorted(names), key=natural_key)


def _list_problem(folder: Path) -> str:
    try:
        os.listdir(folder)
    except OSError as error:
        return (error.strerror or str(error)).lower()
    return "it changed while being listed"


def check_format(path: Path, metadata: dict[str, str]) -> None:
    """Reject files that declare a run format this version does not know."""
    declared = metadata.get("gradcheck.format")
    if declared is not None and declared.strip() != FORMAT_VERSION:
        raise UnreadableFileError(
            path, f"run format {declared!r} is not supported (this gradcheck reads format {FORMAT_VERSION})"
        )


def step_of(path: Path, metadata: dict[str, str]) -> int:
    """The step a file records: metadata `step`, else the last integer in the file name, else 0."""
    if "step" in metadata:
        text = metadata["step"].strip()
        if not re.fullmatch(r"-?[0-9]+", text):
            raise UnreadableFileError(path, f"metadata step {_shorten(metadata['step'])!r} is not an integer")
        return _step_number(path, text)
    numbers = _INTEGER.findall(path.name[: -len(SUFFIX)])
    return _step_number(path, numbers[-1]) if numbers else 0


def _step_number(path: Path, digits: str) -> int:
    if len(digits.lstrip("-").lstrip("0")) > _MAX_STEP_DIGITS:
        raise UnreadableFileError(path, f"step {_shorten(digits)} is too large to be a training step")
    return int(digits)


def _shorten(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep else text[:keep] + "..."


def kind_from_file_name(path: Path) -> str | None:
    """The kind a file name announces (`grads_100` -> grad), None if none; an error if it names several."""
    words = {_KIND_WORDS[w] for w in _WORD.findall(path.name[: -len(SUFFIX)].lower()) if w in _KIND_WORDS}
    if len(words) > 1:
        raise UnreadableFileError(path, f"file name names several kinds ({', '.join(sorted(words))})")
    return words.pop() if words else None


@lru_cache(maxsize=1 << 16)  # the same keys come back in every step file
def split_key(key: str) -> tuple[str | None, str]:
    """(kind, param) from a tensor key: `grad/fc.weight` -> ("grad", "fc.weight"); no known prefix -> None."""
    prefix, slash, rest = key.partition("/")
    if slash and rest and prefix.lower() in _KIND_WORDS:
        return _KIND_WORDS[prefix.lower()], rest
    return None, key


def order_of(metadata: dict[str, str]) -> list[str]:
    """Parameter names in model order from metadata `order`, [] when absent or not a list of strings."""
    try:
        order = json.loads(metadata.get("order", "[]"))
    except (ValueError, RecursionError):
        return []
    return [name for name in order if isinstance(name, str)] if isinstance(order, list) else []


def pieces_of_scan(scan: FileScan, step: int) -> Iterator[Piece]:
    """Every float tensor of a scanned file, and every summary in its metadata, as pieces of the run."""
    read = read_file(scan, None, step, {})
    assert read.block is not None
    folder = str(Path(scan.path).parent)
    shards = read.shards or (None,) * len(read.params)
    for i, (code, param, shard) in enumerate(zip(read.kinds.tolist(), read.params, shards, strict=True)):
        stats = read.block.stats(i)
        yield Piece(step, KINDS[code], param, stats, read.shapes[i], read.dtypes[i], scan.path, folder, shard)


def _not_recorded(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """(key, why) of the tensors a recorder skipped (complex dtypes), from `gradcheck.not_recorded`; lenient."""
    try:
        table = json.loads(metadata.get("gradcheck.not_recorded", "{}"))
    except (ValueError, RecursionError):
        return []
    if not isinstance(table, dict):
        return []
    return [(key, why) for key, why in table.items() if isinstance(why, str)][:1000]


def load_run(
    run_dir: str | os.PathLike[str], options: ScanOptions | None = None, *, previous: Run | None = None
) -> Run:
    """Read every snapshot file of a run; unreadable files become notes, not failures.

    With `previous` (an earlier load of the same directory), files whose path and identity (device, inode,
    size, mtime, ctime) are unchanged are not read again: their rows come from `previous.columns`.
    """
    root = Path(run_dir)
    files, unreadable = snapshot_paths(root)
    with gc_paused():  # millions of arrays and small objects, no cycles: the collector would cost ~30 %
        reads, problems = _read_files(files, options, previous, str(root))
        unreadable.extend(problems)
        sharded = any(read.shards for read in reads)
        old = (previous.columns, previous._names, previous._reads) if previous and previous._reads else None
        filled = fill_sharded(reads) if sharded else fill(reads, old)
    unreadable.extend(Note(file, problem) for file, problem in filled.problems)
    return _run(root, filled, reads, unreadable, old[0] if old else None)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a while (on again after, if it was on), exceptions too."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _read_files(
    paths: list[str], options: ScanOptions | None, previous: Run | None, folder: str
) -> tuple[list[FileRead], list[Note]]:
    """Each file as a FileRead, in order: reused from `previous` when unchanged, else scanned; notes for the rest."""
    known = {read.path: read for read in previous._reads} if previous is not None else {}
    identities = {path: identity_of(path) for path in paths}
    reused = {
        path: known[path]
        for path in paths
        if path in known and identities[path] is not None and known[path].identity == identities[path]
    }
    scanned: dict[str, FileRead | Note] = {}
    interned: dict = {}  # one copy of what the files repeat (loading.read_file)
    todo = [path for path in paths if path not in reused]
    # One run index for the whole folder (analysis/cache.py); the files `previous` did not have are new or
    # changed, so the index is not looked up for them (what keeps a watch refresh cheap).
    for name, scan in scan_files(todo, options, folder=folder, new=previous is not None):
        path = Path(name)
        try:
            if isinstance(scan, UnreadableFileError):
                raise scan
            check_format(path, scan.header.metadata)
            step = step_of(path, scan.header.metadata)
            scanned[name] = read_file(scan, identities.get(name), step, interned)
        except UnreadableFileError as error:
            scanned[name] = Note(str(path), error.problem)
    found = [reused.get(path) or scanned[path] for path in paths]
    return [r for r in found if isinstance(r, FileRead)], [r for r in found if isinstance(r, Note)]


def _run(
    root: Path, filled: Filled, reads: list[FileRead], unreadable: list[Note], base: Columns | None
) -> Run:
    """The Run of filled columns and what the files' metadata says (the first file of a step wins)."""
    contexts: dict[int, StepContext] = {}
    modules: dict[str, str] = {}
    skipped: list[Note] = []
    signals = Signals()
    signal_problems: list[tuple[str, str]] = []
    applied = None
    for read in reads:
        problems: list[str] = []
        if read.context is not None and read.step not in contexts:
            contexts[read.step], found = read.context
            problems += found
        skipped.extend(Note(read.path, problem) for problem in problems)
        context = contexts.get(read.step)
        if context is not None and context is not applied:  # the same context again changes nothing
            modules.update(context.modules)
            applied = context
        skipped.extend(Note(read.path, reason, name) for name, reason in read.skipped)
        signal_problems.extend(_add_signals(signals, read))
    skipped.extend(Note(file, problem) for file, problem in signal_problems)
    columns, names = filled.columns, filled.names
    order = [names.get(name, name) for name in declared_order(reads)]
    present = set(columns.params)
    return Run(
        path=str(root),
        steps=tuple(columns.steps.tolist()),
        params=columns.params,
        columns=columns,
        unreadable=tuple(unreadable),
        skipped=tuple(skipped),
        ordered=any(name in present for name in order),
        modules={names.get(name, name): kind for name, kind in modules.items()},
        contexts={step: contexts[step] for step in sorted(contexts)},
        signals=signals,
        _reads=filled.reads,
        _names=names,
        _fresh=filled.fresh,
        _base=base if filled.fresh is not None else None,
    )


def _add_signals(signals: Signals, read: FileRead) -> list[tuple[str, str]]:
    """Take a file's activations and scalars into `signals` when it is the first of its step to carry them."""
    found: list[str] = []
    if read.activations is not None and read.step not in signals.activations:
        signals.activations[read.step], found = read.activations
    if read.scalars is not None and read.step not in signals.scalars:
        values, more = read.scalars
        signals.scalars[read.step] = dict(values)
        found = found + more
    return [(read.path, problem) for problem in found]
