"""The one entry point of `gradcheck inspect`: read a run, derive, check, and report."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from .checks import Finding, run_checks
from .columns import DerivedColumns
from .config import Config
from .errors import RunError
from .metrics import ParamStep, derive_columns
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
    """Report.rows: each ParamStep built from the columns when first asked for (slow over a whole long run)."""

    def __init__(self, run: Run, derived: DerivedColumns) -> None:
        self.run, self.derived = run, derived
        self.built: dict[tuple[int, str], ParamStep] = {}

    def __getitem__(self, key: tuple[int, str]) -> ParamStep:
        found = self.built.get(key)
        if found is None:
            found = self.built[key] = self._build(key)
        return found

    def _build(self, key: tuple[int, str]) -> ParamStep:
        step, param = key if isinstance(key, tuple) and len(key) == 2 else (None, None)
        columns, d = self.run.columns, self.derived
        s = columns.step_index(step) if isinstance(step, int) else None
        p = columns.param_index(param) if isinstance(param, str) else None
        if s is None or p is None or not d.present[s, p]:
            raise KeyError(key)
        known = bool(d.layer_known[s, p])
        return ParamStep(
            param=param,  # type: ignore[arg-type]
            layer=d.layers[d.layer_index[p]],
            step=step,  # type: ignore[arg-type]
            grad=columns.tensor(step, param, "grad"),  # type: ignore[arg-type]
            value=columns.tensor(step, param, "param"),  # type: ignore[arg-type]
            update=columns.tensor(step, param, "update"),  # type: ignore[arg-type]
            update_ratio=_optional(d.update_ratio[s, p]),
            grad_param_ratio=d.grad_param_ratio[s, p].item() if d.grad_param_known[s, p] else None,
            layer_norm=d.layer_norm[s, p].item() if known else None,
            layer_rms=d.layer_rms[s, p].item() if known else None,
            depth=_optional(d.depth[s, p]),
        )

    def __iter__(self) -> Iterator[tuple[int, str]]:
        steps, params = self.run.columns.steps.tolist(), self.run.columns.params
        return (
            (steps[s], params[p]) for s, p in zip(*map(list, self.derived.present.nonzero()), strict=True)
        )

    def __len__(self) -> int:
        return int(self.derived.present.sum())

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True


def _optional(value: float) -> float | None:
    """A derived number as ParamStep holds it: NaN (not computed) is None."""
    number = value.item()
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
        derived = derive_columns(run.columns)
        # The checks read the per-object rows until they read `derived` (the `checks` part of issue #14).
        findings = run_checks(run, RowsView(run, derived), config) if run.steps else []  # type: ignore[arg-type]
    return Report(run=run, derived=derived, findings=findings, config=config)


def resolve_step(report: Report, step: int | None) -> int:
    """The step to show: the one asked for, else the last recorded one."""
    if step is None:
        return report.run.steps[-1]
    if step not in report.run.steps:
        shown = ", ".join(map(str, report.run.steps[:10])) + (" ..." if len(report.run.steps) > 10 else "")
        raise RunError(f"{report.run.path}: step {step} was not recorded (recorded: {shown})")
    return step
