"""Unscaled inputs, Adam: regression features in their raw units (metres, years, thousands)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..common import FaultClass, Outcome, mlp, regress, regression, split, standardize

CLASS = FaultClass(
    name="unscaled_inputs_adam",
    title="unscaled inputs (Adam)",
    expected=("exploding",),
    shows_in="loss",
    why="Adam's steps are about lr in size whatever the gradient, so nothing diverges: the net just fits "
    "badly. Its gradients are ~1e4x the standardized twin's, but within a run nothing marks them as large "
    "(no layer stands out, mean|g| stays far below the absolute 1e6 bound), so gradient checks have no "
    "reference to call them exploding",
    source="TheDeepChecker fault 'missing_normalization' (inputs); DeepDiagnosis (Wardat et al., ICSE 2022) "
    "root cause 'improper data'; LeCun et al., Efficient BackProp (1998) on input scaling",
    bug="features fed in their raw units (scale 1 to 1000, one offset by 2000)",
    fix="standardize the features (x - mean) / std",
)
# Units of the 8 synthetic features (think rooms, m², €, year...): the raw inputs span 1 to ~3000.
SCALE = np.array([1.0, 10.0, 100.0, 1000.0, 1.0, 10.0, 100.0, 1000.0])
OFFSET = np.array([0.0, 0.0, 0.0, 2000.0, 0.0, 50.0, 0.0, 0.0])

Optimizer = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def fit_raw_features(out_dir: Path, buggy: bool, optimizer: Optimizer) -> Outcome:
    """Fit the regression from features in raw units, standardized only in the healthy twin."""
    x, y = regression()
    x = x * SCALE + OFFSET
    if not buggy:  # the fix: standardize the inputs
        x = standardize(x)
    model = mlp([8, 64, 64, 1])
    return regress(
        model, optimizer(model.parameters()), split(x, y, y_dtype=torch.float32), out_dir, steps=400, every=20
    )


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit with Adam at its default learning rate."""
    return fit_raw_features(out_dir, buggy, lambda params: torch.optim.Adam(params, lr=1e-3))
