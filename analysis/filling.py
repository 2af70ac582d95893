"""Fill a run's [step, param] columns from its files' blocks, without a Python object per tensor.

Each file's rows go into the columns with a few numpy scatters (one per statistic and kind). Rows of files
unchanged since a previous load are not read again: they are gathered from the previous run's columns, all
such files at once. The first file of a tensor wins; the same tensor twice in one folder is an error, as in
shards.assemble (which still merges the rare sharded runs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .columns import EMPTY, INT_FIELDS, KINDS, STAT_FIELDS, Columns, KindColumns, Tensor, columns_from_tensors
from .errors import RunError
from .loading import FileRead
from .naming import natural_key, strip_wrappers
from .shards import Piece, assemble
from .units import BitmapList
from .views import AliveView

_INDEX_FIELDS = ("file", "dtype", "shape")
# New files are scattered into the columns in batches of about this many rows: one file at a time cost ~50
# numpy calls per file whatever its size (100,000 one-tensor files: 7 s of 41, issue 14); a batch's blocks
# are let go once it is in.
_BATCH_ROWS = 8192


@dataclass(frozen=True, eq=False)
class Filled:
    """What filling produced: the columns, each raw name's display name, and shard problems."""

    columns: Columns
    names: Mapping[str, str]
    reads: tuple[FileRead, ...]  # without blocks: their rows now live in `columns`
    problems: list[tuple[str, str]]
    # Step rows that differ from the previous run's (new, or given cells by new files) when the previous
    # run's rows were copied whole (a growing run); None: every row is new.
    fresh: np.ndarray | None = None


def display_names(raw: set[str], by_kind: Mapping[str, set[str]]) -> dict[str, str]:
    """Each name without wrapper prefixes (naming.strip_wrappers), unless that merges two names of one kind."""
    names = strip_wrappers(sorted(raw))
    if any(len({names[p] for p in group}) < len(group) for group in by_kind.values()):
        return {name: name for name in raw}
    return names


def param_order(names: set[str], declared: list[str]) -> tuple[str, ...]:
    """Declared (model) order first, the rest in natural order."""
    known = [name for name in dict.fromkeys(declared) if name in names]
    rest = sorted(names.difference(known), key=natural_key)
    return tuple(known + rest)


def declared_order(reads: Sequence[FileRead]) -> list[str]:
    """Parameter names in model order from the first file whose `order` metadata lists any."""
    from .runs import order_of

    for read in reads:
        if read.order is not None:
            found = order_of({"order": read.order})
            if found:
                return found
    return []


Previous = tuple[Columns, Mapping[str, str], Sequence[FileRead]]  # a run's columns, names and reads


def fill(reads: list[FileRead], previous: Previous | None) -> Filled:
    """The columns of a run's readable files, in file order (reads without a block come from `previous`).

    Each read in `reads` is replaced by one without its block once its rows are in the columns, so that a
    long run does not hold every file's block and the columns at once.
    """
    groups = {(id(r.kinds), id(r.params)): r for r in reads}.values()  # one per distinct key mapping
    by_kind: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for read in groups:
        for code, param in zip(read.kinds.tolist(), read.params, strict=True):
            by_kind[KINDS[code]].add(param)
    raw = set().union(*by_kind.values())
    names = display_names(raw, {kind: group for kind, group in by_kind.items() if group})
    order = [names.get(name, name) for name in declared_order(reads)]
    params = param_order({names[name] for name in raw}, order)
    steps = np.array(sorted({r.step for r in reads if len(r.params)}), dtype=np.int64)
    filler = _Filler(steps, params, names, previous)
    done = start = filler.extend(reads) if previous is not None else 0
    # Consecutive new files together (up to _BATCH_ROWS rows), consecutive reused ones too.
    while start < len(reads):
        end, rows, new = start + 1, len(reads[start].params), reads[start].block is not None
        while end < len(reads) and (reads[end].block is not None) == new and (not new or rows < _BATCH_ROWS):
            rows += len(reads[end].params)
            end += 1
        reads[start:end] = filler.add(reads[start:end])  # the blocks go: their rows are in the columns
        start = end
    filler.check_shapes(
        np.array(sorted(filler.touched), dtype=np.intp) if done else None
    )  # the rest: checked
    fresh = np.array(sorted(filler.touched), dtype=np.intp) if done else None
    return Filled(filler.columns(), names, tuple(filler.reads), [], fresh)


