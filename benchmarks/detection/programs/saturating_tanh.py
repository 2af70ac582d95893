"""Saturating tanh: a deep tanh MLP with weights drawn from N(0, 1), so every unit sits at +-1."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import FaultClass, Outcome, classify, digits, mlp

CLASS = FaultClass(
    name="saturating_tanh",
    title="saturating tanh (weights far too large for tanh)",
    expected=("saturation",),
    shows_in="activations",
    why="with std 1 a pre-activation has std ~sqrt(fan_in) = 8, so most tanh units sit at +-1 and the net "
    "learns little. The gradients do not vanish: backwards each layer multiplies by the weights (gain "
    "~sqrt(64) = 8) and by tanh' (~0.1-0.2 on average at that spread), about 1 per layer; measured, every "
    "layer's depth stays within 1.2 decades of the largest. Only the forward activations show it: issue #16's "
    "'saturation' (the same init on ReLU units explodes instead: huge_init)",
    source="Glorot & Bengio (AISTATS 2010), saturation of deep tanh nets; LeCun et al., Efficient BackProp "
    "(1998); TheDeepChecker fault 'wrong_init' (random); DeepDiagnosis 'saturated activation'",
    bug="nn.init.normal_(weight, std=1.0) on every Linear of an 8-layer tanh MLP",
    fix="nn.init.xavier_normal_(weight) (Glorot init, made for tanh)",
)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Fit the digits with SGD + momentum."""
    model = mlp([64] + [64] * 7 + [10], nn.Tanh)
    for layer in model:
        if isinstance(layer, nn.Linear):
            if buggy:  # the fault: "random normal" init, std 1
                nn.init.normal_(layer.weight, std=1.0)
            else:
                nn.init.xavier_normal_(layer.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return classify(model, optimizer, digits(), out_dir, steps=400, every=20)
