"""Speed and memory of `gradcheck inspect` on a run of many small files, and of parsing one huge header.

Writes a run of 1,000 step files x 500 parameters (grad/param/update of 50 small transformer blocks of width
16, F32: 1,500 tensors and ~2 MB per file) to a temp directory, warms the page cache, then times
`gradcheck inspect RUN --no-cache` (table, or `--format json`) with --jobs 1 and with the default jobs, and twice with the
stats cache on (a fresh GRADCHECK_CACHE_DIR: first and second run), printing wall seconds, CPU seconds, peak
RSS (largest process), files/s and the size of the output. Then, in a subprocess, it times
`gradcheck.analysis.reader.read_header` on one file whose header lists 100,000 tensors (target < 0.5 s)
against `json.loads` of the same header bytes.

    python benchmarks/many_files.py [--files 1000] [--params 500] [--header-tensors 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The same lock, launcher, figures and file writer as read_throughput.py, which lies beside this script.
from read_throughput import (
    add_measured_arguments,
    bench_lock,
    find_gradcheck,
    gradcheck_python,
    make_pools,
    measure,
    print_setup,
    write_file,
)

BLOCK = (  # (name, shape as multiples of the width): one pre-norm transformer block
    ("ln_1.weight", (1,)),
    ("ln_1.bias", (1,)),
    ("attn.qkv.weight", (3, 1)),
    ("attn.qkv.bias", (3,)),
    ("attn.proj.weight", (1, 1)),
    ("attn.proj.bias", (1,)),
    ("mlp.fc.weight", (4, 1)),
    ("mlp.fc.bias", (4,)),
    ("mlp.proj.weight", (1, 4)),
    ("mlp.proj.bias", (1,)),
)
SHM = "/dev/shm"
WIDTH = 16  # small layers: the point is the per-file and per-tensor cost, not the bytes
HEADER_TIMING = """
import json, sys, time
from gradcheck.analysis.reader import read_header
path, repeats = sys.argv[1], int(sys.argv[2])
with open(path, "rb") as f:
    raw = f.read(int.from_bytes(f.read(8), "little"))
def best(fn):
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return sorted(times)
found = {"read_header": best(lambda: read_header(path)), "json.loads": best(lambda: json.loads(raw))}
print(json.dumps(found))
"""


def params(count: int) -> list[tuple[str, tuple[int, ...]]]:
    """`count` (name, shape) parameters: blocks of BLOCK, cut off at `count`."""
    found = []
    for index in range(-(-count // len(BLOCK))):
        found += [(f"h.{index}.{name}", tuple(WIDTH * d for d in dims)) for name, dims in BLOCK]
    return found[:count]


def write_run(folder: Path, files: int, count: int) -> int:
    """Write `files` step files of grad/param/update of `count` parameters; return the bytes written."""
    tensors = [
        (f"{kind}/{name}", shape) for name, shape in params(count) for kind in ("grad", "param", "update")
    ]
    folder.mkdir()
    pools = make_pools("F32")
    for index in range(files):
        write_file(folder / f"step_{index * 10:08d}.safetensors", tensors, "F32", pools, index * 10)
    return sum(path.stat().st_size for path in folder.iterdir())


def warm(folder: Path) -> None:
    """Read every file once so that the measurements read from the page cache."""
    for path in folder.iterdir():
        path.read_bytes()


def inspect_runs(run: Path, folder: Path, out: Path, args: argparse.Namespace) -> None:
    """Time gradcheck inspect on the run: no cache with jobs 1 and default, then a fresh cache twice."""
    command = [args.gradcheck, "inspect", str(run), "--format", args.format]
    cache_env = {"GRADCHECK_CACHE_DIR": str(folder / "fresh-cache")}
    flags = args.new_flags
    runs = {
        "--no-cache --jobs 1": (command + (["--no-cache", "--jobs", "1"] if flags else []), {}),
        "--no-cache, default jobs": (command + (["--no-cache"] if flags else []), {}),
        "cache, first run": (command, cache_env),
        "cache, second run": (command, cache_env),
    }
    found = {}
    for label, (line, env) in runs.items():
        with bench_lock():  # one lock per run: each stays under a few minutes
            if label == next(iter(runs)):
                warm(run)
            sample = measure(line, out / "out", {**_base_env(folder), **env})
        output = (out / "out").stat().st_size
        (out / "out").unlink()
        # exit 1 means findings; a crash exits 1 too but prints nothing (the output is too big to parse here)
        if sample.code not in (0, 1) or output == 0:
            sys.exit(f"gradcheck failed (exit {sample.code}): {sample.error}")
        found[label] = sample
        print(
            f"  {label:26} {sample.seconds:7.2f} s  {args.files / sample.seconds:7.1f} files/s"
            f"  cpu {sample.cpu:7.2f} s  peak RSS {sample.rss_mib:7.1f} MiB  output {output / 1e6:.1f} MB",
            flush=True,
        )
    first, second = found["cache, first run"].seconds, found["cache, second run"].seconds
    print(f"  cache first / second run: {first / second:.1f}x")


def _base_env(folder: Path) -> dict[str, str]:
    """The environment of the measured processes: a private cache directory, never the user's."""
    return {**os.environ, "GRADCHECK_CACHE_DIR": str(folder / "cache")}


