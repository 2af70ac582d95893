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


def compact(value: float) -> str:
    """A measured number, short: 3 significant digits from 0.01 to 999 (101, 5.83, 0.5), else as sci()."""
    if math.isfinite(value) and value != 0 and 0.01 <= abs(value) < 999.5:
        return f"{value:.3g}"
    return sci(value)


def times(value: float) -> str:
    """A ratio: `101×`, `1.9e6×`."""
    return compact(value) + "×"


def bound(value: float) -> str:
    """A threshold as written in a config: -2, 0.7, 1e-7, 1e6."""
    text = f"{value:g}"
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else text


def beyond(value: float, limit: float, *, scientific: bool = False) -> str:
    """`value` with enough digits that it never reads as equal to `limit` (-1.96 > -2, never -2.0 > -2).

    Starts at one decimal (two significant digits in sci() style when `scientific`), adds digits until the
    printed number differs from `limit` on the side the value is on; exact equality prints as the limit does.
    """
    if not math.isfinite(value) or value == limit:
        return sci(value) if scientific else bound(value)
    for digits in range(1, 18):
        if scientific:
            mantissa, exponent = f"{value:.{digits}e}".split("e")
            text = f"{mantissa}e{int(exponent)}"
        else:
            text = f"{value:.{digits}f}"
        shown = float(text)
        if (shown - limit) * (value - limit) > 0:
            return text
    return repr(value)
