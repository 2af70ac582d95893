"""Run directories: find snapshot files, tell kind and step of each tensor, and assemble the run."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from .activations import Signals
from .columns import Columns, Tensor, columns_from_tensors
from .context import CONTEXT_KEY, SCALARS_KEY, StepContext, parse_context, parse_scalars
from .errors import RunError, UnreadableFileError
from .naming import natural_key, strip_wrappers
from .reader import FileScan
from .scanning import ScanOptions, scan_files
from .shards import Piece, assemble, parse_shards
from .stats import TensorStats
from .summaries import parse_summaries, shape_of, stats_from_entry

KINDS = ("grad", "param", "update")
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
    """Everything read from a run directory, keyed (step, param, kind)."""

    path: str
    steps: tuple[int, ...]
    params: tuple[str, ...]
    tensors: dict[tuple[int, str, str], Tensor]
    unreadable: tuple[Note, ...]
    skipped: tuple[Note, ...]
    ordered: bool = False  # whether `params` follows a recorded model order (`order` metadata)
    modules: Mapping[str, str] = field(default_factory=dict)  # parameter -> module type, when recorded
    # Training context (analysis/context.py) and logged scalars by step, from the first file of the step
    # that carries them; empty for runs recorded without context.
    contexts: dict[int, StepContext] = field(default_factory=dict)
    scalars: dict[int, dict[str, float]] = field(default_factory=dict)
    signals: Signals = field(default_factory=Signals)  # loss and activations (analysis/activations.py)

    def get(self, step: int, param: str, kind: str) -> Tensor | None:
        """The tensor of `kind` for `param` at `step`, or None when it was not recorded."""
        return self.tensors.get((step, param, kind))

    @cached_property
    def columns(self) -> Columns:
        """The run as [step, param] arrays (analysis/columns.py): what vectorised code reads."""
        return columns_from_tensors(self.steps, self.params, self.tensors)


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
    entries = _list(run_dir)
    files = [run_dir / name for name in entries if is_snapshot_name(name)]
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
            run_dir / rank / name for rank in ranks for name in listings[rank] or () if is_snapshot_name(name)
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
        return sorted(os.listdir(folder), key=natural_key)
    except OSError as error:
        raise RunError(f"{folder}: cannot list the directory ({error.strerror or error})") from None


def _listing(folder: Path) -> list[str] | None:
    """A folder's entries in natural order, None if it cannot be listed (permission denied, vanished)."""
    try:
        return sorted(os.listdir(folder), key=natural_key)
    except OSError:
        return None


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
    path = Path(scan.path)
    metadata = scan.header.metadata
    try:
        summaries = parse_summaries(metadata)
        shards = parse_shards(metadata)
        found = [
            (key, stats, shape, dtype) for key, (stats, shape, dtype) in _entries(scan, summaries).items()
        ]
    except json.JSONDecodeError as error:  # say which entry, not just where the parser stopped
        key = next((k for k, v in metadata.items() if v == error.doc), "metadata")
        where = f"line {error.lineno} column {error.colno}"
        raise UnreadableFileError(
            path, f"bad gradcheck metadata: {key} is not valid JSON ({where})"
        ) from None
    except (ValueError, TypeError, RecursionError) as error:
        raise UnreadableFileError(path, f"bad gradcheck metadata: {error}") from None
    file_kind = _announced_kind(path)
    seen: dict[tuple[str, str], str] = {}
    folder = str(path.parent)
    for key, stats, shape, dtype in found:
        kind, param = split_key(key)
        if file_kind and kind != file_kind:  # the file name wins: Flax's `params/...` keys in `grads_3`
            kind, param = None, key
        if kind is None:
            file_kind = file_kind or kind_from_file_name(path)
            if file_kind is None:
                raise UnreadableFileError(
                    path,
                    f"cannot tell whether tensor {key!r} is a gradient, parameter or update: prefix keys "
                    "with grad/, param/ or update/, or put grads, params or updates in the file name",
                )
            kind = file_kind
        if (kind, param) in seen:
            raise UnreadableFileError(path, f"keys {seen[(kind, param)]!r} and {key!r} are the same tensor")
        seen[(kind, param)] = key
        shard = shards.get(param)
        name = shard.global_name if shard else param
        yield Piece(step, kind, name, stats, shape, dtype, scan.path, folder, shard)


def _announced_kind(path: Path) -> str | None:
    """The kind the file name announces, None when it names none or several (then key prefixes decide)."""
    try:
        return kind_from_file_name(path)
    except UnreadableFileError:
        return None


def _entries(
    scan: FileScan, summaries: dict[str, Mapping[str, object]]
) -> dict[str, tuple[TensorStats, tuple[int, ...], str]]:
    """(stats, shape, dtype) by key: streamed tensors, then precomputed summaries (stats mode)."""
    shapes = {entry.name: entry for entry in scan.header.entries}
    entries = {key: (stats, shapes[key].shape, shapes[key].dtype) for key, stats in scan.stats.items()}
    for key, summary in summaries.items():
        if key in entries:
            raise ValueError(f"{key!r} is both a tensor and a summary")
        entries[key] = (stats_from_entry(summary), shape_of(summary), str(summary.get("dtype", "?")))
    return entries


