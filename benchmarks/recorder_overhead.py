"""Training-speed overhead of gradcheck's torch Recorder, beside the tools people record with instead.

Trains a GPT-like model on the CPU (6 layers, d=384, vocabulary 16384 with tied embeddings, context 64: 17.0M
parameters; batch 2 x 64 tokens, AdamW, 1 torch thread: compute-dominated, as real training is) and times
repetitions of `--steps` steps of each configuration:

  base          no recording
  full@N        Recorder(mode="full", every=N), N = 10 and 100: grads, params and updates on disk
  stats@N       Recorder(mode="stats", every=N): their summaries only
  full-inline@N, stats-inline@N   the same, but each step file is written on the training thread instead
                of the recorder's writer thread (a diagnostic: the thread-or-no-thread choice on the CPU)
  save_file@10  safetensors.torch.save_file of the gradients, on the training thread
  tb_hist@10    TensorBoard SummaryWriter.add_histogram of every gradient
  wandb@10      wandb.watch(model, log="all", log_freq=10) offline (WANDB_MODE=offline), wandb.log each step

Every peer runs from an optimizer step pre-hook, so the training loop is the same for all. The order of the
configurations rotates every repetition, so drift of a shared machine hits all of them alike. A repetition
includes building and closing the recorder (its last write); wandb.init and finish are outside the timing
(once per process, several seconds), its watch/unwatch inside. For each configuration it prints the median
and quartiles over repetitions of (time / base time of the same repetition) - 1, for wall time, the
training thread's CPU time (time.thread_time) and the process's CPU time (time.process_time: also the
recorder's writer thread and TensorBoard's, not wandb's separate service process). Wall time minus CPU time
shows contention; CPU time shows the cost itself.

    python benchmarks/recorder_overhead.py [--repeats 5] [--steps 100] [--configs base,stats@10]
    python benchmarks/recorder_overhead.py --quick     # a tiny model, a few steps: checks the script runs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from scan_speed import bench_lock

from gradcheck.recording.torch import Recorder

CONFIGS = ("base", "full@10", "stats@10", "full@100", "stats@100", "save_file@10", "tb_hist@10", "wandb@10")
DIAGNOSTICS = ("full-inline@100", "stats-inline@10")  # not run by default
COLUMNS = ("wall time", "training-thread CPU", "process CPU", "CPU in optimizer hooks")


class Block(torch.nn.Module):
    """A pre-norm transformer block: causal self-attention and a 4x MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(torch.nn.Module):
    """Token and position embeddings, blocks, a final LayerNorm and the tied output projection."""

    def __init__(self, vocab: int, width: int, layers: int, context: int) -> None:
        super().__init__()
        self.tok, self.pos = torch.nn.Embedding(vocab, width), torch.nn.Embedding(context, width)
        self.blocks = torch.nn.Sequential(*(Block(width, max(1, width // 64)) for _ in range(layers)))
        self.ln = torch.nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.tok(tokens) + self.pos(torch.arange(tokens.shape[1])))
        return self.ln(x) @ self.tok.weight.T


def train(model: GPT, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor], steps: int) -> None:
    """Plain next-token training steps on pre-made batches."""
    for step in range(steps):
        tokens = batches[step % len(batches)]
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def step_hook(optimizer: torch.optim.Optimizer, every: int, action: Callable[[int], None]) -> Iterator[None]:
    """Call action(step) before every `every`-th optimizer step, counted from 0."""
    counter = itertools.count()

    def hook(*_: object) -> None:
        step = next(counter)
        if step % every == 0:
            action(step)

    handle = optimizer.register_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _Inline:
    """Stands in for a Recorder's queue: writes each job at once, on the calling (training) thread."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder, self._queue = recorder, recorder._queue

    def put(self, job: object) -> None:
        if job is None:
            self._queue.put(None)  # stops the writer thread
        else:
            self._recorder._write(job)  # a failure raises here, from optimizer.step()

    def join(self) -> None:
        self._queue.join()

    def task_done(self) -> None:
        self._queue.task_done()


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@contextlib.contextmanager
def recording(
    config: str, model: GPT, optimizer: torch.optim.Optimizer, folder: Path, ready: Callable[[], None]
) -> Iterator[None]:
    """Record one repetition the way `config` says; call `ready` once its optimizer hooks are registered."""
    name, _, every_text = config.partition("@")
    every = int(every_text or 1)
    if name.partition("-")[0] in ("full", "stats"):
        with Recorder(model, optimizer, folder, every=every, mode=name.partition("-")[0]) as recorder:
            if name.endswith("-inline"):
                recorder._queue = _Inline(recorder)
            ready()
            yield
    elif name == "save_file":
        from safetensors.torch import save_file

        folder.mkdir()
        with step_hook(optimizer, every, lambda s: save_file(grads(model), folder / f"{s}.safetensors")):
            ready()
            yield
    elif name == "tb_hist":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(folder)

        def histograms(step: int) -> None:
            for key, grad in grads(model).items():
                writer.add_histogram(f"grad/{key}", grad, step)

        with step_hook(optimizer, every, histograms):
            ready()
            yield
        writer.close()
    elif name == "wandb":
        import wandb

        wandb.watch(model, log="all", log_freq=every)
        with step_hook(optimizer, 1, lambda s: wandb.log({"step": s})):
            yield  # its histograms are made in tensor hooks during backward, which HookClock cannot see
        wandb.unwatch(model)
    else:
        ready()
        yield


class HookClock:
    """Training-thread CPU time spent in the optimizer step hooks registered between its two brackets.

    Hooks run in the order they were registered: this opening bracket, the recorder's hooks, the closing one.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.seconds, self._mark, self._optimizer = math.nan, 0.0, optimizer
        self._handles = [
            optimizer.register_step_pre_hook(self._open),
            optimizer.register_step_post_hook(self._open),
        ]

    def close_bracket(self) -> None:
        self.seconds = 0.0
        self._handles += [
            self._optimizer.register_step_pre_hook(self._close),
            self._optimizer.register_step_post_hook(self._close),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _open(self, *_: object) -> None:
        self._mark = time.thread_time()

    def _close(self, *_: object) -> None:
        self.seconds += time.thread_time() - self._mark


def timed(config: str, model: GPT, optimizer, batches, steps: int, folder: Path) -> tuple[float, ...]:
    """(wall, training-thread CPU, process CPU, CPU in the optimizer hooks) seconds of `steps` steps."""
    clock = HookClock(optimizer)
    began = time.perf_counter(), time.thread_time(), time.process_time()
    with recording(config, model, optimizer, folder, clock.close_bracket):
        train(model, optimizer, batches, steps)
    ended = time.perf_counter(), time.thread_time(), time.process_time()
    clock.remove()
    shutil.rmtree(folder, ignore_errors=True)
    return (*(end - begin for end, begin in zip(ended, began, strict=True)), clock.seconds)


def start_wandb(folder: Path) -> Callable[[], None]:
    """wandb.init offline into `folder`; returns its finish."""
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(project="recorder-overhead", dir=folder, mode="offline")
    return run.finish


def report(seconds: dict[str, list[tuple[float, ...]]], steps: int) -> None:
    """Steps/s per configuration, and its overhead against the base time of the same repetition."""
    print(f"\n{'config':>15}  {'steps/s':>7}  " + "  ".join(f"{c:>26}" for c in COLUMNS))
    for config, times in seconds.items():
        rate = statistics.median(steps / t[0] for t in times)
        cells = []
        for clock in range(len(COLUMNS)):
            pairs = zip(times, seconds["base"], strict=True)
            if clock < 3:  # this configuration's time against the base's
                ratios = sorted(100 * (t[clock] / b[clock] - 1) for t, b in pairs)
            else:  # time in the hooks against the base's training-thread time
                ratios = sorted(100 * t[clock] / b[1] for t, b in pairs)
            if any(math.isnan(r) for r in ratios):
                cells.append("-")
                continue
            low, mid, high = (
                statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
            )
            cells.append(f"{mid:+6.1f}% ({low:+6.1f} .. {high:+6.1f})")
        print(f"{config:>15}  {rate:7.2f}  " + "  ".join(f"{c:>26}" for c in cells))
    print("median (quartiles) over repetitions; targets: stats@10 <= save_file@10 + 1 point, full@100 <= 3%")
    sys.stdout.flush()


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="repetitions of each configuration")
    parser.add_argument("--steps", type=int, default=100, help="training steps per repetition")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated, base first; also {', '.join(DIAGNOSTICS)}",
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 repetitions of 20 steps, no lock")
    parser.add_argument("--dir", type=Path, default=None, help="where runs are written (default: temp dir)")
    return parser.parse_args()


def available(config: str) -> bool:
    """Whether the peer's package is installed; says so when it is not."""
    module = {"tb_hist": "tensorboard", "wandb": "wandb"}.get(config.partition("@")[0])
    if module is None or importlib.util.find_spec(module) is not None:
        return True
    print(f"{config}: skipped, {module} is not installed")
    return False


def main() -> None:
    args = parse_arguments()
    configs = [config for config in args.configs.split(",") if available(config)]
    shape = {"vocab": 16384, "width": 384, "layers": 6, "context": 64}
    if args.quick:
        shape, args.repeats, args.steps = {"vocab": 64, "width": 32, "layers": 1, "context": 8}, 2, 20
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(**shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [torch.randint(0, shape["vocab"], (2, shape["context"] + 1)) for _ in range(8)]
    count = sum(p.numel() for p in model.parameters())
    print(f"GPT {shape}: {count / 1e6:.2f}M parameters, batch 2 x {shape['context']}, AdamW, 1 thread")
    root = Path(tempfile.mkdtemp(prefix="recorder-overhead-", dir=args.dir))
    finish_wandb = start_wandb(root / "wandb") if any(c.startswith("wandb") for c in configs) else None
    train(model, optimizer, batches, 10)  # warm-up: allocator, kernels, optimizer state
    seconds: dict[str, list[tuple[float, ...]]] = {config: [] for config in configs}
    try:
        for repeat in range(args.repeats):
            shift = repeat % len(configs)
            with contextlib.nullcontext() if args.quick else bench_lock():
                for config in configs[shift:] + configs[:shift]:
                    folder = root / f"{config}-{repeat}"
                    seconds[config].append(timed(config, model, optimizer, batches, args.steps, folder))
            print(f"after repetition {repeat + 1}/{args.repeats}:", end="")
            report(seconds, args.steps)
    finally:
        if finish_wandb is not None:
            finish_wandb()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
