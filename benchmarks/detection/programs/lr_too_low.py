"""Learning rate far too low: Adam at 1e-6 where 1e-3 trains, on the digits MLP."""

from __future__ import annotations

from pathlib import Path

import torch

from ..common import FaultClass, Outcome, classify, digits, mlp

CLASS = FaultClass(
    name="lr_too_low",
    title="learning rate far too low",
    expected=("update-ratio-low",),
    shows_in="updates",
    why="the gradients are those of an ordinary untrained net; only the updates are tiny against the weights,"
    " "
    "so at best the update:parameter ratio (a warning, DL4J's < -4) shows it, never a gradient problem",
    source="TheDeepChecker fault 'low_lr'; DeepDiagnosis (Wardat et al., ICSE 2022) 'loss not decreasing'",
    bug="torch.optim.Adam(..., lr=1e-6)",
    fix="lr=1e-3",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with Adam."""
    model = mlp([64, 128, 10])
    lr = 1e-6 if buggy else 1e-3  # the fault: a learning rate 1000x too low
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return classify(model, optimizer, digits(), out_dir, steps=400, every=20, batch_size=32)
