"""Class 5: output and input targets: symlinks and devices are written in place, FIFOs never hang us."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import healthy_run, no_traceback

from gradcheck.analysis.atomic import append_regular, read_regular, write_output
from gradcheck.cli.main import cli


def _inspect(run: Path, *extra: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["inspect", str(run), *extra], env=env)


def test_output_through_a_symlink_updates_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    run = healthy_run(tmp_path / "run")
    real = tmp_path / "reports" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert _inspect(run, "--format", "json", "--output", str(link)).exit_code == 0
    assert link.is_symlink() and json.loads(real.read_text())["exit_code"] == 0


def test_output_to_dev_null_is_written_in_place() -> None:
    before = os.stat("/dev/null")
    write_output(Path("/dev/null"), b"report")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (before.st_ino, before.st_rdev) == (after.st_ino, after.st_rdev)


def test_output_to_dev_full_is_exit_2_and_the_device_stays(tmp_path: Path) -> None:
    result = _inspect(healthy_run(tmp_path / "run"), "--format", "json", "--output", "/dev/full")
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "gradcheck: error: /dev/full: cannot write --output file: No space left on device"
    )
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_output_to_a_fifo_nobody_reads_is_refused_not_waited_for(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    result = _inspect(healthy_run(tmp_path / "run"), "--format", "json", "--output", str(fifo))
    assert result.exit_code == 2 and "a FIFO that nobody reads" in result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_to_a_fifo_with_a_reader_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as pipe:
            received.append(pipe.read())

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(200):  # wait until the reader has the FIFO open
        try:
            write_output(fifo, b"report\n")
            break
        except OSError:
            threading.Event().wait(0.01)
    reader.join(5)
    assert received == [b"report\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_255_byte_output_name_is_written(tmp_path: Path) -> None:
    name = "r" * 250 + ".json"
    assert len(name.encode()) == 255
    result = _inspect(healthy_run(tmp_path / "run"), "--format", "json", "--output", str(tmp_path / name))
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / name).read_text())["exit_code"] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "directory", "huge"])
def test_a_config_that_is_not_a_small_regular_file_is_refused(tmp_path: Path, target: str) -> None:
    if target == "fifo":
        path = tmp_path / "config.toml"
        os.mkfifo(path)
    elif target == "directory":
        path = tmp_path / "config.d"
        path.mkdir()
    elif target == "huge":
        path = tmp_path / "big.toml"
        path.write_text("# " + "x" * (2 << 20))
    else:
        path = Path(target)
    result = _inspect(healthy_run(tmp_path / "run"), "--config", str(path))
    assert result.exit_code == 2 and no_traceback(result.stderr)
    if target == "directory":  # click refuses it as a usage error
        assert "is a directory" in result.stderr
        return
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"gradcheck: error: {path}: cannot read (")


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "directory"])
def test_a_step_summary_that_is_not_a_regular_file_is_a_warning(tmp_path: Path, target: str) -> None:
    if target == "fifo":
        path = tmp_path / "summary.fifo"
        os.mkfifo(path)
    elif target == "directory":
        path = tmp_path / "summary.d"
        path.mkdir()
    else:
        path = Path(target)
    result = _inspect(
        healthy_run(tmp_path / "run"), "--format", "github", env={"GITHUB_STEP_SUMMARY": str(path)}
    )
    assert result.exit_code == 0
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"gradcheck: warning: {path}: step summary not written:")


def test_read_and_append_helpers_refuse_devices(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="not a regular file"):
        read_regular("/dev/zero", 1 << 20)
    with pytest.raises(OSError, match="not a regular file"):
        append_regular("/dev/null", b"x")
    regular = tmp_path / "summary.md"
    append_regular(regular, b"a")
    append_regular(regular, b"b")
    assert read_regular(regular, 10) == b"ab"


# report, plot and baseline (issues #12 and #15) write through the same writer as inspect's --output
WRITERS = {
    "inspect": (["--format", "json", "--output"], ".json"),
    "report": (["-o"], ".html"),
    "plot": (["--chart", "norms", "-o"], ".svg"),
    "plot-png": (["--chart", "flow", "-o"], ".png"),
    "baseline": (["-o"], ".json"),
}


def _write(command: str, run: Path, target: Path | str, env: dict[str, str] | None = None):
    options, _ = WRITERS[command]
    if command.startswith("plot"):
        pytest.importorskip("matplotlib")
    return CliRunner().invoke(cli, [command.split("-")[0], str(run), *options, str(target)], env=env)


@pytest.mark.parametrize("command", list(WRITERS))
def test_every_output_option_refuses_a_fifo_nobody_reads_and_dev_full(tmp_path: Path, command: str) -> None:
    run = healthy_run(tmp_path / "run")
    fifo = tmp_path / f"out{WRITERS[command][1]}"
    os.mkfifo(fifo)
    result = _write(command, run, fifo)
    assert result.exit_code == 2 and no_traceback(result.stderr), result.stderr
    assert result.stderr.splitlines()[-1].endswith(": a FIFO that nobody reads")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    full = tmp_path / f"full{WRITERS[command][1]}"
    full.symlink_to("/dev/full")  # plot needs its suffix; the link leads to the device
    result = _write(command, run, full)
    assert result.exit_code == 2 and result.stderr.splitlines()[-1].endswith(": No space left on device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode) and full.is_symlink()


@pytest.mark.parametrize("command", list(WRITERS))
def test_every_output_option_keeps_symlinks_takes_255_bytes_and_names_a_missing_folder(
    tmp_path: Path, command: str
) -> None:
    run = healthy_run(tmp_path / "run")
    suffix = WRITERS[command][1]
    real = tmp_path / "reports" / f"real{suffix}"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / f"link{suffix}"
    link.symlink_to(real)
    assert _write(command, run, link).exit_code == 0
    assert link.is_symlink() and real.read_bytes() != b"old" and real.stat().st_size > 100
    long = tmp_path / ("r" * (255 - len(suffix)) + suffix)
    assert _write(command, run, long).exit_code == 0 and long.stat().st_size > 100
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    missing = tmp_path / "missing" / f"out{suffix}"
    result = _write(command, run, missing)
    assert result.exit_code == 2 and no_traceback(result.stderr)
    assert result.stderr.splitlines()[-1].startswith(f"gradcheck: error: {missing}: cannot write")
    assert result.stderr.splitlines()[-1].endswith("No such file or directory")


def test_plot_writes_into_a_fifo_with_a_reader(tmp_path: Path) -> None:
    """matplotlib alone seeks in its target ('not seekable'); the shared writer streams the finished image."""
    pytest.importorskip("matplotlib")
    run = healthy_run(tmp_path / "run")
    fifo = tmp_path / "chart.png"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as pipe:
            received.append(pipe.read())

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(200):  # wait until the reader has the FIFO open
        result = _write("plot-png", run, fifo)
        if result.exit_code == 0:
            break
        threading.Event().wait(0.01)
    reader.join(10)
    assert result.exit_code == 0, result.stderr
    assert received and received[0].startswith(b"\x89PNG") and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_report_step_summary_on_a_fifo_is_a_warning_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "summary.fifo"
    os.mkfifo(fifo)
    result = _write(
        "report", healthy_run(tmp_path / "run"), tmp_path / "r.html", {"GITHUB_STEP_SUMMARY": str(fifo)}
    )
    assert result.exit_code == 0
    assert result.stderr.splitlines()[-1] == (
        f"gradcheck: warning: {fifo}: step summary not written: a FIFO that nobody reads"
    )


@pytest.mark.parametrize("command", ["report", "config", "inspect", "watch"])
def test_a_bad_config_is_exit_2_in_every_command_that_reads_one(tmp_path: Path, command: str) -> None:
    """report once let a ConfigError escape as an internal error (exit 3)."""
    run = healthy_run(tmp_path / "run")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\x00")
    arguments = {"report": ["-o", str(tmp_path / "r.html")], "watch": ["--timeout", "0"]}.get(command, [])
    for config in (["--config", str(bad)], ["-t", "nope=3"]):
        result = CliRunner().invoke(cli, [command, str(run), *arguments, *config])
        assert result.exit_code == 2 and no_traceback(result.stderr), (config, result.stderr)