class _Filler:
    """Columns being filled, batch by batch in file order."""

    def __init__(
        self,
        steps: np.ndarray,
        params: tuple[str, ...],
        names: Mapping[str, str],
        previous: Previous | None,
    ) -> None:
        self.steps, self.params, self.names, self.previous = steps, params, names, previous
        self.kinds = {kind: _lazy_kind(len(steps), len(params)) for kind in KINDS}
        self.alive_index = {kind: np.full((len(steps), len(params)), -1, np.int32) for kind in KINDS}
        self.order = np.full((len(steps), len(params), len(KINDS)), -1, np.int32)  # row number, for errors
        self.rows = 0
        self.cols: dict[int, np.ndarray] = {}
        self.places: dict[tuple, np.ndarray] = {}
        self.old_rows: dict[int, int] | None = None
        self.files: list[str] = []
        self.reads: list[FileRead] = []
        self.touched: set[int] = set()  # step rows that rows were added to
        old = previous[0] if previous else None
        self.alive = BitmapList(_alive_values(old) if old else ())  # made ints only when read
        self.shapes = list(old.shapes) if old else []
        self.dtypes = list(old.dtypes) if old else []
        self.shape_at = {shape: i for i, shape in enumerate(self.shapes)}
        self.dtype_at = {dtype: i for i, dtype in enumerate(self.dtypes)}
        self.step_row = {step: i for i, step in enumerate(steps.tolist())}
        self.param_col = {param: i for i, param in enumerate(params)}

    def _col(self, params: tuple[str, ...]) -> np.ndarray:
        found = self.cols.get(id(params))
        if found is None:
            found = np.array([self.param_col[self.names[p]] for p in params], dtype=np.intp)
            self.cols[id(params)] = found
        return found

    def add(self, batch: list[FileRead]) -> list[FileRead]:
        """Scatter a batch's rows into the columns (the first file of a tensor wins); the reads without blocks."""
        first = len(self.files)
        self.files.extend(read.path for read in batch)
        lengths = [len(read.params) for read in batch]
        s = np.repeat(np.array([self.step_row.get(r.step, 0) for r in batch], np.intp), lengths)
        p = np.concatenate([self._col(r.params) for r in batch]) if batch else np.zeros(0, np.intp)
        k = np.concatenate([r.kinds for r in batch]).astype(np.intp)
        f = np.repeat(np.arange(first, first + len(batch), dtype=np.int32), lengths)
        values = self._values(batch, s.size)
        rows = np.arange(self.rows, self.rows + s.size)
        self.rows += s.size
        keep = self._first_only(s, p, k, f)
        self.touched.update(np.unique(s).tolist())
        for code, kind in enumerate(KINDS):
            here = keep & (k == code)
            si, pi = s[here], p[here]
            column = self.kinds[kind]
            column.present[si, pi] = True
            for name, array in values.items():
                target = self.alive_index[kind] if name == "alive" else getattr(column, name)
                target[si, pi] = f[here] if name == "file" else array[here]
            self.order[si, pi, code] = rows[here]
        emptied = [read if read.block is None else _emptied(read) for read in batch]
        if keep.all():  # a file some of whose rows lost to an earlier file is read again next time
            self.reads.extend(emptied)
        else:
            ends = np.cumsum(lengths)
            kept = [bool(keep[end - n : end].all()) for n, end in zip(lengths, ends.tolist(), strict=True)]
            self.reads.extend(r for r, whole in zip(emptied, kept, strict=True) if whole)
        return emptied

    def extend(self, reads: Sequence[FileRead]) -> int:
        """Copy the previous run's rows when `reads` start with its reads and only add steps after its last,
        the same parameters and names (a growing run: watch); return how many reads that placed (else 0)."""
        assert self.previous is not None
        old, old_names, old_reads = self.previous
        count = len(old_reads)
        if not (
            old.params == self.params
            and len(old.files) == count <= len(reads)
            and all(a is b for a, b in zip(reads, old_reads, strict=False))
            and np.array_equal(self.steps[: len(old.steps)], old.steps)
            and all(self.names.get(raw) == name for raw, name in old_names.items())
        ):
            return 0
        rows = len(old.steps)
        old_alive = _alive_indexes(old)
        for kind, column in self.kinds.items():
            for name in ("present", *STAT_FIELDS, *_INDEX_FIELDS):
                getattr(column, name)[:rows] = getattr(old.kinds[kind], name)
            self.alive_index[kind][:rows] = old_alive[kind]
            self.order[:rows, :, KINDS.index(kind)] = np.where(old.kinds[kind].present, 0, -1)
        self.rows = 1  # the copied rows come first: an error names them as the earlier files
        self.files.extend(old.files)
        self.reads.extend(old_reads)
        return count

    def _first_only(self, s: np.ndarray, p: np.ndarray, k: np.ndarray, f: np.ndarray) -> np.ndarray:
        """Rows whose tensor is not in the columns yet; a tensor twice in one folder is an error."""
        cells = (s * len(self.params) + p) * len(KINDS) + k
        taken = np.zeros(s.size, dtype=bool)
        for code, kind in enumerate(KINDS):
            here = k == code
            taken[here] = self.kinds[kind].present[s[here], p[here]]
        unique, first = np.unique(cells, return_index=True)
        if unique.size == cells.size and not taken.any():
            return np.ones(s.size, dtype=bool)
        keep = np.zeros(s.size, dtype=bool)
        keep[first] = True
        keep &= ~taken
        for i in np.flatnonzero(~keep).tolist():  # rare: replicated tensors of multi-rank runs
            code = int(k[i])
            earlier = (
                int(self.kinds[KINDS[code]].file[s[i], p[i]])
                if taken[i]
                else int(f[first[np.searchsorted(unique, cells[i])]])
            )
            if os.path.dirname(self.files[earlier]) == os.path.dirname(self.files[int(f[i])]):  # one folder
                what = f"{self.params[int(p[i])]!r} ({KINDS[code]}) at step {int(self.steps[s[i]])}"
                raise RunError(f"{what} is in two files: {self.files[earlier]} and {self.files[int(f[i])]}")
        return keep

    def _values(self, batch: list[FileRead], n: int) -> dict[str, np.ndarray]:
        """Every statistic, dtype, shape and bitmap place of the batch's rows."""
        if batch[0].block is None:
            return self._gathered(batch, n)
        blocks = [read.block for read in batch]
        assert all(block is not None for block in blocks)
        values = {name: _joined([getattr(block, name) for block in blocks]) for name in STAT_FIELDS}
        values["shape"] = _joined([self._places(read.shapes, self.shape_at, self.shapes) for read in batch])
        values["dtype"] = _joined([self._places(read.dtypes, self.dtype_at, self.dtypes) for read in batch])
        values["alive"] = np.arange(len(self.alive), len(self.alive) + n)
        values["file"] = np.zeros(n, np.int32)  # set from the batch's file numbers
        for block in blocks:
            self.alive.extend(block.alive)
        return values

    def _places(self, items: tuple, at: dict, table: list) -> np.ndarray:
        """_interned, once per distinct tuple (the files of a run mostly repeat one list of shapes)."""
        found = self.places.get(items)
        if found is None:
            found = self.places[items] = _interned(items, at, table)
        return found

    def _gathered(self, batch: list[FileRead], n: int) -> dict[str, np.ndarray]:
        """Rows of unchanged files, gathered from the previous run's columns (where they were kept whole)."""
        assert self.previous is not None
        old, old_names, _ = self.previous
        lengths = [len(read.params) for read in batch]
        if self.old_rows is None:
            self.old_rows = {step: i for i, step in enumerate(old.steps.tolist())}
        s = np.repeat(np.array([self.old_rows[r.step] for r in batch], np.intp), lengths)
        p = np.concatenate([self._old_col(r.params, old, old_names) for r in batch])
        k = np.concatenate([r.kinds for r in batch])
        out = {name: np.empty(n, dtype=getattr(old.kinds["grad"], name).dtype) for name in STAT_FIELDS}
        out.update({name: np.empty(n, np.int32) for name in ("shape", "dtype", "file")})
        out["alive"] = np.empty(n, np.int64)
        old_alive = _alive_indexes(old)
        for code, kind in enumerate(KINDS):
            here = k == code
            si, pi, column = s[here], p[here], old.kinds[kind]
            for name in (*STAT_FIELDS, "shape", "dtype"):
                out[name][here] = getattr(column, name)[si, pi]
            out["alive"][here] = old_alive[kind][si, pi]
        return out

    def _old_col(self, params: tuple[str, ...], old: Columns, old_names: Mapping[str, str]) -> np.ndarray:
        key = (id(params), "old")
        found = self.cols.get(key)  # type: ignore[call-overload]
        if found is None:
            found = np.array([old.param_index(old_names[p]) for p in params], dtype=np.intp)
            self.cols[key] = found  # type: ignore[index]
        return found

    def check_shapes(self, rows: np.ndarray | None) -> None:
        """Refuse a run whose gradient, parameter and update of one name at one step differ in shape.

        `rows`: only these step rows (the others were checked when the previous run was loaded).
        """
        if rows is not None:
            shapes = np.stack([self.kinds[kind].shape[rows] for kind in KINDS], axis=-1)
            order = self.order[rows]
        else:
            shapes = np.stack([self.kinds[kind].shape for kind in KINDS], axis=-1)
            order = self.order
        first = np.where(order >= 0, order, np.iinfo(order.dtype).max).argmin(axis=-1)
        reference = np.take_along_axis(shapes, first[..., None], axis=-1)
        bad = (shapes >= 0) & (shapes != reference)
        if not bad.any():
            return
        cells = np.argwhere(bad.any(axis=-1))
        worst = min(
            ((int(order[s, p][bad[s, p]].min()), s, p) for s, p in cells.tolist()), key=lambda t: t[0]
        )
        _, s, p = worst
        later = next(c for c in range(len(KINDS)) if bad[s, p, c] and order[s, p, c] == worst[0])
        early = int(first[s, p])
        row = int(rows[s]) if rows is not None else s
        (one, one_file), (two, two_file) = (self._where(row, p, c) for c in (early, later))
        raise RunError(
            f"{self.params[p]!r} at step {int(self.steps[row])}: {KINDS[early]} has shape {list(one)} (in "
            f"{one_file}) but {KINDS[later]} has shape {list(two)} (in {two_file})"
        )

    def _where(self, s: int, p: int, code: int) -> tuple[tuple[int, ...], str]:
        column = self.kinds[KINDS[code]]
        return self.shapes[column.shape[s, p]], self.files[column.file[s, p]]

    def columns(self) -> Columns:
        """The filled columns, with the bitmaps as views."""
        for column in self.kinds.values():  # absent cells hold the empty summary's values (columns.EMPTY)
            absent = ~column.present
            for name in ("abs_min", "scale"):  # the others are 0, as allocated
                np.copyto(getattr(column, name), EMPTY[name], where=absent)
        kinds = {
            kind: replace(column, alive=AliveView(self.alive_index[kind], self.alive))
            for kind, column in self.kinds.items()
        }
        return Columns(
            steps=self.steps,
            params=self.params,
            kinds=kinds,
            files=tuple(self.files),
            dtypes=tuple(self.dtypes),
            shapes=tuple(self.shapes),
        )


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _lazy_kind(steps: int, params: int) -> KindColumns:
    """columns.empty_kind, but the statistics zeroed (pages the OS provides as they are first written), so
    that the columns grow as the files' blocks are let go; `columns()` then writes the absent cells."""
    shape = (steps, params)
    arrays = {
        name: np.zeros(shape, dtype=np.int64 if name in INT_FIELDS else np.float64) for name in STAT_FIELDS
    }
    indices = {name: np.full(shape, -1, dtype=np.int32) for name in _INDEX_FIELDS}
    return KindColumns(present=np.zeros(shape, dtype=bool), **arrays, **indices, alive={})


