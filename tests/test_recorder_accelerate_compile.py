"""The torch Recorder under accelerate (a prepared model and optimizer, accumulation through
`accelerator.accumulate`, a GradScaler) and on a torch.compile'd model (same statistics, no recompiles)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from training_helpers import (  # noqa: F401 (one_thread: autouse fixture)
    LoggingSGD,
    assert_matches_optimizer,
    batch_of,
    digits,
    mlp,
    one_thread,
)

from gradcheck.analysis.runs import load_run
from gradcheck.cli.main import cli
from gradcheck.recording.torch import Recorder

DATA = digits()


def batch(i: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return batch_of(DATA, i, size)


def train_accelerate(run_dir: Path, micro_batches: int, scaler=None):
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=2, cpu=True)
    if scaler is not None:
        accelerator.scaler = (
            scaler  # accelerate builds no GradScaler on the CPU; its optimizer wrapper uses one
        )
    network = mlp()
    model, optimizer = accelerator.prepare(network, LoggingSGD(network.parameters(), lr=0.1))
    skipped = []
    with Recorder(model, optimizer, run_dir, every=2):
        for i in range(micro_batches):
            with accelerator.accumulate(model):
                x, y = batch(i)
                with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                    loss = torch.nn.functional.cross_entropy(model(x), y) * 100
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                if accelerator.sync_gradients and optimizer.step_was_skipped:
                    skipped.append(i // 2)
    return model, optimizer.optimizer, skipped


@pytest.mark.frameworks
def test_accelerate_prepared_optimizer_with_accumulation(tmp_path: Path, runner) -> None:
    model, optimizer, _ = train_accelerate(tmp_path, 16)
    run = load_run(tmp_path)
    assert run.steps == (0, 2, 4, 6) and optimizer.calls == 8
    for step in run.steps:
        context = run.contexts[step]
        assert (context.framework, context.optimizer, context.accumulation) == ("accelerate", "LoggingSGD", 2)
        assert_matches_optimizer(tmp_path, step, step + 1, model, optimizer)
    assert "2 micro-batches per step" in runner.invoke(cli, ["inspect", str(tmp_path)]).output


@pytest.mark.frameworks
def test_accelerate_grad_scaler_skipped_steps(tmp_path: Path, runner) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    model, optimizer, skipped = train_accelerate(tmp_path, 40, scaler)
    run = load_run(tmp_path)
    assert skipped and run.steps
    assert [n for s in run.steps for n in run.contexts[s].skipped] == [
        n for n in skipped if n < run.steps[-1]
    ]
    applied = [s for s in range(20) if s not in skipped]
    for step in run.steps:
        assert_matches_optimizer(tmp_path, step, applied.index(step) + 1, model, optimizer)
    before = [n for n in skipped if n < run.steps[0]]
    output = runner.invoke(cli, ["inspect", str(tmp_path)]).output
    assert f"AMP skipped {len(before)} steps before step {run.steps[0]}" in output


def train_digits(run_dir: Path, compiled: bool, counters=None) -> list[dict[str, int]]:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    network = torch.compile(model) if compiled else model
    graphs = []
    with Recorder(network, optimizer, run_dir, every=3):
        for step in range(7):
            x, y = batch(step, 32)
            torch.nn.functional.cross_entropy(network(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            if counters is not None:
                graphs.append(dict(counters["stats"]))
    return graphs


def test_torch_compile_same_statistics_and_no_recompiles(tmp_path: Path) -> None:
    """Inductor fuses and reorders float32 sums, so the statistics agree to rounding, not to the bit."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    graphs = train_digits(tmp_path / "compiled", True, counters)
    assert graphs[0]["unique_graphs"] >= 1
    assert all(seen == graphs[0] for seen in graphs)  # steps 3 and 6 are recorded: no new graph there
    assert not counters["recompiles"]
    train_digits(tmp_path / "eager", False)
    compiled, eager = load_run(tmp_path / "compiled"), load_run(tmp_path / "eager")
    assert compiled.params == eager.params and compiled.steps == eager.steps == (0, 3, 6)
    assert compiled.tensors.keys() == eager.tensors.keys()
    for key, tensor in compiled.tensors.items():
        a, b = tensor.stats, eager.tensors[key].stats
        assert (a.count, a.nan, a.inf, a.zeros) == (b.count, b.nan, b.inf, b.zeros)
        for name in ("norm", "mean_abs", "max_abs"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-5), (key, name)
    assert compiled.contexts[3].modules == eager.contexts[3].modules
