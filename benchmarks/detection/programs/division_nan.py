"""Division NaN: inputs standardized by hand, dividing by a per-pixel std that is 0 for the blank pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..common import FaultClass, Outcome, classify, mlp, raw_digits, split

CLASS = FaultClass(
    name="division_nan",
    title="division by zero (0/0) in preprocessing",
    expected=("nonfinite",),
    shows_in="gradients",
    why="the digits' border pixels are 0 in every image: (x - mean) / std is 0/0 = NaN there, the NaN inputs "
    "make the first layer's gradient NaN at the first step, and the update spreads it to every parameter",
    source="TheDeepChecker (Ben Braiek & Khomh) data-normalisation and numerical faults; DeepLocalize "
    "(Wardat et al., ICSE 2021) NaN from a division by zero",
    bug="x = (x - x.mean(0)) / x.std(0)",
    fix="std[std == 0] = 1 before dividing (what scikit-learn's StandardScaler does)",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Standardize the raw digits by hand, then fit them with SGD + momentum."""
    x, y = raw_digits()
    std = x.std(axis=0)
    if not buggy:  # the fix: constant features keep their (zero) value instead of 0/0
        std[std == 0] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (x - x.mean(axis=0)) / std
    model = mlp([64, 32, 10])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return classify(model, optimizer, split(x, y), out_dir, steps=400, every=20)
