"""Parameter and layer names that fit a column: shortened by structure, never wrapped mid-word.

Names are cut at their `.` and `/` separators. When the longest name does not fit, the block prefix (up to the
last numeric part: `transformer.h.0.`) becomes a header row and the rows below show the rest, indented; the
prefix grows part by part until a row fits, and a middle ellipsis is the last resort. Every name goes through
`printable` here, once, so no renderer shows a raw control character.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .console import printable

INDENT = "  "
_PARTS = re.compile(r"(?<=[./])")


def middle(name: str, width: int) -> str:
    """`name` cut in the middle with an ellipsis to fit `width` cells (`enc…q`)."""
    if len(name) <= width:
        return name
    if width <= 1:
        return "…"[:width]
    head = width // 2
    tail = width - 1 - head
    return name[:head] + "…" + (name[-tail:] if tail else "")


def tail(name: str, width: int) -> str:
    """`name` without leading parts (`…layers.0.`) to fit `width`; a middle ellipsis if one part is too long."""
    if len(name) <= width:
        return name
    parts = _PARTS.split(name)
    for start in range(1, len(parts)):
        rest = "".join(parts[start:])
        if len(rest) + 1 <= width:
            return "…" + rest
    return middle(name, width)


def _parts(name: str) -> list[str]:
    return [p for p in _PARTS.split(name) if p]


def _block(parts: list[str]) -> int:
    """Parts in the block prefix: up to the last numeric part (`transformer.h.0.`), else all but the last."""
    numeric = [i for i, part in enumerate(parts[:-1]) if part.rstrip("./").isdigit()]
    return numeric[-1] + 1 if numeric else len(parts) - 1


def splits(names: Sequence[str], width: int) -> list[tuple[str, str]]:
    """(header, rest) per name: block prefixes, grown by as many parts as a whole block needs to fit `width`.

    A block grows as one, so siblings (`attn.c_attn.weight`, `ln_1.weight`) never interleave their headers.
    """
    parts = [_parts(n) for n in names]
    cuts = [_block(p) for p in parts]
    result: list[tuple[str, str]] = []
    i = 0
    while i < len(names):
        j = i
        while j < len(names) and parts[j][: cuts[j]] == parts[i][: cuts[i]]:
            j += 1
        extra = 0
        while any(
            len(INDENT) + len("".join(parts[k][min(cuts[k] + extra, len(parts[k]) - 1) :])) > width
            and cuts[k] + extra < len(parts[k]) - 1
            for k in range(i, j)
        ):
            extra += 1
        for k in range(i, j):
            cut = max(0, min(cuts[k] + extra, len(parts[k]) - 1))
            result.append(("".join(parts[k][:cut]), "".join(parts[k][cut:])))
        i = j
    return result


def structural_width(names: Sequence[str]) -> int:
    """The narrowest column that shows every name without an ellipsis once block prefixes are headers."""
    shown = [printable(n) for n in names]
    rests = [rest if header else shown[k] for k, (header, rest) in enumerate(splits(shown, 1 << 30))]
    return max((len(INDENT) + len(rest) for rest in rests), default=0)


def fit(names: Sequence[str], width: int) -> list[tuple[str | None, str]]:
    """Rows of a name column `width` wide: (name, shown) per name in order, with (None, header) rows between.

    Names that all fit are shown whole. A block of one name that fits whole needs no header.
    """
    shown = [printable(n) for n in names]
    if not shown or max(len(s) for s in shown) <= width:
        return list(zip(names, shown, strict=True))
    cut = splits(shown, width)
    rows: list[tuple[str | None, str]] = []
    i = 0
    while i < len(names):
        header = cut[i][0]
        j = i
        while j < len(names) and cut[j][0] == header:
            j += 1
        if not header or (j - i == 1 and len(shown[i]) <= width):
            rows.extend((names[k], middle(shown[k], width)) for k in range(i, j))
        else:
            rows.append((None, tail(header, width)))
            rows.extend((names[k], INDENT + middle(cut[k][1], width - len(INDENT))) for k in range(i, j))
        i = j
    return rows
