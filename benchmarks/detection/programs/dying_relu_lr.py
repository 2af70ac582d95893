"""Dying ReLU through a learning rate far too high: one overshooting SGD step pushes every unit negative."""

from __future__ import annotations

from pathlib import Path

import torch

from ..common import FaultClass, Outcome, mlp, regress, regression, split

CLASS = FaultClass(
    name="dying_relu_lr",
    title="dying ReLU through a high learning rate",
    expected=("dead",),
    shows_in="gradients",
    why="a huge step drives the pre-activations of the ReLU units negative for every input; from then on "
    "no gradient reaches the layers below them (exact zeros), and the net predicts a constant",
    source="Lu et al., 'Dying ReLU and Initialization' (CiCP 2020); AutoTrainer (Zhang et al., ICSE 2021) "
    "'dying ReLU'; Karpathy, CS231n notes ('as much as 40 % of your network can be dead' with a high lr)",
    bug="torch.optim.SGD(..., lr=1.0, momentum=0.9) on a ReLU regression MLP",
    fix="lr=0.01",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the synthetic regression with SGD + momentum."""
    data = split(*regression(), y_dtype=torch.float32)
    model = mlp([8, 64, 64, 1])
    lr = 1.0 if buggy else 0.01  # the fault: a learning rate 100x too high
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return regress(model, optimizer, data, out_dir, steps=400, every=20)
