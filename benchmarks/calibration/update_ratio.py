"""Calibrate the update-ratio band on real optimizers: healthy runs, and the same runs at lr x100 and lr /100.

Usage: `python benchmarks/calibration/update_ratio.py [--steps N] [--only NAME] [--keep DIR]`.

Each configuration trains a small real model on CPU (a tiny GPT-like character model with GPT-2-style
initialisation on the text of Python's own standard-library sources, and MLP/CNN classifiers on sklearn's
bundled digits), recorded with gradcheck's Recorder, at its usual learning rate and at 100x and 1/100 of it.
For every run it prints the median update ratio of each weight (what `update-ratio-*` judge), their spread,
and the update-ratio findings gradcheck's current defaults give. The figures are in docs/CHECKS.md.
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradcheck.analysis.checks import run_checks
from gradcheck.analysis.columns import derived_from_rows
from gradcheck.analysis.config import Config
from gradcheck.analysis.metrics import derive
from gradcheck.analysis.runs import load_run
from gradcheck.recording.torch import Recorder

SEED = 0
SCALES = (("healthy", 1.0), ("lr x100", 100.0), ("lr /100", 0.01))


class Block(nn.Module):
    """A pre-norm transformer block (GPT-2 layout): attention and MLP, each with a residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One block over (batch, time, width)."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """A character GPT: token and position embeddings, blocks, final norm, head tied to the token embedding."""

    def __init__(self, vocab: int, width: int = 64, layers: int = 2, heads: int = 4, block: int = 32) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(block, width)
        self.h = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight
        self._gpt2_init(layers)

    def _gpt2_init(self, layers: int) -> None:
        """GPT-2: N(0, 0.02) weights and embeddings, zero biases, residual projections / sqrt(2 * layers)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = (
                    0.02 / math.sqrt(2 * layers)
                    if name.endswith(("out_proj.weight", "mlp.2.weight"))
                    else 0.02
                )
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (batch, time, vocab)."""
        t = idx.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x, mask)
        return self.head(self.ln_f(x))


def stdlib_text() -> str:
    """Some megabytes-free, always-available English-and-code text: the sources of a few stdlib modules."""
    import argparse as a
    import json
    import textwrap

    return "".join(inspect.getsource(module) for module in (json, textwrap, a))


@dataclass(frozen=True)
class Task:
    """A model, its data and its loss, trained for `steps` steps."""

    name: str
    build: Callable[[], nn.Module]
    optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer]
    lr: float
    batches: Callable[[torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def char_batches(block: int = 32, size: int = 16) -> tuple[int, Callable]:
    """Vocabulary size and a batch stream of (inputs, next characters) from stdlib_text()."""
    text = stdlib_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.int64)

    def stream(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            starts = torch.randint(len(data) - block - 1, (size,), generator=generator)
            x = torch.stack([data[s : s + block] for s in starts.tolist()])
            y = torch.stack([data[s + 1 : s + 1 + block] for s in starts.tolist()])
            yield x, y

    return len(chars), stream


def digit_batches(size: int = 64, image: bool = False) -> Callable:
    """A batch stream of standardized digits (flat, or 1x8x8 images) and labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    xs = torch.tensor((x - x.mean(axis=0)) / std, dtype=torch.float32)
    ys = torch.tensor(y, dtype=torch.int64)
    if image:
        xs = xs.view(-1, 1, 8, 8)

    def stream(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = torch.randperm(len(ys), generator=generator)
            for start in range(0, len(ys) - size + 1, size):
                idx = order[start : start + size]
                yield xs[idx], ys[idx]

    return stream


def tasks() -> list[Task]:
    """The calibrated configurations: each at a learning rate people use for it."""
    vocab, chars = char_batches()
    mlp = lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    cnn = lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 64, 10),
    )  # fmt: skip
    adamw = lambda params, lr: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    adam = lambda params, lr: torch.optim.Adam(params, lr=lr)
    sgd = lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)
    return [
        # nanoGPT's shakespeare_char settings (AdamW 1e-3, betas 0.9/0.99, weight decay 0.1), smaller model.
        Task("gpt-adamw", lambda: TinyGPT(vocab), adamw, 1e-3, chars),
        Task("gpt-adamw-3e-4", lambda: TinyGPT(vocab), adamw, 3e-4, chars),
        Task("mlp-adam", mlp, adam, 1e-3, digit_batches()),
        Task("mlp-sgd", mlp, sgd, 0.05, digit_batches()),
        Task("cnn-adam", cnn, adam, 1e-3, digit_batches(image=True)),
        Task("cnn-sgd", cnn, sgd, 0.01, digit_batches(image=True)),
    ]


