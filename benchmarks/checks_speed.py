"""Speed of the checks alone: `run_checks` over the run's columns against the per-row rules it replaced.

Writes runs of N step files x P parameters (many_files.py's small width-16 transformer blocks, grad/param/
update) to a temp directory, loads each once, then times, on the same loaded run, the vectorised
`analysis.checks.run_checks` (best of --repeats) and the per-row reference `tests/checks_reference.py`
(once: it is the slow baseline), asserts nothing but prints whether both give the same findings, the
speed-up, and how each grows from the smallest run to the largest. The runs are healthy, so each is judged
twice: with the default thresholds (no finding) and with thresholds under which every gradient rule fires on
most parameters and steps (`FIRING`: the cost of building findings and of the sequential fallbacks). Loading
the run and building the derived columns are not timed (other parts of issue #14 make them fast).

    python benchmarks/checks_speed.py [--files 200 1000] [--params 500] [--repeats 5] [--run DIR ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # many_files / read_throughput, and the reference

from checks_reference import run_checks_rows
from many_files import write_run
from read_throughput import bench_lock

from gradcheck.analysis.checks import run_checks
from gradcheck.analysis.columns import derived_from_rows
from gradcheck.analysis.config import Config, config_from_mapping
from gradcheck.analysis.metrics import derive
from gradcheck.analysis.runs import load_run

# Thresholds under which a healthy run fires nearly every rule at nearly every step.
FIRING = {
    "min-steps": 1,
    "vanishing-mean": 1e30,
    "vanishing-relative": 1.0,
    "exploding-mean": 1e-30,
    "spike-factor": 1.0001,
    "spike-history": 1,
    "growth-factor": 1.0001,
    "growth-window": 1,
    "shrink-factor": 0.9999,
    "shrink-window": 1,
    "update-ratio-low": -30,
    "update-ratio-high": -20,
}
CONFIGS = {"default": Config(), "firing": config_from_mapping({"thresholds": FIRING})}


def measure(run: object, rows: object, derived: object, config: Config, repeats: int) -> tuple:
    """(columns seconds (best), per-row seconds, same findings, findings) of one loaded run under `config`."""
    with bench_lock():
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            found = run_checks(run, derived, config)
            times.append(time.perf_counter() - began)
        began = time.perf_counter()
        reference = run_checks_rows(run, rows, config)
        slow = time.perf_counter() - began
    return min(times), slow, repr(found) == repr(reference), len(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[200, 1000], help="step files per run")
    parser.add_argument("--params", type=int, default=500, help="parameters per file (default 500)")
    parser.add_argument("--repeats", type=int, default=5, help="timings of the columns path (best kept)")
    parser.add_argument("--run", type=Path, nargs="+", help="measure these run directories instead")
    args = parser.parse_args(argv)
    figures: dict[str, list[tuple[int, float, float]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="checks_speed_") as temp:
        folders = args.run or []
        for files in [] if args.run else args.files:
            folders.append(Path(temp) / f"run_{files}")
            write_run(folders[-1], files, args.params)
        for folder in folders:
            run = load_run(folder)
            rows = derive(run)
            derived = derived_from_rows(run.columns, rows)
            for name, config in CONFIGS.items():
                fast, slow, same, found = measure(run, rows, derived, config, args.repeats)
                figures[name].append((len(run.steps), fast, slow))
                print(
                    f"{folder.name} {name:8} {len(run.steps)} steps  columns {fast:8.4f} s  per-row {slow:8.3f} s"
                    f"  {slow / fast:6.1f}x faster  findings {found} {'same' if same else 'DIFFERENT'}",
                    flush=True,
                )
    for name, found in figures.items():
        if len(found) > 1:
            (s0, f0, r0), (s1, f1, r1) = found[0], found[-1]
            print(
                f"{name}: growth for {s1 / s0:.1f}x the steps: columns {f1 / f0:.1f}x, per-row {r1 / r0:.1f}x"
            )


if __name__ == "__main__":
    main()
