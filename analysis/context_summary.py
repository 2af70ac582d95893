"""The training context of a whole run in a few numbers, and the caption and notes `inspect` shows for it.

Notes, not findings: an fp16 run skips a few steps while its loss scale settles, and clipping is a setting,
so neither is a problem by itself; they explain what the table shows (a rule that fires on a healthy run
is a bug).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .context import StepContext
from .formatting import sci


@dataclass(frozen=True)
class ContextSummary:
    """What the recorded context says about the run (None: nothing of that kind was recorded)."""

    steps: int  # recorded steps that carry a context
    framework: str | None = None
    optimizer: str | None = None
    lr_min: float | None = None
    lr_max: float | None = None
    loss_scale_min: float | None = None
    loss_scale_max: float | None = None
    clip_steps: int = 0  # recorded steps that say whether they were clipped
    clipped_steps: int = 0  # ... and were
    max_pre_clip_norm: float | None = None
    max_grad_norm: float | None = None  # the clipping threshold (last recorded)
    skipped_count: int = 0  # AMP-skipped optimizer steps over the whole run
    skipped: tuple[int, ...] = ()  # their numbers, as far as the snapshots list them
    skipped_before: tuple[tuple[int, int], ...] = ()  # (snapshot step, skipped since the previous snapshot)
    accumulation_min: int | None = None
    accumulation_max: int | None = None
    last_loss: float | None = None  # the scalar `loss` at the last recorded step that has one

    @property
    def clipped_share(self) -> float | None:
        """Share of the recorded steps that say so which clipping scaled down."""
        return self.clipped_steps / self.clip_steps if self.clip_steps else None


def summarize_context(
    context: Mapping[int, StepContext], scalars: Mapping[int, Mapping[str, float]] | None = None
) -> ContextSummary | None:
    """The summary of a run's per-step context, None when no step recorded any."""
    if not context:
        return None
    steps = sorted(context)
    last = context[steps[-1]]
    lrs = [lr for step in steps for lr in context[step].lr.values()]
    scales = [c.loss_scale for c in context.values() if c.loss_scale is not None]
    clips = [c.clipped for c in context.values() if c.clipped is not None]
    norms = [c.grad_norm for c in context.values() if c.grad_norm is not None]
    accumulation = [c.accumulation for c in context.values() if c.accumulation is not None]
    losses = [values["loss"] for _, values in sorted((scalars or {}).items()) if "loss" in values]
    return ContextSummary(
        steps=len(steps),
        framework=last.framework,
        optimizer=last.optimizer,
        lr_min=min(lrs, default=None),
        lr_max=max(lrs, default=None),
        loss_scale_min=min(scales, default=None),
        loss_scale_max=max(scales, default=None),
        clip_steps=len(clips),
        clipped_steps=sum(clips),
        max_pre_clip_norm=max(norms, default=None),
        max_grad_norm=next(
            (context[s].max_grad_norm for s in reversed(steps) if context[s].max_grad_norm), None
        ),
        skipped_count=sum(context[s].skipped_count for s in steps),
        skipped=tuple(number for s in steps for number in context[s].skipped),
        skipped_before=tuple((s, context[s].skipped_count) for s in steps if context[s].skipped_count),
        accumulation_min=min(accumulation, default=None),
        accumulation_max=max(accumulation, default=None),
        last_loss=losses[-1] if losses else None,
    )


def context_caption(summary: ContextSummary, at: StepContext | None = None) -> str:
    """One line for under the table: optimizer, lr, loss scale (at the shown step), clipping, accumulation.

    The loss has a line of its own under the table (cli/loss_line.py), so it is not repeated here.
    """
    parts = [
        " ".join(p for p in (summary.optimizer, f"({summary.framework})" if summary.framework else "") if p)
    ]
    if summary.lr_min is not None and summary.lr_max is not None:
        same = summary.lr_min == summary.lr_max
        parts.append(
            f"lr {sci(summary.lr_min)}" if same else f"lr {sci(summary.lr_min)}..{sci(summary.lr_max)}"
        )
    scale = at.loss_scale if at is not None and at.loss_scale is not None else summary.loss_scale_max
    if scale is not None:
        parts.append(f"loss scale {_plain(scale)}")
    if summary.clipped_share is not None and (summary.clipped_steps or summary.max_grad_norm):
        # a loop that does not clip records coefficient 1.0 at every step: "clipped 0 %" would be noise there
        parts.append(f"clipped {_percent(summary.clipped_share)} of {summary.clip_steps} steps")
    if summary.accumulation_max is not None and summary.accumulation_max > 1:
        parts.append(f"{_span(summary.accumulation_min, summary.accumulation_max)} micro-batches per step")
    return "context: " + ", ".join(part for part in parts if part)


def context_notes(summary: ContextSummary) -> list[str]:
    """Notes on AMP-skipped steps and clipping, e.g. 'AMP skipped 15 steps before step 15 (steps 0-14)'."""
    notes = []
    for step, count in summary.skipped_before:
        listed = [n for n in summary.skipped if n < step]
        word = "step" if len(listed) == 1 else "steps"
        numbers = f" ({word} {compact_steps(listed)})" if listed else ""
        notes.append(f"AMP skipped {count} step{'s' * (count != 1)} before step {step}{numbers}")
        summary = _drop_listed(summary, step)
    if summary.clipped_share:
        norm = (
            f", pre-clip norm up to {_plain(summary.max_pre_clip_norm)}" if summary.max_pre_clip_norm else ""
        )
        limit = f" (max_grad_norm {_plain(summary.max_grad_norm)})" if summary.max_grad_norm else ""
        notes.append(f"clipped at {_percent(summary.clipped_share)} of recorded steps{norm}{limit}")
    return notes


def compact_steps(numbers: Sequence[int], limit: int = 8) -> str:
    """'0-14, 20, 31-33': runs of consecutive numbers as ranges, at most `limit` pieces then '...'."""
    pieces: list[str] = []
    for number in sorted(set(numbers)):
        if pieces and pieces[-1].split("-")[-1] == str(number - 1):
            pieces[-1] = f"{pieces[-1].split('-')[0]}-{number}"
        else:
            pieces.append(str(number))
    return ", ".join(pieces[:limit]) + (", ..." if len(pieces) > limit else "")


def _drop_listed(summary: ContextSummary, step: int) -> ContextSummary:
    """The summary without the skipped numbers before `step` (so each note lists only its own)."""
    return replace(summary, skipped=tuple(n for n in summary.skipped if n >= step))


def _span(low: int | None, high: int) -> str:
    return str(high) if low in (None, high) else f"{low}-{high}"


def _percent(share: float) -> str:
    return f"{round(share * 100)} %"


def _plain(value: float | None) -> str:
    """A compact number for notes: 65536, 4.6, 0.0012."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2g}"


def context_lines(
    context: Mapping[int, StepContext], scalars: Mapping[int, Mapping[str, float]], step: int | None
) -> list[str]:
    """What `inspect` prints under the table: the caption line, then the notes; [] for runs without context."""
    summary = summarize_context(context, scalars)
    if summary is None:
        return []
    return [
        context_caption(summary, context.get(step) if step is not None else None),
        *context_notes(summary),
    ]
