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