def _emptied(read: FileRead) -> FileRead:
    """A read whose rows now live in the columns: what a later load needs to find them there."""
    return replace(read, block=None, shapes=(), dtypes=())


def _interned(items: tuple, at: dict, table: list) -> np.ndarray:
    """Places of `items` in `table`, adding those not in it yet (`at`: item -> place)."""
    places = []
    for item in items:
        place = at.get(item)
        if place is None:
            place = at[item] = len(table)
            table.append(item)
        places.append(place)
    return np.array(places, dtype=np.int32)


def _alive_values(columns: Columns) -> Sequence[int | None]:
    view = columns.kinds["grad"].alive
    return view.values if isinstance(view, AliveView) else []


def _alive_indexes(columns: Columns) -> dict[str, np.ndarray]:
    return {
        kind: column.alive.index if isinstance(column.alive, AliveView) else np.full(column.present.shape, -1)
        for kind, column in columns.kinds.items()
    }


def fill_sharded(reads: Sequence[FileRead]) -> Filled:
    """The columns of a run with sharded files: every tensor as a piece, merged by shards.assemble (slow, rare)."""
    pieces = [
        Piece(
            r.step,
            KINDS[code],
            param,
            r.block.stats(i),
            r.shapes[i],
            r.dtypes[i],
            r.path,
            os.path.dirname(r.path),
            shard,
        )
        for r in reads
        if r.block is not None
        for i, (code, param, shard) in enumerate(
            zip(r.kinds.tolist(), r.params, r.shards or [None] * len(r.params), strict=True)
        )
    ]
    whole, problems = assemble(pieces)
    by_kind: dict[str, set[str]] = {}
    for _, param, kind in whole:
        by_kind.setdefault(kind, set()).add(param)
    names = display_names({param for _, param, _ in whole}, by_kind)
    tensors = {(s, names[p], k): Tensor(v.stats, v.shape, v.dtype, v.file) for (s, p, k), v in whole.items()}
    check_shapes(tensors)
    present = {param for _, param, _ in tensors}
    params = param_order(present, [names.get(name, name) for name in declared_order(reads)])
    steps = sorted({step for step, _, _ in tensors})
    return Filled(columns_from_tensors(steps, params, tensors), names, (), problems)


def check_shapes(tensors: Mapping[tuple[int, str, str], Tensor]) -> None:
    """Refuse a run whose gradient, parameter and update of one name at one step differ in shape."""
    seen: dict[tuple[int, str], tuple[str, Tensor]] = {}
    for (step, param, kind), tensor in tensors.items():
        other_kind, other = seen.setdefault((step, param), (kind, tensor))
        if tensor.shape != other.shape:
            raise RunError(
                f"{param!r} at step {step}: {other_kind} has shape {list(other.shape)} (in {other.file}) "
                f"but {kind} has shape {list(tensor.shape)} (in {tensor.file})"
            )
