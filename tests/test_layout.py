"""Every command at 60, 80, 120 and 200 columns on runs with long real-world names (GPT-2, LoRA/PEFT).

Golden files: tests/golden/layout/<command>-<run>-<width>.txt, the plain stdout. After an intended change of the
output, regenerate them with `GRADCHECK_REGEN=1 .venv/bin/python -m pytest -q tests/test_layout.py` and review
the diff. Besides the exact text, each case checks what issue #12 asks of every width: no line wider than the
terminal, the name and status columns present, and (from 80 columns) one line per finding group.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.story import tell
from gradcheck.cli import watch as watch_module
from gradcheck.cli.help_cmd import TOPICS, doc_text
from gradcheck.cli.main import cli
from gradcheck.recording.writer import save_snapshot

GOLDEN = Path(__file__).resolve().parent / "golden" / "layout"
WIDTHS = (60, 80, 120, 200)
DEEP = Path("a_very_long_folder_name_" * 4, "gpt2_nan")  # a run path longer than the terminal
_BLOCK = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
          "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
          "mlp.c_proj.bias")  # fmt: skip
GPT2 = (
    "transformer.wte.weight",
    "transformer.wpe.weight",
    *(f"transformer.h.{i}.{name}" for i in range(2) for name in _BLOCK),
    "transformer.ln_f.weight",
    "transformer.ln_f.bias",
)
LORA = tuple(
    f"base_model.model.model.layers.{i}.self_attn.{proj}_proj.lora_{ab}.default.weight"
    for i in range(2)
    for proj in ("q", "v")
    for ab in ("A", "B")
)


def _write(run: Path, names: tuple[str, ...], *, lr: float, blow_up: int | None, seed: int) -> None:
    """A run of 10 steps: gradients, parameters and the updates lr x gradient; from `blow_up` the gradients
    grow 1000x per step until they overflow to NaN (what a too-high learning rate does)."""
    rng = np.random.default_rng(seed)
    params = {name: rng.normal(0, 0.02, (8, 8)).astype(np.float32) for name in names}
    for step in range(10):
        scale = 1e-3 if blow_up is None or step < blow_up else 1e-3 * 1000.0 ** (step - blow_up + 1)
        grads = {name: (rng.normal(0, 1, (8, 8)) * scale).astype(np.float32) for name in names}
        if blow_up is not None and step >= blow_up + 3:
            grads = {name: np.full((8, 8), np.nan, np.float32) for name in names}
        updates = {name: (-lr * g).astype(np.float32) for name, g in grads.items()}
        save_snapshot(run, step, grads=grads, params=params, updates=updates, order=list(names))
        params = {name: params[name] + updates[name] for name in names}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    _write(root / "gpt2_nan", GPT2, lr=1.0, blow_up=4, seed=0)
    _write(root / DEEP, GPT2, lr=1.0, blow_up=4, seed=0)
    _write(root / "gpt2_ok", GPT2, lr=1e-3, blow_up=None, seed=1)
    _write(root / "lora_ok", LORA, lr=1e-3, blow_up=None, seed=2)
    _write(
        root / "lora_disjoint",
        tuple(n.replace("lora_", "adapter_") for n in LORA),
        lr=1e-3,
        blow_up=None,
        seed=3,
    )
    return root


COMMANDS = {
    "inspect": lambda run, width: ["inspect", run],
    "depth": lambda run, width: ["inspect", run, "--view", "depth"],
    "heatmap": lambda run, width: ["heatmap", run, "--width", str(width)],
    "diff": lambda run, width: ["diff", "gpt2_ok" if run.startswith("gpt2") else "lora_ok", run],
}
CASES = [(command, run, width) for command in COMMANDS for run in ("gpt2_nan", "lora_ok") for width in WIDTHS]


def _output(
    runner: CliRunner, runs: Path, command: str, run: str, width: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    monkeypatch.chdir(runs)
    monkeypatch.setenv("COLUMNS", str(width))
    result = runner.invoke(cli, COMMANDS[command](run, width))
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GRADCHECK_REGEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize(("command", "run", "width"), CASES)
def test_every_command_fits(
    runner: CliRunner, runs: Path, monkeypatch: pytest.MonkeyPatch, command: str, run: str, width: int
) -> None:
    code, out = _output(runner, runs, command, run, width, monkeypatch)
    assert code in (0, 1)
    _check_golden(f"{command}-{run}-{width}.txt", out)
    assert max(len(line) for line in out.splitlines()) <= width
    if command in ("inspect", "diff"):
        header = " ".join(line for line in out.splitlines() if line.startswith("┃"))  # may be two lines
        assert ("parameter" if command == "inspect" else "layer") in header and "status" in header


@pytest.mark.parametrize("width", WIDTHS)
def test_findings_are_one_line_each(
    runner: CliRunner, runs: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    _, out = _output(runner, runs, "inspect", "gpt2_nan", width, monkeypatch)
    story = tell(inspect_run(runs / "gpt2_nan").findings, GPT2)
    lines = out.splitlines()
    start = lines.index("Findings, by first step (--verbose: every parameter in full)")
    groups = [line for line in lines[start:] if line.startswith((" ERROR", " warn "))]
    assert len(groups) == len(story.groups)
    following = lines[start + 1 : start + 1 + len(lines)]
    first_group = next(i for i, line in enumerate(following) if line.startswith((" ERROR", " warn ")))
    assert all(
        line.startswith((" ERROR", " warn ")) for line in following[first_group : first_group + len(groups)]
    )


def test_nan_run_tells_the_cause_first(
    runner: CliRunner, runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = _output(runner, runs, "inspect", "gpt2_nan", 200, monkeypatch)
    lines = out.splitlines()
    cause = next(i for i, line in enumerate(lines) if line.startswith("likely cause: update ratio"))
    nan = next(i for i, line in enumerate(lines) if line.startswith(" ERROR nonfinite"))
    assert cause < nan and "learning rate too high?" in lines[cause]
    assert "all 28 parameters" in lines[nan]


@pytest.mark.parametrize("width", WIDTHS)
def test_watch_dashboard_fits(runs: Path, monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    monkeypatch.chdir(runs)
    lines = [line.plain for line in watch_module.dashboard(inspect_run(Path("gpt2_nan")), width, 24)]
    _check_golden(f"watch-gpt2_nan-{width}.txt", "\n".join(lines) + "\n")
    assert len(lines) <= 24 and max(map(len, lines)) <= width
    assert lines[1].startswith("✗ unhealthy") and any(
        "parameter" in line and "status" in line for line in lines
    )


def test_diff_of_disjoint_runs_is_exit_2(
    runner: CliRunner, runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(runs)
    result = runner.invoke(cli, ["diff", "lora_ok", "lora_disjoint"])
    assert 2 == result.exit_code and "share no layer" in result.stderr and result.stdout == ""
    allowed = runner.invoke(cli, ["diff", "lora_ok", "lora_disjoint", "--allow-disjoint"])
    assert 0 == allowed.exit_code and "removed" in allowed.stdout and "added" in allowed.stdout


@pytest.mark.parametrize("command", ["inspect", "depth", "heatmap", "diff"])
def test_a_run_path_longer_than_the_terminal_is_shortened(
    runner: CliRunner, runs: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    deep = runs / ("a_very_long_folder_name_" * 4) / "gpt2_nan"
    if not deep.exists():
        deep.parent.mkdir(parents=True, exist_ok=True)
        (runs / "gpt2_nan").rename(deep)
        deep.parent.joinpath("..", "gpt2_nan").resolve().symlink_to(
            deep
        )  # keep the other tests' path working
    monkeypatch.setenv("COLUMNS", "60")
    args = COMMANDS[command](str(deep), 60)
    if command == "diff":
        args = ["diff", str(runs / "gpt2_ok"), str(deep)]
    out = runner.invoke(cli, args).stdout
    assert len(str(deep)) > 100 and "…" in out.splitlines()[0]
    assert max(len(line) for line in out.splitlines()) <= 60


ANSI = re.compile(r"\x1b\[[0-9;]*m|\x1b\]8;[^\x1b]*\x1b\\")  # colours and hyperlinks


@pytest.mark.parametrize("width", WIDTHS)
def test_every_help_text_fits(runner: CliRunner, width: int) -> None:
    """--help of every command (epilogs were hand-wrapped at 70, --ignore's choices made 117 columns) and
    `gradcheck help TOPIC` on a terminal (the pages are Markdown wrapped at 120) fit the screen."""
    env = {"COLUMNS": str(width)}
    for name in ["", *cli.commands]:
        # CliRunner pins click's help width to 80 unless terminal_width is given; a terminal sets it from COLUMNS
        arguments = [name, "--help"] if name else ["--help"]
        result = runner.invoke(cli, arguments, env=env, terminal_width=width)
        assert result.exit_code == 0
        assert max(map(len, result.stdout.splitlines())) <= width, name
        assert "docs/" not in result.stdout, name  # an installed wheel has no docs folder: gradcheck help
    for topic in TOPICS:
        shown = runner.invoke(cli, ["help", topic], env={**env, "FORCE_COLOR": "1"})
        lines = ANSI.sub("", shown.stdout).splitlines()
        assert shown.exit_code == 0 and len(lines) > 3 and max(map(len, lines)) <= width, topic
        piped = runner.invoke(cli, ["help", topic], env=env)
        assert piped.stdout == doc_text(topic)  # piped, the page stays Markdown