def header_run(folder: Path, args: argparse.Namespace) -> None:
    """Time read_header and json.loads on one header of args.header_tensors tensors, in a subprocess."""
    tensors = [(f"grad/layers.{index}.weight", (4,)) for index in range(args.header_tensors)]
    path = folder / "huge_header.safetensors"
    header = write_file(path, tensors, "F32", make_pools("F32"), 0)
    with bench_lock():
        sample = measure(
            [gradcheck_python(args), "-c", HEADER_TIMING, str(path), str(args.repeats)], folder / "hout"
        )
    if sample.code:
        sys.exit(f"header timing failed: {sample.error}")
    times = json.loads((folder / "hout").read_text())
    ours, base = times["read_header"][0], times["json.loads"][0]
    verdict = "met" if ours < 0.5 else "MISSED"
    print(
        f"header of {args.header_tensors} tensors ({header / 1e6:.1f} MB), best of {args.repeats}:"
        f"\n  read_header {ours:.3f} s (target < 0.5 s: {verdict})  json.loads {base:.3f} s"
        f"  ratio read_header / json.loads {ours / base:.1f}x  (process peak RSS {sample.rss_mib:.0f} MiB)"
    )


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints seconds, files/s, CPU seconds and peak RSS of each "
        "gradcheck run (no cache jobs 1 / default, cache first / second), then read_header vs json.loads."
    )
    parser.add_argument("--files", type=int, default=1000, help="step files in the run (default 1000)")
    parser.add_argument("--params", type=int, default=500, help="parameters per file (default 500)")
    parser.add_argument("--header-tensors", type=int, default=100_000, help="tensors in the big header")
    parser.add_argument(
        "--repeats", type=int, default=5, help="repetitions of the header timing (best is shown)"
    )
    parser.add_argument(
        "--format",
        default="table",
        choices=("table", "json"),
        help="inspect's output: the table people read (default) or the JSON document of every step",
    )
    add_measured_arguments(parser)
    args = parser.parse_args()
    args.gradcheck = find_gradcheck(parser, args.gradcheck)
    return args


def main() -> None:
    """Write the run and the big header, measure, print, clean up."""
    args = parse_args()
    print_setup(args)
    folder = Path(tempfile.mkdtemp(prefix="gradcheck-many-files-", dir=args.dir))
    # The JSON document runs to hundreds of MB: on tmpfs its writing is not slowed by disk writeback.
    out = Path(tempfile.mkdtemp(prefix="gradcheck-many-files-", dir=SHM if os.path.isdir(SHM) else None))
    try:
        size = write_run(folder / "run", args.files, args.params)
        print(f"run: {args.files} files x {args.params} parameters x 3 kinds, {size / 1e9:.2f} GB")
        inspect_runs(folder / "run", folder, out, args)
        header_run(folder, args)
    finally:
        shutil.rmtree(folder)
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
