"""Speed and memory of `gradcheck inspect` on runs of many small files, against a numpy peer in the same run.

Runs (each written to a temp directory, its page cache warmed, `--only` picks some):
- `full`: 1,000 step files x 500 parameters x grad/param/update (small F32 tensors of width-16 transformer
  blocks, ~2 MB per file);
- `stats`: the same run in stats mode (`Recorder(mode="stats")` files: no tensor data, one JSON summary per
  tensor in `__metadata__["gradcheck.stats"]`, docs/FORMAT.md);
- `single`: 100,000 files of one 16x16 F32 gradient each;
- `header`: `read_header` of one file whose header lists 100,000 tensors, against `json.loads` of its bytes.

Per run it measures, each as its own process (wall and CPU seconds, peak RSS of the largest process): the
numpy peer (safe_open per file; min/mean/max |x| and the L2 norm of every tensor, or the same figures from the
summaries of a stats file), `inspect --no-cache` (cold: page cache warm, no stats cache), `inspect` twice
with a fresh stats cache (the second is "cached"), and `inspect --format json` (cached, bytes written). Every
figure is printed next to its target and as a ratio to the peer of the same run. `--landed GRADCHECK` also
measures another install (the main branch's) on the same runs, printed beside ours.

    python benchmarks/many_files.py                       # all runs, ~20 min on 2 busy cores
    python benchmarks/many_files.py --files 100 --single-files 5000 --only full,stats,single   # < 1 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The same lock, launcher, figures and file writer as read_throughput.py, which lies beside this script.
from read_throughput import (
    Sample,
    add_measured_arguments,
    bench_lock,
    find_gradcheck,
    gradcheck_python,
    make_pools,
    measure,
    print_setup,
    write_file,
)
from startup import compiled_env

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
KINDS = ("grad", "param", "update")
SHM = "/dev/shm"
WIDTH = 16  # small layers: the point is the per-file and per-tensor cost, not the bytes
# Issue #14's targets: seconds, MiB, MB and speed against the peer.
TARGETS = {
    "cold": 5.0,
    "cached": 1.0,
    "rss": 300.0,
    "json_mb": 60.0,
    "single_cold": 15.0,
    "single_cached": 3.0,
}
TARGET_PEER = 3.0
# The numpy peer: what a user would write with safetensors instead of gradcheck.
PEER = """
import json, math, os, sys
import numpy as np
from safetensors import safe_open
run, rows = sys.argv[1], 0
for name in sorted(os.listdir(run)):
    with safe_open(os.path.join(run, name), framework="numpy") as f:
        stats = json.loads((f.metadata() or {}).get("gradcheck.stats", "{}"))
        for key, s in stats.items():  # stats mode: the figures from the summaries
            s["abs_min"], s["abs_sum"] / max(s["count"], 1), s["abs_max"], math.sqrt(s["sq_sum"])
            rows += 1
        for key in f.keys():
            x = f.get_tensor(key)
            a = np.abs(x)
            a.min(), a.mean(), a.max(), np.linalg.norm(x.astype(np.float64))
            rows += 1
print(rows)
"""
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


@dataclass(frozen=True)
class Figure:
    """One measured command: its sample and the bytes it wrote to stdout."""

    sample: Sample
    output: int


def params(count: int) -> list[tuple[str, tuple[int, ...]]]:
    """`count` (name, shape) parameters: blocks of BLOCK, cut off at `count`."""
    found = []
    for index in range(-(-count // len(BLOCK))):
        found += [(f"h.{index}.{name}", tuple(WIDTH * d for d in dims)) for name, dims in BLOCK]
    return found[:count]


def write_run(folder: Path, files: int, count: int) -> int:
    """Write `files` step files of grad/param/update of `count` parameters; return the bytes written."""
    tensors = [(f"{kind}/{name}", shape) for name, shape in params(count) for kind in KINDS]
    folder.mkdir()
    pools = make_pools("F32")
    for index in range(files):
        write_file(folder / f"step_{index * 10:08d}.safetensors", tensors, "F32", pools, index * 10)
    return _size(folder)


def write_stats_run(folder: Path, full: Path, files: int) -> int:
    """The stats-mode twin of the full run: the first file's summaries, scaled a little per step."""
    from safetensors.numpy import load_file

    from gradcheck.recording import host_tensor, summarize_host, summary_entry

    first = load_file(str(next(iter(sorted(full.iterdir())))))
    base = {key: summary_entry(summarize_host(host_tensor(x)), x.shape, "F32") for key, x in first.items()}
    folder.mkdir()
    for index in range(files):
        factor = 1.0 + index * 1e-4  # a slowly growing run: |x| sums scale by it, squares by its square
        entries = {key: _scaled(entry, factor) for key, entry in base.items()}
        metadata = {"gradcheck.format": "1", "step": str(index * 10), "gradcheck.stats": json.dumps(entries)}
        _write_header_only(folder / f"step_{index * 10:08d}.safetensors", metadata)
    return _size(folder)


