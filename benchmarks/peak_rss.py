"""Peak memory of `gradcheck inspect` on a run holding one 1 GiB F32 tensor, against the naive reader.

Prints peak RSS (from /usr/bin/time -v) and wall time of three processes on the same file:
the interpreter importing gradcheck (baseline), `gradcheck inspect --format json`, and the classic snippet
(safetensors.numpy.load_file + numpy min/mean/max of |x| and the L2 norm). Issue 2 target: inspect < 100 MiB.

    python benchmarks/peak_rss.py [--gib 1.0] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAIVE = """
import sys, numpy as np
from safetensors.numpy import load_file
for name, x in load_file(sys.argv[1]).items():
    a = np.abs(x)
    print(name, a.min(), a.mean(), a.max(), np.linalg.norm(x.astype(np.float64)))
"""


def write_big_run(folder: Path, gib: float) -> Path:
    """One step file with a single F32 gradient of `gib` GiB, written chunk by chunk."""
    count = int(gib * (1 << 30)) // 4
    header = {
        "__metadata__": {"gradcheck.format": "1", "step": "0"},
        "grad/big.weight": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = folder / "step_00000000.safetensors"
    rng = np.random.default_rng(0)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        chunk = 1 << 22
        for start in range(0, count, chunk):
            out.write(rng.standard_normal(min(chunk, count - start), dtype=np.float32).tobytes())
    return path


def measure(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of a command, from /usr/bin/time -v."""
    began = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], check=False, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode not in (0, 1):
        sys.exit(f"{command[0]} failed ({done.returncode}): {done.stderr[-500:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return kib / 1024, wall


def main() -> None:
    """Generate the run, measure each reader, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the tensor in GiB")
    parser.add_argument("--dir", default=None, help="where to write the temporary run")
    args = parser.parse_args()
    gradcheck = shutil.which("gradcheck") or sys.exit("gradcheck is not installed (pip install .)")
    folder = Path(tempfile.mkdtemp(prefix="gradcheck-rss-", dir=args.dir))
    try:
        path = write_big_run(folder, args.gib)
        size_gb = path.stat().st_size / 1e9
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        rows = {
            "python + import gradcheck (baseline)": [sys.executable, "-c", "import gradcheck.cli.main"],
            "gradcheck inspect --format json": [gradcheck, "inspect", str(folder), "--format", "json"],
            "naive: load_file + numpy": [sys.executable, "-c", NAIVE, str(path)],
        }
        print(f"file: {size_gb:.2f} GB, one F32 tensor")
        results = {label: measure(command) for label, command in rows.items()}
        base = results["python + import gradcheck (baseline)"][0]
        for label, (rss, wall) in results.items():
            print(
                f"{label:40} peak RSS {rss:8.1f} MiB  ({rss / base:5.2f}x baseline)  {wall:6.2f} s"
                f"  {size_gb / wall:5.2f} GB/s"
            )
        ours = results["gradcheck inspect --format json"][0]
        print(
            f"gradcheck inspect peak RSS: {ours:.1f} MiB (target < 100 MiB: {'met' if ours < 100 else 'MISSED'})"
        )
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
