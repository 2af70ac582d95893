"""Dying ReLU through a negative bias initialisation: most hidden units never fire."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, classify, digits, mlp

CLASS = FaultClass(
    name="dying_relu_bias",
    title="dying ReLU through a negative bias",
    expected=("dead",),
    shows_in="gradients",
    why="a unit whose pre-activation is negative for every input outputs 0 and passes no gradient: its row "
    "of "
    "the weight gradient is exactly zero at every step, and the unit never comes back",
    source="Lu et al., 'Dying ReLU and Initialization' (CiCP 2020); AutoTrainer (Zhang et al., ICSE 2021) "
    "'dying ReLU' (>= 70 % zero gradients); TheDeepChecker fault 'wrong_init'",
    bug="nn.init.constant_(bias, -1.5) on every hidden layer",
    fix="nn.init.constant_(bias, 0.01) (the usual small positive bias for ReLU units)",
)
BIAS = -1.5  # of -0.5, -1, -1.5, -2 tried: at -1 Adam revives the units (0.95 accuracy), at -2 all die


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with Adam."""
    model = mlp([64, 128, 64, 10])
    for hidden in (model[0], model[2]):
        nn.init.constant_(hidden.bias, BIAS if buggy else 0.01)  # the fault: a bias that silences the units
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return classify(model, optimizer, digits(), out_dir, steps=400, every=20)
