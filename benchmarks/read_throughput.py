"""Read throughput of `gradcheck inspect` per dtype, against the naive safetensors.numpy reader.

Writes runs of GPT-2-small-like step files (grad/param/update of wte 50257x768, wpe 1024x768, 12 blocks of
ln, attn.c_attn 768x2304, attn.c_proj 768x768, mlp.c_fc 768x3072, mlp.c_proj 3072x768 and their biases, ln_f)
to a temp directory, one run per dtype, warms the page cache, then times in turn, rotating the order every
repetition: the peer (a subprocess running safetensors.numpy.load_file, then numpy min/mean/max of |x| and the
L2 norm per tensor), `gradcheck inspect RUN --format json --no-cache --jobs 1`, and the same with the default
jobs. Per dtype and repetition it prints wall seconds, GB/s (tensor bytes / wall seconds), CPU seconds
(user+sys of the process and its workers), peak RSS (the largest process of the tree, from wait4), the speed
ratio gradcheck/peer and jobs/jobs=1; then medians and a summary table against the targets.
`--big`: a ~4 GB run with one 1 GiB F32 tensor (peak RSS is the point). `--cache`: inspect a ~2 GB run twice
with the stats cache on (a fresh GRADCHECK_CACHE_DIR) and print both times and their ratio.

    python benchmarks/read_throughput.py [--dtypes F32,BF16] [--size-gb 0.5] [--steps 4] [--repeats 3]
    python benchmarks/read_throughput.py --big
    python benchmarks/read_throughput.py --cache
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOCK_PATH = "/tmp/bench.lock"  # shared with the other benchmarks on this machine: never measure concurrently
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1}
KINDS = ("grad", "param", "update")
# Typical magnitudes of each kind in float training; F8 tensors are scaled into the format's range instead.
SCALES = {"grad": 1e-3, "param": 2e-2, "update": 1e-4}
F8_SCALES = {"grad": 1.0, "param": 4.0, "update": 0.5}
# Default GB of tensor data per run: about one second at the target speed, so that the ~0.2 s start-up of a
# process stays a small part of its figure, while the peer (10x slower on F8) still finishes in seconds.
DEFAULT_GB = {"F32": 2.0, "F16": 1.0, "BF16": 1.0, "F8_E4M3": 0.35}
POOL_ELEMENTS = 1 << 22  # random values per (dtype, kind), repeated to fill bigger tensors
TARGET_GBPS = {"F32": 2.0, "BF16": 1.5, "F8_E4M3": 0.35}  # per core, i.e. with --jobs 1
TARGET_PEER_RATIO = 6.0
TARGET_JOBS_RATIO = 1.7
TARGET_RSS_MIB = 64.0  # plus the run's header bytes, which gradcheck keeps parsed
# Measured commands are started by this small process: a child forked from it starts from its small resident
# set, whereas a child spawned by the benchmark itself would count the benchmark's own peak RSS as its own
# (Linux carries the RSS high-water mark of the memory image across exec). wait4 reports the largest RSS of
# the command and of every worker process it waited for, and their CPU time.
LAUNCHER = """
import os, sys, time
began = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - began
with open(sys.argv[1], "w") as report:
    report.write(f"{seconds} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""
PEER = """
import os, sys, numpy as np
try:
    import ml_dtypes  # registers bfloat16 with numpy: safetensors.numpy needs it to return BF16 tensors
    if SHIM:
        np.float8_e4m3fn = ml_dtypes.float8_e4m3fn  # safetensors.numpy looks F8_E4M3 up on numpy itself
except ImportError:
    pass
from safetensors.numpy import load_file
run, rows = sys.argv[1], 0
for name in sorted(os.listdir(run))[: int(sys.argv[2])]:
    for key, x in load_file(os.path.join(run, name)).items():
        a = np.abs(x)
        a.min(), a.mean(), a.max(), np.linalg.norm(x.astype(np.float64))
        rows += 1
print(rows)
"""


@dataclass(frozen=True)
class Run:
    """A generated run directory and what it holds."""

    path: Path
    dtype: str
    files: int
    tensors: int
    tensor_bytes: int
    header_bytes: int


@dataclass(frozen=True)
class Sample:
    """One measured process: wall and CPU seconds, peak RSS of its largest process, exit code, stderr tail."""

    seconds: float
    cpu: float
    rss_mib: float
    code: int
    error: str


def gpt2_params(n_layer: int = 12, d: int = 768, vocab: int = 50257, ctx: int = 1024) -> list[tuple]:
    """The (name, shape) list of GPT-2 small, in model order."""
    params: list[tuple] = [("wte.weight", (vocab, d)), ("wpe.weight", (ctx, d))]
    for i in range(n_layer):
        block = [("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d))]
        block += [("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,))]
        block += [("ln_2.weight", (d,)), ("ln_2.bias", (d,)), ("mlp.c_fc.weight", (d, 4 * d))]
        block += [("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,))]
        params += [(f"h.{i}.{name}", shape) for name, shape in block]
    return params + [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]


def plan_file(dtype: str, budget: int) -> list[tuple]:
    """The (key, shape) tensors of one step file: grad/param/update of every parameter that still fits."""
    tensors: list[tuple] = []
    for name, shape in gpt2_params():
        size = 3 * ITEMSIZE[dtype] * int(np.prod(shape))
        if size <= budget:
            tensors += [(f"{kind}/{name}", shape) for kind in KINDS]
            budget -= size
    return tensors


def _f8_e4m3(values: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest F8_E4M3FN code (saturating at 448)."""
    codes = np.arange(127)
    exponent, mantissa = codes >> 3, codes & 7
    table = np.where(exponent == 0, mantissa / 8 * 2.0**-6, (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    nearest = np.searchsorted((table[1:] + table[:-1]) / 2, np.abs(values)).astype(np.uint8)
    return nearest | np.where(values < 0, 0x80, 0).astype(np.uint8)


def encode(values: np.ndarray, dtype: str) -> bytes:
    """Little-endian bytes of float32 values converted to a safetensors dtype (round to nearest even)."""
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    if dtype == "BF16":
        bits = values.view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
    return _f8_e4m3(values).tobytes()


def make_pools(dtype: str, seed: int = 0) -> dict[str, bytes]:
    """Random normal values of each kind's typical magnitude, encoded once per dtype."""
    rng = np.random.default_rng(seed)
    scales = F8_SCALES if dtype == "F8_E4M3" else SCALES
    return {
        kind: encode(rng.standard_normal(POOL_ELEMENTS, dtype=np.float32) * np.float32(scales[kind]), dtype)
        for kind in KINDS
    }


def write_file(path: Path, tensors: list[tuple], dtype: str, pools: dict[str, bytes], step: int) -> int:
    """Write one step file from the pools; return its header length."""
    header: dict = {"__metadata__": {"gradcheck.format": "1", "step": str(step)}}
    offset = 0
    for key, shape in tensors:
        size = ITEMSIZE[dtype] * int(np.prod(shape))
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header so the data starts 8-byte aligned
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for index, (key, shape) in enumerate(tensors):
            _write_tensor(out, pools[key.split("/")[0]], ITEMSIZE[dtype] * int(np.prod(shape)), index)
    return len(raw) + 8


def _write_tensor(out, pool: bytes, size: int, index: int) -> None:
    """Write `size` bytes of the pool, starting at a per-tensor offset and wrapping around."""
    start = (index * 7919 * 64) % (len(pool) // 2)
    view = memoryview(pool)
    while size > 0:
        part = view[start : start + size]
        out.write(part)
        size -= len(part)
        start = 0


def write_run(folder: Path, dtype: str, size_bytes: int, steps: int, extra: list[tuple] = ()) -> Run:
    """Write a run of about size_bytes of tensor data in `steps` files (more if the model is too small)."""
    full = plan_file(dtype, 1 << 62)
    model_bytes = sum(ITEMSIZE[dtype] * int(np.prod(shape)) for _, shape in full)
    budget = min(size_bytes // steps, model_bytes)
    plan = plan_file(dtype, budget)
    files = -(-size_bytes // budget)
    pools = make_pools(dtype)
    folder.mkdir(parents=True)
    headers = tensors = data = 0
    for index in range(files):
        content = [*extra, *plan] if index == 0 else plan
        headers += write_file(
            folder / f"step_{index * 100:08d}.safetensors", content, dtype, pools, index * 100
        )
        tensors += len(content)
        data += sum(ITEMSIZE[dtype] * int(np.prod(shape)) for _, shape in content)
    return Run(folder, dtype, files, tensors, data, headers)


def warm(run: Run) -> None:
    """Read every file once so that every measurement reads from the page cache."""
    for path in sorted(run.path.iterdir()):
        with path.open("rb") as source:
            while source.read(1 << 24):
                pass


def _ancestors() -> set[int]:
    """The process ids of this process's parent, grandparent, ... up to init."""
    found, pid = set(), os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def _held_by_ancestor() -> bool:
    """Whether a process this one descends from holds the lock (`flock /tmp/bench.lock python ...`)."""
    try:
        inode = os.stat(LOCK_PATH).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    fields = [line.split() for line in lines]
    holders = {int(f[4]) for f in fields if len(f) > 5 and f[1] == "FLOCK" and f[5].endswith(f":{inode}")}
    return bool(holders & _ancestors())


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Hold /tmp/bench.lock so no other benchmark on this machine measures at the same time."""
    if _held_by_ancestor():  # taking it again would wait forever for our own parent
        yield
        return
    with open(LOCK_PATH, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def measure(command: list[str], out_path: Path, env: dict[str, str] | None = None) -> Sample:
    """Run a command through the launcher, stdout to out_path; return its figures and stderr's last line."""
    err_path, report = out_path.with_suffix(".err"), out_path.with_suffix(".rusage")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        launcher = [sys.executable, "-c", LAUNCHER, str(report), *command]
        code = subprocess.run(launcher, stdout=out, stderr=err, env=env, check=False).returncode
    seconds, cpu, rss_kib = (float(field) for field in report.read_text().split())
    lines = err_path.read_text(errors="replace").strip().splitlines()
    return Sample(seconds, cpu, rss_kib / 1024, code, lines[-1] if code and lines else "")


def print_setup(args: argparse.Namespace) -> None:
    """Machine, versions and the gradcheck commit: what the figures below belong to."""
    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    versions = {name: _version(name) for name in ("gradcheck", "numpy", "safetensors", "ml_dtypes")}
    print(
        f"{len(os.sched_getaffinity(0))} cores, Python {sys.version.split()[0]}, "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
        + f", checkout at {commit or '?'}\nmeasured: {args.gradcheck}; new flags (--jobs, --no-cache): "
        + ("used" if args.new_flags else "LEFT OUT")
    )


def _version(name: str) -> str:
    """The installed version of a distribution, or 'missing'."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def inspect_command(run: Path, jobs: int | None, args: argparse.Namespace, cache: bool = False) -> list[str]:
    """The gradcheck command line; --no-new-flags leaves out --jobs and --no-cache (older gradcheck)."""
    command = [args.gradcheck, "inspect", str(run), "--format", "json"]
    if args.new_flags and not cache:
        command.append("--no-cache")
    if args.new_flags and jobs is not None:
        command += ["--jobs", str(jobs)]
    return command


def peer_command(run: Path, shim: bool, files: int = 1 << 30) -> list[str]:
    """The naive reader of the first `files` files as a subprocess, so that its peak RSS is its own."""
    return [sys.executable, "-c", PEER.replace("SHIM", str(shim)), str(run), str(files)]


def choose_peer(run: Run, out: Path) -> tuple[bool | None, str]:
    """Whether the peer needs the F8 shim (None: it cannot read this dtype at all), and a note saying so."""
    plain = measure(peer_command(run.path, False, files=1), out)
    if plain.code == 0:
        return False, ""
    note = f"peer: safetensors.numpy.load_file cannot read {run.dtype} ({plain.error})"
    shimmed = measure(peer_command(run.path, True, files=1), out)
    if shimmed.code == 0:
        return True, note + "; measured with numpy.float8_e4m3fn = ml_dtypes.float8_e4m3fn"
    return None, note + "; peer not measured"


def parallel_label(args: argparse.Namespace) -> str:
    """The label of the parallel gradcheck runs: jobs=N, or jobs=1 without the new flags."""
    if not args.new_flags:
        return "jobs=1"
    return f"jobs={args.jobs}" if args.jobs else f"jobs={len(os.sched_getaffinity(0))} (default)"


def gradcheck_python(args: argparse.Namespace) -> str:
    """The interpreter that the measured gradcheck is installed in (its venv's, or this one)."""
    python = Path(args.gradcheck).with_name("python")
    return str(python) if python.exists() else sys.executable


def configs(run: Run, shim: bool | None, args: argparse.Namespace) -> dict[str, list[str]]:
    """The measured command lines of one run, by label."""
    found = {} if shim is None else {"peer": peer_command(run.path, shim)}
    found["jobs=1"] = inspect_command(run.path, 1, args)
    if args.new_flags:
        found[parallel_label(args)] = inspect_command(run.path, args.jobs, args)
    return found


def check_output(sample: Sample, out: Path, run: Run) -> None:
    """Stop if gradcheck failed (a crash exits 1 too, but prints no JSON) or did not read every file."""
    try:
        document = json.loads(out.read_text())
    except json.JSONDecodeError:
        sys.exit(f"gradcheck failed (exit {sample.code}, no JSON on stdout): {sample.error}")
    if len(document["steps"]) != run.files or document["unreadable"] or document["skipped"]:
        sys.exit(f"gradcheck read {len(document['steps'])} of {run.files} files: {document['unreadable']}")


def print_row(label: str, sample: Sample, run: Run, startup: float) -> None:
    """One measured process: seconds, GB/s (also net of startup), CPU seconds and peak RSS."""
    if sample.code not in ((0,) if label == "peer" else (0, 1)):  # gradcheck exits 1 on findings
        print(f"  {label:16} failed (exit {sample.code}): {sample.error}")
        return
    net = run.tensor_bytes / 1e9 / max(sample.seconds - startup, 1e-9)
    print(
        f"  {label:16} {sample.seconds:7.2f} s  {run.tensor_bytes / 1e9 / sample.seconds:6.2f} GB/s"
        f"  ({net:6.2f} net of startup)  cpu {sample.cpu:6.2f} s  peak RSS {sample.rss_mib:8.1f} MiB"
    )


def ratios(rep: dict[str, Sample]) -> dict[str, float]:
    """Speed ratios of one repetition: gradcheck/peer (times faster) and parallel jobs/jobs=1."""
    found = {}
    labels = sorted(
        (label for label in rep if label.startswith("jobs=")), key=lambda label: label != "jobs=1"
    )
    for label in labels:
        if "peer" in rep and rep["peer"].code == 0:
            found[f"{label} vs peer"] = rep["peer"].seconds / rep[label].seconds
    if len(labels) == 2:
        found[f"{labels[1]} vs jobs=1"] = rep["jobs=1"].seconds / rep[labels[1]].seconds
    return found


def tiny_run(folder: Path) -> Run:
    """A run of one 4-element tensor: what a command costs when there is nothing to read."""
    tiny = folder / "tiny"
    if not tiny.exists():
        tiny.mkdir()
        write_file(tiny / "step_00000000.safetensors", [("grad/w", (4,))], "F32", make_pools("F32"), 0)
    return Run(tiny, "F32", 1, 1, 16, 0)


def measure_startup(folder: Path, args: argparse.Namespace) -> dict[str, Sample]:
    """Seconds and RSS of each command on a one-tensor run: the fixed cost in every figure."""
    run = tiny_run(folder)
    with bench_lock():
        found = {
            label: measure(command, folder / "out") for label, command in configs(run, False, args).items()
        }
        found["import gradcheck.cli.main"] = measure(
            [gradcheck_python(args), "-c", "import gradcheck.cli.main"], folder / "o"
        )
    print("startup (a run of one 4-element tensor):")
    for label, sample in found.items():
        print(f"  {label:26} {sample.seconds:6.3f} s  peak RSS {sample.rss_mib:6.1f} MiB")
    return found


def bench_dtype(run: Run, folder: Path, args: argparse.Namespace, startup: dict[str, Sample]) -> dict:
    """Time the peer and gradcheck on one run, alternating and rotating the order; return the medians."""
    out = folder / "out"
    size = f"{run.tensor_bytes / 1e9:.2f} GB of tensor data, headers {run.header_bytes / 1e6:.2f} MB"
    load = f"load average {os.getloadavg()[0]:.1f}"
    print(f"\n== {run.dtype}: {run.files} files, {run.tensors} tensors, {size}; {load} ==")
    with bench_lock():
        warm(run)
        shim, note = choose_peer(run, out)
        commands = configs(run, shim, args)
        samples: dict[str, list[Sample]] = {label: [] for label in commands}
        found: dict[str, list[float]] = {}
        for index in range(args.repeats):
            order = list(commands)[index % len(commands) :] + list(commands)[: index % len(commands)]
            rep = {label: measure(commands[label], out) for label in order}
            for label in order:
                samples[label].append(rep[label])
            if index == 0:
                check_output(rep["jobs=1"], out, run)
            print(f"rep {index + 1} (order {', '.join(order)}):")
            for label in commands:
                print_row(label, rep[label], run, startup[label].seconds)
            for name, value in ratios(rep).items():
                found.setdefault(name, []).append(value)
            print("  " + "; ".join(f"{name}: {value:.2f}x" for name, value in ratios(rep).items()))
    if note:
        print(note)
    return summarize_dtype(run, samples, found)


def summarize_dtype(run: Run, samples: dict[str, list[Sample]], found: dict[str, list[float]]) -> dict:
    """Print and return the median and best figures of one dtype."""
    result = {"run": run, "ratios": {name: (statistics.median(v), max(v)) for name, v in found.items()}}
    print("median (best):")
    for label, values in samples.items():
        seconds = [s.seconds for s in values]
        result[label] = [run.tensor_bytes / 1e9 / t for t in (statistics.median(seconds), min(seconds))]
        result[label].append(max(s.rss_mib for s in values))
        print(
            f"  {label:16} {statistics.median(seconds):7.2f} s ({min(seconds):.2f})"
            f"  {result[label][0]:6.2f} GB/s"
            f" ({result[label][1]:.2f})  peak RSS {result[label][2]:8.1f} MiB (largest of the repetitions)"
        )
    print(
        "  " + "; ".join(f"{name}: {mid:.2f}x ({top:.2f}x)" for name, (mid, top) in result["ratios"].items())
    )
    return result


def _verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    """'met', 'MISSED' or 'n/a' for one figure against its target."""
    if value is None:
        return "n/a"
    return "met" if (value >= target if higher_is_better else value <= target) else "MISSED"


def summary_rows(result: dict) -> list[tuple]:
    """(what, median, best, target text, verdict) rows of one dtype."""
    run, dtype = result["run"], result["run"].dtype
    labels = [label for label in result if label.startswith("jobs=")]
    rows = []
    for label in labels:
        mid, top, _ = result[label]
        target = TARGET_GBPS.get(dtype) if label == "jobs=1" else None
        text, verdict = (f">= {target}", _verdict(mid, target)) if target else ("", "")
        rows.append((f"{dtype} GB/s, {label}", mid, top, text, verdict))
    for name, (mid, top) in result["ratios"].items():
        target = TARGET_PEER_RATIO if name.endswith("peer") else TARGET_JOBS_RATIO
        rows.append((f"{dtype} speed {name}", mid, top, f">= {target}x", _verdict(mid, target)))
    if "peer" not in result:
        rows.append(
            (f"{dtype} speed vs peer", None, None, f">= {TARGET_PEER_RATIO}x", "n/a: peer cannot read")
        )
    limit = TARGET_RSS_MIB + run.header_bytes / 2**20
    for label in labels:
        rss = result[label][2]
        rows.append(
            (f"{dtype} peak RSS MiB, {label}", rss, None, f"<= {limit:.1f}", _verdict(rss, limit, False))
        )
    return rows


def print_summary(results: list[dict]) -> None:
    """The closing table: every figure next to its target."""
    print("\nsummary: medians over the repetitions, best in its own column; the verdict is on the median;")
    print("GB/s = tensor bytes / wall seconds; peak RSS = largest process, limit 64 MiB + the run's headers")
    print(f"  {'figure':40} {'median':>8} {'best':>8}  {'target':>8}  verdict")
    for result in results:
        for what, mid, top, target, verdict in summary_rows(result):
            shown = [("-" if value is None else f"{value:.2f}") for value in (mid, top)]
            print(f"  {what:40} {shown[0]:>8} {shown[1]:>8}  {target:>8}  {verdict}")


def throughput_mode(folder: Path, args: argparse.Namespace) -> None:
    """Generate and measure one run per dtype, then print the summary."""
    startup = measure_startup(folder, args)
    results = []
    for dtype in args.dtypes:
        size = args.size_gb or DEFAULT_GB[dtype]
        run = write_run(folder / dtype, dtype, int(size * 1e9), args.steps)
        results.append(bench_dtype(run, folder, args, startup))
        shutil.rmtree(run.path)
    print_summary(results)


def big_mode(folder: Path, args: argparse.Namespace) -> None:
    """A ~4 GB F32 run whose first file also holds one 1 GiB tensor: peak RSS of each reader."""
    giant = [("grad/lm_head.weight", (1 << 18, 1 << 10))]  # 2**28 F32 elements: 1 GiB
    run = write_run(folder / "big", "F32", int(2.9e9), 2, extra=giant)
    startup = measure_startup(folder, args)
    results = [bench_dtype(run, folder, args, startup)]
    print_summary(results)


CACHE_LABELS = ("--no-cache", "cache, first run", "cache, second run")


def _cache_round(run: Run, tiny: Run, folder: Path, index: int, args: argparse.Namespace) -> dict:
    """One round on a fresh cache: --no-cache, the cache twice, and the start-up (a one-tensor run)."""
    env = {**os.environ, "GRADCHECK_CACHE_DIR": str(folder / f"fresh-cache-{index}")}
    found = {}
    for label in CACHE_LABELS:
        command = inspect_command(run.path, args.jobs, args, cache=label != "--no-cache")
        found[label] = measure(command, folder / "out", env)
        check_output(found[label], folder / "out", run)
    found["start-up"] = measure(inspect_command(tiny.path, args.jobs, args), folder / "out", env)
    return found


def cache_mode(folder: Path, args: argparse.Namespace) -> None:
    """Inspect a ~2 GB F32 run without the cache, then twice with a fresh cache; print times and ratios."""
    run, tiny = write_run(folder / "cached", "F32", int(2e9), args.steps), tiny_run(folder)
    jobs = parallel_label(args)
    print(f"cache: {run.files} files, {run.tensors} tensors, {run.tensor_bytes / 1e9:.2f} GB, {jobs}")
    ratios, nets = [], []
    with bench_lock():
        warm(run)
        for index in range(args.repeats):
            found = _cache_round(run, tiny, folder, index, args)
            first, second, base = (found[label].seconds for label in (*CACHE_LABELS[1:], "start-up"))
            ratios.append(first / second)
            nets.append(second - base)
            shown = ", ".join(f"{label} {sample.seconds:.3f} s" for label, sample in found.items())
            rss = max(sample.rss_mib for sample in found.values())
            print(f"  {shown}; peak RSS {rss:.1f} MiB")
            print(f"    first / second {ratios[-1]:.1f}x; second run - start-up {nets[-1]:+.3f} s")
    ratio = statistics.median(ratios)
    print(f"  median first / second run: {ratio:.1f}x (target >= 20x: {_verdict(ratio, 20.0)})")
    # The second run costs the process start-up and little else, so the ratio is capped by the start-up.
    print(f"  median second run - start-up (a one-tensor run): {statistics.median(nets):+.3f} s")


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0]
        + " Prints per dtype and repetition seconds, GB/s, CPU s, peak RSS "
        "and speed ratios (gradcheck/peer, jobs/jobs=1), medians, and a summary table against the targets.",
    )
    parser.add_argument(
        "--dtypes", default="F32,F16,BF16,F8_E4M3", help="comma-separated (default: all four)"
    )
    parser.add_argument(
        "--size-gb",
        type=float,
        default=None,
        help="GB of tensor data per run (default F32 2, F16 1, BF16 1, F8 0.35)",
    )
    parser.add_argument(
        "--blas-threads",
        default=None,
        help="set OPENBLAS/OMP/MKL_NUM_THREADS of the measured processes (default: unset)",
    )
    parser.add_argument(
        "--steps", type=int, default=4, help="step files per run (more if the model is too small)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each measurement (default 3)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="jobs of the parallel runs (default: gradcheck's)"
    )
    parser.add_argument("--big", action="store_true", help="only the ~4 GB run with a 1 GiB tensor")
    parser.add_argument("--cache", action="store_true", help="only the cache timing on a ~2 GB run")
    add_measured_arguments(parser, "; skips the parallel runs")
    args = parser.parse_args()
    args.dtypes = [d.strip() for d in args.dtypes.split(",")]
    unknown = [d for d in args.dtypes if d not in ITEMSIZE]
    if unknown:
        parser.error(f"unknown dtype(s) {unknown}: choose from {', '.join(ITEMSIZE)}")
    args.gradcheck = find_gradcheck(parser, args.gradcheck)
    return args


def add_measured_arguments(parser: argparse.ArgumentParser, no_new_flags_note: str = "") -> None:
    """--gradcheck, --dir and --no-new-flags: what to measure and where, shared with many_files.py."""
    parser.add_argument(
        "--gradcheck",
        default="gradcheck",
        help="the gradcheck executable to measure (default: the one on PATH)",
    )
    parser.add_argument("--dir", default=None, help="where to make the temporary directory")
    parser.add_argument(
        "--no-new-flags",
        dest="new_flags",
        action="store_false",
        help=f"leave out --jobs and --no-cache (for a gradcheck without them){no_new_flags_note}",
    )


def find_gradcheck(parser: argparse.ArgumentParser, name: str) -> str:
    """The full path of the gradcheck executable, or a usage error."""
    return shutil.which(name) or parser.error(f"{name} not found (pip install -e .)")


def main() -> None:
    """Run the chosen mode in a temporary directory and remove it afterwards."""
    args = parse_args()
    print_setup(args)
    folder = Path(tempfile.mkdtemp(prefix="gradcheck-throughput-", dir=args.dir))
    os.environ["GRADCHECK_CACHE_DIR"] = str(folder / "cache")  # never the user's cache, whatever the flags
    if args.blas_threads:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = args.blas_threads
    try:
        if args.big:
            big_mode(folder, args)
        if args.cache:
            cache_mode(folder, args)
        if not (args.big or args.cache):
            throughput_mode(folder, args)
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
