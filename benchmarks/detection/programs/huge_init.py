"""Huge initialisation: weights drawn from N(0, 1) ("randn") in a deep ReLU MLP."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, classify, digits, mlp

CLASS = FaultClass(
    name="huge_init",
    title="huge initialisation",
    expected=("exploding", "nonfinite"),
    shows_in="gradients",
    why="with std 1 instead of ~1/sqrt(fan_in) each ReLU layer multiplies the signal by ~sqrt(fan_in/2) = 8 "
    "both ways: the logits and the first layers' gradients are thousands of times too large and the first "
    "SGD "
    "steps throw the weights further out",
    source="Glorot & Bengio (AISTATS 2010); He et al. (ICCV 2015) initialisation; TheDeepChecker fault "
    "'wrong_init' (random); AutoTrainer 'exploding gradient'",
    bug="nn.init.normal_(weight, std=1.0) on every Linear",
    fix="keep PyTorch's default (Kaiming-uniform) initialisation",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with SGD + momentum."""
    model = mlp([64, 128, 128, 128, 128, 10])
    if buggy:  # the fault: "initialise the weights randomly" taken literally
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return classify(model, optimizer, digits(), out_dir, steps=400, every=20)