def train(task: Task, lr: float, steps: int, every: int, out: Path) -> float:
    """Train one run, recorded every `every` steps into `out`; return the mean loss of its last 20 steps."""
    torch.manual_seed(SEED)
    model = task.build()
    optimizer = task.optimizer(list(model.parameters()), lr)
    stream = task.batches(torch.Generator().manual_seed(SEED))
    losses = []
    with Recorder(model, optimizer, out, every=every):
        for _ in range(steps):
            x, y = next(stream)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    tail = [v for v in losses[-20:] if math.isfinite(v)]
    return statistics.fmean(tail) if tail else math.nan


def medians(run_dir: Path) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Per weight (2+ dims): the median update ratio the check judges (against the weight's first mean|param|)
    and DL4J's (against the current one); and the update-ratio findings of the default config."""
    run = load_run(run_dir)
    derived = derive(run)
    out: dict[str, tuple[float, float]] = {}
    for param in run.params:
        rows = [derived[(s, param)] for s in run.steps if (s, param) in derived]
        rows = [r for r in rows if r.value is not None and r.update is not None and len(r.value.shape) >= 2]
        scale = next((r.value.stats.mean_abs for r in rows if r.value.stats.mean_abs > 0), None)
        moved = [r for r in rows if r.update.stats.mean_abs > 0]
        if scale is None or not moved:
            continue
        checked = statistics.median(math.log10(r.update.stats.mean_abs / scale) for r in moved)
        current = statistics.median(r.update_ratio for r in moved if r.update_ratio is not None)
        out[param] = (checked, current)
    findings = [
        f"{f.check} {f.param}"
        for f in run_checks(run, derived_from_rows(run.columns, derived), Config())
        if f.check.startswith("update-ratio")
    ]
    return out, findings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run (default 400)")
    parser.add_argument("--every", type=int, default=20, help="record every N steps (default 20)")
    parser.add_argument("--only", action="append", help="run only these tasks (repeatable)")
    parser.add_argument("--keep", type=Path, help="keep the recorded runs under this directory")
    parser.add_argument("--verbose", action="store_true", help="print every weight's medians")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="gradcheck-calibration-"))
    print(f"{'run':24} {'loss':>6} {'weights':>7}  checked: min median max | DL4J current: min max  findings")
    for task in tasks():
        if args.only and task.name not in args.only:
            continue
        for label, scale in SCALES:
            out = root / f"{task.name}-{label.replace(' ', '').replace('/', 'div')}"
            loss = train(task, task.lr * scale, args.steps, args.every, out)
            per_weight, findings = medians(out)
            checked = sorted(v[0] for v in per_weight.values())
            current = sorted(v[1] for v in per_weight.values())
            shown = ", ".join(findings) if len(findings) <= 2 else f"{len(findings)}: {findings[0]}, ..."
            print(
                f"{task.name + ' ' + label:24} {loss:6.3f} {len(checked):7d}  {checked[0]:6.2f} "
                f"{statistics.median(checked):6.2f} {checked[-1]:6.2f} | {current[0]:6.2f} {current[-1]:6.2f}  "
                f"{shown or 'none'}"
            )
            if args.verbose:
                for param, (mine, dl4j) in per_weight.items():
                    print(f"    {param:40} {mine:6.2f} {dl4j:6.2f}")
    if args.keep is None:
        import shutil

        shutil.rmtree(root)


if __name__ == "__main__":
    main()
