"""Regenerate the sample runs: small real PyTorch models trained on sklearn's digits, snapshotted as safetensors.

Usage: `python sample_runs/generate.py [OUT_ROOT] [--only NAME]`. Each run is written to `OUT_ROOT/<name>/`,
which is deleted first; nothing else under OUT_ROOT is touched. Output is byte-identical from run to run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

from gradcheck.recording.torch import Recorder

SEED = 0  # one seed for model init and data order; every run re-seeds, so `--only` gives the same files
BATCH_SIZE = 64  # a common minibatch size; 28 batches per epoch of the 1797 digits
LR_CHANGE = 30.0  # faster_layer_mlp: well past diff's default 10x, still a run that trains
DEAD_BIAS = -10.0  # far below any pre-activation the standardized inputs can reach, so every unit is dead

Tensors = dict[str, torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Digits:
    """The 1797 8x8 digits: standardized pixels (n, 64) and integer labels (n,)."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class RunSpec:
    """How one sample run is trained and recorded."""

    name: str
    build: Callable[[], nn.Module]
    optimizer: OptimizerFactory
    steps: int
    every: int
    plain: bool = False  # hand-written dumps instead of the Recorder
    dtype: torch.dtype = torch.float32
    clip_norm: float | None = None
    stop_after_nonfinite: int | None = None  # end the run this many steps after the first non-finite grad


@dataclass(frozen=True)
class GradStats:
    """Gradient facts of one recorded step, in float64."""

    step: int
    mean_abs: dict[str, float]
    norm: dict[str, float]
    all_zero: frozenset[str]


def configure_torch() -> None:
    """Make CPU training bit-reproducible."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_data() -> Digits:
    """Load sklearn's bundled digits and standardize each pixel (constant pixels keep std 1)."""
    x, y = load_digits(return_X_y=True)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    x = (x - x.mean(axis=0)) / std
    return Digits(x=torch.tensor(x, dtype=torch.float32), y=torch.tensor(y, dtype=torch.int64))


