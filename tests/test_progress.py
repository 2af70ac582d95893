"""The progress bar: shown on a terminal for slow scans only, never in CI, with --quiet or for JSON."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from gradcheck.cli.progress import ScanProgress, progress_wanted


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def terminal(out: io.StringIO) -> Console:
    return Console(file=out, force_terminal=True, width=100)


def test_a_quick_scan_shows_nothing() -> None:
    out, clock = io.StringIO(), Clock()
    progress = ScanProgress(terminal(out), clock=clock)
    clock.now += 0.5
    progress(10, 100)
    clock.now += 0.4
    progress(100, 100)
    progress.close()
    assert out.getvalue() == ""


def test_a_slow_scan_shows_the_bar_and_removes_it() -> None:
    out, clock = io.StringIO(), Clock()
    progress = ScanProgress(terminal(out), clock=clock)
    clock.now += 1.5
    progress(50 << 20, 200 << 20)
    progress.close()
    shown = out.getvalue()
    assert "reading snapshots" in shown
    assert "52.4/209.7 MB" in shown


def test_a_scan_that_ends_after_the_delay_does_not_flash_a_full_bar() -> None:
    out, clock = io.StringIO(), Clock()
    progress = ScanProgress(terminal(out), clock=clock)
    clock.now += 3
    progress(100, 100)
    progress.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("is_terminal", "quiet", "output_format", "ci", "wanted"),
    [
        (True, False, "table", None, True),
        (False, False, "table", None, False),
        (True, True, "table", None, False),
        (True, False, "json", None, False),
        (True, False, "table", "true", False),
    ],
)
def test_progress_wanted(
    monkeypatch: pytest.MonkeyPatch,
    is_terminal: bool,
    quiet: bool,
    output_format: str,
    ci: str | None,
    wanted: bool,
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    console = Console(file=io.StringIO(), force_terminal=is_terminal)
    assert progress_wanted(console, quiet=quiet, output_format=output_format) is wanted
