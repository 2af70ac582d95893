"""Exploding RNN: a ReLU RNN with identity recurrent init (IRNN) trained without gradient clipping."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..common import SEED, FaultClass, Outcome, fit, zen_text

SEQ_LEN = 64
BATCH = 16
HIDDEN = 128

CLASS = FaultClass(
    name="exploding_rnn",
    title="exploding gradients in an RNN",
    expected=("exploding", "nonfinite"),
    shows_in="gradients",
    why="backpropagation through 64 time steps multiplies by the recurrent Jacobian 64 times; with identity "
    "init and ReLU its norm is >= 1, so the gradient reaches ~1e2 at the first step and overflows right "
    "after",
    source="Pascanu, Mikolov & Bengio, On the difficulty of training RNNs (ICML 2013); Le, Jaitly & Hinton, "
    "IRNN (2015), trained with clipping; AutoTrainer 'exploding gradient'",
    bug="no gradient clipping",
    fix="nn.utils.clip_grad_norm_(model.parameters(), 1.0) before optimizer.step()",
)


class CharRNN(nn.Module):
    """Embedding, one ReLU RNN layer with identity recurrent init, a linear read-out per time step."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.RNN(32, HIDDEN, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(HIDDEN, vocab)
        nn.init.eye_(self.rnn.weight_hh_l0)
        nn.init.zeros_(self.rnn.bias_hh_l0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-character logits (batch, time, vocab)."""
        hidden, _ = self.rnn(self.embed(x))
        return self.head(hidden)


def train(out_dir: Path, *, buggy: bool) -> Outcome:
    """Next-character prediction on the Zen of Python with SGD, on random windows."""
    text = zen_text()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    model = CharRNN(len(chars))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(SEED)

    def loss_of_step() -> torch.Tensor:
        starts = torch.randint(0, len(ids) - SEQ_LEN - 1, (BATCH,), generator=generator)
        x = torch.stack([ids[s : s + SEQ_LEN] for s in starts])
        y = torch.stack([ids[s + 1 : s + SEQ_LEN + 1] for s in starts])
        return nn.functional.cross_entropy(model(x).reshape(-1, len(chars)), y.reshape(-1))

    clip = None if buggy else 1.0  # the fault: no clipping
    loss, bad = fit(model, optimizer, out_dir, loss_of_step, steps=600, every=30, clip_norm=clip)
    with torch.no_grad():
        acc = (model(ids[None, :-1]).argmax(-1)[0] == ids[1:]).double().mean().item()
    return Outcome("char accuracy", acc, loss, bad)
