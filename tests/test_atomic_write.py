"""Step files appear whole or not at all: no overwrite by accident, no partial file under a readable name."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gradcheck.analysis.errors import RunError
from gradcheck.analysis.reader import scan_file
from gradcheck.analysis.runs import is_snapshot_name, load_run
from gradcheck.recording import RecordingError, save_snapshot

GRADS = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}


def entries(run_dir: Path) -> list[str]:
    """Every name in the run directory."""
    return sorted(os.listdir(run_dir))


def readable(run_dir: Path) -> list[str]:
    """The names the reader would open."""
    return [name for name in entries(run_dir) if is_snapshot_name(name)]


def test_existing_step_is_not_overwritten(tmp_path: Path) -> None:
    path = save_snapshot(tmp_path, 5, grads=GRADS)
    before = path.read_bytes()
    with pytest.raises(RecordingError) as info:
        save_snapshot(tmp_path, 5, grads={"fc.weight": np.zeros(3)})
    assert str(info.value) == f"step 5 already exists in {tmp_path} (pass overwrite=True to replace it)"
    assert isinstance(info.value.__cause__, FileExistsError)
    assert path.read_bytes() == before
    assert entries(tmp_path) == ["step_00000005.safetensors"]  # the temp file is gone too


def test_overwrite_replaces(tmp_path: Path) -> None:
    save_snapshot(tmp_path, 5, grads=GRADS)
    path = save_snapshot(tmp_path, 5, grads={"other": np.zeros(3)}, overwrite=True)
    assert [e.name for e in scan_file(path).header.entries] == ["grad/other"]
    assert entries(tmp_path) == ["step_00000005.safetensors"]


def test_mode_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = save_snapshot(tmp_path / "a" / "b", 0, grads=GRADS)  # parents are created
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_link_unsupported_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = save_snapshot(tmp_path, 1, grads=GRADS)
    assert scan_file(path).stats["grad/fc.weight"].count == 6
    with pytest.raises(RecordingError, match="step 1 already exists"):
        save_snapshot(tmp_path, 1, grads=GRADS)
    assert entries(tmp_path) == ["step_00000001.safetensors"]


def _raise(error: BaseException) -> Callable[..., None]:
    """A stand-in for an os function that fails."""

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    return fail


@pytest.mark.parametrize(
    ("function", "error", "overwrite", "reason"),
    [
        ("fsync", OSError(errno.ENOSPC, "No space left on device"), False, "disk full"),
        ("write", OSError(errno.ENOSPC, "No space left on device"), False, "disk full"),
        ("write", OSError(errno.EDQUOT, "Disk quota exceeded"), False, "disk quota exceeded"),
        ("link", OSError(errno.EIO, "Input/output error"), False, "input/output error"),
        ("replace", OSError(errno.EROFS, "Read-only file system"), True, "read-only file system"),
        ("fchmod", OSError(errno.EPERM, "Operation not permitted"), False, "permission denied"),
        ("open", PermissionError(errno.EACCES, "Permission denied"), False, "permission denied"),
    ],
)
def test_failure_leaves_nothing_behind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    function: str,
    error: OSError,
    overwrite: bool,
    reason: str,
) -> None:
    old = save_snapshot(tmp_path, 3, grads=GRADS)
    before = old.read_bytes()
    monkeypatch.setattr(os, function, _raise(error))
    with pytest.raises(RecordingError) as info:
        save_snapshot(tmp_path, 3 if overwrite else 4, grads={"x": np.ones(10)}, overwrite=overwrite)
    monkeypatch.undo()
    step = 3 if overwrite else 4
    assert str(info.value) == f"cannot write step {step} to {tmp_path}: {reason}"
    assert info.value.__cause__ is error
    assert entries(tmp_path) == ["step_00000003.safetensors"]  # no new file, no temp file
    assert old.read_bytes() == before


def test_interrupt_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", _raise(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(tmp_path, 0, grads=GRADS)
    assert entries(tmp_path) == []


def test_temp_file_is_hidden_in_the_same_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        seen.append(f"{stat.S_ISDIR(os.fstat(fd).st_mode)}:{entries(tmp_path)}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_snapshot(tmp_path, 7, grads=GRADS)
    file_sync, dir_sync = seen
    assert file_sync.startswith("False:['.step_00000007.safetensors.") and file_sync.endswith(".tmp']")
    assert dir_sync == "True:['step_00000007.safetensors']"  # the directory is synced after publishing


def test_unwritable_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        if os.access(run_dir, os.W_OK):
            pytest.skip(
                "running as root: permissions are not enforced (test_failure_leaves_nothing_behind fakes it)"
            )
        with pytest.raises(RecordingError, match=f"cannot write step 2 to {run_dir}: permission denied"):
            save_snapshot(run_dir, 2, grads=GRADS)
        assert entries(run_dir) == []
    finally:
        run_dir.chmod(0o700)


def test_run_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(RecordingError, match=f"cannot write step 0 to {tmp_path / 'run'}: not a directory"):
        save_snapshot(tmp_path / "run", 0, grads=GRADS)


def test_concurrent_writers_of_one_step(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def write(value: float) -> None:
        barrier.wait()
        try:
            save_snapshot(tmp_path, 1, grads={"w": np.full(100_000, value)})
            outcomes.append("written")
        except RecordingError as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=write, args=(float(i),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    exists = f"step 1 already exists in {tmp_path} (pass overwrite=True to replace it)"
    assert sorted(outcomes) == [exists] * 7 + ["written"]
    assert entries(tmp_path) == ["step_00000001.safetensors"]
    assert scan_file(tmp_path / "step_00000001.safetensors").stats["grad/w"].count == 100_000


CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from gradcheck.recording import save_snapshot

    run_dir, marker, stall = sys.argv[1:]
    real = getattr(os, stall)

    def slow(*args):
        if stall == "write":  # write a little at a time so the kill lands mid-data
            args = (args[0], memoryview(args[1])[:65536])
        result = real(*args) if stall == "write" else None
        open(marker, "w").close()
        time.sleep(0.05 if stall == "write" else 60)
        return result

    setattr(os, stall, slow)
    save_snapshot(run_dir, 1, grads={"w": np.ones(4_000_000, dtype=np.float32)})
    """
)


@pytest.mark.parametrize("stall", ["write", "link"])
def test_sigkill_mid_write_leaves_no_readable_partial_file(tmp_path: Path, stall: str) -> None:
    save_snapshot(tmp_path, 0, grads=GRADS)
    marker = tmp_path.parent / f"{tmp_path.name}.marker"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(marker), stall])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the child exited before it started writing"
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    names = entries(tmp_path)
    assert readable(tmp_path) == ["step_00000000.safetensors"]
    (temp,) = (name for name in names if name != "step_00000000.safetensors")
    assert temp.startswith(".step_00000001.safetensors.") and temp.endswith(".tmp")  # left by the kill
    if stall == "write":
        assert (tmp_path / temp).stat().st_size < 16_000_000  # really killed mid-data
    run = load_run(tmp_path)
    assert run.steps == (0,) and run.unreadable == ()
    (tmp_path / "step_00000000.safetensors").unlink()
    with pytest.raises(RunError, match="no .safetensors snapshot files"):
        load_run(tmp_path)
