"""What the torch framework adapters (Lightning, Transformers) share: a torch Recorder numbered by the framework."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .torch import Recorder


class NumberedRecorder(Recorder):
    """A Recorder whose optimizer steps are numbered by the framework (its `global_step` + 1), not counted."""

    def __init__(self, step_of: Callable[[], int], *args: Any, **kwargs: Any) -> None:
        self._step_of = step_of  # set first: Recorder.__init__ already asks for the next step number
        super().__init__(*args, **kwargs)

    def _next_step(self) -> int:
        return self._step_of()


def numeric_scalars(values: dict[str, Any]) -> dict[str, float]:
    """The entries of a framework's logged metrics that are single numbers (floats, ints, 1-element tensors)."""
    out = {}
    for name, value in values.items():
        if hasattr(value, "numel") and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(name)] = float(value)
    return out
