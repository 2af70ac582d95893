"""Keep the generated tables of docs/BAD_INPUT.md equal to what the CLI really says.

A table sits between `<!-- begin NAME -->` and `<!-- end NAME -->`. `check_table` fails when it differs from
the rows the tests just produced; with GRADCHECK_UPDATE_DOCS=1 it rewrites the table instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

BAD_INPUT_DOC = Path(__file__).resolve().parent.parent / "docs" / "BAD_INPUT.md"
UPDATE_VARIABLE = "GRADCHECK_UPDATE_DOCS"


def code(text: str) -> str:
    """Markdown code span for a table cell: pipes escaped, backticks in the text fenced by a longer run."""
    if not text:
        return "—"
    fence = "``" if "`" in text else "`"
    return f"{fence}{text.replace('|', chr(92) + '|')}{fence}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def check_table(name: str, table: str, doc: Path = BAD_INPUT_DOC) -> None:
    """Assert the named table in `doc` is `table`, or rewrite it when GRADCHECK_UPDATE_DOCS=1."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    text = doc.read_text(encoding="utf-8")
    assert begin in text and end in text, f"{doc.name} lacks the markers of table {name!r}"
    head, rest = text.split(begin, 1)
    current, tail = rest.split(end, 1)
    wanted = f"\n{table}\n"
    if os.environ.get(UPDATE_VARIABLE) == "1":
        doc.write_text(head + begin + wanted + end + tail, encoding="utf-8")
        return
    assert current == wanted, (
        f"table {name!r} in {doc.name} is out of date; regenerate it with "
        f"{UPDATE_VARIABLE}=1 pytest tests/test_corpus.py tests/test_misleading_inputs.py"
    )