def batch_indices(n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless minibatch indices: a fresh permutation per epoch, the last partial batch dropped."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - BATCH_SIZE + 1, BATCH_SIZE):
            yield order[start : start + BATCH_SIZE]


def mlp(sizes: list[int], activation: Callable[[], nn.Module]) -> nn.Sequential:
    """A plain MLP `Linear, act, Linear, act, ..., Linear`; parameters are named `0.weight`, `2.weight`, ..."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    return nn.Sequential(*layers[:-1])


class RowGRU(nn.Module):
    """Reads an 8x8 digit as a sequence of 8 rows of 8 pixels; classifies from the last hidden state."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.GRU(input_size=8, hidden_size=hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of flattened digits (batch, 64)."""
        _, last = self.rnn(x.view(-1, 8, 8))
        return self.head(last[-1])


def dead_first_layer_mlp() -> nn.Sequential:
    """A ReLU MLP whose first layer got bias init -10 (meant as "slightly negative"): all its units are dead."""
    model = mlp([64, 32, 32, 10], nn.ReLU)
    nn.init.constant_(model[0].bias, DEAD_BIAS)
    return model


def adam(lr: float) -> OptimizerFactory:
    """An Adam factory with the given learning rate."""
    return lambda params: torch.optim.Adam(params, lr=lr)


def adam_one_layer_faster(lr: float, layer: int, factor: float) -> OptimizerFactory:
    """Adam with one Linear's learning rate (its weight and bias, parameters 2*layer and 2*layer+1) scaled."""

    def factory(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        ordered = list(params)
        changed = ordered[2 * layer : 2 * layer + 2]
        rest = ordered[: 2 * layer] + ordered[2 * layer + 2 :]
        return torch.optim.Adam([{"params": rest}, {"params": changed, "lr": lr * factor}], lr=lr)

    return factory


def sgd(lr: float, momentum: float = 0.0) -> OptimizerFactory:
    """A plain SGD factory with the given learning rate and momentum."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


def write_plain(out_dir: Path, step: int, grads: Tensors, params: Tensors, updates: Tensors) -> None:
    """Write one step the way people hand-roll it: three unprefixed files, no metadata."""
    for prefix, group in (("grads", grads), ("params", params), ("updates", updates)):
        save_file(group, str(out_dir / f"{prefix}_{step}.safetensors"))


def _snapshot(tensors: Iterable[tuple[str, torch.Tensor]]) -> Tensors:
    """Detached, contiguous CPU copies, as safetensors needs them."""
    return {name: t.detach().cpu().contiguous().clone() for name, t in tensors}


def grad_stats(step: int, grads: Tensors) -> GradStats:
    """Mean |grad|, L2 norm and all-zero flag per parameter, computed in float64."""
    wide = {name: g.double() for name, g in grads.items()}
    return GradStats(
        step=step,
        mean_abs={name: g.abs().mean().item() for name, g in wide.items()},
        norm={name: g.norm().item() for name, g in wide.items()},
        all_zero=frozenset(name for name, g in wide.items() if not g.any()),
    )


def accuracy(model: nn.Module, data: Digits, dtype: torch.dtype) -> float:
    """Train-set accuracy, or NaN when the parameters are no longer finite."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return math.nan
    with torch.no_grad():
        return (model(data.x.to(dtype)).argmax(dim=1) == data.y).double().mean().item()


def _grads_finite(model: nn.Module) -> bool:
    """Whether every gradient element of the model is finite."""
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def train(spec: RunSpec, data: Digits, out_dir: Path) -> tuple[list[GradStats], float]:
    """Train one run, recording every `every`-th optimizer step; return its gradient facts and accuracy.

    The v1 runs are written by gradcheck's own Recorder (we use what we ship); `plain` runs by hand, the way
    people dump gradients today.
    """
    torch.manual_seed(SEED)
    model = spec.build().to(spec.dtype)
    optimizer = spec.optimizer(model.parameters())
    batches = batch_indices(len(data.y), torch.Generator().manual_seed(SEED))
    x = data.x.to(spec.dtype)
    history: list[GradStats] = []
    recorder = None if spec.plain else Recorder(model, optimizer, out_dir, every=spec.every)
    first_nonfinite: int | None = None
    for step in range(spec.steps):
        idx = next(batches)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), data.y[idx]).backward()
        if spec.clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), spec.clip_norm)
        if first_nonfinite is None and not _grads_finite(model):
            first_nonfinite = step
        if step % spec.every:
            optimizer.step()
            continue
        grads = _snapshot((name, p.grad) for name, p in model.named_parameters())
        params = _snapshot(model.named_parameters())
        optimizer.step()
        if spec.plain:
            updates = _snapshot((name, p.detach() - params[name]) for name, p in model.named_parameters())
            write_plain(out_dir, step, grads, params, updates)
        history.append(grad_stats(step, grads))
        if first_nonfinite is not None and step == first_nonfinite + (spec.stop_after_nonfinite or math.inf):
            break
    if recorder is not None:
        recorder.close()
    return history, accuracy(model, data, spec.dtype)


def summarize(name: str, history: list[GradStats], acc: float) -> str:
    """One line of the facts that decide a run's expected verdict."""
    weights = [p for p in history[0].norm if p.endswith("weight") or "weight_" in p]
    first, last = weights[0], weights[-1]
    final = history[-1]
    ratios = [s.norm[first] / s.norm[last] for s in history if s.norm[last] > 0]
    totals = [math.sqrt(sum(v * v for v in s.norm.values())) for s in history]
    finite = [(t, s.step) for t, s in zip(totals, history, strict=True) if math.isfinite(t)]
    bad = next((s.step for s, t in zip(history, totals, strict=True) if not math.isfinite(t)), None)
    dead = frozenset.intersection(*(s.all_zero for s in history))
    return (
        f"{name}: {len(history)} snapshots (steps {history[0].step}..{final.step}), "
        f"train acc {'n/a (non-finite params)' if math.isnan(acc) else f'{acc:.3f}'}; "
        f"last step mean|grad| {first} {final.mean_abs[first]:.3g}, {last} {final.mean_abs[last]:.3g}; "
        f"max over snapshots: mean|grad| {first} {max(s.mean_abs[first] for s in history):.3g}, "
        f"norm ratio {first}/{last} {max(ratios, default=math.nan):.3g}; "
        f"global grad norm step {history[0].step} {totals[0]:.3g}, max finite {max(finite)[0]:.3g} "
        f"(step {max(finite)[1]}); first non-finite grad step {bad}; "
        f"all-zero grads at every snapshot: {sorted(dead) or 'none'}"
    )


