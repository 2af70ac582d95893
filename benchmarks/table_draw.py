"""CPU time of drawing a long run (issue #14): the 500-row table, the heatmaps and the chart data.

Writes a run of `--files` step files x `--params` parameters (the many_files.py layout), inspects it and builds
`run.columns` and `report.derived` first, so only the drawing is timed. The baseline, measured in the same run,
is the per-object ‖g‖ history the table drew before it read the columns: `grad_series` + `trend` +
`bin_series` over `report.rows` for every row (the rest of the old table cost came on top of it).

    python benchmarks/table_draw.py [--files 1000] [--params 500]
"""

from __future__ import annotations

import argparse
import gc
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from many_files import write_run
from rich.console import Console  # noqa: TID251 - times the renderers in process

from gradcheck.analysis.heatmap import METRICS, build_heatmap
from gradcheck.analysis.history import bin_series, grad_series, trend
from gradcheck.analysis.inspection import Report, inspect_run
from gradcheck.cli.pictures.charts import chart_data  # noqa: TID251 - as above
from gradcheck.cli.render import render_report  # noqa: TID251 - as above


def cpu(work: Callable[[], object], repeat: int) -> float:
    """Least CPU seconds of `repeat` calls (CPU, not wall: the benchmark machine is often shared)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def per_object_history(report: Report, step: int) -> None:
    """The baseline: what the table computed per row from ParamStep objects before issue #14."""
    chosen = [s for s in report.run.steps if s <= step]
    for row in report.rows_at(step):
        series = grad_series(report.rows, row.param, chosen)
        trend(series)
        bin_series(series)


def table(report: Report, step: int, width: int) -> None:
    """The table output of `gradcheck inspect` at `width` columns, without colour."""
    render_report(Console(file=io.StringIO(), color_system=None, width=width, highlight=False), report, step)


def main() -> None:
    """Write the run, inspect it, print CPU seconds of each drawing and its ratio to the baseline."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--params", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        write_run(run, args.files, args.params)
        report = inspect_run(run)
        _ = report.run.columns, report.derived  # built before timing: this measures the drawing only
        gc.collect()
        gc.freeze()  # the loaded run stays out of the collector's passes, as load_run's own objects will
        step = report.run.steps[-1]
        baseline = cpu(lambda: per_object_history(report, step), 1)
        figures = {
            "table, 140 columns": cpu(lambda: table(report, step, 140), args.repeat),
            "table, 80 columns": cpu(lambda: table(report, step, 80), args.repeat),
            "heatmap, 4 metrics": cpu(
                lambda: [build_heatmap(report, m, max_columns=100) for m in METRICS], 1
            ),
            "chart data": cpu(lambda: chart_data(report), 1),
        }
    print(f"{args.files} steps x {len(report.run.params)} parameters, CPU seconds (best of {args.repeat})")
    print(f"  baseline, per-object ‖g‖ history of every row: {baseline:.3f} s")
    for name, seconds in figures.items():
        print(f"  {name}: {seconds:.3f} s = {seconds / baseline:.2f}x the baseline")


if __name__ == "__main__":
    main()
