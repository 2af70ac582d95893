"""The `gradcheck` command group: each subcommand's module is imported only when that command runs.

`gradcheck --version`, `--help` and a usage error import click and nothing of the analysis (no numpy, rich or
safetensors): every command is named in COMMANDS with the module that defines it and its one-line help, which
`--help` lists without importing the modules. tests/test_startup.py keeps COMMANDS equal to the commands'
own help and checks what `--version` imports.
"""

from __future__ import annotations

import importlib

import click

from gradcheck.analysis import __version__

from .guard import DEBUG_ENV, GuardedGroup

GROUP_HELP = """Exit codes: 0 healthy, 1 findings, 2 bad input or usage, 3 internal error (one line on stderr;
rerun with --debug, anywhere on the command line, for the traceback). More: gradcheck help bad-input.
"""

# name -> (module, attribute, the first sentence of the command's docstring: what `gradcheck --help` lists)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "baseline": (
        "gradcheck.cli.diff",
        "baseline",
        "Write RUN_DIR's per-layer measures to FILE, which `gradcheck diff` takes in place of the run.",
    ),
    "config": (
        "gradcheck.cli.config_cmd",
        "config",
        "Print the effective settings and where each came from; with RUN_DIR, check the override globs.",
    ),
    "diff": (
        "gradcheck.cli.diff",
        "diff",
        "Compare RUN_A with RUN_B layer by layer: gradient norms and update ratios at matching steps.",
    ),
    "export": (
        "gradcheck.cli.export",
        "export",
        "Write every statistic of RUN_DIR to a Parquet or CSV file, one row per step, parameter and kind.",
    ),
    "heatmap": (
        "gradcheck.cli.heatmap",
        "heatmap",
        "Draw RUN_DIR as layers x steps, coloured by a log10 metric: dim early layers = vanishing.",
    ),
    "help": (
        "gradcheck.cli.help_cmd",
        "help_command",
        "Print a documentation page (Markdown); without TOPIC, list the topics.",
    ),
    "inspect": (
        "gradcheck.cli.inspect_cmd",
        "inspect",
        "Inspect RUN_DIR: per-parameter gradient table, findings and a verdict.",
    ),
    "plot": (
        "gradcheck.cli.pictures.commands",
        "plot",
        "Draw one chart of RUN_DIR as a PNG or SVG (for papers, READMEs and PR comments).",
    ),
    "report": (
        "gradcheck.cli.pictures.commands",
        "report",
        "Write RUN_DIR's verdict, findings and charts as one HTML file that opens offline.",
    ),
    "watch": (
        "gradcheck.cli.watch",
        "watch",
        "Follow RUN_DIR while it is written: new steps are read as they appear, the verdict kept up to date.",
    ),
}


class LazyGroup(GuardedGroup):
    """A group that imports a command's module when the command is asked for, not when gradcheck starts."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command, loaded or not, in alphabetical order (as click lists them)."""
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command, imported on first use (a command added with add_command comes first)."""
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attribute, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The Commands section of --help from COMMANDS, without importing any command's module."""
        shown = {name: click.Command(name, help=text) for name, (_, _, text) in COMMANDS.items()}
        shown.update((name, command) for name, command in self.commands.items() if not command.hidden)
        limit = formatter.width - 6 - max(map(len, shown))
        rows = [(name, shown[name].get_short_help_str(limit)) for name in sorted(shown)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=GROUP_HELP)
@click.version_option(__version__, "-V", "--version", prog_name="gradcheck")
@click.option(
    "--debug", is_flag=True, help=f"Show the traceback of an internal error (exit 3); or set {DEBUG_ENV}=1."
)
def cli(debug: bool) -> None:
    """Find vanishing, exploding, NaN and dead gradients in a training run's safetensors snapshots."""
