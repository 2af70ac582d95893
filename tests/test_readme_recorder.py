"""The README's three-line PyTorch example, pasted into a plain training loop, records a readable run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")

from gradcheck.analysis.runs import load_run

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_lines() -> list[str]:
    """The code lines of the first python block under '## Recording a run'."""
    text = README.read_text()
    start = text.index("```python\n", text.index("## Recording a run")) + len("```python\n")
    block = text[start : text.index("```", start)]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_example_is_three_lines() -> None:
    lines = readme_lines()
    assert len(lines) == 3 and "Recorder(" in lines[1] and ".close()" in lines[2]


def test_readme_example_records_a_plain_training_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(25)]
    before_after: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    first, middle, last = readme_lines()
    scope = {"model": model, "optimizer": optimizer}
    exec(first + "\n" + middle, scope)  # noqa: S102 - running the README's own code is the point
    for step, (x, y) in enumerate(data):  # a plain loop, as a user has it
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        before = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
        optimizer.step()
        before_after[step] = {n: (before[n], p.detach().numpy().copy()) for n, p in model.named_parameters()}
    exec(last, scope)  # noqa: S102

    run = load_run(tmp_path / "runs" / "my_run")
    assert run.steps == (0, 10, 20)
    assert run.params == tuple(n for n, _ in model.named_parameters())
    for step in run.steps:
        path = tmp_path / "runs" / "my_run" / f"step_{step:08d}.safetensors"
        assert oct(os.stat(path).st_mode & 0o777) == "0o644"
        tensors = load_file(path)
        for name, (old, new) in before_after[step].items():
            np.testing.assert_array_equal(tensors[f"param/{name}"], old)
            np.testing.assert_array_equal(tensors[f"update/{name}"], new - old)  # bit for bit, float32