RUNS: tuple[RunSpec, ...] = (
    # The textbook baseline: Adam 1e-3 on a small ReLU MLP, about 13 epochs.
    RunSpec(
        "healthy_mlp",
        lambda: mlp([64, 64, 32, 10], nn.ReLU),
        adam(1e-3),
        steps=361,
        every=60,
    ),
    # Rows as time steps, clipped at norm 1.0 as recurrent training usually is (it never engages here).
    RunSpec("healthy_gru", RowGRU, adam(3e-3), steps=361, every=60, clip_norm=1.0),
    # 12 Linear+Sigmoid layers at default init: each layer shrinks the backward signal about tenfold.
    RunSpec(
        "vanishing_sigmoid",
        lambda: mlp([64] + [24] * 11 + [10], nn.Sigmoid),
        sgd(0.1),
        steps=401,
        every=80,
    ),
    # lr 5 where 0.05 was meant. LeakyReLU because a ReLU net at this lr often dies (loss stuck at ln 10)
    # instead of diverging, depending on the exact lr; LeakyReLU diverges for every lr >= 3 tried.
    RunSpec(
        "exploding_nan",
        lambda: mlp([64, 32, 32, 10], nn.LeakyReLU),
        sgd(5.0),
        steps=100,
        every=1,
        stop_after_nonfinite=3,
    ),
    # First-layer bias initialised to -10: that layer is dead from step 0 and never recovers.
    RunSpec("dead_relu", dead_first_layer_mlp, adam(1e-3), steps=361, every=60),
    # The healthy_mlp configuration, model and inputs in bfloat16 (no float32 master weights).
    RunSpec(
        "bf16_mlp",
        lambda: mlp([64, 64, 32, 10], nn.ReLU),
        adam(1e-3),
        steps=361,
        every=60,
        dtype=torch.bfloat16,
    ),
    # healthy_mlp with one deliberate change: the middle Linear (`2`) trains at 30x the learning rate.
    # Same seed, init, data order and recording, so `gradcheck diff` against healthy_mlp has one layer to find.
    RunSpec(
        "faster_layer_mlp",
        lambda: mlp([64, 64, 32, 10], nn.ReLU),
        adam_one_layer_faster(1e-3, layer=1, factor=LR_CHANGE),
        steps=361,
        every=60,
    ),
    # Hand-rolled dumps of a healthy run: three unprefixed files per step, no metadata.
    RunSpec(
        "plain_dumps",
        lambda: mlp([64, 32, 10], nn.ReLU),
        sgd(0.05, momentum=0.9),
        steps=301,
        every=50,
        plain=True,
    ),
)


def generate(root: Path, only: Iterable[str] | None = None) -> list[str]:
    """Regenerate the selected runs (all by default) under `root`; return one summary line per run."""
    configure_torch()
    data = load_data()
    wanted = set(only) if only else None
    lines = []
    for spec in RUNS:
        if wanted is not None and spec.name not in wanted:
            continue
        out_dir = root / spec.name
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        history, acc = train(spec, data, out_dir)
        lines.append(summarize(spec.name, history, acc))
    return lines


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and regenerate the runs, printing one summary line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "root",
        nargs="?",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output root (default: the folder of this script)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[spec.name for spec in RUNS],
        metavar="NAME",
        help="regenerate only this run (repeatable)",
    )
    args = parser.parse_args(argv)
    for line in generate(args.root, args.only):
        print(line)


if __name__ == "__main__":
    main()
