"""The Lightning adapter on real training (digits) through Lightning's own loop: what the optimizer used is
what is recorded, with accumulation, clipping, bf16 and fp16 mixed precision, and inspect's verdicts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")
pytest.importorskip("sklearn")

from training_helpers import LoggingSGD, assert_matches_optimizer, digits

from gradcheck.analysis.runs import load_run
from gradcheck.cli.main import cli

pytestmark = pytest.mark.frameworks
DATA = digits()


@pytest.fixture(autouse=True)
def _quiet_single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


class Digits(L.LightningModule):
    def __init__(self, make_optimizer, nan_loss: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        self.make_optimizer, self.nan_loss = make_optimizer, nan_loss

    def training_step(self, batch, index):
        out = self.net(batch[0])
        loss = torch.nn.functional.cross_entropy(out, batch[1])
        if self.nan_loss:
            loss = loss + out.sqrt().mean()  # sqrt of negative logits: NaN gradients
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


def fit(run_dir: Path, module: Digits, batches: int = 24, **trainer_options) -> L.Trainer:
    from gradcheck.recording.lightning import GradcheckCallback  # the adapter: this line and callbacks=[...]

    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=batches, callbacks=[GradcheckCallback(run_dir, every=2)],
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **trainer_options,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(DATA, batch_size=16))
    return trainer


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_records_what_the_optimizer_applied(tmp_path: Path, runner, precision: str) -> None:
    """After accumulation and gradient_clip_val clipping (which follows on_before_optimizer_step).

    bf16-mixed autocasts the forward pass; the weights and their gradients stay float32, so still bit for bit.
    """
    module = Digits(lambda params: LoggingSGD(params, lr=0.5))
    trainer = fit(tmp_path, module, accumulate_grad_batches=3, gradient_clip_val=0.3, precision=precision)
    optimizer = trainer.optimizers[0]
    run = load_run(tmp_path)
    assert trainer.global_step == optimizer.calls == 8 and run.steps == (2, 4, 6, 8)
    for step in run.steps:  # numbered like global_step after the update: optimizer call `step`
        assert_matches_optimizer(tmp_path, step, step, module, optimizer)
        context = run.contexts[step]
        assert (context.framework, context.accumulation, context.max_grad_norm) == ("lightning", 3, 0.3)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g, _, _ in optimizer.used[step].values()]))
        assert norm <= 0.3 * (1 + 1e-5) and (context.clip_coef < 1) == (context.grad_norm > 0.3)
        assert run.scalars[step]["loss"] > 0 and "train_loss" in run.scalars[step]
    output = runner.invoke(cli, ["inspect", str(tmp_path)]).output
    assert "context: LoggingSGD (lightning), lr 5.0e-1" in output and "3 micro-batches per step" in output


def test_fp16_skipped_steps(tmp_path: Path, runner) -> None:
    """Lightning turns precision='16-mixed' into bf16 on the CPU; its fp16 plugin with a CPU scaler does run."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    scales: list[float] = []
    module = Digits(lambda params: LoggingSGD(params, lr=0.5))
    original = scaler.update

    def update(*args):  # the test's own record of which steps the scaler skipped
        before = scaler.get_scale()
        original(*args)
        scales.append(scaler.get_scale() < before)

    scaler.update = update
    trainer = fit(tmp_path, module, batches=24, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    skipped = [number + 1 for number, was in enumerate(scales) if was]  # global_step after the update
    run = load_run(tmp_path)
    assert skipped and trainer.global_step == 24
    assert [n for s in run.steps for n in run.contexts[s].skipped] == [
        n for n in skipped if n < run.steps[-1]
    ]
    assert all(run.contexts[s].loss_scale for s in run.steps)
    applied = [s for s in range(1, 25) if s not in skipped]  # the optimizer ran only on these
    for step in run.steps:
        assert_matches_optimizer(tmp_path, step, applied.index(step) + 1, module, trainer.optimizers[0])
    before = [n for n in skipped if n < run.steps[0]]
    word = "step" if len(before) == 1 else "steps"
    assert (
        f"AMP skipped {len(before)} {word} before step {run.steps[0]}"
        in runner.invoke(cli, ["inspect", str(tmp_path)]).output
    )


@pytest.mark.parametrize(
    ("nan_loss", "status", "code"), [(False, "ok", 0), (True, "error", 1)], ids=["healthy", "nan"]
)
def test_verdicts(tmp_path: Path, runner, nan_loss: bool, status: str, code: int) -> None:
    fit(tmp_path, Digits(lambda params: torch.optim.AdamW(params, lr=1e-3), nan_loss), batches=30)
    result = runner.invoke(cli, ["inspect", str(tmp_path), "--format", "json"])
    assert (json.loads(result.output)["status"], result.exit_code) == (status, code)


def test_activations_are_recorded_around_recorded_steps_only(tmp_path: Path) -> None:
    """`GradcheckCallback(..., activations=True)` hooks the module's forward at recorded steps (issue #16)."""
    from gradcheck.recording.lightning import GradcheckCallback

    module = Digits(lambda params: torch.optim.SGD(params, lr=0.1))
    hooked = []

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, index):
            hooked.append(sum(len(m._forward_hooks) for m in pl_module.modules()))

    callback = GradcheckCallback(tmp_path, every=4, activations=True)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=12, callbacks=[Count(), callback], accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(DATA, batch_size=16))
    run = load_run(tmp_path)
    assert run.steps == (4, 8, 12) and run.signals.steps() == [4, 8, 12]
    modules = len(list(module.modules()))  # the LightningModule, net, and net's three layers
    # batch i is optimizer step i + 1: hooks are on for steps 4, 8, 12 only
    assert hooked == [modules if (i + 1) % 4 == 0 else 0 for i in range(12)]
    acts = run.signals.activations[8]
    # training_step calls self.net, so the LightningModule itself has no output; one pass, not the steps since
    assert sorted(acts) == ["net", "net.0", "net.1", "net.2"] and {a.calls for a in acts.values()} == {1}
    assert acts["net.1"].units == 32 and acts["net.2"].count == 16 * 10
    assert [s for s, _ in run.signals.losses()] == [4, 8, 12]
