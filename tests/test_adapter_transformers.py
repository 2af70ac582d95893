"""The Hugging Face Trainer adapter on a tiny GPT-2 built from a config (no download) trained on stdlib text
through Trainer.train(): what the optimizer used is what is recorded, with gradient accumulation,
max_grad_norm and bf16; the Trainer's logged loss; inspect's verdicts of a healthy and a broken run."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from training_helpers import LoggingSGD, assert_matches_optimizer

from gradcheck.analysis.runs import load_run
from gradcheck.cli.main import cli

pytestmark = pytest.mark.frameworks
TOKENS = torch.tensor(list(Path(textwrap.__file__).read_bytes()[: 64 * 32]), dtype=torch.long) % 128


@pytest.fixture(autouse=True)
def _quiet_single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


class Text(torch.utils.data.Dataset):
    """64 windows of 32 bytes of a stdlib module's source, as a language-modelling task."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = TOKENS[i * 32 : (i + 1) * 32]
        return {"input_ids": ids, "labels": ids}


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def train(
    run_dir: Path, tmp_path: Path, model, optimizer=None, compute_loss_func=None, **arguments
) -> transformers.Trainer:
    from gradcheck.recording.transformers import (
        GradcheckCallback,
    )  # the adapter: this line and callbacks=[...]

    options = {"per_device_train_batch_size": 4, "max_steps": 8, "logging_steps": 2, "report_to": [],
               "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, **arguments}  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=transformers.TrainingArguments(output_dir=str(tmp_path / "out"), **options),
        train_dataset=Text(), optimizers=(optimizer, None), compute_loss_func=compute_loss_func,
        callbacks=[GradcheckCallback(run_dir, every=2)],
    )  # fmt: skip
    trainer.train()
    return trainer


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_records_what_the_optimizer_applied(tmp_path: Path, runner, bf16: bool) -> None:
    """After 4 accumulated micro-batches and max_grad_norm clipping (on_pre_optimizer_step's moment).

    bf16 autocasts the forward pass; the weights and gradients stay float32, so still bit for bit.
    """
    model = gpt2()
    optimizer = LoggingSGD(model.parameters(), lr=0.5)
    run_dir = tmp_path / "run"
    trainer = train(
        run_dir,
        tmp_path,
        model,
        optimizer,
        gradient_accumulation_steps=4,
        max_grad_norm=0.5,
        per_device_train_batch_size=2,
        bf16=bf16,
    )
    run = load_run(run_dir)
    assert trainer.state.global_step == optimizer.calls == 8 and run.steps == (2, 4, 6, 8)
    for step in run.steps:  # numbered by global_step after the update: optimizer call `step`
        assert_matches_optimizer(run_dir, step, step, model, optimizer)
        context = run.contexts[step]
        assert (context.framework, context.optimizer) == ("transformers", "LoggingSGD")
        assert context.accumulation == 4
        assert context.max_grad_norm == 0.5 and context.grad_norm > 0.5 and context.clipped
        logged = next(e for e in trainer.state.log_history if e.get("step") == step and "loss" in e)
        assert run.scalars[step]["loss"] == logged["loss"]
        assert run.scalars[step]["grad_norm"] == pytest.approx(context.grad_norm, rel=1e-5)
    assert run.contexts[2].modules["transformer.wte.weight"] == "Embedding"
    assert run.contexts[2].modules["transformer.h.0.ln_1.weight"] == "LayerNorm"
    document = json.loads(runner.invoke(cli, ["inspect", str(run_dir), "--format", "json"]).output)
    modules = {param["name"]: param["module"] for param in document["params"]}
    assert (
        modules["transformer.wte.weight"] == "Embedding"
        and modules["transformer.h.1.mlp.c_fc.weight"] == "Conv1D"
    )
    assert document["context"]["summary"]["accumulation_max"] == 4
    assert document["context"]["summary"]["clipped_share"] == 1.0
    output = runner.invoke(cli, ["inspect", str(run_dir)]).output
    assert "4 micro-batches per step" in output and "clipped at 100 % of recorded steps" in output


def nan_loss(outputs, labels, num_items_in_batch=None) -> torch.Tensor:
    """A broken loss: the square root of logits, NaN wherever one is negative."""
    return outputs.logits.sqrt().mean()


@pytest.mark.parametrize(
    ("lr", "loss", "status", "problems"),
    [
        (5e-5, None, "ok", set()),
        (5e-3, None, "warn", {"update-ratio-high"}),
        (5e-5, nan_loss, "error", {"nonfinite"}),
    ],
    ids=["healthy", "lr-x100", "nan-loss"],
)
def test_verdicts(tmp_path: Path, runner, lr: float, loss, status: str, problems: set[str]) -> None:
    """AdamW at the Trainer's default learning rate, at 100 times it without clipping, and with a NaN loss."""
    run_dir = tmp_path / "run"
    train(
        run_dir, tmp_path, gpt2(), learning_rate=lr, max_grad_norm=0.0, max_steps=16, compute_loss_func=loss
    )
    result = runner.invoke(cli, ["inspect", str(run_dir), "--format", "json"])
    document = json.loads(result.output)
    assert document["status"] == status and {f["problem"] for f in document["findings"]} == problems
    assert result.exit_code == (1 if status == "error" else 0)


def test_activations_are_recorded_at_recorded_steps(tmp_path: Path) -> None:
    """`GradcheckCallback(..., activations=True)`: module outputs of the recorded steps' micro-batches (#16)."""
    from gradcheck.recording.transformers import GradcheckCallback

    options = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 6,
               "logging_steps": 3, "report_to": [], "save_strategy": "no", "use_cpu": True, "disable_tqdm": True}  # fmt: skip
    model = gpt2()
    trainer = transformers.Trainer(
        model=model, args=transformers.TrainingArguments(output_dir=str(tmp_path / "out"), **options),
        train_dataset=Text(), callbacks=[GradcheckCallback(tmp_path / "run", every=3, activations=True)],
    )  # fmt: skip
    trainer.train()
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    run = load_run(tmp_path / "run")
    assert run.steps == (3, 6) and run.signals.steps() == [3, 6]
    acts = run.signals.activations[3]
    assert acts["transformer.h.0.attn"].calls == 2  # the step's two micro-batches, not the steps before it
    assert acts["lm_head"].count == 2 * 2 * 32 * 128 and acts["lm_head"].finite
    assert [step for step, _ in run.signals.losses()] == [3, 6]  # the Trainer's logged loss
