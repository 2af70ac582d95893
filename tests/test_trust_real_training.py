"""Issue 11 on real (tiny) torch training: dying ReLU is `dead-units`, embeddings never are, converged and
batch-size-1 runs get no error, and stats mode carries the same unit bitmaps as full mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sklearn.datasets import load_digits
from torch import nn

import gradcheck.recording.torch as recorder_module
from gradcheck.analysis.context import CONTEXT_KEY, StepContext, context_metadata
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.runs import load_run
from gradcheck.recording.torch import Recorder
from gradcheck.recording.writer import save_snapshot


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these runs are tiny, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return torch.tensor((x - x.mean(axis=0)) / std, dtype=torch.float32), torch.tensor(y)


def relu_mlp(bias: float | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    if bias is not None:
        nn.init.constant_(model[0].bias, bias)
    return model


def train_digits(
    model, optimizer, digits, run_dir: Path, *, steps: int = 61, every: int = 10, batch=64, **rec
):
    x, y = digits
    generator = torch.Generator().manual_seed(0)
    with Recorder(model, optimizer, run_dir, every=every, **rec):
        for _ in range(steps):
            idx = torch.randint(len(y), (batch,), generator=generator)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def errors(run_dir: Path) -> set[tuple[str, str]]:
    return {(f.check, f.param) for f in inspect_run(run_dir).findings if f.severity == "error"}


# --- acceptance 3: dying ReLU is dead-units --------------------------------------------------------------


@pytest.mark.parametrize(
    ("bias", "optimizer", "lr"),
    [(-4.0, "adam", 1e-3), (None, "sgd", 5.0)],
    ids=["negative-bias", "high-lr"],
)
def test_dying_relu_is_flagged_dead_through_dead_units(tmp_path, digits, bias, optimizer, lr) -> None:
    model = relu_mlp(bias)
    opt = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr)
    )
    train_digits(model, opt, digits, tmp_path)
    report = inspect_run(tmp_path)
    dying = [f for f in report.findings if f.check == "dead-units"]
    assert dying and all(f.problem == "dead" and f.severity == "error" for f in dying)
    assert ("dead-units", "0.weight") in {(f.check, f.param) for f in dying}
    assert "dead units" in dying[0].message and "%" in dying[0].message
    # Not every gradient entry is zero: the whole-tensor `dead` check alone would not see it.
    assert not any(f.check == "dead" and f.param == "0.weight" for f in report.findings)


def test_healthy_relu_mlp_has_no_dead_units(tmp_path, digits) -> None:
    model = relu_mlp()
    train_digits(model, torch.optim.Adam(model.parameters(), lr=1e-3), digits, tmp_path)
    assert inspect_run(tmp_path).findings == []


def _sparse_embedding_run(run_dir: Path, name: str, modules: dict[str, str] | None) -> None:
    """An embedding of 1000 rows trained on 30 tokens: 97 % of its rows are zero at every recorded step."""
    torch.manual_seed(0)
    table, head = nn.Embedding(1000, 8), nn.Linear(8, 2)
    optimizer = torch.optim.Adam([*table.parameters(), *head.parameters()], lr=1e-2)
    tokens = torch.arange(30)
    for step in range(4):
        loss = nn.functional.cross_entropy(head(table(tokens)), tokens % 2)
        optimizer.zero_grad()
        loss.backward()
        metadata = {CONTEXT_KEY: context_metadata(StepContext(modules=modules))} if modules else None
        save_snapshot(
            run_dir,
            step,
            grads={name: table.weight.grad, "head.weight": head.weight.grad},
            params={name: table.weight.detach(), "head.weight": head.weight.detach()},
            metadata=metadata,
        )
        optimizer.step()


@pytest.mark.parametrize(
    ("name", "modules"),
    [
        ("embed.weight", None),
        ("tok_embeddings.weight", None),
        ("table.weight", {"table.weight": "Embedding"}),
    ],
    ids=["by-name-embed", "by-name-tok_", "by-module-type"],
)
def test_an_embedding_with_97_percent_zero_rows_is_never_dead(tmp_path, name, modules) -> None:
    _sparse_embedding_run(tmp_path, name, modules)
    tensor = load_run(tmp_path).get(3, name, "grad")
    assert tensor is not None and tensor.stats.alive is not None and tensor.stats.alive.bit_count() == 30
    assert not {f.check for f in inspect_run(tmp_path).findings} & {"dead", "dead-units"}


def test_the_same_table_named_like_a_linear_layer_is_flagged(tmp_path) -> None:
    # The exemption is what keeps the embedding above quiet: without a name or type saying embedding, it fires.
    _sparse_embedding_run(tmp_path, "proj.weight", None)
    assert ("dead-units", "proj.weight") in errors(tmp_path)


# --- acceptance 5: converged runs and batch size 1 -------------------------------------------------------


def test_converged_run_with_a_late_ordinary_gradient_gets_no_error(tmp_path, digits) -> None:
    x, y = digits
    model = relu_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    norms = []
    with Recorder(model, optimizer, tmp_path, every=10):
        for step in range(201):
            # 32 digits memorised until the loss is near zero; step 200 sees 64 digits it never trained on.
            idx = torch.arange(1000, 1064) if step == 200 else torch.arange(32)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            if step % 10 == 0:
                norms.append(float(model[0].weight.grad.norm()))
            optimizer.step()
    # The late gradient is far above the median of the collapsed earlier steps: the old rule called it a spike.
    assert norms[-1] > 100 * float(np.median(norms[:-1]))
    assert errors(tmp_path) == set()


def test_batch_size_one_run_with_an_all_zero_step_gets_no_error(tmp_path, digits) -> None:
    # A margin (hinge) loss is exactly zero, with an exactly zero gradient, once a sample is classified
    # with margin: with batch size 1 that makes whole steps of zero gradients.
    x, y = digits
    model = relu_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    zero_steps = []
    with Recorder(model, optimizer, tmp_path, every=1):
        for step in range(60):
            i = step % 20
            loss = nn.functional.multi_margin_loss(model(x[i : i + 1]), y[i : i + 1])
            optimizer.zero_grad()
            loss.backward()
            if all(float(p.grad.abs().max()) == 0 for p in model.parameters()):
                zero_steps.append(step)
            optimizer.step()
    assert zero_steps  # the situation the test is about happened
    assert errors(tmp_path) == set()


# --- stats mode: the recorder's bitmaps equal the reader's -----------------------------------------------


@pytest.mark.parametrize("host_devices", [("cpu",), ()], ids=["writer-thread", "on-device"])
def test_stats_mode_bitmaps_equal_full_mode(tmp_path, digits, monkeypatch, host_devices) -> None:
    monkeypatch.setattr(recorder_module, "HOST_DEVICES", host_devices)
    runs = {}
    for mode in ("full", "stats"):
        model = relu_mlp(-4.0)
        train_digits(
            model, torch.optim.Adam(model.parameters(), lr=1e-3), digits, tmp_path / mode, steps=31, mode=mode
        )
        runs[mode] = load_run(tmp_path / mode)
    full, stats = runs["full"], runs["stats"]
    assert full.tensors.keys() == stats.tensors.keys()
    # Stats mode keeps bitmaps for gradients only: the other kinds have no dead units.
    bitmaps = {key: (t.stats.alive, stats.tensors[key].stats.alive) for key, t in full.tensors.items()}
    assert all(a is not None and a == b for (_, _, kind), (a, b) in bitmaps.items() if kind == "grad"), (
        bitmaps
    )
    assert all(b is None for (_, _, kind), (_, b) in bitmaps.items() if kind != "grad")
    assert errors(tmp_path / "stats") == errors(tmp_path / "full") != set()
