"""Start-up of gradcheck commands against bare `python -c pass` of the same interpreter, measured in one run.

Each repetition runs, in a rotating order, `python -c pass` (the interpreter gradcheck is installed in),
`gradcheck --version`, `gradcheck --help`, and `gradcheck inspect` of a one-tensor run with a warm stats cache
(table and `--format json`), each through the installed console script, as its own process. Prints the best
and median wall seconds of each and the ratio of the best to the best `python -c pass`. Targets (issue #14):
`--version` <= 2x bare start-up; a cached inspect as close to it as possible. `--landed GRADCHECK` measures
another install (the main branch's) beside ours. With `--importtime` it also prints the 15 slowest imports of
the cached inspect (`python -X importtime`).

    python benchmarks/startup.py [--repeats 21] [--landed /work/main/.venv/bin/gradcheck]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from read_throughput import bench_lock, find_gradcheck, make_pools, write_file

TARGET_VERSION = 2.0


def python_of(gradcheck: str) -> str:
    """The interpreter of a console script (its #! line), which `python -c pass` must be measured with."""
    first = Path(gradcheck).read_text(errors="replace").splitlines()[0]
    return first[2:].strip() if first.startswith("#!") else sys.executable


def commands(gradcheck: str, run: Path, label: str) -> dict[str, list[str]]:
    """The measured command lines of one install, by label."""
    prefix = "" if label == "ours" else f"{label} "
    return {
        f"{prefix}gradcheck --version": [gradcheck, "--version"],
        f"{prefix}gradcheck --help": [gradcheck, "--help"],
        f"{prefix}inspect TINY (cached)": [gradcheck, "inspect", str(run)],
        f"{prefix}inspect TINY --format json (cached)": [gradcheck, "inspect", str(run), "--format", "json"],
    }


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one run of the command (stdout and stderr discarded); stop if it failed."""
    began = time.perf_counter()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    code = subprocess.run(command, env=env, check=False, **quiet).returncode
    seconds = time.perf_counter() - began
    if code not in (0, 1):
        sys.exit(f"{' '.join(command)} failed (exit {code})")
    return seconds


def importtime(gradcheck: str, run: Path, env: dict[str, str]) -> None:
    """The slowest imports (cumulative) of a cached inspect, from python -X importtime."""
    result = subprocess.run(
        [python_of(gradcheck), "-X", "importtime", gradcheck, "inspect", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=False,
    )  # fmt: skip
    rows = []
    for line in result.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[1].strip().isdigit() and not fields[2].startswith("  "):
            rows.append((int(fields[1]), fields[2].strip()))
    print(f"\nslowest top-level imports of `{Path(gradcheck).name} inspect TINY` (cumulative ms):")
    for micros, name in sorted(rows, reverse=True)[:15]:
        print(f"  {micros / 1000:7.1f}  {name}")


def main() -> None:
    """Write a one-tensor run, warm the cache, measure in rotating order, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="repetitions of each command (default 21)")
    parser.add_argument(
        "--gradcheck", default="gradcheck", help="the executable to measure (default: PATH's)"
    )
    parser.add_argument("--landed", default=None, help="another gradcheck executable to measure beside ours")
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports")
    args = parser.parse_args()
    gradcheck = find_gradcheck(parser, args.gradcheck)
    folder = Path(tempfile.mkdtemp(prefix="gradcheck-startup-"))
    try:
        run = folder / "tiny"
        run.mkdir()
        write_file(run / "step_00000000.safetensors", [("grad/w", (4,))], "F32", make_pools("F32"), 0)
        env = {**os.environ, "GRADCHECK_CACHE_DIR": str(folder / "cache")}
        plan = {"python -c pass": [python_of(gradcheck), "-c", "pass"], **commands(gradcheck, run, "ours")}
        if args.landed:
            plan.update(commands(find_gradcheck(parser, args.landed), run, "landed"))
        times: dict[str, list[float]] = {label: [] for label in plan}
        with bench_lock():
            for command in plan.values():  # warm-up: fills the stats cache and the OS's file cache
                timed(command, env)
            for index in range(args.repeats):
                order = list(plan)[index % len(plan) :] + list(plan)[: index % len(plan)]
                for label in order:
                    times[label].append(timed(plan[label], env))
        report(times, args.repeats)
        if args.importtime:
            importtime(gradcheck, run, env)
    finally:
        shutil.rmtree(folder)


def report(times: dict[str, list[float]], repeats: int) -> None:
    """Best and median of each command, and the best as a multiple of the best bare start-up."""
    bare = min(times["python -c pass"])
    print(f"{repeats} repetitions, rotating order; load average {os.getloadavg()[0]:.1f}")
    for label, found in times.items():
        best, median = min(found), statistics.median(found)
        print(
            f"  {label:42} best {best * 1000:7.1f} ms  median {median * 1000:7.1f} ms  {best / bare:5.2f}x bare"
        )
    ratio = min(times["gradcheck --version"]) / bare
    verdict = "met" if ratio <= TARGET_VERSION else "MISSED"
    print(f"target: gradcheck --version <= {TARGET_VERSION:g}x python -c pass: {ratio:.2f}x {verdict}")


if __name__ == "__main__":
    main()
