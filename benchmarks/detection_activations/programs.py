"""Small real PyTorch programs, one per failure class that the loss and activation signals catch, with twins.

Each program trains on scikit-learn's bundled digits (no network), one thread, seeded. `buggy=False` is its
healthy twin: the same code with only the one place the fix changes. Our own programs, written from the fault
lists of DeepDiagnosis (ICSE 2022), DeepLocalize (ICSE 2021), AutoTrainer (ICSE 2021) and Glorot & Bengio 2010.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradcheck.recording.torch import Recorder

SEED = 0
STEPS = 300
EVERY = 10
BATCH = 64


@dataclass(frozen=True)
class Program:
    """One failure class: the bug, its fix, and the checks that count as catching it."""

    name: str
    bug: str
    fix: str
    expected: tuple[str, ...]
    train: Callable[[Path, bool], dict[str, float]]
    # Gradient checks whose finding also counts as catching the class ("before": without loss/activations):
    # the NaN (`nonfinite`, though it cannot name the layer), dead gradients, a tiny update ratio.
    before: tuple[str, ...] = ()


def _digits(scale: float = 16.0) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / scale
    return x, torch.tensor(data.target, dtype=torch.long)


def _mlp(hidden: nn.Module, out: nn.Module | None = None, width: int = 64) -> nn.Sequential:
    layers = [nn.Linear(64, width), hidden, nn.Linear(width, 10)]
    return nn.Sequential(*layers, *([out] if out is not None else []))


def _loop(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int | None = None,
    every: int = EVERY,
) -> dict[str, float]:
    """Train STEPS minibatch steps, recording every EVERY with activations and the loss; return the outcome."""
    generator = torch.Generator().manual_seed(SEED)
    losses = []
    with Recorder(model, optimizer, run_dir, every=every, mode="stats", activations=True) as recorder:
        for _ in range(steps or STEPS):  # STEPS read at run time: the tests train shorter
            batch = torch.randint(0, len(x), (BATCH,), generator=generator)
            loss = loss_of(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            recorder.log(loss=loss.item())
            losses.append(loss.item())
            optimizer.step()
    with torch.no_grad():
        out = model(x)
        accuracy = float((out.argmax(-1) == y).float().mean()) if out.dim() == 2 else float("nan")
    return {"accuracy": accuracy, "first_loss": losses[0], "last_loss": losses[-1]}


def wrong_loss(run_dir: Path, buggy: bool) -> dict[str, float]:
    """NLLLoss fed softmax probabilities instead of log-probabilities (DeepDiagnosis: wrong loss function)."""
    torch.manual_seed(SEED)
    x, y = _digits()
    model = _mlp(nn.ReLU(), nn.Softmax(dim=-1) if buggy else nn.LogSoftmax(dim=-1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return _loop(run_dir, model, optimizer, nn.NLLLoss(), x, y)


def saturated_output(run_dir: Path, buggy: bool) -> dict[str, float]:
    """Unscaled pixels (0-255) through ReLU into a sigmoid output layer (DeepDiagnosis: saturated activation)."""
    torch.manual_seed(SEED)
    x, y = _digits(scale=16.0 / 255.0 if buggy else 16.0)
    model = _mlp(nn.ReLU(), nn.Sigmoid())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_of(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy(out, nn.functional.one_hot(labels, 10).float())

    return _loop(run_dir, model, optimizer, loss_of, x, y)


def softmax_binary(run_dir: Path, buggy: bool) -> dict[str, float]:
    """A binary task (digit < 5) with a 1-unit softmax output and BCE: the output is always 1 (DeepDiagnosis)."""
    torch.manual_seed(SEED)
    x, y = _digits()
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1), nn.Softmax(dim=-1) if buggy else nn.Sigmoid()
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_of(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy(out[:, 0], (labels < 5).float())

    outcome = _loop(run_dir, model, optimizer, loss_of, x, y)
    with torch.no_grad():
        outcome["accuracy"] = float(((model(x)[:, 0] > 0.5) == (y < 5)).float().mean())
    return outcome


def dying_relu(run_dir: Path, buggy: bool) -> dict[str, float]:
    """A learning rate so high that most ReLU units die (AutoTrainer: dying ReLU)."""
    torch.manual_seed(SEED)
    x, y = _digits()
    model = _mlp(nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=3.0 if buggy else 0.1)
    return _loop(run_dir, model, optimizer, nn.CrossEntropyLoss(), x, y)


class LogFeatures(nn.Module):
    """A custom layer: log of its (non-negative) input, a feature transform people write by hand."""

    def __init__(self, buggy: bool) -> None:
        super().__init__()
        self.buggy = buggy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x) if self.buggy else torch.log1p(x)


def nan_in_layer(run_dir: Path, buggy: bool) -> dict[str, float]:
    """log of a ReLU output that reaches 0 in a custom layer (DeepLocalize: numerical error in one layer)."""
    torch.manual_seed(SEED)
    x, y = _digits()
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), LogFeatures(buggy), nn.Linear(64, 10)
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return _loop(run_dir, model, optimizer, nn.CrossEntropyLoss(), x, y)


def lr_far_too_low(run_dir: Path, buggy: bool) -> dict[str, float]:
    """SGD with lr 1e-5 (DeepDiagnosis / TheDeepChecker: learning rate too low): the loss does not move."""
    torch.manual_seed(SEED)
    x, y = _digits()
    model = _mlp(nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5 if buggy else 0.1)
    return _loop(run_dir, model, optimizer, nn.CrossEntropyLoss(), x, y)


def saturated_hidden(run_dir: Path, buggy: bool) -> dict[str, float]:
    """Unscaled inputs into a tanh hidden layer: it saturates (Glorot & Bengio 2010; AutoTrainer)."""
    torch.manual_seed(SEED)
    x, y = _digits(scale=16.0 / 255.0 if buggy else 16.0)
    model = _mlp(nn.Tanh())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    return _loop(run_dir, model, optimizer, nn.CrossEntropyLoss(), x, y)


PROGRAMS = (
    Program("wrong_loss", "NLLLoss on softmax probabilities", "LogSoftmax", ("loss-stuck",), wrong_loss),
    Program("saturated_output", "pixels 0-255 into a sigmoid output", "pixels / 16", ("saturation",),
            saturated_output),
    Program("softmax_binary", "1-unit softmax + BCE", "sigmoid", ("loss-stuck", "saturation"), softmax_binary),
    Program("dying_relu", "SGD lr 3.0 on a ReLU MLP", "lr 0.1", ("dead-activations",), dying_relu, ("dead",)),
    Program("nan_in_layer", "log(relu(x)) in a custom layer", "log1p", ("nan-origin",), nan_in_layer, ("nonfinite",)),
    Program("lr_far_too_low", "SGD lr 1e-5", "lr 0.1", ("loss-stuck",), lr_far_too_low, ("update-ratio-low",)),
    Program("saturated_hidden", "pixels 0-255 into a tanh layer", "pixels / 16", ("saturation",),
            saturated_hidden),
)  # fmt: skip


def confident_softmax(run_dir: Path, buggy: bool) -> dict[str, float]:
    """Healthy only: a softmax classifier trained long enough to be confident and to plateau (no bug)."""
    torch.manual_seed(SEED)
    x, y = _digits()
    model = _mlp(nn.ReLU(), nn.Softmax(dim=-1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def loss_of(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.nll_loss(torch.log(out.clamp_min(1e-12)), labels)

    return _loop(run_dir, model, optimizer, loss_of, x, y, steps=1500, every=25)


# Healthy runs with no buggy twin: evidence that a late plateau and a confident output layer are not flagged.
HEALTHY_ONLY = (
    Program("confident_softmax", "-", "1500 steps, lr 0.5, softmax output", (), confident_softmax),
)
