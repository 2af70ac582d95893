"""Reading a run's snapshot files: each file once into a `FileRead` (its tensors as one block, each row mapped
to (kind, parameter)), from which `filling.fill` builds the run's columns.

A file's keys are mapped to (kind, parameter) once per distinct key list and file-name kind (most files of a
run share one key list), so the per-file Python work does not grow with the number of tensors it holds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from .activations import ACTIVATIONS_KEY, ModuleActivation, parse_activations
from .cache import FileIdentity, file_identity
from .columns import KINDS, StatsBlock
from .context import CONTEXT_KEY, SCALARS_KEY, StepContext, parse_context, parse_scalars
from .errors import UnreadableFileError
from .reader import FileScan
from .shards import Shard, parse_shards

_KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}


@dataclass(frozen=True, eq=False)
class FileRead:
    """One readable snapshot file as the run uses it: rows of `block` are tensors of (kinds[i], params[i]).

    `params` are global names (a shard's `global` name); `shards[i]` is the row's shard, or `shards` is None
    when the file holds no shard. The metadata parts are parsed once here, and taken by the run only when
    the file is the first of its step to carry them.
    """

    path: str
    identity: FileIdentity | None
    step: int
    block: StatsBlock | None  # None once its rows live only in a run's columns (filling.py)
    kinds: np.ndarray  # int8 codes into KINDS, one per row
    params: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    shards: tuple[Shard | None, ...] | None
    skipped: tuple[tuple[str, str], ...]  # (tensor, reason): not summarised, or not recorded
    context: tuple[StepContext, list[str]] | None
    scalars: tuple[dict[str, float], list[str]] | None
    activations: tuple[dict[str, ModuleActivation], list[str]] | None
    order: str | None  # the `order` metadata text, parsed only for the first file that has one


def identity_of(path: str) -> FileIdentity | None:
    """The identity of a file now (before it is read: a change after it means the next read reads it again)."""
    try:
        return file_identity(os.stat(path))
    except (OSError, ValueError):
        return None


def block_of(scan: FileScan) -> StatsBlock:
    """The scan's block (the reader's `FileScan.block`), or one built from its per-tensor stats (older reader)."""
    block = getattr(scan, "block", None)
    return block if isinstance(block, StatsBlock) else StatsBlock.from_stats(scan.stats)


def read_file(scan: FileScan, identity: FileIdentity | None, step: int, interned: dict) -> FileRead:
    """A scanned file as a FileRead; UnreadableFileError when its metadata or keys make no sense.

    `interned` keeps one copy of what every file of a run usually repeats (shapes, dtypes, `order` text),
    so a long run holds it once.
    """
    from .runs import _not_recorded  # runs.py imports this module's users lazily: no import cycle

    path = Path(scan.path)
    metadata = scan.header.metadata
    block, shapes, dtypes, shards = _tensors(scan, path)
    name_kind = _name_kind(path)
    mapped = _mapping(block.keys, name_kind)
    if isinstance(mapped, str):
        raise UnreadableFileError(path, mapped)
    kinds, params, keys = mapped
    if block.keys is not keys:  # one key tuple (and one of shapes, of dtypes) per run, not one per file
        block = replace(block, keys=keys)
    shapes, dtypes = interned.setdefault(shapes, shapes), interned.setdefault(dtypes, dtypes)
    if shards:
        found = [shards.get(param) for param in params]
        params = tuple(shard.global_name if shard else p for shard, p in zip(found, params, strict=True))
    order = metadata.get("order")
    return FileRead(
        path=scan.path,
        identity=identity,
        step=step,
        block=block,
        kinds=kinds,
        params=params,
        shapes=shapes,
        dtypes=dtypes,
        shards=tuple(found) if shards else None,
        skipped=(*scan.skipped.items(), *_not_recorded(metadata)),
        context=parse_context(metadata[CONTEXT_KEY]) if CONTEXT_KEY in metadata else None,
        scalars=parse_scalars(metadata[SCALARS_KEY]) if SCALARS_KEY in metadata else None,
        activations=parse_activations(metadata[ACTIVATIONS_KEY]) if ACTIVATIONS_KEY in metadata else None,
        order=None if order is None else interned.setdefault(order, order),
    )


def _tensors(
    scan: FileScan, path: Path
) -> tuple[StatsBlock, tuple[tuple[int, ...], ...], tuple[str, ...], dict[str, Shard]]:
    """The file's streamed tensors then its stats-mode summaries, as one block with shapes and dtypes."""
    metadata = scan.header.metadata
    try:
        summaries = scan.summaries  # one block, built column-wise; the run index keeps it (reader.py)
        shards = parse_shards(metadata)
        block = block_of(scan)
        entries = {entry.name: entry for entry in scan.header.entries}
        shapes = [entries[key].shape for key in block.keys]
        dtypes = [entries[key].dtype for key in block.keys]
        if summaries is not None:
            both = set(block.keys).intersection(summaries.block.keys)
            if both:
                key = next(k for k in summaries.block.keys if k in both)
                raise ValueError(f"{key!r} is both a tensor and a summary")
            shapes.extend(summaries.shapes)
            dtypes.extend(summaries.dtypes)
            block = concatenate([block, summaries.block]) if len(block) else summaries.block
    except json.JSONDecodeError as error:  # say which entry, not just where the parser stopped
        key = next((k for k, v in metadata.items() if v == error.doc), "metadata")
        where = f"line {error.lineno} column {error.colno}"
        raise UnreadableFileError(
            path, f"bad gradcheck metadata: {key} is not valid JSON ({where})"
        ) from None
    except (ValueError, TypeError, RecursionError) as error:
        raise UnreadableFileError(path, f"bad gradcheck metadata: {error}") from None
    return block, tuple(shapes), tuple(dtypes), shards


