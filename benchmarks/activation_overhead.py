"""What recording forward activations costs: the torch Recorder in stats mode at every=10, with and without
`activations=True`, on a GPT-like model on the CPU (issue #16, acceptance 2: <= 2 % more than without).

The model is the one of the recorder overhead benchmark (6 pre-norm blocks, d=384, vocabulary 16384 with tied
embeddings, context 64: 17.0M parameters; batch 2 x 64 tokens, AdamW, 1 torch thread), defined again here so
this script runs on its own. Configurations, interleaved with the order rotating every repetition so a shared
machine's drift hits all alike: `base` (no recorder), `stats` (Recorder(mode="stats", every=10)) and
`stats+act` (the same with activations=True and recorder.log(loss=...)). Prints, per configuration, the median
and quartiles over repetitions of its time against the base of the same repetition, for wall time and for the
training thread's CPU time (time.thread_time: blind to the writer thread and to a loaded host's steal time),
and the figure of the acceptance: stats+act against stats.

    python benchmarks/activation_overhead.py [--repeats 7] [--steps 50] [--quick] [--direct]

The last line is the direct measure (hook_cost): the extra training-thread CPU of a hooked forward pass over a
plain one, against a whole training step, amortised over every=10; `--direct` prints only that.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from recorder_overhead import GPT  # the same 17M GPT-like model as the recorder's benchmark

from gradcheck.recording.activations import StepSignals
from gradcheck.recording.torch import Recorder

CONFIGS = ("base", "stats", "stats+act")


def timed(config: str, model: GPT, optimizer, batches: list[torch.Tensor], steps: int) -> tuple[float, float]:
    """(wall seconds, training-thread CPU seconds) of `steps` steps, recorder built and closed inside."""
    folder = Path(tempfile.mkdtemp(prefix="act_overhead_"))
    wall, cpu = time.perf_counter(), time.thread_time()
    recorder = None
    if config != "base":
        recorder = Recorder(
            model, optimizer, folder, every=10, mode="stats", activations=config == "stats+act"
        )  # fmt: skip
    for step in range(steps):
        tokens = batches[step % len(batches)]
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        if recorder is not None and config == "stats+act":
            recorder.log(loss=loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if recorder is not None:
        recorder.close()
    result = time.perf_counter() - wall, time.thread_time() - cpu
    shutil.rmtree(folder)
    return result


def hook_cost(model: GPT, optimizer, batches: list[torch.Tensor], repeats: int) -> tuple[float, float]:
    """(median training-thread CPU of one plain training step, median extra CPU of one hooked forward).

    The direct measure: the same forward pass with and without the activation hooks (attached, summarised,
    removed as at a recorded step), alternating, so a loaded machine's noise on whole training loops (whose
    quartiles span several percent) does not drown a cost of a few tens of milliseconds per recorded step.
    """
    signals = StepSignals(torch, model, activations=True)
    steps, extra = [], []
    for repeat in range(repeats):
        tokens = batches[repeat % len(batches)]
        cpu = time.thread_time()
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append(time.thread_time() - cpu)
        with torch.no_grad():
            cpu = time.thread_time()
            model(tokens[:, :-1])
            plain = time.thread_time() - cpu
            cpu = time.thread_time()
            signals.start(recorded=True)
            model(tokens[:, :-1])
            signals.finish(0, {})
            extra.append(time.thread_time() - cpu - plain)
    return statistics.median(steps), statistics.median(extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps: the script runs")
    parser.add_argument("--direct", action="store_true", help="only the direct measure of the hooks' cost")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = {"vocab": 16384, "width": 384, "layers": 6, "context": 64}
    if args.quick:
        shape, args.repeats, args.steps = {"vocab": 64, "width": 32, "layers": 1, "context": 8}, 2, 20
    model = GPT(**shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [torch.randint(0, shape["vocab"], (2, shape["context"] + 1)) for _ in range(8)]
    count = sum(p.numel() for p in model.parameters())
    print(f"GPT {shape}: {count / 1e6:.2f}M parameters, {args.steps} steps x {args.repeats} repetitions")
    timed("base", model, optimizer, batches, 10)  # warm-up
    if args.direct:
        args.repeats = max(args.repeats, 7)
        step, extra = hook_cost(model, optimizer, batches, args.repeats * 3)
        print(
            f"direct: step {step * 1e3:.1f} ms, hooks +{extra * 1e3:.1f} ms: {extra / (10 * step):+.2%} at every=10"
        )
        return
    times: dict[str, list[tuple[float, float]]] = {config: [] for config in CONFIGS}
    for repeat in range(args.repeats):
        for config in CONFIGS[repeat % 3 :] + CONFIGS[: repeat % 3]:
            times[config].append(timed(config, model, optimizer, batches, args.steps))
    report(times)
    step, extra = hook_cost(model, optimizer, batches, max(5, args.repeats * 3))
    print(
        f"direct: a training step {step * 1e3:.1f} ms thread CPU, the activation hooks +{extra * 1e3:.1f} ms per "
        f"recorded step: {extra / (10 * step):+.2%} at every=10"
    )


def report(times: dict[str, list[tuple[float, float]]]) -> None:
    for column, name in ((0, "wall time"), (1, "training-thread CPU")):
        print(f"{name}:")
        pairs = (("stats", "base"), ("stats+act", "base"), ("stats+act", "stats"))
        for config, against in pairs:
            ratios = [a[column] / b[column] - 1 for a, b in zip(times[config], times[against], strict=True)]
            q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            print(f"  {config:<10} vs {against:<6} {median:+7.2%}  (quartiles {q1:+.2%} .. {q3:+.2%})")
        base = statistics.median(t[column] for t in times["base"])
        print(f"  base: median {base:.2f} s")


if __name__ == "__main__":
    main()