def _not_recorded(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """(key, why) of the tensors a recorder skipped (complex dtypes), from `gradcheck.not_recorded`; lenient."""
    try:
        table = json.loads(metadata.get("gradcheck.not_recorded", "{}"))
    except (ValueError, RecursionError):
        return []
    if not isinstance(table, dict):
        return []
    return [(key, why) for key, why in table.items() if isinstance(why, str)][:1000]


def load_run(run_dir: str | os.PathLike[str], options: ScanOptions | None = None) -> Run:
    """Read every snapshot file of a run; unreadable files become notes, not failures."""
    root = Path(run_dir)
    pieces: list[Piece] = []
    unreadable: list[Note] = []
    skipped: list[Note] = []
    declared_order: list[str] = []
    modules: dict[str, str] = {}
    files, unreadable_folders = find_snapshots(root)
    unreadable.extend(unreadable_folders)
    context: dict[int, StepContext] = {}
    scalars: dict[int, dict[str, float]] = {}
    signals = Signals()
    for name, scan in scan_files([str(path) for path in files], options):
        path = Path(name)
        try:
            if isinstance(scan, UnreadableFileError):
                raise scan
            check_format(path, scan.header.metadata)
            step = step_of(path, scan.header.metadata)
            found = list(pieces_of_scan(scan, step))
        except UnreadableFileError as error:
            unreadable.append(Note(str(path), error.problem))
            continue
        pieces.extend(found)
        skipped.extend(_read_context(path, step, scan.header.metadata, context, scalars))
        modules.update(context[step].modules if step in context else {})
        signals.add(str(path), step, scan.header.metadata)
        skipped.extend(Note(str(path), reason, name) for name, reason in scan.skipped.items())
        skipped.extend(Note(str(path), reason, name) for name, reason in _not_recorded(scan.header.metadata))
        declared_order = declared_order or order_of(scan.header.metadata)
    skipped.extend(Note(file, problem) for file, problem in signals.problems)
    whole, problems = assemble(pieces)
    unreadable.extend(Note(file, problem) for file, problem in problems)
    names = _display_names(whole)
    tensors = {(s, names[p], k): Tensor(v.stats, v.shape, v.dtype, v.file) for (s, p, k), v in whole.items()}
    _check_shapes(tensors)
    present = {param for _, param, _ in tensors}
    order = [names.get(name, name) for name in declared_order]
    params = _param_order(present, order)
    return Run(
        path=str(root),
        steps=tuple(sorted({step for step, _, _ in tensors})),
        params=params,
        tensors=tensors,
        unreadable=tuple(unreadable),
        skipped=tuple(skipped),
        ordered=any(name in present for name in order),
        modules={names.get(name, name): kind for name, kind in modules.items()},
        contexts={step: context[step] for step in sorted(context)},
        scalars={step: scalars[step] for step in sorted(scalars)},
        signals=signals,
    )


def _display_names(whole: Mapping[tuple[int, str, str], object]) -> dict[str, str]:
    """Each parameter name without wrapper prefixes (naming.strip_wrappers), unless that merges two of one kind."""
    raw = {param for _, param, _ in whole}
    names = strip_wrappers(sorted(raw))
    by_kind: dict[str, set[str]] = {}
    for _, param, kind in whole:
        by_kind.setdefault(kind, set()).add(param)
    if any(len({names[p] for p in group}) < len(group) for group in by_kind.values()):
        return {name: name for name in raw}
    return names


def _read_context(
    path: Path,
    step: int,
    metadata: Mapping[str, str],
    context: dict[int, StepContext],
    scalars: dict[int, dict[str, float]],
) -> list[Note]:
    """Parse a file's context and scalars into the run's (first file of a step wins); malformed parts are notes."""
    problems: list[str] = []
    if CONTEXT_KEY in metadata and step not in context:
        context[step], found = parse_context(metadata[CONTEXT_KEY])
        problems += found
    if SCALARS_KEY in metadata and step not in scalars:
        scalars[step], found = parse_scalars(metadata[SCALARS_KEY])
        problems += found
    return [Note(str(path), problem) for problem in problems]


def _check_shapes(tensors: Mapping[tuple[int, str, str], Tensor]) -> None:
    """Refuse a run whose gradient, parameter and update of one name at one step differ in shape."""
    seen: dict[tuple[int, str], tuple[str, Tensor]] = {}
    for (step, param, kind), tensor in tensors.items():
        other_kind, other = seen.setdefault((step, param), (kind, tensor))
        if tensor.shape != other.shape:
            raise RunError(
                f"{param!r} at step {step}: {other_kind} has shape {list(other.shape)} (in {other.file}) "
                f"but {kind} has shape {list(tensor.shape)} (in {tensor.file})"
            )


def _param_order(names: set[str], declared: list[str]) -> tuple[str, ...]:
    known = [name for name in dict.fromkeys(declared) if name in names]
    rest = sorted(names.difference(known), key=natural_key)
    return tuple(known + rest)
