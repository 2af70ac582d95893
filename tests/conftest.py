"""Shared fixtures: colour pinned off, a CliRunner, the sample runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"


@pytest.fixture(autouse=True)
def _no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich must never emit ANSI codes into assertions."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)


@pytest.fixture
def runner() -> CliRunner:
    """A CliRunner that keeps stdout and stderr apart."""
    return CliRunner()


@pytest.fixture
def sample_runs() -> Path:
    """The committed sample runs produced by real training."""
    return SAMPLE_RUNS
