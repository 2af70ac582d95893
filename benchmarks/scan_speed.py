"""Single-core speed of the safetensors reader: scan_file per dtype, parse_header, many small tensors.

Generates files in a temporary directory, reads each once (warm page cache), then times, best of
`--repeat`, in this one process (one core):
  - `scan_file` on one file per dtype (F32, BF16, F16, F8_E4M3, F8_E5M2; `--mib` MiB of tensor data each,
    realistic values: normal with a few orders of magnitude, no NaN), in GB/s of tensor data, next to numpy's
    own `np.abs(np.frombuffer(...)).max()` pass over the same bytes already in memory (1 MiB at a time;
    ml_dtypes' types for BF16/F8), and the ratio gradcheck / numpy;
  - `parse_header` of a header of `--tensors` tensors (ms), next to plain `json.loads` of the same bytes;
  - `scan_file` of two files of 1,500 F32 tensors (500 parameters x grad/param/update): shapes (256, 256),
    (256,), (64, 256) (156 MiB: data-bound), and shapes (32, 32), (32,), (8, 32) (2.5 MiB: bound by the
    cost per tensor), in ms.
Targets: F32 >= 2 GB/s, BF16 >= 1.5 GB/s, F8 >= 0.35 GB/s, header < 500 ms, the 2.5 MiB file a few ms.
The timed part holds /tmp/bench.lock (fcntl.flock), so measurements of other scripts never overlap.

    python benchmarks/scan_speed.py [--mib 256] [--repeat 5] [--dtypes F32,BF16] [--profile F32]
"""

from __future__ import annotations

import argparse
import cProfile
import fcntl
import json
import pstats
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from gradcheck.analysis.dtypes import F8_E4M3_TABLE, F8_E5M2_TABLE
from gradcheck.analysis.reader import parse_header, scan_file

DTYPES = ("F32", "BF16", "F16", "F8_E4M3", "F8_E5M2")
ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
LOCK = "/tmp/bench.lock"
SMALL_SHAPES = {  # cycled over the 500 parameters
    "medium": ((256, 256), (256,), (64, 256)),
    "tiny": ((32, 32), (32,), (8, 32)),
}


def write_file(path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], data: Iterator[bytes]) -> None:
    """Write a safetensors file from (name, dtype, shape) entries and their bytes, in that order."""
    header: dict[str, object] = {"__metadata__": {"step": "0"}}
    offset = 0
    for name, dtype, shape in tensors:
        size = int(np.prod(shape)) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for chunk in data:
            out.write(chunk)


