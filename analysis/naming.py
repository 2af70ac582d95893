"""Parameter names: natural ordering and grouping into layers."""

from __future__ import annotations

import re
from functools import lru_cache

_DIGITS = re.compile(r"([0-9]+)")
# Parameter-name suffixes of frameworks that join layer and parameter with "_" (DL4J: `lstm-1_W`, `norm-1_gamma`).
_UNDERSCORE_SUFFIXES = frozenset({"W", "RW", "b", "gamma", "beta", "mean", "var", "weight", "bias"})


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that orders `layers.2` before `layers.10`.

    Digit runs compare by value without int(), which refuses runs over 4300 digits: a shorter run (leading
    zeros aside) is smaller, runs of one length compare as text.
    """
    return tuple(_part_key(part) for part in _DIGITS.split(name) if part)


def _part_key(part: str) -> tuple[int, int, str]:
    if part.isascii() and part.isdigit():
        value = part.lstrip("0")
        return (0, len(value), value)
    return (1, 0, part)


@lru_cache(maxsize=1 << 16)  # called for every parameter at every step
def layer_of(param: str) -> str:
    """The layer a parameter belongs to: `enc.layers.0.q.weight` -> `enc.layers.0.q`, `lstm-1_W` -> `lstm-1`."""
    cut = max(param.rfind("."), param.rfind("/"))
    if cut >= 0:
        head, tail = param[:cut], param[cut + 1 :]
        return head if head and tail else param
    head, _, tail = param.rpartition("_")
    return head if head and tail in _UNDERSCORE_SUFFIXES else param
