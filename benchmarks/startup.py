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
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from read_throughput import bench_lock, find_gradcheck, make_pools, write_file

TARGET_VERSION = 2.0


def compiled_env(folder: Path) -> dict[str, str]:
    """os.environ with bytecode caching on, into folder/pycache (no source folder is written to).

    An installed wheel has its .pyc files; under PYTHONDONTWRITEBYTECODE=1 (set on some CI machines and
    containers) an editable install compiles every gradcheck module at every start, ~0.1 s that users don't pay.
    """
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(folder / "pycache")}


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


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of the command (output discarded); stop if it failed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    code = subprocess.run(command, env=env, check=False, **quiet).returncode
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code not in (0, 1):
        sys.exit(f"{' '.join(command)} failed (exit {code})")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


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
        env = {**compiled_env(folder), "GRADCHECK_CACHE_DIR": str(folder / "cache")}
        plan = {"python -c pass": [python_of(gradcheck), "-c", "pass"], **commands(gradcheck, run, "ours")}
        if args.landed:
            plan.update(commands(find_gradcheck(parser, args.landed), run, "landed"))
        times: dict[str, list[tuple[float, float]]] = {label: [] for label in plan}
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


def report(times: dict[str, list[tuple[float, float]]], repeats: int) -> None:
    """Best and median wall (and best CPU) of each command, as multiples of the best bare start-up's."""
    bare, bare_cpu = (min(t[i] for t in times["python -c pass"]) for i in (0, 1))
    print(f"{repeats} repetitions, rotating order; load average {os.getloadavg()[0]:.1f}")
    for label, found in times.items():
        best, cpu = min(t[0] for t in found), min(t[1] for t in found)
        median = statistics.median(t[0] for t in found)
        print(
            f"  {label:42} best {best * 1000:7.1f} ms  median {median * 1000:7.1f} ms  {best / bare:5.2f}x bare"
            f"  | cpu best {cpu * 1000:6.1f} ms  {cpu / bare_cpu:5.2f}x bare"
        )
    ratio = min(t[0] for t in times["gradcheck --version"]) / bare
    verdict = "met" if ratio <= TARGET_VERSION else "MISSED"
    print(
        f"target: gradcheck --version <= {TARGET_VERSION:g}x python -c pass (best wall): {ratio:.2f}x {verdict}"
    )


if __name__ == "__main__":
    main()
