"""Per-object views of a run's columns, for code that wants one object per tensor or per (step, param).

Objects are built a step at a time, each statistic converted for the whole step at once, and kept: reading
a few steps costs a few steps, reading every one costs what building every object always cost.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, Sequence

import numpy as np

from .columns import KINDS, STAT_FIELDS, Columns, Tensor
from .stats import TensorStats


class TensorsView(Mapping[tuple[int, str, str], Tensor]):
    """Run.tensors for code that wants one object per tensor: the Tensors of a step are built together, the
    first time one of them is asked for (slow over a whole long run: vectorised code reads `columns`)."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns
        self._rows: dict[int, dict[tuple[str, str], Tensor]] = {}
        self._step_rows = {step: s for s, step in enumerate(columns.steps.tolist())}

    def row(self, s: int) -> dict[tuple[str, str], Tensor]:
        """{(param, kind): Tensor} of step row `s`, in model then kind order."""
        found = self._rows.get(s)
        if found is None:
            found = self._rows[s] = _row_tensors(self.columns, s)
        return found

    def __getitem__(self, key: tuple[int, str, str]) -> Tensor:
        step, param, kind = key if isinstance(key, tuple) and len(key) == 3 else (None, None, None)
        s = self._step_rows.get(step)  # type: ignore[arg-type]
        found = None if s is None else self.row(s).get((param, kind))  # type: ignore[arg-type]
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[tuple[int, str, str]]:
        for s, step in enumerate(self.columns.steps.tolist()):
            yield from ((step, param, kind) for param, kind in self.row(s))

    def __len__(self) -> int:
        return sum(int(column.present.sum()) for column in self.columns.kinds.values())

    def items(self) -> ItemsView[tuple[int, str, str], Tensor]:  # type: ignore[override]
        """(key, Tensor) pairs, step-major, without a second look-up per key."""
        steps = self.columns.steps.tolist()
        return {(steps[s], *key): t for s in range(len(steps)) for key, t in self.row(s).items()}.items()


def _row_tensors(columns: Columns, s: int) -> dict[tuple[str, str], Tensor]:
    """The Tensors of one step row, each statistic converted for the whole row at once."""
    found: dict[tuple[str, str], Tensor] = {}
    parts = []
    for kind in KINDS:
        column = columns.kinds[kind]
        cols = np.flatnonzero(column.present[s])
        values = [getattr(column, name)[s, cols].tolist() for name in STAT_FIELDS]
        where = [getattr(column, name)[s, cols].tolist() for name in ("shape", "dtype", "file")]
        alive = [column.alive.get((s, p)) for p in cols.tolist()]
        parts.append((kind, cols.tolist(), values, where, alive))
    built = {}
    for kind, cols, values, (shapes, dtypes, files), alive in parts:
        for i, p in enumerate(cols):
            stats = TensorStats(*(field[i] for field in values), alive=alive[i])
            tensor = Tensor(
                stats, columns.shapes[shapes[i]], columns.dtypes[dtypes[i]], columns.files[files[i]]
            )
            built[(p, kind)] = tensor
    for p, param in enumerate(columns.params):
        for kind in KINDS:
            tensor = built.get((p, kind))
            if tensor is not None:
                found[(param, kind)] = tensor
    return found


class AliveView(Mapping[tuple[int, int], int]):
    """A kind's unit bitmaps by (step index, param index): `index[s, p]` is a place in `values` (-1: none)."""

    def __init__(self, index: np.ndarray, values: Sequence[int | None]) -> None:
        self.index, self.values = index, values

    def __getitem__(self, key: tuple[int, int]) -> int:
        s, p = key
        if not (0 <= s < self.index.shape[0] and 0 <= p < self.index.shape[1]):
            raise KeyError(key)
        place = int(self.index[s, p])
        value = self.values[place] if place >= 0 else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for s, p in np.argwhere(self.index >= 0).tolist():
            if self.values[self.index[s, p]] is not None:
                yield (s, p)

    def __len__(self) -> int:
        return sum(1 for _ in self)
