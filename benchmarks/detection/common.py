"""What every detection program shares: its declaration, the data, the training loop and the recorder.

Data never comes from the network: scikit-learn's bundled digits, synthetic sets from a fixed seed, and the
text of the Zen of Python (stdlib `this`) for the character model.
"""

from __future__ import annotations

import codecs
import importlib.util
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradcheck.recording.torch import Recorder

SEED = 0  # model init, data order and synthetic data; every program re-seeds, so each run is reproducible
TEST_SHARE = 0.25  # held-out share on which the healthy twins show their accuracy / R²

# The gradcheck problems a finding can carry (docs/JSON.md); the first four are the gradient problems the
# acceptance recall is measured on.
GRADIENT_PROBLEMS = ("vanishing", "exploding", "nonfinite", "dead")
# Where a fault necessarily shows: in the gradients; only in the updates (update:parameter ratio); only in
# the loss (it does not go down, or not far enough); only in the forward activations; nowhere gradcheck reads.
SIGNALS = ("gradients", "updates", "loss", "activations", "none")


@dataclass(frozen=True)
class FaultClass:
    """One failure class of the benchmark: what it is, where it comes from, what gradcheck should say.

    `expected` lists the gradcheck problems that count as detecting it. `shows_in` names the signal in which
    the fault necessarily shows (one of SIGNALS): only "gradients" classes count towards the gradient recall
    of issue #11; "loss" and "activations" are there for the checks of issue #16. `why` is the reasoning
    behind both, kept next to the program.
    """

    name: str
    title: str
    expected: tuple[str, ...]
    shows_in: str
    why: str
    source: str
    bug: str
    fix: str

    def __post_init__(self) -> None:
        if self.shows_in not in SIGNALS:
            raise ValueError(f"{self.name}: shows_in {self.shows_in!r} is not one of {SIGNALS}")
        if self.shows_in == "gradients" and not set(self.expected) <= set(GRADIENT_PROBLEMS):
            raise ValueError(f"{self.name}: a gradient class expects only {GRADIENT_PROBLEMS}")


@dataclass
class Outcome:
    """What a training run reached: the figure that shows whether it learned."""

    metric: str  # "accuracy", "R2", "char accuracy"
    value: float
    final_loss: float
    first_nonfinite_loss: int | None = None  # first step whose loss was NaN/Inf
    notes: dict[str, float] = field(default_factory=dict)


def configure_torch() -> None:
    """One thread and deterministic kernels: the same files on every run, a fair share of a busy machine."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


@dataclass(frozen=True)
class Split:
    """Train and test tensors of one data set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def split(x: np.ndarray, y: np.ndarray, *, y_dtype: torch.dtype = torch.int64) -> Split:
    """A fixed random train/test split."""
    order = np.random.default_rng(SEED).permutation(len(x))
    n_test = int(len(x) * TEST_SHARE)
    test, train = order[:n_test], order[n_test:]
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=y_dtype)
    return Split(xt[train], yt[train], xt[test], yt[test])


def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 bundled 8x8 digits: pixel values 0..16 (n, 64) and labels 0..9.

    Read straight from the file scikit-learn ships (what `load_digits` reads), without importing scikit-learn:
    that import costs ~1.5 s of CPU per program, a quarter of the benchmark. Falls back on `load_digits`.
    """
    spec = importlib.util.find_spec("sklearn")
    bundled = (
        Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    )
    if bundled is not None and bundled.is_file():
        table = np.loadtxt(bundled, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float64), y


def standardize(x: np.ndarray) -> np.ndarray:
    """Per-feature standardization; constant features (the digits' blank border pixels) keep std 1."""
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return (x - x.mean(axis=0)) / std


def digits() -> Split:
    """The digits, standardized the usual way, split."""
    x, y = raw_digits()
    return split(standardize(x), y)


def regression(n: int = 2048, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A smooth nonlinear regression target of d standard-normal features, with a little noise."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal(d) / math.sqrt(d)
    y = np.sin(x @ w * 2.0) + 0.5 * (x[:, 0] * x[:, 1]) + 0.1 * rng.standard_normal(n)
    return x, y


def zen_text() -> str:
    """The Zen of Python, decoded from the stdlib `this` module's ROT13 string, without its import's print."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def batches(n: int, size: int, *, drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Endless minibatch indices, a fresh seeded permutation per epoch."""
    generator = torch.Generator().manual_seed(SEED)
    while True:
        order = torch.randperm(n, generator=generator)
        stop = n - size + 1 if drop_last else n
        for start in range(0, stop, size):
            yield order[start : start + size]


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    out_dir: Path,
    loss_of_step: Callable[[], torch.Tensor],
    *,
    steps: int,
    every: int,
    clip_norm: float | None = None,
) -> tuple[float, int | None]:
    """The ordinary loop, recorded by gradcheck's Recorder in full mode; returns the loss and first NaN step.

    It keeps going after the loss turns NaN, as unattended training scripts do.
    """
    first_bad = None
    recent: list[float] = []
    with Recorder(model, optimizer, out_dir, every=every, mode="full"):
        for step in range(steps):
            optimizer.zero_grad()
            loss = loss_of_step()
            loss.backward()
            if clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            value = loss.item()
            if first_bad is None and not math.isfinite(value):
                first_bad = step
            recent = (recent + [value])[-20:]
    return float(np.mean(recent)), first_bad


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification accuracy of argmax logits (a NaN model scores as whatever argmax of NaN gives)."""
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).double().mean().item()


def r2(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Coefficient of determination on (x, y); NaN when the model's outputs are not finite."""
    with torch.no_grad():
        pred = model(x).squeeze(-1)
    if not torch.isfinite(pred).all():
        return math.nan
    return 1.0 - ((pred - y) ** 2).mean().item() / y.var(unbiased=False).item()


def mlp(sizes: list[int], activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """`Linear, act, ..., Linear`: parameters `0.weight`, `2.weight`, ... in model order."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    return nn.Sequential(*layers[:-1])


def classify(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Split,
    out_dir: Path,
    *,
    steps: int,
    every: int,
    batch_size: int = 64,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    clip_norm: float | None = None,
) -> Outcome:
    """Train a classifier on minibatches of `data` and report its held-out accuracy."""
    order = batches(len(data.y_train), batch_size)

    def loss_of_step() -> torch.Tensor:
        idx = next(order)
        return loss_fn(model(data.x_train[idx]), data.y_train[idx])

    loss, bad = fit(model, optimizer, out_dir, loss_of_step, steps=steps, every=every, clip_norm=clip_norm)
    return Outcome("accuracy", accuracy(model, data.x_test, data.y_test), loss, bad)


def regress(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Split,
    out_dir: Path,
    *,
    steps: int,
    every: int,
    batch_size: int = 64,
) -> Outcome:
    """Train a regressor with MSE on minibatches of `data` and report its held-out R²."""
    order = batches(len(data.y_train), batch_size)

    def loss_of_step() -> torch.Tensor:
        idx = next(order)
        return nn.functional.mse_loss(model(data.x_train[idx]).squeeze(-1), data.y_train[idx])

    loss, bad = fit(model, optimizer, out_dir, loss_of_step, steps=steps, every=every)
    return Outcome("R2", r2(model, data.x_test, data.y_test), loss, bad)
