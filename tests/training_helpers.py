"""Shared by the recorder-context and framework tests: digits data and an optimizer that logs what it used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and 2 shared cores oversubscribed are much slower.

    Autouse in every test module that imports it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch_of(data: torch.utils.data.TensorDataset, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `step`-th batch of `size` examples, wrapping around the data."""
    start = (step * size) % (len(data) - size)
    return data.tensors[0][start : start + size], data.tensors[1][start : start + size]


def digits(count: int = 512) -> torch.utils.data.TensorDataset:
    """scikit-learn's bundled 8x8 digits (no download), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.utils.data.TensorDataset(
        torch.tensor(x[:count], dtype=torch.float32) / 16, torch.tensor(y[:count], dtype=torch.long)
    )


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )


class LoggingSGD(torch.optim.Optimizer):
    """Plain SGD that keeps, per call of step() (counted from 1), the gradients it used and the parameters.

    It implements the update itself (no super().step()), so the recorder's step hooks fire exactly once.
    """

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, {"lr": lr})
        self.calls = 0
        self.used: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.calls += 1
        seen = self.used.setdefault(self.calls, {})
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                before = p.detach().clone()
                grad = p.grad.detach().clone()
                p.add_(p.grad, alpha=-group["lr"])
                seen[id(p)] = (grad, before, p.detach().clone())
        return loss


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor, so comparisons are bit for bit."""
    return tensor.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(bits(actual), bits(expected))


def assert_matches_optimizer(
    run_dir: Path, step: int, call: int, model: torch.nn.Module, opt: LoggingSGD
) -> None:
    """The snapshot of `step` holds the gradients optimizer call `call` used, and the update it made."""
    stored = load_file(str(run_dir / f"step_{step:08d}.safetensors"))
    names = {id(p): name for name, p in model.named_parameters()}
    assert opt.used[call], "the optimizer did not step"
    for key, (grad, before, after) in opt.used[call].items():
        name = names[key]
        assert_same_bits(stored[f"grad/{name}"], grad)
        assert_same_bits(stored[f"param/{name}"], before)
        assert_same_bits(stored[f"update/{name}"], after - before)


def metadata(run_dir: Path, step: int) -> dict[str, str]:
    with safe_open(str(run_dir / f"step_{step:08d}.safetensors"), "pt") as handle:
        return handle.metadata()
