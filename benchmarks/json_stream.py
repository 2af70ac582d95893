"""Bytes, seconds and peak RSS of `--format json` (schema 2 streamed, schema 1) and `gradcheck export`.

The writers are measured on their own, with the run's columns already in memory (as `load_run` and
`derive_columns` leave them): each measurement runs in a fresh subprocess that builds a synthetic run of
STEPS x PARAMS x 3 kinds (random statistics with full float64 digits, as real sums have; parameters in
weight/bias layers), notes its resident set, runs one writer into /dev/null (JSON) or a temporary file
(export) and prints the bytes written, the writer's seconds and the process peak RSS.

Schema 1 needs the per-object rows (`metrics.derive` over one Tensor per cell), which at 1,000 x 500 x 3 take
gigabytes: it is measured at `--baseline-steps` (default 100) beside schema 2 at the same size, and the ratio
is what to compare; schema 2 and the exports are then measured at the full `--steps`.

    python benchmarks/json_stream.py [--steps 1000] [--params 500] [--baseline-steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
from gradcheck.analysis.columns import KINDS, Columns, DerivedColumns, KindColumns, columns_from_tensors
from gradcheck.analysis.config import Config
from gradcheck.analysis.inspection import Report
from gradcheck.analysis.runs import Run

mode, steps, params = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
shape = (steps, params)
names = tuple(f"h.{p // 2}.{'weight' if p % 2 == 0 else 'bias'}" for p in range(params))
files = tuple(f"run/step_{s * 10:08d}.safetensors" for s in range(steps))

def kind():
    count = np.broadcast_to(np.where(np.arange(params) % 2 == 0, 768, 48), shape).astype(np.int64)
    zeros = rng.integers(0, 3, shape)
    abs_max = rng.random(shape)
    return KindColumns(
        present=np.ones(shape, bool), count=count, nan=np.zeros(shape, np.int64), inf=np.zeros(shape, np.int64),
        zeros=zeros, abs_min=abs_max * rng.random(shape) * 1e-3, abs_max=abs_max,
        abs_sum=abs_max * count * 0.3, sq_sum=abs_max**2 * count * 0.2, scale=np.ones(shape),
        file=np.broadcast_to(np.arange(steps, dtype=np.int32)[:, None], shape).copy(),
        dtype=np.zeros(shape, np.int32), shape=np.where(np.arange(params) % 2 == 0, 0, 1)[None].repeat(steps, 0).astype(np.int32),
    )

columns = Columns(np.arange(steps, dtype=np.int64) * 10, names, {k: kind() for k in KINDS}, files, ("F32",), ((16, 48), (48,)))
if mode == "schema1":  # the per-object path schema 1 reads: one Tensor per cell, metrics.derive
    from gradcheck.analysis.metrics import derive
    tensors = dict(columns.cells())
    run = Run("run", tuple(columns.steps.tolist()), names, tensors, (), ())
    report = Report(run, derive(run), [], Config())
else:
    run = Run("run", tuple(columns.steps.tolist()), names, {}, (), ())
    run.__dict__["columns"] = columns
    layer_norm = rng.random(shape)
    derived = DerivedColumns(
        present=np.ones(shape, bool), update_ratio=rng.normal(-3, 1, shape), grad_param_ratio=rng.random(shape),
        grad_param_known=np.ones(shape, bool), layer_norm=layer_norm, layer_rms=layer_norm / 30,
        layer_known=np.ones(shape, bool), depth=-rng.random(shape) * 3, layers=tuple(dict.fromkeys(n.rsplit(".", 1)[0] for n in names)),
        layer_index=np.arange(params) // 2,
    )
    report = Report(run, {}, [], Config())
    report.__dict__["derived"] = derived

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

before = rss_mib()
written = 0
began = time.perf_counter()
if mode in ("schema1", "schema2"):
    with open(os.devnull, "w", encoding="utf-8") as sink:
        def write(text):
            global written
            written += len(text.encode("utf-8"))
            sink.write(text)
        if mode == "schema1":
            from gradcheck.cli.jsonout import dumps, report_document
            write(dumps(report_document(report, int(columns.steps[-1]), 1)) + "\n")
        else:
            from gradcheck.cli.jsonstream import write_document
            write_document(report, int(columns.steps[-1]), 1, write)
else:
    from gradcheck.cli import export
    path = sys.argv[4]
    with open(path, "wb") as out:
        (export._write_csv if mode == "csv" else export._write_parquet)(report, out)
    written = os.path.getsize(path)
seconds = time.perf_counter() - began
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"bytes": written, "seconds": seconds, "rss_before": before, "peak": peak}))
"""


def child(mode: str, steps: int, params: int) -> dict[str, float]:
    """One measurement in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="gradcheck-json-stream-") as folder:
        out = os.path.join(folder, f"stats.{'parquet' if mode == 'parquet' else 'csv'}")
        done = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(steps), str(params), out],
            check=False,
            capture_output=True,
            text=True,
        )
    if done.returncode:
        sys.exit(f"{mode} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def show(label: str, found: dict[str, float]) -> None:
    print(
        f"  {label:34} {found['bytes'] / 1e6:8.1f} MB  {found['seconds']:7.2f} s  "
        f"RSS before {found['rss_before']:6.0f} MiB  peak {found['peak']:6.0f} MiB  "
        f"(writer +{found['peak'] - found['rss_before']:.0f} MiB)",
        flush=True,
    )


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--params", type=int, default=500)
    parser.add_argument("--baseline-steps", type=int, default=100)
    args = parser.parse_args()
    small, full = args.baseline_steps, args.steps
    print(f"baseline: {small} steps x {args.params} params x 3 kinds")
    one, two = child("schema1", small, args.params), child("schema2", small, args.params)
    show("schema 1 (json.dumps indent=2)", one)
    show("schema 2 (streamed)", two)
    print(
        f"  schema 2 / schema 1: bytes {two['bytes'] / one['bytes']:.2f}x, seconds {two['seconds'] / one['seconds']:.2f}x,"
        f" writer memory {(two['peak'] - two['rss_before']) / max(1.0, one['peak'] - one['rss_before']):.2f}x"
    )
    print(f"full: {full} steps x {args.params} params x 3 kinds (target: JSON <= 60 MB, <= 300 MB RSS)")
    for mode, label in (
        ("schema2", "schema 2 (streamed)"),
        ("csv", "export .csv"),
        ("parquet", "export .parquet"),
    ):
        show(label, child(mode, full, args.params))


if __name__ == "__main__":
    main()
