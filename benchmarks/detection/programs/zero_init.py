"""All weights initialised to zero: the hidden units stay identical and, through ReLU, silent."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, classify, digits, mlp

CLASS = FaultClass(
    name="zero_init",
    title="zero initialisation",
    expected=("dead",),
    shows_in="gradients",
    why="with every weight and bias 0 the hidden ReLUs output 0, so the gradient of every weight matrix is "
    "exactly zero at every step (only the output bias learns): the symmetry is never broken",
    source="TheDeepChecker fault 'wrong_init' (constant); Glorot & Bengio (AISTATS 2010) on symmetric init",
    bug="nn.init.zeros_ on every parameter",
    fix="keep PyTorch's default (Kaiming-uniform) initialisation",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with Adam."""
    model = mlp([64, 64, 32, 10])
    if buggy:  # the fault: "start from zero" for every parameter
        for p in model.parameters():
            nn.init.zeros_(p)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return classify(model, optimizer, digits(), out_dir, steps=400, every=20)
