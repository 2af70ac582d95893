"""Start-up: a command imports what it needs (issue #14), and `--help` still lists every command.

What a command imports is checked in a fresh interpreter (sys.modules after the command ran), not timed: the
timing against `python -c pass` is benchmarks/many_files.py's (`--startup`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from runs_builder import write_step

from gradcheck.cli import ci_formats, inspect_cmd
from gradcheck.cli.main import COMMANDS, cli

# Runs the command line as the console script does, then reports the heavy modules it had imported.
PROBE = """
import json, sys
from gradcheck.cli.main import cli
try:
    cli(sys.argv[1:])
except SystemExit as done:
    code = done.code
heavy = ("numpy", "rich", "safetensors", "markdown_it", "matplotlib", "gradcheck.analysis.", "gradcheck.cli.")
loaded = sorted(m for m in sys.modules if m.startswith(heavy) or m.split(".")[0] in heavy)
print(json.dumps({"code": code, "modules": loaded}), file=sys.stderr)
"""
LIGHT_CLI = {"gradcheck.cli.main", "gradcheck.cli.guard"}  # what every command line imports of gradcheck


def tiny_run(root: Path) -> Path:
    """Two healthy steps of one 4x4 weight (gradient, parameter, update)."""
    for step in (0, 10):
        grad = np.linspace(0.01, 0.02, 16, dtype=np.float32).reshape(4, 4)
        kinds = {"grad": {"w": grad}, "param": {"w": np.full_like(grad, 0.5)}, "update": {"w": grad * 1e-3}}
        write_step(root, step, kinds, order=["w"])
    return root


def probe(*args: str) -> tuple[int, set[str]]:
    """The exit code of `gradcheck ARGS` in a fresh interpreter and the heavy modules it imported."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=False)
    found = json.loads(result.stderr.strip().splitlines()[-1])
    return found["code"], set(found["modules"])


def test_version_imports_click_and_nothing_of_the_analysis() -> None:
    code, modules = probe("--version")
    assert code == 0
    assert modules == LIGHT_CLI, modules  # no numpy, rich, safetensors, analysis or command module


@pytest.mark.parametrize("args", [["--help"], ["no-such-command"], ["inspect", "--help"], ["inspect"]])
def test_help_and_usage_errors_read_nothing(args: list[str]) -> None:
    code, modules = probe(*args)
    assert code in (0, 2)
    assert not {m for m in modules if m.split(".")[0] in ("numpy", "rich", "safetensors")}, modules
    assert not {m for m in modules if m.startswith(("gradcheck.analysis.runs", "gradcheck.analysis.reader"))}


def test_help_topic_piped_does_not_load_the_markdown_renderer() -> None:
    code, modules = probe("help", "json")
    # rich.console decides whether stdout is a terminal (FORCE_COLOR counts); Markdown is for terminals only
    assert code == 0 and not {m for m in modules if m.startswith(("rich.markdown", "markdown_it", "numpy"))}


def test_json_output_does_not_draw_the_progress_bar_or_the_views(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "run")
    code, modules = probe("inspect", str(run), "--format", "json", "--no-cache")
    assert code == 0 and "numpy" in modules
    assert not modules & {
        "rich.progress",
        "rich.markdown",
        "gradcheck.cli.depth",
        "gradcheck.cli.activations_view",
    }


def test_the_table_view_loads_render_and_not_the_other_views(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "run")
    code, modules = probe("inspect", str(run), "--no-cache")
    assert code == 0 and "gradcheck.cli.render" in modules
    assert not modules & {"gradcheck.cli.depth", "gradcheck.cli.activations_view", "gradcheck.cli.watch"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_help_table_says_what_each_command_says(name: str) -> None:
    module, attribute, text = COMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    assert command.name == name
    listed = click.Command(name, help=text)
    for limit in (20, 45, 62, 80, 1000):
        assert listed.get_short_help_str(limit) == command.get_short_help_str(limit), limit


def test_help_lists_every_command_as_click_would_with_all_of_them_loaded() -> None:
    loaded = click.Group("gradcheck")
    for name, (module, attribute, _) in COMMANDS.items():
        loaded.add_command(getattr(importlib.import_module(module), attribute), name)
    ours = CliRunner().invoke(cli, ["--help"], terminal_width=100).stdout
    theirs = CliRunner().invoke(loaded, ["--help"], terminal_width=100).stdout
    assert ours[ours.index("Commands:") :].split("\n\n")[0] == theirs[theirs.index("Commands:") :].strip()


def test_a_command_added_at_run_time_is_listed_and_found() -> None:
    extra = click.Command("zz-extra", help="An extra command added with add_command.", callback=lambda: None)
    cli.add_command(extra)
    try:
        assert (
            "zz-extra  An extra command added with add_command." in CliRunner().invoke(cli, ["--help"]).stdout
        )
        assert CliRunner().invoke(cli, ["zz-extra"]).exit_code == 0
    finally:
        cli.commands.pop("zz-extra")


def test_inspect_offers_the_formats_ci_formats_renders() -> None:
    assert inspect_cmd.FORMATS == ci_formats.FORMATS


def test_version_is_the_installed_distributions() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.stdout == f"gradcheck, version {importlib.metadata.version('gradcheck')}\n"
