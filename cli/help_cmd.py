"""`gradcheck help [TOPIC]`: the user documentation shipped in the package, readable from an installed wheel."""

from __future__ import annotations

from importlib.resources import files

import click

from .common import EXIT_OK, InputError
from .console import make_console

# topic -> file under docs/ (shipped as the package gradcheck.docs)
TOPICS = {
    "config": "CONFIG.md",
    "checks": "CHECKS.md",
    "ci": "CI.md",
    "json": "JSON.md",
    "export": "EXPORT.md",
    "diff": "DIFF_WATCH.md",
    "watch": "DIFF_WATCH.md",
    "baseline": "DIFF_WATCH.md",
    "heatmap": "HEATMAP.md",
    "format": "FORMAT.md",
    "recording": "RECORDING.md",
    "integrations": "INTEGRATIONS.md",
    "bad-input": "BAD_INPUT.md",
    "cache": "CACHE.md",
    "performance": "PERFORMANCE.md",
}


def doc_text(topic: str) -> str:
    """The Markdown text of a topic's page."""
    return files("gradcheck.docs").joinpath(TOPICS[topic]).read_text(encoding="utf-8")


@click.command(name="help")
@click.argument("topic", required=False)
def help_command(topic: str | None) -> None:
    """Print a documentation page (Markdown); without TOPIC, list the topics."""
    if topic is None:
        click.echo("gradcheck help TOPIC, where TOPIC is one of:")
        for name, page in TOPICS.items():
            click.echo(f"  {name:<13} {page}")
        raise SystemExit(EXIT_OK)
    if topic not in TOPICS:
        raise InputError(f"no help topic {topic!r} (topics: {', '.join(TOPICS)})")
    text = doc_text(topic)
    console = make_console(color=None)
    if console.is_terminal:
        # the pages are Markdown wrapped at 120 columns: on a terminal, render them to its width (issue #12:
        # no line wider than the screen); piped, they stay Markdown (`gradcheck help json > JSON.md`)
        from rich.markdown import Markdown  # markdown-it and pygments: only for a terminal

        console.print(Markdown(text))
    else:
        click.echo(text, nl=False)
    raise SystemExit(EXIT_OK)
