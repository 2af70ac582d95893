"""Missing normalisation: a 20-layer plain ReLU MLP without BatchNorm."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, classify, digits

DEPTH = 20  # hidden layers
WIDTH = 64

CLASS = FaultClass(
    name="missing_norm",
    title="missing normalisation layers in a deep net",
    expected=("vanishing",),
    shows_in="gradients",
    why="at PyTorch's default init (variance 1/(3 fan_in)) each ReLU layer scales the backward signal's "
    "variance by about 1/6: over 20 layers the first layers get ~1e-8 of the last one's gradient. "
    "BatchNorm after each Linear restores unit scale",
    source="Ioffe & Szegedy, Batch Normalization (ICML 2015); TheDeepChecker fault 'missing_batchnorm'",
    bug="Linear -> ReLU, twenty times",
    fix="Linear -> BatchNorm1d -> ReLU, twenty times",
)


def deep_mlp(batch_norm: bool) -> nn.Sequential:
    """DEPTH hidden Linear+ReLU blocks, each with or without a BatchNorm1d, then a linear classifier."""
    layers: list[nn.Module] = []
    fan_in = 64
    for _ in range(DEPTH):
        layers.append(nn.Linear(fan_in, WIDTH))
        if batch_norm:
            layers.append(nn.BatchNorm1d(WIDTH))
        layers.append(nn.ReLU())
        fan_in = WIDTH
    layers.append(nn.Linear(WIDTH, 10))
    return nn.Sequential(*layers)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with SGD + momentum."""
    model = deep_mlp(batch_norm=not buggy)  # the fault: no normalisation between the layers
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return classify(model, optimizer, digits(), out_dir, steps=600, every=30)
