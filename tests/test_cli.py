"""The command line: exit codes, messages, JSON, config precedence, colour and hostile names."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from json_rows import per_step
from runs_builder import write_run

from gradcheck.cli.main import cli

RNG = np.random.default_rng(7)


def _layers(
    scales: list[float], steps: int = 4, size: int = 8
) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """A run whose layer i has gradients of magnitude scales[i]; params ~1, updates ~1e-3 of params."""
    run: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for step in range(0, 10 * steps, 10):
        kinds: dict[str, dict[str, np.ndarray]] = {"grad": {}, "param": {}, "update": {}}
        for i, scale in enumerate(scales):
            name = f"layers.{i}.weight"
            kinds["grad"][name] = (RNG.standard_normal((size, size)) * scale).astype(np.float32)
            kinds["param"][name] = RNG.standard_normal((size, size)).astype(np.float32)
            kinds["update"][name] = (RNG.standard_normal((size, size)) * 1e-3).astype(np.float32)
        run[step] = kinds
    return run


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    write_run(tmp_path / "healthy", _layers([1e-2, 2e-2, 3e-2]))
    return tmp_path / "healthy"


@pytest.fixture
def vanishing(tmp_path: Path) -> Path:
    write_run(tmp_path / "vanishing", _layers([1e-10, 1e-6, 1e-2]))
    return tmp_path / "vanishing"


def _reject_constant(name: str) -> None:
    raise AssertionError(f"invalid JSON constant {name}")


def invoke(runner: CliRunner, *args: str | Path) -> object:
    result = runner.invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output + result.stderr
    return result


def test_help_documents_exit_codes_and_config(runner: CliRunner) -> None:
    result = invoke(runner, "inspect", "--help")
    assert result.exit_code == 0
    assert "Exit codes" in result.stdout and "pyproject.toml" in result.stdout
    for code in ("0 ", "1 ", "2 "):
        assert f"  {code}" in result.stdout


def test_every_command_has_help(runner: CliRunner) -> None:
    for name, command in cli.commands.items():
        assert command.help, name
        assert invoke(runner, name, "--help").exit_code == 0


def test_version(runner: CliRunner) -> None:
    result = invoke(runner, "--version")
    assert result.exit_code == 0 and result.stdout.startswith("gradcheck, version ")


def test_healthy_run_exits_0(runner: CliRunner, healthy: Path) -> None:
    result = invoke(runner, "inspect", healthy)
    assert result.exit_code == 0
    assert "healthy" in result.stdout
    assert "\x1b[" not in result.stdout


def test_vanishing_run_exits_1_and_names_the_layer(runner: CliRunner, vanishing: Path) -> None:
    result = invoke(runner, "inspect", vanishing)
    assert result.exit_code == 1
    assert "vanishing" in result.stdout and "layers.0.weight" in result.stdout


def test_fail_on_never_exits_0(runner: CliRunner, vanishing: Path) -> None:
    assert invoke(runner, "inspect", vanishing, "--fail-on", "never").exit_code == 0


def test_missing_directory_exits_2_with_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "inspect", tmp_path / "nope")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "no such directory" in lines[0]


def test_bad_option_is_a_usage_error(runner: CliRunner, healthy: Path) -> None:
    assert invoke(runner, "inspect", healthy, "--format", "yaml").exit_code == 2


def test_json_document(runner: CliRunner, vanishing: Path) -> None:
    result = invoke(runner, "inspect", vanishing, "--format", "json")
    assert result.exit_code == 1
    doc = per_step(json.loads(result.stdout))
    assert doc["status"] == "error" and doc["failed"] is True
    assert doc["steps"] == [0, 10, 20, 30] and doc["shown_step"] == 30
    finding = doc["findings"][0]
    assert finding["problem"] == "vanishing" and finding["param"] == "layers.0.weight"
    assert finding["severity"] == "error" and finding["step"] == 0 and finding["count"] == 4
    assert finding["value"] < finding["threshold"]
    names = [p["name"] for p in doc["params"]]
    assert names == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    row = doc["params"][2]["steps"][0]
    assert row["grad"]["count"] == 64 and row["update_ratio"] == pytest.approx(-3.0, abs=0.3)
    assert doc["unreadable"] == []


def test_json_turns_nan_into_null(runner: CliRunner, tmp_path: Path) -> None:
    run = _layers([1e-2, 1e-2])
    run[30]["grad"]["layers.0.weight"][:] = np.nan
    write_run(tmp_path / "nan", run)
    result = invoke(runner, "inspect", tmp_path / "nan", "--format", "json")
    assert result.exit_code == 1
    doc = per_step(json.loads(result.stdout, parse_constant=_reject_constant))
    grad = doc["params"][0]["steps"][-1]["grad"]
    assert grad["nan"] == 64 and grad["mean_abs"] is None
    assert [f["problem"] for f in doc["findings"]] == ["nonfinite"]
    assert doc["findings"][0]["step"] == 30


def test_unreadable_file_is_a_warning_and_the_rest_is_analysed(runner: CliRunner, healthy: Path) -> None:
    (healthy / "step_00000099.safetensors").write_bytes(b"\x05\x00")
    result = invoke(runner, "inspect", healthy, "--format", "json")
    assert result.exit_code == 0
    assert result.stderr.count("\n") == 1 and "step_00000099.safetensors" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["unreadable"][0]["file"].endswith("step_00000099.safetensors")
    assert doc["steps"] == [0, 10, 20, 30]


def test_strict_makes_unreadable_files_exit_2(runner: CliRunner, healthy: Path) -> None:
    (healthy / "step_00000099.safetensors").write_bytes(b"")
    assert invoke(runner, "inspect", healthy, "--strict").exit_code == 2


def test_nothing_readable_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "grads_1.safetensors").write_bytes(b"junk")
    result = invoke(runner, "inspect", tmp_path)
    assert result.exit_code == 2
    assert "grads_1.safetensors" in result.stderr and "no readable snapshot" in result.stderr


def test_empty_directory_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "inspect", tmp_path)
    assert result.exit_code == 2 and "no .safetensors" in result.stderr


def test_step_option(runner: CliRunner, healthy: Path) -> None:
    result = invoke(runner, "inspect", healthy, "--step", "10", "--format", "json")
    assert json.loads(result.stdout)["shown_step"] == 10
    assert "step 10 (4 recorded steps)" in invoke(runner, "inspect", healthy, "--step", "10").stdout
    missing = invoke(runner, "inspect", healthy, "--step", "11")
    assert missing.exit_code == 2 and "step 11 was not recorded" in missing.stderr


def test_threshold_option_overrides_config_file(runner: CliRunner, vanishing: Path, tmp_path: Path) -> None:
    config = tmp_path / "gc.toml"
    config.write_text("[tool.gradcheck.thresholds]\nvanishing-mean = 1e-12\n")
    assert invoke(runner, "inspect", vanishing, "--config", config).exit_code == 0
    result = invoke(runner, "inspect", vanishing, "--config", config, "-t", "vanishing-mean=1e-7")
    assert result.exit_code == 1


def test_pyproject_in_working_directory_is_used(
    runner: CliRunner, vanishing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.gradcheck]\nignore = ["vanishing"]\n')
    monkeypatch.chdir(project / "sub")
    assert invoke(runner, "inspect", vanishing).exit_code == 0
    assert invoke(runner, "inspect", vanishing, "--config", tmp_path / "none.toml").exit_code == 2


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("[tool.gradcheck]\nfail_on = 'error'\n", "fail_on"),
        ("[tool.gradcheck.thresholds]\nvanishing-mean = 'small'\n", "vanishing-mean"),
        ("[tool.gradcheck.thresholds]\nupdate-ratio-low = -1\n", "update-ratio-low"),
        ("[tool.gradcheck]\nignore = ['vanish']\n", "vanish"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    runner: CliRunner, healthy: Path, tmp_path: Path, content: str, key: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    result = invoke(runner, "inspect", healthy, "--config", config)
    assert result.exit_code == 2
    assert key in result.stderr and len(result.stderr.splitlines()) == 1


def test_bad_threshold_option_exits_2(runner: CliRunner, healthy: Path) -> None:
    result = invoke(runner, "inspect", healthy, "-t", "no-such-threshold=1")
    assert result.exit_code == 2 and "no-such-threshold" in result.stderr


def test_warnings_fail_only_with_fail_on_warning(runner: CliRunner, tmp_path: Path) -> None:
    run = _layers([1e-2, 1e-2])
    for kinds in run.values():
        kinds["update"]["layers.1.weight"] *= 1000  # update ratio about 0: far above -2
    write_run(tmp_path / "warn", run)
    result = invoke(runner, "inspect", tmp_path / "warn", "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == "warn"
    assert invoke(runner, "inspect", tmp_path / "warn", "--fail-on", "warning").exit_code == 1


def test_hostile_names_print_literally(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # whole names: narrower, "[red]x[/" would be a block header
    names = ["[red]x[/red].weight", "evil\x1b[2J\r.weight", "link\x1b]8;;http://x\x07.weight"]
    run = {0: {"grad": {n: np.full((2, 2), 0.01, np.float32) for n in names}}}
    write_run(tmp_path / "hostile", run)
    result = invoke(runner, "inspect", tmp_path / "hostile", "--color")
    assert result.exit_code == 0
    assert "[red]x[/red].weight" in result.stdout
    assert "\x1b[2J" not in result.stdout and "\x1b]8" not in result.stdout and "\r" not in result.stdout
    assert "\\x1b[2J\\r" in result.stdout
    doc = json.loads(invoke(runner, "inspect", tmp_path / "hostile", "--format", "json").stdout)
    assert sorted(p["name"] for p in doc["params"]) == sorted(names)


def test_color_flag_forces_ansi(runner: CliRunner, healthy: Path) -> None:
    assert "\x1b[" in invoke(runner, "inspect", healthy, "--color").stdout
    assert "\x1b[" not in invoke(runner, "inspect", healthy, "--no-color").stdout


def test_piped_output_has_no_ansi_even_without_no_color(
    runner: CliRunner, healthy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR")
    assert "\x1b[" not in invoke(runner, "inspect", healthy).stdout
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert "\x1b[" in invoke(runner, "inspect", healthy).stdout


def test_every_inspect_option_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for param in cli.get_command(click.Context(cli), "inspect").params:
        for flag in param.opts + param.secondary_opts:
            if flag.startswith("--"):
                assert flag in readme, flag
