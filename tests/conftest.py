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


@pytest.fixture(autouse=True)
def _own_stats_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Inspections in tests cache into a temporary directory, never into the user's cache."""
    monkeypatch.setenv("GRADCHECK_CACHE_DIR", str(tmp_path_factory.mktemp("stats-cache")))


@pytest.fixture
def runner() -> CliRunner:
    """A CliRunner that keeps stdout and stderr apart."""
    return CliRunner()


@pytest.fixture
def sample_runs() -> Path:
    """The committed sample runs produced by real training."""
    return SAMPLE_RUNS
