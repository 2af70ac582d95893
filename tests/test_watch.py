"""`gradcheck watch`: files written by another thread are seen within 2 s, half-written ones are not reported.

The bounds below are generous upper limits for a shared machine (polls every 0.05-0.1 s), not benchmarks.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console
from safetensors.numpy import save

from gradcheck.analysis.inspection import Report, inspect_run
from gradcheck.analysis.runs import Note
from gradcheck.cli import watch as watch_module
from gradcheck.cli.main import cli
from gradcheck.cli.watch import follow, step_line
from gradcheck.recording import save_snapshot

SEEN_WITHIN = 2.0  # seconds: the acceptance bound for a new file to show up


def _tensors(seed: int, scale: float = 1e-2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "enc.weight": scale * rng.standard_normal((8, 8)),
        "head.weight": scale * rng.standard_normal((4, 8)),
    }


def _save(run: Path, step: int, scale: float = 1e-2) -> None:
    params = _tensors(1000 + step, 1.0)
    save_snapshot(run, step, grads=_tensors(step, scale), params=params)


class Recorder:
    """Collects what `follow` reports, with the time each update arrived."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.warnings: list[Note] = []
        self.unreadable_in_reports = 0  # updates whose report had an unreadable file (shown or not)

    def __call__(self, report: Report, new_steps: list[int], warnings: list[Note]) -> None:
        now = time.monotonic()
        for step in new_steps:
            self.seen.setdefault(step, now)
        self.warnings.extend(warnings)
        self.unreadable_in_reports += bool(report.run.unreadable)


def _follow_while(run: Path, writer: Callable[[], None], *, interval: float, timeout: float) -> Recorder:
    """Run `follow` in this thread while `writer` runs in another one."""
    recorder = Recorder()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        follow(run, inspect=lambda: inspect_run(run), on_update=recorder, interval=interval, timeout=timeout)
    finally:
        thread.join()
    return recorder


def test_file_written_by_another_thread_is_seen_within_2_s(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 0)
    written: dict[int, float] = {}

    def writer() -> None:
        for step in (10, 20):
            time.sleep(0.3)
            written[step] = time.monotonic()  # before the write: the file may be seen before save returns
            _save(run, step)

    recorder = _follow_while(run, writer, interval=0.05, timeout=3.0)
    assert sorted(recorder.seen) == [0, 10, 20]
    for step, at in written.items():
        assert 0 <= recorder.seen[step] - at < SEEN_WITHIN
    assert recorder.warnings == []


def _snapshot_bytes(step: int) -> bytes:
    tensors = {f"grad/{name}": value.astype(np.float32) for name, value in _tensors(step).items()}
    return save(tensors, metadata={"step": str(step)})


def test_half_written_file_is_never_reported_while_it_grows(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 0)
    data = _snapshot_bytes(5)
    target = run / "grads_5.safetensors"  # a plain writer: no temporary name, the file grows in place

    def writer() -> None:
        with target.open("wb") as out:
            for start in range(0, len(data), 8):
                out.write(data[start : start + 8])
                out.flush()
                time.sleep(0.01)  # a new chunk well within each 0.1 s poll

    recorder = _follow_while(run, writer, interval=0.1, timeout=len(data) / 8 * 0.01 + 1.5)
    assert recorder.unreadable_in_reports >= 2  # polls did read it cut short...
    assert recorder.warnings == []  # ...and never reported it
    assert 5 in recorder.seen


def test_cut_short_file_is_reported_once_it_stops_changing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 0)
    (run / "grads_5.safetensors").write_bytes(_snapshot_bytes(5)[:-40])
    recorder = _follow_while(run, lambda: None, interval=0.05, timeout=0.5)
    assert [Path(note.file).name for note in recorder.warnings] == ["grads_5.safetensors"]
    assert sorted(recorder.seen) == [0]


def test_fail_fast_exits_1_when_an_exploding_step_appears(runner: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 0)
    timeout = 30.0

    def writer() -> None:
        time.sleep(0.3)
        _save(run, 10, scale=1e9)  # mean|g| ~ 8e8 > the 1e6 exploding threshold...
        time.sleep(0.3)
        _save(run, 20, scale=1e9)  # ...at min-steps (2) recorded steps in a row: an error

    thread = threading.Thread(target=writer)
    started = time.monotonic()
    thread.start()
    result = runner.invoke(
        cli, ["watch", str(run), "--interval", "0.05", "--timeout", str(timeout), "--fail-fast"]
    )
    thread.join()
    assert 1 == result.exit_code
    assert time.monotonic() - started < timeout  # stopped at the finding, not at the timeout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step 0: ✓ healthy")
    assert lines[-1].startswith("step 20: ✗ unhealthy: exploding")


@pytest.mark.parametrize(
    ("name", "code", "verdict"), [("healthy_mlp", 0, "✓ healthy"), ("dead_relu", 1, "✗")]
)
def test_timeout_ends_with_the_verdict(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, name: str, code: int, verdict: str
) -> None:
    run = tmp_path / name
    shutil.copytree(sample_runs / name, run)
    result = runner.invoke(cli, ["watch", str(run), "--interval", "0.05", "--timeout", "0.2"])
    assert code == result.exit_code
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"steps 0-360 (7): {verdict}")
    assert result.stderr == ""