def concatenate(blocks: list[StatsBlock]) -> StatsBlock:
    """One block of several, rows in order."""
    from .columns import STAT_FIELDS

    arrays = {name: np.concatenate([getattr(b, name) for b in blocks]) for name in STAT_FIELDS}
    keys = tuple(key for b in blocks for key in b.keys)
    return StatsBlock(keys=keys, **arrays, alive=tuple(a for b in blocks for a in b.alive))


def _name_kind(path: Path) -> str | None | UnreadableFileError:
    from .runs import kind_from_file_name

    try:
        return kind_from_file_name(path)
    except UnreadableFileError as error:
        return error


@lru_cache(maxsize=256)  # one entry per distinct key list: a run has a handful
def _mapping(
    keys: tuple[str, ...], name_kind: str | None | UnreadableFileError
) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]] | str:
    """(kind codes, params, the keys) of a file's keys, or what is wrong (as pieces_of_scan did per tensor)."""
    from .runs import split_key

    file_kind = name_kind if isinstance(name_kind, str) else None
    seen: dict[tuple[str, str], str] = {}
    kinds = np.empty(len(keys), dtype=np.int8)
    params = []
    for i, key in enumerate(keys):
        kind, param = split_key(key)
        if file_kind and kind != file_kind:  # the file name wins: Flax's `params/...` keys in `grads_3`
            kind, param = None, key
        if kind is None:
            if isinstance(name_kind, UnreadableFileError):
                return name_kind.problem
            if file_kind is None:
                return (
                    f"cannot tell whether tensor {key!r} is a gradient, parameter or update: prefix keys "
                    "with grad/, param/ or update/, or put grads, params or updates in the file name"
                )
            kind = file_kind
        if (kind, param) in seen:
            return f"keys {seen[(kind, param)]!r} and {key!r} are the same tensor"
        seen[(kind, param)] = key
        kinds[i] = _KIND_CODE[kind]
        params.append(param)
    kinds.flags.writeable = False  # shared by every file with this key list
    return kinds, tuple(params), keys