def _scaled(entry: dict, factor: float) -> dict:
    """A summary entry of the same tensor times `factor`."""
    scaled = dict(entry)
    for name in ("abs_min", "abs_max", "abs_sum"):
        scaled[name] = entry[name] * factor
    scaled["sq_sum"] = entry["sq_sum"] * factor * factor
    return scaled


def _write_header_only(path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file of no tensor: the 8-byte length and the padded JSON header."""
    raw = json.dumps({"__metadata__": metadata}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)


def write_single_run(folder: Path, files: int) -> int:
    """`files` step files of one 16x16 F32 gradient each."""
    folder.mkdir()
    pools = make_pools("F32")
    for index in range(files):
        write_file(folder / f"step_{index:08d}.safetensors", [("grad/w", (16, 16))], "F32", pools, index)
    return _size(folder)


def _size(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(folder))


def warm(folder: Path) -> None:
    """Read every file once so that the measurements read from the page cache."""
    for entry in os.scandir(folder):
        Path(entry.path).read_bytes()


def run_once(command: list[str], out: Path, env: dict[str, str]) -> Figure:
    """Measure one command (under the lock); stop the benchmark if it failed."""
    with bench_lock():
        sample = measure(command, out / "out", env)
    output = (out / "out").stat().st_size
    (out / "out").unlink()
    if sample.code not in (0, 1) or output == 0:  # exit 1 means findings; a crash prints no output
        sys.exit(f"{command[0]} failed (exit {sample.code}): {sample.error}")
    return Figure(sample, output)


def measure_run(
    run: Path, folder: Path, out: Path, gradcheck: str, peer: Sample | None, with_json: bool = True
) -> dict[str, Figure]:
    """Cold, cache first/second and (`with_json`) JSON of one gradcheck on one run, printed as they finish."""
    cache = {
        **compiled_env(folder),
        "GRADCHECK_CACHE_DIR": str(Path(tempfile.mkdtemp(dir=folder, prefix="cache-"))),
    }
    command = [gradcheck, "inspect", str(run)]
    plan = {
        "cold (--no-cache)": (command + ["--no-cache"], _no_cache_env(folder)),
        "cache, first run": (command, cache),
        "cached (second run)": (command, cache),
        "--format json (cached)": (command + ["--format", "json"], cache),
    }
    if not with_json:
        del plan["--format json (cached)"]
    _compile_modules(gradcheck, folder, cache)
    found = {}
    for label, (line, env) in plan.items():
        found[label] = figure = run_once(line, out, env)
        print_figure(label, figure, peer)
    return found


def _compile_modules(gradcheck: str, folder: Path, env: dict[str, str]) -> None:
    """Inspect a one-tensor run once, unmeasured, so the modules' bytecode is cached (compiled_env)."""
    tiny = folder / "tiny"
    if not tiny.exists():
        tiny.mkdir()
        write_file(tiny / "step_00000000.safetensors", [("grad/w", (4,))], "F32", make_pools("F32"), 0)
    for output_format in ("table", "json"):
        subprocess.run(
            [gradcheck, "inspect", str(tiny), "--format", output_format, "--no-cache"],
            capture_output=True, env=env, check=False,
        )  # fmt: skip


def _no_cache_env(folder: Path) -> dict[str, str]:
    """--no-cache reads no cache; the variable still points away from the user's, should a flag be missing."""
    return {**compiled_env(folder), "GRADCHECK_CACHE_DIR": str(folder / "unused-cache")}


def print_figure(label: str, figure: Figure, peer: Sample | None) -> None:
    """Seconds, CPU, peak RSS, output bytes, and the speed against the peer of the same run."""
    sample = figure.sample
    against = (
        f"  {peer.seconds / sample.seconds:5.2f}x the peer (cpu {peer.cpu / sample.cpu:5.2f}x)"
        if peer
        else ""
    )
    print(
        f"    {label:24} {sample.seconds:7.2f} s  cpu {sample.cpu:7.2f} s  peak RSS {sample.rss_mib:7.1f} MiB"
        f"  output {figure.output / 1e6:8.2f} MB{against}",
        flush=True,
    )


def bench_run(name: str, run: Path, folder: Path, out: Path, args: argparse.Namespace) -> dict:
    """The peer, then ours (and the landed install's) on one run; the figures for the summary."""
    warm(run)
    peer = run_once([sys.executable, "-c", PEER, str(run)], out, compiled_env(folder)).sample
    print(f"  numpy peer (safe_open per file)  {peer.seconds:7.2f} s  cpu {peer.cpu:7.2f} s"
          f"  peak RSS {peer.rss_mib:7.1f} MiB", flush=True)  # fmt: skip
    result = {"peer": peer}
    for label, gradcheck in (("gradcheck", args.gradcheck), ("landed", args.landed)):
        if gradcheck:
            print(f"  {label} ({gradcheck}):")
            result[label] = measure_run(run, folder, out, gradcheck, peer, with_json=name != "single")
    return {"name": name, **result}


def print_summary(results: list[dict]) -> None:
    """Each target next to our figure, the landed install's (if measured) and the peer's."""
    print("\nsummary (target; ours; landed if measured; ours vs the peer of the same run):")
    for result in results:
        ours, landed, peer = result.get("gradcheck"), result.get("landed"), result["peer"]
        single = result["name"] == "single"
        rows = [
            ("cold", "cold (--no-cache)", TARGETS["single_cold" if single else "cold"], "seconds"),
            ("cached", "cached (second run)", TARGETS["single_cached" if single else "cached"], "seconds"),
            ("peak RSS cold", "cold (--no-cache)", TARGETS["rss"], "rss"),
            ("peak RSS cached", "cached (second run)", TARGETS["rss"], "rss"),
            ("json MB", "--format json (cached)", TARGETS["json_mb"], "output"),
            ("json peak RSS", "--format json (cached)", TARGETS["rss"], "rss"),
        ]
        for label, key, target, field in rows:
            if single and label.startswith("json"):
                continue
            value = _value(ours[key], field)
            then = f"  landed {_value(landed[key], field):8.2f}" if landed else ""
            speed = (
                f"  {peer.seconds / ours[key].sample.seconds:5.2f}x the peer" if field == "seconds" else ""
            )
            verdict = "met" if value <= target else "MISSED"
            print(f"  {result['name']:6} {label:16} <= {target:6g}: {value:8.2f} {verdict:6}{then}{speed}")
        cold = ours["cold (--no-cache)"].sample.seconds
        verdict = "met" if peer.seconds / cold >= TARGET_PEER else "MISSED"
        print(
            f"  {result['name']:6} {'cold vs peer':16} >= {TARGET_PEER:5g}x: {peer.seconds / cold:7.2f}x {verdict}"
        )


def _value(figure: Figure, field: str) -> float:
    if field == "seconds":
        return figure.sample.seconds
    return figure.sample.rss_mib if field == "rss" else figure.output / 1e6


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="step files of full/stats (default 1000)")
    parser.add_argument("--params", type=int, default=500, help="parameters per file (default 500)")
    parser.add_argument("--single-files", type=int, default=100_000, help="files of `single` (100000)")
    parser.add_argument("--header-tensors", type=int, default=100_000, help="tensors in the big header")
    parser.add_argument(
        "--repeats", type=int, default=5, help="repetitions of the header timing (best shown)"
    )
    parser.add_argument(
        "--only", default="full,stats,single,header", help="comma-separated runs (default all)"
    )
    parser.add_argument("--landed", default=None, help="another gradcheck executable to measure beside ours")
    add_measured_arguments(parser)
    args = parser.parse_args()
    args.gradcheck = find_gradcheck(parser, args.gradcheck)
    args.landed = find_gradcheck(parser, args.landed) if args.landed else None
    args.only = [name.strip() for name in args.only.split(",")]
    unknown = set(args.only) - {"full", "stats", "single", "header"}
    if unknown:
        parser.error(f"unknown run(s) {sorted(unknown)}: choose from full, stats, single, header")
    return args