def test_ctrl_c_exits_cleanly_with_the_verdict_so_far(
    runner: CliRunner, sample_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(watch_module.time, "sleep", interrupt)
    result = runner.invoke(cli, ["watch", str(sample_runs / "dead_relu")])
    assert 1 == result.exit_code
    assert result.stderr == "gradcheck: watch interrupted\n"
    assert "Traceback" not in result.output


def test_empty_directory_until_timeout_is_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["watch", str(tmp_path), "--interval", "0.05", "--timeout", "0.1"])
    assert 2 == result.exit_code
    assert result.stderr == f"gradcheck: error: {tmp_path}: no readable snapshot file\n"


def test_missing_directory_is_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["watch", str(tmp_path / "nope"), "--timeout", "0"])
    assert 2 == result.exit_code


def test_step_line_and_live_view(sample_runs: Path) -> None:
    report = inspect_run(sample_runs / "healthy_mlp")
    assert step_line(report, [360]).plain.startswith("step 360: ✓ healthy")
    console = Console(width=120, height=40, color_system=None, force_terminal=False)
    view = watch_module._view(console, report)
    assert "4.bias" in view.plain and view.plain.splitlines()[1].startswith("✓ healthy")


# --- the dashboard, waiting for the run folder, --idle (issue #12) --------------------------------------------


def _wide_run(run: Path, steps: range, params: int = 100, nan_at: int | None = None) -> None:
    rng = np.random.default_rng(0)
    names = [
        f"transformer.h.{i // 4}.{('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')[i % 4]}.weight"
        for i in range(params)
    ]
    for step in steps:
        grads = {name: rng.normal(0, 1e-2, (4, 4)).astype(np.float32) for name in names}
        if step == nan_at:
            grads[names[0]][0, 0] = np.nan
        save_snapshot(run, step, grads=grads, params={n: np.ones((4, 4), np.float32) for n in names})


def test_dashboard_fits_80x24_with_verdict_findings_and_a_cut_table(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _wide_run(run, range(4), nan_at=3)
    report = inspect_run(run)
    lines = watch_module.dashboard(report, 80, 24)
    plain = [line.plain for line in lines]
    assert len(plain) <= 24 and max(map(len, plain)) <= 80
    assert plain[1].startswith("✗ unhealthy: nonfinite")  # the verdict, right under the title
    assert plain[2].startswith(" ERROR nonfinite")  # the newest finding pinned on top
    hidden = int(plain[-1].split()[0].lstrip("+"))
    shown = sum(line.startswith("│") for line in plain)
    assert shown + hidden == 100 + 25  # every parameter row and block header row is shown or counted


def test_small_run_is_not_cut(sample_runs: Path) -> None:
    plain = [line.plain for line in watch_module.dashboard(inspect_run(sample_runs / "healthy_mlp"), 80, 24)]
    assert not any(line.startswith("+") for line in plain) and sum("│ " in line for line in plain) == 6


def test_waits_for_the_run_folder_then_idle_ends_it_with_the_full_report(
    runner: CliRunner, tmp_path: Path
) -> None:
    run = tmp_path / "not-yet"

    def writer() -> None:
        time.sleep(0.3)
        _save(run, 0)
        time.sleep(0.2)
        _save(run, 10)

    thread = threading.Thread(target=writer)
    started = time.monotonic()
    thread.start()
    result = runner.invoke(cli, ["watch", str(run), "--interval", "0.05", "--idle", "1.0", "--timeout", "30"])
    thread.join()
    elapsed = time.monotonic() - started
    assert 0 == result.exit_code, result.output
    assert result.stderr == f"gradcheck: waiting for {run} to appear\n"
    assert 1.4 <= elapsed < 10  # 0.5 s of writing, then 1 s idle: not the 30 s timeout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step 0: ✓ healthy") and lines[1].startswith("step 10: ✓ healthy")
    assert any("step 10 (2 recorded steps)" in line for line in lines)  # the full report at the end
    assert lines[-1].startswith("✓ healthy")


def test_idle_counts_from_the_first_snapshot_timeout_bounds_the_wait(
    runner: CliRunner, tmp_path: Path
) -> None:
    started = time.monotonic()
    args = ["watch", str(tmp_path / "never"), "--interval", "0.05", "--idle", "0.2", "--timeout", "1"]
    result = runner.invoke(cli, args)
    assert 2 == result.exit_code and 1 <= time.monotonic() - started < 5  # --timeout ended it, not --idle
    assert "no readable snapshot file" in result.stderr


def test_a_refresh_reads_only_new_or_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradcheck.analysis import runs as runs_module

    for step in (0, 10):
        _save(tmp_path, step)
    scanned: list[list[str]] = []
    original = runs_module.scan_files
    monkeypatch.setattr(
        runs_module,
        "scan_files",
        lambda paths, options, **where: scanned.append(paths) or original(paths, options, **where),
    )
    inspect = watch_module.Incremental(lambda **kw: inspect_run(tmp_path, **kw))
    first = inspect()
    _save(tmp_path, 20)
    grown = inspect()
    assert [len(paths) for paths in scanned] == [2, 1] and grown.run.steps == (0, 10, 20)
    cold = inspect_run(tmp_path)
    assert dict(grown.run.tensors.items()) == dict(cold.run.tensors.items())
    assert [f.message for f in grown.findings] == [f.message for f in cold.findings]
    assert first.run.steps == (0, 10)
