"""The one entry point of `gradcheck inspect`: read a run, derive, check, and report."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .checks import Finding, run_checks
from .columns import DerivedColumns
from .config import Config
from .errors import RunError
from .metrics import ParamStep, derive_columns, derive_rows
from .runs import Run, gc_paused, load_run
from .scanning import ScanOptions


@dataclass(frozen=True)
class Report:
    """Everything `gradcheck inspect` shows, as plain data."""

    run: Run
    derived: DerivedColumns  # metrics.derive_columns of run.columns: what vectorised code reads
    findings: list[Finding]
    config: Config = field(default_factory=Config)

    @cached_property
    def rows(self) -> Mapping[tuple[int, str], ParamStep]:
        """{(step, param): ParamStep}, as metrics.derive gives it: a per-object view of `derived`."""
        return RowsView(self.run, self.derived)

    @property
    def readable(self) -> bool:
        """Whether any snapshot could be read at all."""
        return bool(self.run.steps)

    @property
    def errors(self) -> int:
        """Number of error findings."""
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        """Number of warning findings."""
        return sum(f.severity == "warning" for f in self.findings)

    @property
    def status(self) -> str:
        """Overall health: error (error findings, or nothing readable at all), warn, or ok."""
        if self.errors or not self.readable:
            return "error"
        return "warn" if self.warnings else "ok"

    @property
    def failed(self) -> bool:
        """Whether findings reach the configured fail level."""
        if self.config.fail_on == "never":
            return False
        return bool(self.errors or (self.config.fail_on == "warning" and self.warnings))

    def rows_at(self, step: int) -> list[ParamStep]:
        """The rows of one step, in model order."""
        return [self.rows[(step, p)] for p in self.run.params if (step, p) in self.rows]


class RowsView(Mapping[tuple[int, str], ParamStep]):
    """Report.rows: the ParamSteps of a step built together from the columns the first time one is asked for
    (slow over a whole long run: vectorised code reads `derived`)."""

    def __init__(self, run: Run, derived: DerivedColumns) -> None:
        self.run, self.derived = run, derived
        self._rows: dict[int, dict[str, ParamStep]] = {}
        self._step_rows = {step: s for s, step in enumerate(run.columns.steps.tolist())}

    def row(self, s: int) -> dict[str, ParamStep]:
        """{param: ParamStep} of step row `s`, in model order."""
        found = self._rows.get(s)
        if found is None:
            found = self._rows[s] = self._build(s)
        return found

    def _build(self, s: int) -> dict[str, ParamStep]:
        columns, d = self.run.columns, self.derived
        step = int(columns.steps[s])
        cols = np.flatnonzero(d.present[s])
        tensors = self.run.tensors.row(s)  # type: ignore[attr-defined]
        known = {name: getattr(d, name)[s, cols].tolist() for name in ("grad_param_known", "layer_known")}
        values = {name: getattr(d, name)[s, cols].tolist() for name in _DERIVED}
        found = {}
        for i, p in enumerate(cols.tolist()):
            param = columns.params[p]
            layer_known = known["layer_known"][i]
            found[param] = ParamStep(
                param=param,
                layer=d.layers[d.layer_index[p]],
                step=step,
                grad=tensors.get((param, "grad")),
                value=tensors.get((param, "param")),
                update=tensors.get((param, "update")),
                update_ratio=_optional(values["update_ratio"][i]),
                grad_param_ratio=values["grad_param_ratio"][i] if known["grad_param_known"][i] else None,
                layer_norm=values["layer_norm"][i] if layer_known else None,
                layer_rms=values["layer_rms"][i] if layer_known else None,
                depth=_optional(values["depth"][i]),
            )
        return found

    def __getitem__(self, key: tuple[int, str]) -> ParamStep:
        step, param = key if isinstance(key, tuple) and len(key) == 2 else (None, None)
        s = self._step_rows.get(step)  # type: ignore[arg-type]
        found = None if s is None else self.row(s).get(param)  # type: ignore[arg-type]
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[tuple[int, str]]:
        for s, step in enumerate(self.run.columns.steps.tolist()):
            yield from ((step, param) for param in self.row(s))

    def __len__(self) -> int:
        return int(self.derived.present.sum())


_DERIVED = ("update_ratio", "grad_param_ratio", "layer_norm", "layer_rms", "depth")


def _optional(number: float) -> float | None:
    """A derived number as ParamStep holds it: NaN (not computed) is None."""
    return None if math.isnan(number) else number


def inspect_run(
    run_dir: str | os.PathLike[str],
    config: Config | None = None,
    scan: ScanOptions | None = None,
    *,
    previous: Report | None = None,
) -> Report:
    """Read, derive and check a run; raises RunError when the directory itself is unusable.

    With `previous` (an earlier report of the same directory), unchanged files are not read again.
    """
    config = config or Config()
    run = load_run(run_dir, scan, previous=previous.run if previous is not None else None)
    with gc_paused():
        derived = _derived(run, previous)
        findings = run_checks(run, derived, config) if run.steps else []
    return Report(run=run, derived=derived, findings=findings, config=config)


def _derived(run: Run, previous: Report | None) -> DerivedColumns:
    """derive_columns of the run; for a run grown from `previous.run`, only the rows that changed."""
    base = run._base
    fresh = run._fresh
    if previous is None or fresh is None or base is not previous.run.columns:
        return derive_columns(run.columns)
    return derive_rows(run.columns, previous.derived, fresh)


def resolve_step(report: Report, step: int | None) -> int:
    """The step to show: the one asked for, else the last recorded one."""
    if step is None:
        return report.run.steps[-1]
    if step not in report.run.steps:
        shown = ", ".join(map(str, report.run.steps[:10])) + (" ..." if len(report.run.steps) > 10 else "")
        raise RunError(f"{report.run.path}: step {step} was not recorded (recorded: {shown})")
    return step
