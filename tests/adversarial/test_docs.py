"""Acceptance 4: docs/BAD_INPUT.md lists every class of #13 with its message and exit code; README shows 3."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "BAD_INPUT.md").read_text()

# The message each class prints, exactly as the tests beside this file see it printed.
MESSAGES = [
    "(a bug; rerun as gradcheck --debug COMMAND ... for the traceback)",
    "gradcheck: interrupted",
    "not a number >= 0",
    "not valid TOML (not UTF-8 text: byte 22)",
    "is not a finite number",
    "cannot write to standard output: No space left on device",
    "changed during read (replaced or rewritten while being read): run again",
    "the cache folder is writable by others (mode 777); reading without the cache",
    "cannot write --output file: No space left on device",
    "a FIFO that nobody reads",
    "cannot read (is a FIFO, socket or device, not a regular file)",
    "step summary not written: is a FIFO, socket or device, not a regular file",
    ":\\x3a",
    "#\\u0023[",
    "and 1048565 more of 1048576 missing",
    "rank folder cannot be listed: permission denied",
    "gradcheck.not_recorded",
    "RecordingError: cannot record 'grad/w' of step 0 to RUN",
    "duplicate tensor name 'w' in header",
]


@pytest.mark.parametrize("message", MESSAGES)
def test_every_class_is_documented(message: str) -> None:
    assert message in DOC


def test_the_table_gives_exit_codes() -> None:
    section = DOC.split("## Crashes, hostile and careless input", 1)[1].split("\n\n")[2]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 25 and all(
        line.rstrip().endswith(("| 3 |", "| 130 |", "| 2 |", "0/1 |", ") |", "— |")) for line in rows
    )


def test_readme_exit_codes_show_3() -> None:
    assert "| 3 | internal error" in (ROOT / "README.md").read_text()
