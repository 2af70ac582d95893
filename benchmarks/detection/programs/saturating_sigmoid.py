"""Saturating activations in a deep plain net: twelve Linear+Sigmoid layers trained with SGD."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, classify, digits, mlp

CLASS = FaultClass(
    name="saturating_sigmoid",
    title="saturating sigmoid in a deep plain net",
    expected=("vanishing",),
    shows_in="gradients",
    why="sigmoid'(x) <= 1/4, so every layer shrinks the backward signal about fourfold or more: twelve "
    "layers "
    "leave the first ones a millionth of the last one's gradient, and they do not learn. Both variants use "
    "He initialisation (right for the ReLU twin; a 12-layer ReLU net at PyTorch's default init does not "
    "train either, see missing_norm)",
    source="Glorot & Bengio (AISTATS 2010); Hochreiter (1991) vanishing gradients; TheDeepChecker fault "
    "'wrong_activation'; DeepDiagnosis 'saturated activation'; AutoTrainer (Zhang et al., ICSE 2021) "
    "'vanishing gradient'",
    bug="nn.Sigmoid between the hidden layers",
    fix="nn.ReLU between the hidden layers",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with SGD + momentum."""
    activation = nn.Sigmoid if buggy else nn.ReLU  # the fault: a saturating activation, twelve layers deep
    model = mlp([64] + [32] * 11 + [10], activation)
    for layer in model:
        if isinstance(layer, nn.Linear):  # He init, as the tutorials say: right for ReLU, no help for sigmoid
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return classify(model, optimizer, digits(), out_dir, steps=600, every=30)
