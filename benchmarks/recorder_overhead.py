"""Training-speed overhead of `gradcheck.recording.torch.Recorder` on a CPU training loop.

Trains one MLP (>= 1M parameters) with Adam and times repetitions of `--steps` steps of three
configurations in one process: no recorder, `Recorder(every=N)` in full mode, in stats mode, and
"hooks": full mode with a writer that writes nothing (what the training thread's copies cost alone, so the
rest of full mode's overhead is the writer thread's: page-cache copies and fsync). The
configurations are interleaved and their order rotates every repetition (base full stats, full stats base,
stats base full, ...), so drift of the machine and order effects hit all of them alike. A repetition's time
includes closing the recorder (the last write). Prints steps/s per configuration and, per recorder mode, the
median over repetitions of (its time / the baseline's time in the same repetition) - 1, for wall time and for
the CPU time of the training thread (which leaves out the writer thread and, mostly, a noisy host's steal
time). Target: <= 3% wall time at every=10.

    python benchmarks/recorder_overhead.py [--steps 100] [--repeats 30] [--threads 1] [--profile full]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gradcheck.recording.torch import Recorder

CONFIGS = ("base", "full", "stats", "hooks")
# glibc hands freed multi-MB gradients back to the OS and page-faults them in again the next step, or not,
# depending on heap layout, which any extra allocation (a recorder's) changes: that moved the baseline by
# +-30% between configurations here. Keeping freed memory in the heap (as jemalloc/tcmalloc do) removes it.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


class _HooksOnly(Recorder):
    """A full-mode recorder whose writer thread drops every step: the hooks' cost without the writing."""

    def _write(self, job: object) -> None:
        pass


def make_model(width: int, depth: int) -> torch.nn.Module:
    """An MLP of `depth` hidden layers of `width` units and 10 outputs."""
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def run_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list, steps: int) -> None:
    """Plain training steps on pre-made batches."""
    for step in range(steps):
        x, y = batches[step % len(batches)]
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def timed(
    config: str, model, optimizer, batches, args: argparse.Namespace, folder: Path
) -> tuple[float, float]:
    """(wall seconds, training-thread CPU seconds) of `args.steps` steps, including closing the recorder."""
    began, began_cpu = time.perf_counter(), time.thread_time()
    if config == "base":
        run_steps(model, optimizer, batches, args.steps)
    else:
        recorder = _HooksOnly if config == "hooks" else Recorder
        with recorder(
            model, optimizer, folder, every=args.every, mode="full" if config == "hooks" else config
        ):
            run_steps(model, optimizer, batches, args.steps)
    elapsed, elapsed_cpu = time.perf_counter() - began, time.thread_time() - began_cpu
    shutil.rmtree(folder, ignore_errors=True)  # full mode writes ~25 MB per recorded step
    return elapsed, elapsed_cpu


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100, help="training steps per repetition")
    parser.add_argument("--repeats", type=int, default=30, help="repetitions of each configuration")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before the first repetition")
    parser.add_argument("--every", type=int, default=10, help="Recorder(every=...)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, fixed")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=2, help="hidden layers of width x width")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=None, help="where runs are written (default: temp dir)")
    parser.add_argument("--profile", choices=CONFIGS, help="cProfile one repetition of this config and stop")
    parser.add_argument("--default-malloc", action="store_true", help=f"do not set {', '.join(MALLOC_ENV)}")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these at startup only
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = make_model(args.width, args.depth)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = [(torch.randn(args.batch, args.width), torch.randint(0, 10, (args.batch,))) for _ in range(8)]
    count = sum(p.numel() for p in model.parameters())
    malloc = "default malloc" if args.default_malloc else "malloc keeps freed memory"
    print(
        f"{count / 1e6:.2f}M parameters, batch {args.batch}, {args.threads} thread(s), every={args.every}, {malloc}"
    )
    run_steps(model, optimizer, batches, args.warmup)
    root = Path(tempfile.mkdtemp(prefix="recorder-overhead-", dir=args.dir))
    try:
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(timed, args.profile, model, optimizer, batches, args, root / "profile")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
            return
        seconds: dict[str, list[tuple[float, float]]] = {config: [] for config in CONFIGS}
        for repeat in range(args.repeats):
            shift = repeat % len(CONFIGS)
            for config in CONFIGS[shift:] + CONFIGS[:shift]:
                folder = root / f"{config}-{repeat}"
                seconds[config].append(timed(config, model, optimizer, batches, args, folder))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(seconds, args.steps)


def report(seconds: dict[str, list[tuple[float, float]]], steps: int) -> None:
    """Steps/s per configuration and the median overheads against the baseline of the same repetition."""
    for config in CONFIGS:
        rates = sorted(steps / wall for wall, _ in seconds[config])
        print(
            f"{config:>5}: median {statistics.median(rates):6.2f} steps/s (min {rates[0]:.2f}, max {rates[-1]:.2f})"
        )
    for config in CONFIGS[1:]:
        for index, what in enumerate(("wall time", "training-thread CPU time")):
            ratios = [
                mine[index] / base[index] for mine, base in zip(seconds[config], seconds["base"], strict=True)
            ]
            low, mid, high = (100 * (q - 1) for q in statistics.quantiles(ratios, n=4))
            print(f"{config:>5}: {what} overhead, median {mid:+.2f}% (quartiles {low:+.2f}% .. {high:+.2f}%)")
    print("target: <= 3% wall time at every=10 (full and stats; hooks is a diagnostic)")


if __name__ == "__main__":
    main()
