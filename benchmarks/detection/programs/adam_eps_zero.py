"""Adam with eps=0: 0/0 in the update of every weight whose gradient is exactly zero."""

from __future__ import annotations

from pathlib import Path

import torch

from ..common import FaultClass, Outcome, classify, digits, mlp

CLASS = FaultClass(
    name="adam_eps_zero",
    title="Adam epsilon zero",
    expected=("nonfinite",),
    shows_in="gradients",
    why="Adam's update is m / (sqrt(v) + eps); the digits' blank border pixels are 0 after standardizing, so "
    "the first layer's weights from them get exactly zero gradients, m = v = 0, and with eps = 0 the update "
    "is 0/0 = NaN: the NaN weights make every gradient NaN from the next step on",
    source="TheDeepChecker (Ben Braiek & Khomh, TOSEM 2023) fault 'low_adam_epsilon'; Kingma & Ba, Adam "
    "(ICLR 2015), eps for numerical stability",
    bug="torch.optim.AdamW(..., eps=0.0)",
    fix="keep the default eps=1e-8",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with AdamW."""
    model = mlp([64, 48, 48, 10])
    eps = 0.0 if buggy else 1e-8  # the fault: no epsilon in Adam's denominator
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=eps, weight_decay=0.01)
    return classify(model, optimizer, digits(), out_dir, steps=400, every=20)
