"""The training context the torch Recorder stores (lr, loss scale, AMP-skipped steps, clipping, accumulation,
module types, logged scalars), and what `inspect` shows of it; real tiny training on scikit-learn's digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from training_helpers import (  # noqa: F401 (one_thread: autouse fixture)
    LoggingSGD,
    assert_matches_optimizer,
    batch_of,
    digits,
    metadata,
    mlp,
    one_thread,
)

from gradcheck.analysis.context import CONTEXT_KEY, SCALARS_KEY, parse_context, parse_scalars
from gradcheck.analysis.context_summary import compact_steps, context_lines
from gradcheck.analysis.runs import load_run
from gradcheck.cli.main import cli
from gradcheck.recording.torch import Recorder

DATA = digits()
NAMES = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]


def batch(step: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return batch_of(DATA, step, size)


def loss_of(model: torch.nn.Module, step: int, size: int = 32) -> torch.Tensor:
    x, y = batch(step, size)
    return torch.nn.functional.cross_entropy(model(x), y)


def context_at(run_dir: Path, step: int):
    parsed, problems = parse_context(metadata(run_dir, step)[CONTEXT_KEY])
    assert problems == []
    return parsed


def test_lr_per_param_group_optimizer_and_module_types(tmp_path: Path) -> None:
    model = mlp()
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    others = [p for name, p in model.named_parameters() if not name.endswith("weight")]
    optimizer = torch.optim.AdamW([{"params": weights, "lr": 1e-3}, {"params": others, "lr": 5e-3}])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    with Recorder(model, optimizer, tmp_path, every=2):
        for step in range(5):
            loss_of(model, step).backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
    for step, factor in ((0, 1.0), (2, 0.5), (4, 0.25)):
        context = context_at(tmp_path, step)
        assert context.framework == "torch" and context.optimizer == "AdamW"
        assert context.lr == {n: (1e-3 if n.endswith("weight") else 5e-3) * factor for n in NAMES}
        assert context.modules == dict(
            zip(NAMES, ["Linear", "Linear", "LayerNorm", "LayerNorm", "Linear", "Linear"], strict=True)
        )
        assert context.accumulation == 1 and context.clip_coef == 1.0 and context.loss_scale is None
    caption = context_lines(load_run(tmp_path).contexts, {}, 4)[0]
    assert (
        caption == "context: AdamW (torch), lr 2.5e-4..5.0e-3"
    )  # nothing clipped, no max_grad_norm: not shown


def test_clipping_norm_and_coefficient_match_clip_grad_norm(tmp_path: Path, runner) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = {}
    with Recorder(model, optimizer, tmp_path, every=3, max_grad_norm=0.3):
        for step in range(9):
            loss_of(model, step).backward()
            norms[step] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3 if step != 6 else 1e9))
            optimizer.step()
            optimizer.zero_grad()
    for step in (0, 3):
        context = context_at(tmp_path, step)
        assert context.grad_norm == pytest.approx(norms[step], rel=1e-6)
        assert norms[step] > 0.3 and context.clipped
        assert context.clip_coef == pytest.approx(0.3 / (norms[step] + 1e-6), rel=1e-5)
        assert context.max_grad_norm == 0.3
    assert context_at(tmp_path, 6).clip_coef == 1.0  # clip_grad_norm_ with a huge max_norm did nothing
    result = runner.invoke(cli, ["inspect", str(tmp_path)])
    top = max(norms[s] for s in (0, 3, 6))
    assert (
        f"clipped at 67 % of recorded steps, pre-clip norm up to {top:.2g} (max_grad_norm 0.3)"
        in result.output
    )
    assert "clipped 67 % of 3 steps" in result.output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16-weights"])
def test_accumulated_micro_batches_are_counted_and_the_used_gradient_recorded(
    tmp_path: Path, runner, dtype: torch.dtype
) -> None:
    """Also for a model whose weights are bf16: the gradients and updates are stored in bf16, bit for bit."""
    model = mlp().to(dtype)
    optimizer = LoggingSGD(model.parameters(), lr=0.1)
    with Recorder(model, optimizer, tmp_path, every=2):
        for step in range(5):
            for micro in range(3):
                x, y = batch(3 * step + micro, 8)
                (torch.nn.functional.cross_entropy(model(x.to(dtype)), y) / 3).backward()
            optimizer.step()
            optimizer.zero_grad()
    for step in (0, 2, 4):
        assert context_at(tmp_path, step).accumulation == 3
        assert_matches_optimizer(tmp_path, step, step + 1, model, optimizer)
    result = runner.invoke(cli, ["inspect", str(tmp_path)])
    assert "3 micro-batches per step" in result.output


def train_fp16(tmp_path: Path, optimizer_of, steps: int = 40, every: int = 5):
    """fp16 autocast on the CPU with a GradScaler that starts far too high, so the first steps overflow."""
    model = mlp()
    optimizer = optimizer_of(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**28)
    skipped, scales = [], {}
    with Recorder(model, optimizer, tmp_path, every=every, scaler=scaler) as recorder:
        for step in range(steps):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = loss_of(model, step) * 100
            scaler.scale(loss).backward()
            scales[step] = scaler.get_scale()
            recorder.log(loss=float(loss.detach()))
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() < scales[step]:
                skipped.append(step)
            optimizer.zero_grad()
    return model, optimizer, skipped, scales


def test_amp_skipped_steps_are_numbered_and_shown(tmp_path: Path, runner) -> None:
    model, optimizer, skipped, scales = train_fp16(tmp_path, lambda p: LoggingSGD(p, lr=0.05))
    assert len(skipped) >= 10  # the scaler halves its scale once per overflow: 2**28 takes many steps
    run = load_run(tmp_path)
    recorded = [s for s in range(40) if s % 5 == 0 and s not in skipped]
    assert list(run.steps) == recorded
    listed = [n for s in run.steps for n in run.contexts[s].skipped]
    assert listed == [n for n in skipped if n < run.steps[-1]]
    for step in run.steps:
        assert run.contexts[step].loss_scale == scales[step]
        assert run.scalars[step]["loss"] > 0
    # the optimizer ran only on the steps that were not skipped; its calls are counted from 1
    calls = [s for s in range(40) if s not in skipped]
    for step in run.steps:
        assert_matches_optimizer(tmp_path, step, calls.index(step) + 1, model, optimizer)
    first = run.steps[0]
    result = runner.invoke(cli, ["inspect", str(tmp_path)])
    before = [n for n in skipped if n < first]
    assert (
        f"AMP skipped {len(before)} steps before step {first} (steps {compact_steps(before)})"
        in result.output
    )
    document = json.loads(runner.invoke(cli, ["inspect", str(tmp_path), "--format", "json"]).output)
    assert document["context"]["summary"]["skipped"] == listed
    assert document["context"]["steps"][0]["loss_scale"] == scales[first]


def test_fused_optimizer_skips_are_read_from_found_inf(tmp_path: Path) -> None:
    """A fused Adam is stepped even when the scaler skips (with found_inf set): still counted as skipped."""
    _, _, skipped, _ = train_fp16(tmp_path, lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), steps=40)
    run = load_run(tmp_path)
    listed = sorted({n for s in run.steps for n in run.contexts[s].skipped})
    assert skipped and listed == [n for n in skipped if n <= run.steps[-1]]


def test_logged_scalars_land_in_their_snapshot(tmp_path: Path) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, optimizer, tmp_path, every=2) as recorder:
        for step in range(4):
            loss = loss_of(model, step)
            loss.backward()
            recorder.log(loss=float(loss.detach()))  # before step(): this step's snapshot
            optimizer.step()
            recorder.log(step=step, after=step + 0.5)  # after step(), with the step named
            optimizer.zero_grad()
    for step in (0, 2):
        scalars, problems = parse_scalars(metadata(tmp_path, step)[SCALARS_KEY])
        assert problems == [] and set(scalars) == {"loss", "after"} and scalars["after"] == step + 0.5
        assert math.isfinite(scalars["loss"])


def test_closure_optimizers_are_captured_after_the_closure(tmp_path: Path) -> None:
    """Lightning and LBFGS run backward inside step(closure): the gradients exist only after the closure."""
    model = mlp()
    optimizer = LoggingSGD(model.parameters(), lr=0.1)

    def closure_of(step: int):
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = loss_of(model, step)
            loss.backward()
            return loss

        return closure

    with Recorder(model, optimizer, tmp_path, every=2):
        for step in range(3):
            optimizer.step(closure_of(step))
    for step in (0, 2):
        assert_matches_optimizer(tmp_path, step, step + 1, model, optimizer)
        assert context_at(tmp_path, step).accumulation == 1


def test_compact_steps() -> None:
    assert compact_steps([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert compact_steps(range(0, 40, 2), limit=3) == "0, 2, 4, ..."


def test_runs_without_context_show_no_context_lines(sample_runs: Path, runner) -> None:
    result = runner.invoke(cli, ["inspect", str(sample_runs / "plain_dumps")])  # written by save_file
    assert "context:" not in result.output
    assert context_lines({}, {}, None) == []


@pytest.mark.parametrize(
    ("lr", "nan_loss", "status", "problem"),
    [
        (1e-3, False, "ok", None),
        (1e-1, False, "warn", "update-ratio-high"),
        (1e-3, True, "error", "nonfinite"),
    ],
    ids=["healthy", "lr-x100", "nan-loss"],
)
def test_verdicts_of_healthy_and_broken_runs(tmp_path: Path, runner, lr, nan_loss, status, problem) -> None:
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    with Recorder(model, optimizer, tmp_path, every=5):
        for step in range(40):
            x, y = batch(step)
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out, y)
            if nan_loss:
                loss = loss + out.sqrt().mean()  # sqrt of negative logits: NaN gradients from step 0
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    result = runner.invoke(cli, ["inspect", str(tmp_path), "--format", "json"])
    document = json.loads(result.output)
    assert document["status"] == status
    assert result.exit_code == (1 if status == "error" else 0)
    assert (
        ({f["problem"] for f in document["findings"]} == {problem}) if problem else not document["findings"]
    )
