"""log(0) NaN: a hand-written binary cross-entropy on sigmoid outputs that round to exactly 1."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, classify, digits, mlp

CLASS = FaultClass(
    name="log_zero_nan",
    title="log(0) in a hand-written loss",
    expected=("nonfinite",),
    shows_in="gradients",
    why="once the model is confident, sigmoid(z) rounds to exactly 1.0 in float32 (z > 16.6): log(1 - p) is "
    "-inf, 0 * -inf is NaN in the loss, and its gradient -1/(1 - p) * p(1 - p) is NaN too; on the digits the "
    "most confident positive passes z = 17.3 after about 1,050 steps (50 epochs), hence the long run",
    source="TheDeepChecker (Ben Braiek & Khomh) numerical-instability faults; the TensorFlow MNIST "
    "tutorial's "
    "-sum(y * log(y_hat)) NaN; DeepLocalize (Wardat et al., ICSE 2021) numerical errors",
    bug="p = sigmoid(z); loss = -(y * log(p) + (1 - y) * log(1 - p)).mean()",
    fix="loss = F.binary_cross_entropy_with_logits(z, y)",
)


def _hand_written_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The textbook formula, typed in as it reads."""
    p = torch.sigmoid(logits)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit a one-vs-rest ("is it a 0?") detector on the digits with Adam."""
    data = digits()
    model = mlp([64, 64, 1])

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = (labels == 0).float()
        if buggy:  # the fault: log of a probability that can be exactly 0 or 1
            return _hand_written_bce(logits.squeeze(-1), target)
        return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), target)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    outcome = classify(model, optimizer, data, out_dir, steps=2000, every=100, loss_fn=loss_fn)
    with torch.no_grad():
        pred = model(data.x_test).squeeze(-1) > 0
    outcome.value = (pred == (data.y_test == 0)).double().mean().item()
    outcome.metric = "accuracy (0 or not)"
    return outcome
