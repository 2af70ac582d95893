"""Compact number formatting shared by messages and tables."""

from __future__ import annotations

import math


def sci(value: float | None) -> str:
    """Compact scientific notation: 3.1e-9, 0, inf; '-' for missing or NaN."""
    if value is None or math.isnan(value):
        return "-"
    if value == 0:
        return "0"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"
