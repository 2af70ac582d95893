"""Detached layer: the encoder's output is .detach()ed, so only the head learns."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, classify, digits

CLASS = FaultClass(
    name="frozen_layer",
    title="frozen / detached layer",
    expected=("dead",),
    shows_in="gradients",
    why="no gradient reaches the encoder: mathematically its gradient is 0 at every step; PyTorch leaves its "
    ".grad None, so the recorder writes no tensor for it and lists it in gradcheck.no_grad at every step",
    source="DeepDiagnosis (Wardat et al., ICSE 2022) symptom 'unchanged weight'; TheDeepChecker (Ben Braiek "
    "& Khomh, TOSEM 2023) parameter checks (weights that do not change)",
    bug="features = self.encoder(x).detach()",
    fix="features = self.encoder(x)",
)


class Classifier(nn.Module):
    """A two-layer encoder and a linear head."""

    def __init__(self, detach: bool) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.detach = detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of digits."""
        features = self.encoder(x)
        if self.detach:  # the fault: left over from a feature-extraction snippet
            features = features.detach()
        return self.head(features)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with Adam."""
    model = Classifier(detach=buggy)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return classify(model, optimizer, digits(), out_dir, steps=400, every=20)