def encode(values: np.ndarray, dtype: str) -> bytes:
    """Raw little-endian bytes of float32 values in a safetensors dtype (BF16 truncated, F8 rounded up)."""
    if dtype == "F32":
        return values.tobytes()
    if dtype == "F16":
        return values.astype(np.float16).tobytes()
    if dtype == "BF16":
        return (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    table = F8_E4M3_TABLE if dtype == "F8_E4M3" else F8_E5M2_TABLE
    top = int(np.flatnonzero(np.isfinite(table[:128]))[-1])  # the largest finite positive code
    codes = np.minimum(np.searchsorted(table[: top + 1], np.abs(values)), top).astype(np.uint8)
    return (codes | np.where(values < 0, 0x80, 0).astype(np.uint8)).tobytes()


def dtype_file(folder: Path, dtype: str, mib: int) -> Path:
    """A file of `mib` MiB of tensor data in four tensors of realistic values."""
    rng = np.random.default_rng(0)
    per_tensor = (mib << 20) // 4 // ITEMSIZE[dtype]
    block = 1 << 20

    def data() -> Iterator[bytes]:
        for _ in range(4):
            for start in range(0, per_tensor, block):
                n = min(block, per_tensor - start)
                scale = 10.0 ** rng.integers(-3, 1, n).astype(np.float32)
                yield encode(rng.standard_normal(n, dtype=np.float32) * scale, dtype)

    path = folder / f"{dtype}.safetensors"
    write_file(path, [(f"grad/w{i}", dtype, (per_tensor,)) for i in range(4)], data())
    return path


def small_file(folder: Path, size: str) -> Path:
    """1,500 F32 tensors: grad/param/update of 500 parameters, shapes cycling SMALL_SHAPES[size]."""
    rng = np.random.default_rng(1)
    shapes = SMALL_SHAPES[size]
    tensors = [
        (f"{kind}/layer{i}.w", "F32", shapes[i % len(shapes)])
        for i in range(500)
        for kind in ("grad", "param", "update")
    ]
    path = folder / f"{size}.safetensors"
    write_file(
        path, tensors, (rng.standard_normal(shape, dtype=np.float32).tobytes() for *_, shape in tensors)
    )
    return path


def big_header(tensors: int) -> bytes:
    """The JSON header of a file of `tensors` one-element F32 tensors, padded to 8 bytes."""
    header = {
        f"grad/model.layers.{i}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        for i in range(tensors)
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def best(action: Callable[[], object], repeat: int) -> float:
    """The shortest wall time of `repeat` calls, in seconds."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return min(times)


def numpy_pass(path: Path, dtype: str) -> Callable[[], None] | None:
    """numpy's abs-max pass over the tensor bytes of a file, held in memory; None without a numpy dtype."""
    content = path.read_bytes()
    (length,) = struct.unpack("<Q", content[:8])
    data = memoryview(content)[8 + length :]
    if dtype in ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            return None
        np_dtype = np.dtype(getattr(ml_dtypes, ML_DTYPES[dtype]))
    else:
        np_dtype = np.dtype({"F32": "<f4", "F16": "<f2"}[dtype])
    step = 1 << 20

    def run() -> None:
        for offset in range(0, len(data), step):
            np.abs(np.frombuffer(data[offset : offset + step], dtype=np_dtype)).max()

    return run


@contextmanager
def bench_lock() -> Iterator[None]:
    """Hold the shared benchmark lock so that no other measurement runs at the same time."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def profile(action: Callable[[], object], lines: int = 25) -> None:
    """Print the cProfile of one call, heaviest functions (own time) first."""
    profiler = cProfile.Profile()
    profiler.runcall(action)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(lines)


def measure_dtypes(folder: Path, args: argparse.Namespace) -> None:
    """Print scan_file GB/s per dtype next to numpy's pass over the same bytes."""
    print(f"{'dtype':8} {'MiB':>5} {'gradcheck GB/s':>15} {'numpy GB/s':>11} {'ratio':>6}")
    for dtype in args.dtypes:
        path = dtype_file(folder, dtype, args.mib)
        scan_file(path)  # warm the page cache
        size = path.stat().st_size
        baseline = numpy_pass(path, dtype)
        with bench_lock():
            ours = size / best(lambda p=path: scan_file(p), args.repeat) / 1e9
            theirs = size / best(baseline, args.repeat) / 1e9 if baseline else float("nan")
            if dtype in args.profile:
                profile(lambda p=path: scan_file(p))
        print(f"{dtype:8} {size >> 20:5d} {ours:15.2f} {theirs:11.2f} {ours / theirs:6.2f}")
        path.unlink()


def measure_header_and_small(folder: Path, args: argparse.Namespace) -> None:
    """Print parse_header time of a large header and scan_file time of the 1,500-tensor files."""
    raw = big_header(args.tensors)
    size = 8 + len(raw) + 4 * args.tensors
    small = {name: small_file(folder, name) for name in SMALL_SHAPES}
    for path in small.values():
        path.read_bytes()
    with bench_lock():
        parse = best(lambda: parse_header(raw, size, "big.safetensors"), args.repeat)
        loads = best(lambda: json.loads(raw), args.repeat)
        scans = {name: best(lambda p=path: scan_file(p), args.repeat * 4) for name, path in small.items()}
        if "header" in args.profile:
            profile(lambda: parse_header(raw, size, "big.safetensors"))
        if "small" in args.profile:
            profile(lambda: scan_file(small["tiny"]))
    print(
        f"parse_header, {args.tensors} tensors ({len(raw) >> 20} MiB): {parse * 1e3:.0f} ms "
        f"(json.loads alone {loads * 1e3:.0f} ms, ratio {parse / loads:.2f})"
    )
    for name, path in small.items():
        shapes = ", ".join(map(str, SMALL_SHAPES[name]))
        megabytes = path.stat().st_size / 1e6
        print(
            f"scan_file, 1,500 F32 tensors {shapes} ({megabytes:.1f} MB): {scans[name] * 1e3:.1f} ms "
            f"({megabytes / 1e3 / scans[name]:.2f} GB/s)"
        )


def main() -> None:
    """Generate the files, time the reader and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256, help="MiB of tensor data per dtype file")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions; the best one counts")
    parser.add_argument("--tensors", type=int, default=100_000, help="tensors in the large header")
    parser.add_argument(
        "--dtypes",
        type=lambda s: [d for d in s.split(",") if d],
        default=list(DTYPES),
        help="e.g. F32,BF16; '': none",
    )
    parser.add_argument(
        "--profile",
        type=lambda s: s.split(","),
        default=[],
        help="also print a cProfile of these cases: dtype names, 'header', 'small' (the tiny-shape file)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to create the temporary directory")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="scan_speed_", dir=args.dir))
    try:
        measure_dtypes(folder, args)
        measure_header_and_small(folder, args)
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
