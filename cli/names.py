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
    """`name` without leading parts to fit `width`, keeping the last numeric part and the one before it
    (`…layers.0.…lora_A.`): the block index is what tells two headers apart. A middle ellipsis if nothing fits."""
    if len(name) <= width:
        return name
    parts = _parts(name)
    numeric = [i for i, part in enumerate(parts[:-1]) if i and part.rstrip("./").isdigit()]
    if numeric:
        anchor, rest = "".join(parts[numeric[-1] - 1 : numeric[-1] + 1]), parts[numeric[-1] + 1 :]
        lead = "…" if numeric[-1] > 1 else ""
        for start in range(len(rest) + 1):
            candidate = lead + anchor + ("…" if start else "") + "".join(rest[start:])
            if len(candidate) <= width and (start < len(rest) or not rest):
                return candidate
    for start in range(1, len(parts)):
        rest_text = "".join(parts[start:])
        if len(rest_text) + 1 <= width:
            return "…" + rest_text
    return middle(name, width)


def _parts(name: str) -> list[str]:
    return [p for p in _PARTS.split(name) if p]


def _block(parts: list[str]) -> int:
    """Parts in the block prefix: up to the last numeric part (`transformer.h.0.`), else all but the last."""
    numeric = [i for i, part in enumerate(parts[:-1]) if part.rstrip("./").isdigit()]
    return numeric[-1] + 1 if numeric else len(parts) - 1


def splits(names: Sequence[str], width: int) -> list[tuple[str, str, str]]:
    """(block, extension, rest) per name: the block prefix, the parts a whole block needs moved out of its rows
    to fit `width` (often none), and what the row shows.

    A block grows as one, so siblings (`attn.c_attn.weight`, `ln_1.weight`) never interleave their headers.
    """
    parts = [_parts(n) for n in names]
    cuts = [_block(p) for p in parts]
    result: list[tuple[str, str, str]] = []
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
            cut = max(cuts[k], min(cuts[k] + extra, len(parts[k]) - 1))
            block = "".join(parts[k][: cuts[k]])
            result.append((block, "".join(parts[k][cuts[k] : cut]), "".join(parts[k][cut:])))
        i = j
    return result


def structural_width(names: Sequence[str]) -> int:
    """The narrowest column that shows every name without an ellipsis once block prefixes are headers."""
    shown = [printable(n) for n in names]
    rests = [rest if block else shown[k] for k, (block, _, rest) in enumerate(splits(shown, 1 << 30))]
    return max((len(INDENT) + len(rest) for rest in rests), default=0)


def fit(names: Sequence[str], width: int) -> list[tuple[str | None, str]]:
    """Rows of a name column `width` wide: (name, shown) per name in order, with (None, header) rows between.

    Names that all fit are shown whole; a block of one name that fits whole needs no header. A block whose
    rows still do not fit gets sub-headers, indented by one (` q_proj.lora_A.`), above rows indented by two.
    """
    shown = [printable(n) for n in names]
    if not shown or max(len(s) for s in shown) <= width:
        return list(zip(names, shown, strict=True))
    cut = splits(shown, width)
    rows: list[tuple[str | None, str]] = []
    last_block = None
    i = 0
    while i < len(names):
        block, extension = cut[i][0], cut[i][1]
        j = i
        while j < len(names) and cut[j][:2] == (block, extension):
            j += 1
        if not block or (j - i == 1 and len(shown[i]) <= width):
            rows.extend((names[k], middle(shown[k], width)) for k in range(i, j))
            last_block = None
        else:
            if block != last_block:
                rows.append((None, tail(block, width)))
                last_block = block
            if extension:
                rows.append((None, INDENT[:1] + tail(extension, width - 1)))
            rows.extend((names[k], INDENT + middle(cut[k][2], width - len(INDENT))) for k in range(i, j))
        i = j
    return rows
