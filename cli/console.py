"""Rich consoles made per command, so colour is decided when the command runs, not at import."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported by make_console: printable() serves commands that print no table
    from rich.console import Console

# Piped output (CI logs, files) has no terminal width; 80 columns would fold the table.
_PIPE_WIDTH = 140


def make_console(*, color: bool | None, stderr: bool = False) -> Console:
    """A console for stdout or stderr: color None = auto (TTY, NO_COLOR, FORCE_COLOR), True/False = forced."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    is_tty = stream.isatty()
    width = None if is_tty or "COLUMNS" in os.environ else _PIPE_WIDTH
    if color is False:
        return Console(file=stream, color_system=None, width=width, highlight=False, soft_wrap=False)
    return Console(
        file=stream,
        force_terminal=True if color else None,
        width=width,
        highlight=False,
    )


def printable(text: str) -> str:
    r"""Text with control characters escaped, so names cannot move the cursor or open hyperlinks.

    Also defuses GitHub workflow commands: a log line starting with `::` is a command, and the legacy parser
    acts on `##[` anywhere in a line. A name wrapped onto a line of its own could start one, so names never
    print `::` or `##[`: the second character is escaped (`a:\x3ab`, `#\x23[`), as controls are.
    """
    if text.isprintable() and "::" not in text and "##[" not in text:
        return text
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text.replace("::", ":\\x3a").replace("##[", "#\\x23[")
