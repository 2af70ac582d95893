"""The one entry point of `gradcheck inspect`: read a run, derive, check, and report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from .checks import Finding, run_checks
from .columns import DerivedColumns, derived_from_rows
from .config import Config
from .errors import RunError
from .metrics import ParamStep, derive
from .runs import Run, load_run
from .scanning import ScanOptions


@dataclass(frozen=True)
class Report:
    """Everything `gradcheck inspect` shows, as plain data."""

    run: Run
    rows: dict[tuple[int, str], ParamStep]
    findings: list[Finding]
    config: Config = field(default_factory=Config)

    @cached_property
    def derived(self) -> DerivedColumns:
        """What `rows` holds, as [step, param] arrays over `run.columns` (analysis/columns.py)."""
        return derived_from_rows(self.run.columns, self.rows)

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


def inspect_run(
    run_dir: str | os.PathLike[str], config: Config | None = None, scan: ScanOptions | None = None
) -> Report:
    """Read, derive and check a run; raises RunError when the directory itself is unusable."""
    config = config or Config()
    run = load_run(run_dir, scan)
    derived = derive(run)
    findings = run_checks(run, derived_from_rows(run.columns, derived), config) if run.steps else []
    return Report(run=run, rows=derived, findings=findings, config=config)


def resolve_step(report: Report, step: int | None) -> int:
    """The step to show: the one asked for, else the last recorded one."""
    if step is None:
        return report.run.steps[-1]
    if step not in report.run.steps:
        shown = ", ".join(map(str, report.run.steps[:10])) + (" ..." if len(report.run.steps) > 10 else "")
        raise RunError(f"{report.run.path}: step {step} was not recorded (recorded: {shown})")
    return step
