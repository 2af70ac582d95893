"""CPU that `gradcheck watch` spends per refresh on a run of 5,000 files against the same on 500 files.

For each size it writes a run of N step files (grad/param/update of `--params` small F32 parameters), starts
`gradcheck watch RUN --interval I` (piped: one line per new step) with a fresh stats cache, waits for the
first line (the whole run read), then writes `--new` files one every `--every` seconds and waits for each
one's line. The watch process's CPU time (utime + stime from /proc/PID/stat, the process only: watch reads
with one job) between the first line and the last is divided by the number of new files: CPU per refresh,
polling included. Target (issue #14): 5,000 files within 2x of 500 files. `--landed GRADCHECK` also measures
another install (the main branch's) on the same runs.

    python benchmarks/watch_cpu.py [--sizes 500,5000] [--params 20] [--new 10] [--every 0.5]
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from read_throughput import bench_lock, find_gradcheck, make_pools, write_file
from startup import compiled_env

TARGET_RATIO = 2.0
RECORDED = re.compile(r"(\d+) recorded steps")
TICKS = os.sysconf("SC_CLK_TCK")


def tensors(count: int) -> list[tuple[str, tuple[int, ...]]]:
    """grad/param/update of `count` 16x16 weights."""
    return [
        (f"{kind}/layers.{i}.weight", (16, 16)) for i in range(count) for kind in ("grad", "param", "update")
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def write_step(run: Path, index: int, args: argparse.Namespace, pools: dict) -> None:
    """One step file, written under a temporary name and renamed, as the recorder does."""
    final = run / f"step_{index * 10:08d}.safetensors"
    partial = run / f".{final.name}.partial"
    write_file(partial, tensors(args.params), "F32", pools, index * 10)
    partial.rename(final)


def measure(gradcheck: str, size: int, folder: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    """CPU seconds per refresh, seconds to the first line (the first read), CPU share of a core meanwhile."""
    run = folder / f"run-{size}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    pools = make_pools("F32")
    for index in range(size):
        write_step(run, index, args, pools)
    env = {**compiled_env(folder), "GRADCHECK_CACHE_DIR": tempfile.mkdtemp(dir=folder, prefix="cache-")}
    command = [gradcheck, "watch", str(run), "--interval", str(args.interval), "--no-color"]
    began = time.perf_counter()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    ) as watch:
        try:
            lines = _lines(watch)
            _wait_for(watch, lines, size)
            first = time.perf_counter() - began
            cpu, start = cpu_seconds(watch.pid), time.perf_counter()
            for index in range(size, size + args.new):
                time.sleep(max(0.0, start + (index - size + 1) * args.every - time.perf_counter()))
                write_step(run, index, args, pools)
                _wait_for(watch, lines, index + 1)
            spent, wall = cpu_seconds(watch.pid) - cpu, time.perf_counter() - start
        finally:
            # SIGTERM, not SIGINT: a benchmark started in the background ignores SIGINT, and so would watch
            watch.terminate()
            try:
                watch.wait(timeout=30)
            except subprocess.TimeoutExpired:
                watch.kill()
                watch.wait()
    return spent / args.new, first, spent / wall


def _wait_for(watch: subprocess.Popen, lines: queue.Queue, steps: int) -> None:
    """Take watch's lines until one says the run has `steps` recorded steps (two files found by one poll share
    a line); stop the benchmark if watch ended or said nothing for a minute."""
    while True:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            line = None
        if not line:
            sys.exit(f"gradcheck watch ended or went silent (exit {watch.poll()}) before step {steps}")
        found = RECORDED.search(line)
        if found and int(found.group(1)) >= steps:
            return


def _lines(watch: subprocess.Popen) -> queue.Queue:
    """watch's output lines as they come, then "" when it ends (read by a thread)."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in watch.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def main() -> None:
    """Measure each size for each install, print per refresh CPU and the ratio to the smallest size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="500,5000", help="files in the run before watching (default 500,5000)"
    )
    parser.add_argument("--params", type=int, default=20, help="parameters per file (x3 kinds; default 20)")
    parser.add_argument("--new", type=int, default=10, help="files written while watching (default 10)")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between new files (default 0.5)")
    parser.add_argument("--interval", type=float, default=0.25, help="watch --interval (default 0.25)")
    parser.add_argument(
        "--gradcheck", default="gradcheck", help="the executable to measure (default: PATH's)"
    )
    parser.add_argument("--landed", default=None, help="another gradcheck executable to measure beside ours")
    parser.add_argument("--dir", default=None, help="where to make the temporary directory")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    installs = {"gradcheck": find_gradcheck(parser, args.gradcheck)}
    if args.landed:
        installs["landed"] = find_gradcheck(parser, args.landed)
    folder = Path(tempfile.mkdtemp(prefix="gradcheck-watch-", dir=args.dir))
    print(f"{args.params} parameters x 3 kinds per file; {args.new} new files, one every {args.every} s;"
          f" watch --interval {args.interval}")  # fmt: skip
    try:
        for label, gradcheck in installs.items():
            print(f"{label} ({gradcheck}):")
            found = {}
            for size in sizes:
                with bench_lock():
                    found[size] = per, first, share = measure(gradcheck, size, folder, args)
                ratio = per / found[sizes[0]][0] if found[sizes[0]][0] else float("nan")
                print(
                    f"  {size:6} files: first read {first:6.2f} s; CPU per refresh {per * 1000:7.1f} ms"
                    f" ({share * 100:5.1f} % of a core); {ratio:5.2f}x the {sizes[0]}-file run",
                    flush=True,
                )
            ratio = found[sizes[-1]][0] / found[sizes[0]][0] if found[sizes[0]][0] else float("nan")
            verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
            print(
                f"  target: {sizes[-1]} files within {TARGET_RATIO:g}x of {sizes[0]}: {ratio:.2f}x {verdict}"
            )
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
