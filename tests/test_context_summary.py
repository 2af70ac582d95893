"""The run summary of the recorded context, and the caption and notes `inspect` prints from it (pure)."""

from gradcheck.analysis.context import StepContext
from gradcheck.analysis.context_summary import (
    context_caption,
    context_lines,
    context_notes,
    summarize_context,
)


def fp16_run() -> dict[int, StepContext]:
    common = {"framework": "transformers", "optimizer": "AdamW", "max_grad_norm": 1.0, "accumulation": 4}
    return {
        15: StepContext(**common, lr={"w": 1e-3, "b": 1e-3}, loss_scale=2048.0, skipped_count=15,
                        skipped=tuple(range(15)), grad_norm=4.6, clip_coef=0.22),
        20: StepContext(**common, lr={"w": 5e-4, "b": 5e-4}, loss_scale=1024.0, skipped_count=1, skipped=(17,),
                        grad_norm=0.5, clip_coef=1.0),
        25: StepContext(**common, lr={"w": 2e-4, "b": 2e-4}, loss_scale=1024.0, grad_norm=2.0, clip_coef=0.5),
        30: StepContext(**common, lr={"w": 1e-4, "b": 1e-4}, loss_scale=1024.0, grad_norm=1.5, clip_coef=0.67),
    }  # fmt: skip


def test_summary_of_an_fp16_run() -> None:
    summary = summarize_context(fp16_run(), {20: {"loss": 3.5}, 30: {"loss": 2.25}})
    assert summary is not None
    assert (summary.lr_min, summary.lr_max) == (1e-4, 1e-3)
    assert (summary.loss_scale_min, summary.loss_scale_max) == (1024.0, 2048.0)
    assert (summary.clip_steps, summary.clipped_steps, summary.clipped_share) == (4, 3, 0.75)
    assert summary.max_pre_clip_norm == 4.6 and summary.max_grad_norm == 1.0
    assert summary.skipped_count == 16 and summary.skipped == (*range(15), 17)
    assert summary.skipped_before == ((15, 15), (20, 1))
    assert (summary.accumulation_min, summary.accumulation_max, summary.last_loss) == (4, 4, 2.25)


def test_caption_and_notes() -> None:
    context = fp16_run()
    summary = summarize_context(context, {30: {"loss": 2.25}})
    assert context_caption(summary, context[15]) == (
        "context: AdamW (transformers), lr 1.0e-4..1.0e-3, loss scale 2048, clipped 75 % of 4 steps, "
        "4 micro-batches per step"
    )
    assert context_notes(summary) == [
        "AMP skipped 15 steps before step 15 (steps 0-14)",
        "AMP skipped 1 step before step 20 (step 17)",
        "clipped at 75 % of recorded steps, pre-clip norm up to 4.6 (max_grad_norm 1)",
    ]
    assert context_lines(context, {}, 30)[0].startswith(
        "context: AdamW (transformers), lr 1.0e-4..1.0e-3, loss scale 1024"
    )


def test_no_context_no_lines_and_partial_context() -> None:
    assert summarize_context({}) is None and context_lines({}, {}, 3) == []
    only_lr = {0: StepContext(lr={"w": 0.1})}
    assert context_lines(only_lr, {}, 0) == ["context: lr 1.0e-1"]
    unclipped = {0: StepContext(optimizer="SGD", grad_norm=3.0, clip_coef=1.0)}
    assert context_lines(unclipped, {}, 0) == ["context: SGD"]  # a loop that never clips: no clipping noise
