"""The recorded loss in one line: first and last value with their steps, and a sparkline of log10 loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from gradcheck.analysis.formatting import sci
from gradcheck.analysis.history import Point

from .sparkline import sparkline


def loss_line(losses: Sequence[tuple[int, float]]) -> Text:
    """`loss 2.3 at step 0 -> 0.12 at step 90 ▇▅▃▂▁`: log10 of positive losses, `!` for NaN/Inf."""
    points = [
        Point(step, math.log10(v), "ok")
        if math.isfinite(v) and v > 0
        else Point(step, None, "nonfinite" if not math.isfinite(v) else "zero")
        for step, v in losses
    ]
    (first, low), (last, high) = losses[0], losses[-1]
    text = Text(f"loss {_value(low)} at step {first} -> {_value(high)} at step {last} ")
    return text.append_text(sparkline(points))


def _value(loss: float) -> str:
    return sci(loss) if math.isfinite(loss) else str(loss)  # nan, inf, -inf