def main() -> None:
    """Write each run, measure, print, clean up."""
    args = parse_args()
    print_setup(args)
    folder = Path(tempfile.mkdtemp(prefix="gradcheck-many-files-", dir=args.dir))
    # The JSON document can run to hundreds of MB: on tmpfs its writing is not slowed by disk writeback.
    out = Path(tempfile.mkdtemp(prefix="gradcheck-many-files-", dir=SHM if os.path.isdir(SHM) else None))
    results = []
    try:
        if {"full", "stats"} & set(args.only):
            size = write_run(folder / "full", args.files, args.params)
            print(
                f"\n== full: {args.files} files x {args.params} parameters x 3 kinds, {size / 1e9:.2f} GB =="
            )
            if "full" in args.only:
                results.append(bench_run("full", folder / "full", folder, out, args))
            if "stats" in args.only:
                size = write_stats_run(folder / "stats", folder / "full", args.files)
                print(f"\n== stats: the same run in stats mode, {size / 1e6:.1f} MB ==")
                results.append(bench_run("stats", folder / "stats", folder, out, args))
            shutil.rmtree(folder / "full")
        if "single" in args.only:
            size = write_single_run(folder / "single", args.single_files)
            print(f"\n== single: {args.single_files} files of one 16x16 tensor, {size / 1e6:.1f} MB ==")
            results.append(bench_run("single", folder / "single", folder, out, args))
        if results:
            print_summary(results)
        if "header" in args.only:
            header_run(folder, args)
    finally:
        shutil.rmtree(folder)
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
