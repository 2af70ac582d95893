"""CPU of one `watch` refresh, in process, at 5,000 files against 500: the incremental inspection against a
full re-inspection (today's landed watch: every file again, through the stats cache) measured in the same run.

For each size it writes a run of N step files (grad/param/update of `--params` 16x16 F32 weights), inspects
it once, then for each of `--new` new files: writes it, and times (process CPU) what a refresh does:
the poll's listing (as `watch.list_snapshots`) and `inspect_run(..., previous=last report)`, split into load_run, the derivation and
the rest (the checks). The baseline re-inspects the whole run with a stats cache, as `watch` did before.
Target (issue #14): the refresh at 5,000 files within 2x of the same at 500 files. benchmarks/watch_cpu.py
measures the same end to end on the `gradcheck watch` process (rendering and polling included).

    python benchmarks/watch_refresh.py [--sizes 500,5000] [--params 20] [--new 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from read_throughput import bench_lock, make_pools, write_file

from gradcheck.analysis import inspection
from gradcheck.analysis.cache import StatsCache
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.runs import load_run
from gradcheck.analysis.scanning import ScanOptions

TARGET_RATIO = 2.0
derived = inspection._derived


def tensors(count: int) -> list[tuple[str, tuple[int, ...]]]:
    """grad/param/update of `count` 16x16 weights (as benchmarks/watch_cpu.py)."""
    return [
        (f"{kind}/layers.{i}.weight", (16, 16)) for i in range(count) for kind in ("grad", "param", "update")
    ]


class Timed:
    """Process CPU seconds spent in load_run and deriving while inspecting (wrapped, not copied)."""

    def __init__(self) -> None:
        self.spent = {"load_run": 0.0, "derive": 0.0}

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent[name] += time.process_time() - began

        return timed


def list_snapshots(run: Path) -> dict[str, tuple[int, int, int]]:
    """What `watch` does at each poll (cli/watch.py list_snapshots; benchmarks may not import the CLI)."""
    with os.scandir(run) as entries:
        return {
            e.path: (e.stat().st_size, e.stat().st_mtime_ns, e.stat().st_ino) for e in entries if e.is_file()
        }


def refreshes(run: Path, size: int, args: argparse.Namespace, incremental: bool) -> dict[str, float]:
    """Mean CPU seconds per refresh over `--new` new files, by part."""
    pools = make_pools("F32")
    timed = Timed()
    options = ScanOptions(jobs=1, cache=None if incremental else StatsCache(Path(tempfile.mkdtemp())))
    inspection.load_run = timed.wrap("load_run", load_run)  # type: ignore[attr-defined]
    inspection._derived = timed.wrap("derive", derived)
    report = inspect_run(run, None, options)
    timed.spent = dict.fromkeys(timed.spent, 0.0)
    total = 0.0
    for index in range(size, size + args.new):
        write_file(run / f"step_{index * 10:08d}.safetensors", tensors(args.params), "F32", pools, index * 10)
        began = time.process_time()
        list_snapshots(run)
        report = inspect_run(run, None, options, previous=report if incremental else None)
        total += time.process_time() - began
    inspection.load_run, inspection._derived = load_run, derived  # type: ignore[attr-defined]
    assert len(report.run.steps) == size + args.new
    parts = {name: spent / args.new for name, spent in timed.spent.items()}
    return {"refresh": total / args.new, **parts, "rest": (total - sum(timed.spent.values())) / args.new}


def main() -> None:
    """Print the CPU per refresh at each size, both ways, and the ratio to the smallest size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="500,5000", help="files in the run before watching")
    parser.add_argument("--params", type=int, default=20, help="parameters per file (x3 kinds; default 20)")
    parser.add_argument("--new", type=int, default=10, help="new files, one refresh each (default 10)")
    parser.add_argument("--incremental-only", action="store_true", help="skip the full re-inspect baseline")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="gradcheck-refresh-"))
    pools = make_pools("F32")
    print(
        f"{args.params} parameters x 3 kinds per file, {args.new} refreshes (one new file each), CPU per refresh"
    )
    try:
        with bench_lock():
            found: dict[tuple[bool, int], dict[str, float]] = {}
            for size in sizes:
                for incremental in (True,) if args.incremental_only else (False, True):
                    run = folder / f"run-{size}-{incremental}"
                    run.mkdir()
                    for index in range(size):
                        step = index * 10
                        write_file(
                            run / f"step_{step:08d}.safetensors", tensors(args.params), "F32", pools, step
                        )
                    found[(incremental, size)] = parts = refreshes(run, size, args, incremental)
                    shutil.rmtree(run)
                    label = "incremental (previous=)" if incremental else "full re-inspect, stats cache"
                    shown = ", ".join(f"{name} {value * 1000:.1f} ms" for name, value in parts.items())
                    print(f"  {size:6} files, {label:32}: {shown}", flush=True)
        for incremental in (True,) if args.incremental_only else (False, True):
            ratio = found[(incremental, sizes[-1])]["refresh"] / found[(incremental, sizes[0])]["refresh"]
            label = "incremental" if incremental else "full re-inspect"
            verdict = ("met" if ratio <= TARGET_RATIO else "MISSED") if incremental else "baseline"
            print(f"  {label}: {sizes[-1]} files {ratio:.2f}x the {sizes[0]}-file refresh ({verdict})")
        for part in ("load_run", "derive"):
            ratio = found[(True, sizes[-1])][part] / max(found[(True, sizes[0])][part], 1e-9)
            print(f"  incremental {part}: {ratio:.2f}x")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
