"""Race: a 256 MiB snapshot atomically replaced every 20 ms while `gradcheck inspect` reads it.

Two versions of one file (same size and header, different values: 64 Mi F32 elements, so `inspect` cuts it
into four 64 MiB segments) are written once. A thread then puts them in place alternately every 20 ms by
hard-linking a version to a temporary name and renaming it over the snapshot, as a trainer's atomic save does.
Meanwhile `gradcheck inspect RUN --format json --no-cache -j N` runs 30 times for N = 1 and N = 2. Each
result must be exactly one version's statistics (count, NaN/Inf/zero counts, min, mean, max, norm, to the bit,
as `scan_file` gives them on a quiet file) or name the file as "changed during read"; anything else (a mix of
the two versions, a crash) is a failure. Prints the tally per N and exits 1 on any failure.

    python benchmarks/replace_race.py [--runs 30] [--mib 256] [--interval 0.02]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gradcheck.analysis.reader import scan_file

FIELDS = ("count", "nan", "inf", "zeros", "min_abs", "mean_abs", "max_abs", "norm")


def write_version(path: Path, seed: int, elements: int) -> None:
    """One version of the snapshot: the same header, values from `seed` (NaN in one, not the other)."""
    from safetensors.numpy import save_file

    values = np.random.default_rng(seed).standard_normal(elements, dtype=np.float32) * (seed + 1)
    if seed:
        values[::1_000_003] = np.nan
    save_file({"grad/w": values}, str(path), metadata={"step": "1", "gradcheck.format": "1"})


def expected(path: Path) -> dict[str, object]:
    stats = scan_file(path).stats["grad/w"]
    return {field: _json_number(getattr(stats, field)) for field in FIELDS}


def _json_number(value: float) -> object:
    return None if isinstance(value, float) and not np.isfinite(value) else value


def swapper(
    run: Path, versions: list[Path], interval: float, stop: threading.Event, counter: list[int]
) -> None:
    """Put the versions in place alternately, atomically, every `interval` seconds."""
    target = run / "grads_1.safetensors"
    while not stop.is_set():
        source = versions[counter[0] % 2]
        temporary = run / f".swap-{time.monotonic_ns()}.tmp"
        os.link(source, temporary)
        os.replace(temporary, target)
        counter[0] += 1
        stop.wait(interval)


def classify(result: subprocess.CompletedProcess[str], truth: list[dict[str, object]]) -> str:
    if "changed during read" in result.stderr:
        return "changed during read"
    if result.returncode not in (0, 1) or "Traceback" in result.stderr:
        return f"failure (exit {result.returncode}): {result.stderr.strip()[:300]}"
    document = json.loads(result.stdout)
    if document["schema"] == 1:  # one object per step (gradcheck before schema 2, or --json-schema 1)
        stats = document["params"][0]["steps"][-1]["grad"]
        got = {field: stats.get(field) for field in FIELDS}
    else:  # schema 2: one array per statistic over the steps (docs/JSON.md)
        series = document["params"][0]["grad"]
        got = {field: series[field][-1] if field in series else None for field in FIELDS}
    for index, want in enumerate(truth):
        if got == want:
            return f"version {'AB'[index]} exact"
    return f"failure: mixed or wrong statistics {got}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    elements = args.mib << 18  # F32: 4 bytes each
    gradcheck = [sys.executable, "-c", "from gradcheck.cli.main import cli; cli()"]
    failed = False
    with tempfile.TemporaryDirectory(prefix="gradcheck-race-") as work:
        root = Path(work)
        versions = [root / "a.safetensors", root / "b.safetensors"]
        for seed, path in enumerate(versions):
            write_version(path, seed, elements)
        truth = [expected(path) for path in versions]
        run = root / "run"
        run.mkdir()
        os.link(versions[0], run / "grads_1.safetensors")
        for jobs in (1, 2):
            stop, counter = threading.Event(), [0]
            thread = threading.Thread(target=swapper, args=(run, versions, args.interval, stop, counter))
            thread.start()
            tally: dict[str, int] = {}
            started = time.perf_counter()
            try:
                for _ in range(args.runs):
                    command = [
                        *gradcheck,
                        "inspect",
                        str(run),
                        "--format",
                        "json",
                        "--no-cache",
                        "-j",
                        str(jobs),
                    ]
                    result = subprocess.run(command, capture_output=True, text=True, check=False)
                    outcome = classify(result, truth)
                    tally[outcome] = tally.get(outcome, 0) + 1
                    failed = failed or outcome.startswith("failure")
            finally:
                stop.set()
                thread.join()
            seconds = time.perf_counter() - started
            print(f"-j {jobs}: {args.runs} runs in {seconds:.1f} s, {counter[0]} replacements: {tally}")
    print("FAIL" if failed else "OK: every result is one version's exact statistics or 'changed during read'")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
