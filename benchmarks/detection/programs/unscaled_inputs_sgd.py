"""Unscaled inputs, SGD: the same raw-unit features with SGD, whose steps grow with the input scale."""

from __future__ import annotations

from pathlib import Path

import torch

from ..common import FaultClass, Outcome
from .unscaled_inputs_adam import fit_raw_features

CLASS = FaultClass(
    name="unscaled_inputs_sgd",
    title="unscaled inputs (SGD)",
    expected=("exploding", "nonfinite"),
    shows_in="gradients",
    why="the first layer's gradient scales with the inputs (up to ~3000 here) and an SGD step with it: at an "
    "lr that suits standardized inputs the first steps overshoot, the weights blow up and turn NaN",
    source="LeCun et al., Efficient BackProp (1998); TheDeepChecker fault 'missing_normalization'; "
    "DeepDiagnosis (Wardat et al., ICSE 2022) root cause 'improper data'",
    bug="features fed in their raw units (scale 1 to 1000, one offset by 2000)",
    fix="standardize the features (x - mean) / std",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit with SGD + momentum."""
    return fit_raw_features(out_dir, buggy, lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9))
