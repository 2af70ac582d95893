"""Class 6: no name can become a GitHub workflow command, in any format, width or stream."""

from __future__ import annotations

import importlib.util
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runs_builder import write_step
from st_files import entry, file_bytes

from gradcheck.cli.console import printable
from gradcheck.cli.main import cli
from gradcheck.cli.pictures.static import CHARTS

HOSTILE = [
    "::error::boom",
    "x" * 90 + "::error file=a.py,line=1::wrapped",
    "a##[error]b",
    " ::warning::leading space",
    "\u2003::notice::em space",
    "::add-mask::secret",
    "::stop-commands::token",
]
# Our own annotations are the only lines that may start with `::`
OURS = re.compile(r"^::(error|warning) title=gradcheck")


def _hostile_run(root: Path) -> Path:
    for step in range(3):
        grads = {name: np.full(4, 1e-12, np.float32) for name in HOSTILE}
        grads["ok.w"] = np.ones(4, np.float32)
        write_step(root, step, {"grad": grads, "param": {n: np.ones(4, np.float32) for n in grads}})
    # an unreadable file whose tensor name is hostile: the warning on stderr quotes it
    (root / "grads_9.safetensors").write_bytes(
        file_bytes({"::error::x##[y": entry("F99", [1], 0, 4)}, bytes(4))
    )
    return root


def _check(text: str) -> None:
    for line in text.splitlines():
        assert not line.lstrip().startswith("::") or OURS.match(line), line
        assert "##[" not in line, line


@pytest.mark.parametrize("output_format", ["table", "json", "github", "markdown", "junit"])
@pytest.mark.parametrize("columns", ["40", "60", "80", "140", "200"])
def test_no_output_line_is_a_workflow_command(tmp_path: Path, output_format: str, columns: str) -> None:
    run = _hostile_run(tmp_path / "a run ::error::title ##[x]")
    result = CliRunner().invoke(
        cli, ["inspect", str(run), "--format", output_format], env={"COLUMNS": columns}
    )
    assert result.exit_code == 1, result.stderr
    _check(result.stdout)
    _check(result.stderr)
    if output_format == "github":
        assert sum(bool(OURS.match(line)) for line in result.stdout.splitlines()) >= len(HOSTILE)


@pytest.mark.parametrize(
    "arguments",
    [["--view", "depth"], ["--steps", "all"]],
)
def test_other_views_are_defused_too(tmp_path: Path, arguments: list[str]) -> None:
    run = _hostile_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["inspect", str(run), *arguments], env={"COLUMNS": "60"})
    _check(result.stdout)
    _check(result.stderr)


@pytest.mark.parametrize("command", [["heatmap"], ["diff"], ["watch", "--timeout", "0"]])
def test_every_command_is_defused(tmp_path: Path, command: list[str]) -> None:
    run = _hostile_run(tmp_path / "run")
    arguments = [command[0], str(run), *([str(run)] if command[0] == "diff" else []), *command[1:]]
    result = CliRunner().invoke(cli, arguments, env={"COLUMNS": "50"})
    assert "Traceback" not in result.stderr
    _check(result.stdout)
    _check(result.stderr)


def test_the_escape_is_visible_and_reversible() -> None:
    assert printable("a::b") == "a:\\x3ab"
    assert printable("x##[y") == "x#\\x23[y"
    assert printable("plain.name") == "plain.name"


def _check_file(path: Path) -> None:
    """A file we write can reach a log too (`-o /dev/stdout`, `cat report.html`): the same rules apply."""
    _check(path.read_bytes().decode("utf-8", "replace"))


@pytest.mark.parametrize("columns", ["60", "80", "200"])
def test_report_plot_and_baseline_files_and_messages_are_defused(tmp_path: Path, columns: str) -> None:
    run = _hostile_run(tmp_path / "a run ::error::title ##[x]")
    out = tmp_path / "out ::error::o ##[z]"
    out.mkdir()
    env = {"COLUMNS": columns}
    commands = [
        ["report", str(run), "-o", str(out / "r ##[a].html")],
        ["baseline", str(run), "-o", str(out / "b ##[b].json")],
    ]
    if importlib.util.find_spec("matplotlib") is not None:  # the report extra
        commands += [
            ["plot", str(run), "--chart", chart, "-o", str(out / f"{chart}.svg")] for chart in CHARTS
        ]
    for arguments in commands:
        result = CliRunner().invoke(cli, arguments, env=env)
        assert result.exit_code in (0, 1), (arguments, result.stderr)
        _check(result.stdout)
        _check(result.stderr)
    written = sorted(out.iterdir())
    assert len(written) == len(commands)
    for path in written:
        _check_file(path)


def test_the_report_still_selects_hostile_layers(tmp_path: Path) -> None:
    """The defused attributes and JSON decode to the names the charts' data holds."""
    run = _hostile_run(tmp_path / "run")
    page = tmp_path / "r.html"
    CliRunner().invoke(cli, ["report", str(run), "-o", str(page)])
    parser = _Links()
    parser.feed(page.read_text())
    assert "::error::boom" in parser.layers and "a##[error]b" in parser.params
    specs = re.search(r'id="gradcheck-specs">(.*?)</script>', page.read_text()).group(1)
    assert "::error::boom" in json.dumps(json.loads(specs), ensure_ascii=False)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.layers: set[str] = set()
        self.params: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.layers.add(values.get("data-layer") or "")
        self.params.update(json.loads(values.get("data-params") or "[]"))  # a findings group's parameters


def test_diff_against_a_hostile_baseline_and_config_output_are_defused(tmp_path: Path) -> None:
    run = _hostile_run(tmp_path / "run ::error::r ##[r]")
    base = tmp_path / "base.json"
    assert CliRunner().invoke(cli, ["baseline", str(run), "-o", str(base)]).exit_code == 0
    # a baseline written by hand (or by an older gradcheck) with the raw names
    raw = tmp_path / "raw ##[q].json"
    raw.write_text(base.read_text().replace("#\\u0023[", "##["))
    config = tmp_path / "gc ::error::c ##[c].toml"
    config.write_text(
        '[[overrides]]\nparams = ["::error::glob", "x##[y]*", "  ::warning::indented"]\nignore = ["spike"]\n'
        "[thresholds]\nspike-factor = 9\n"
    )
    for columns in ("60", "80", "200"):
        for arguments in (
            ["diff", str(base), str(run)],
            ["diff", str(raw), str(run), "--format", "json"],
            ["diff", str(raw), str(run)],
            ["config", "--config", str(config)],
            ["config", str(run), "--config", str(config), "-t", "spike-factor=3"],
            ["inspect", str(run), "--config", str(config)],
            ["help", "::error::topic ##[t]"],
        ):
            result = CliRunner().invoke(cli, arguments, env={"COLUMNS": columns})
            assert result.exit_code in (0, 1, 2) and "Traceback" not in result.stderr, (
                arguments,
                result.stderr,
            )
            _check(result.stdout)
            _check(result.stderr)
