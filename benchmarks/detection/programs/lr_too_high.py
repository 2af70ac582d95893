"""Learning rate far too high: SGD at 1.0 where 0.01 trains, on a small tanh regression MLP."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, mlp, regress, regression, split

CLASS = FaultClass(
    name="lr_too_high",
    title="learning rate far too high",
    expected=("exploding", "nonfinite"),
    shows_in="gradients",
    why="each SGD step overshoots and the weights, hence the gradients, grow geometrically until they "
    "overflow (with ReLU units the same fault usually kills the units instead: see dying_relu_lr)",
    source="TheDeepChecker (Ben Braiek & Khomh, TOSEM 2023) fault 'high_lr'; "
    "AutoTrainer (Zhang et al., ICSE 2021) 'exploding gradient' from an improper learning rate",
    bug="torch.optim.SGD(..., lr=1.0, momentum=0.9)",
    fix="lr=0.01",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the synthetic regression with SGD + momentum."""
    data = split(*regression(), y_dtype=torch.float32)
    model = mlp([8, 64, 64, 1], nn.Tanh)
    lr = 1.0 if buggy else 0.01  # the fault: a learning rate 100x too high
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return regress(model, optimizer, data, out_dir, steps=400, every=20)
