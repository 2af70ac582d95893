"""Acceptance 3 (short form, slow): a big file atomically replaced while inspect reads it, -j 1 and -j 2.

The full figures come from `benchmarks/replace_race.py` (256 MiB, every 20 ms, 30 runs per job count); this
runs the same script on 80 MiB (two segments) for 5 runs each, so CI sees a regression.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "replace_race.py"


@pytest.mark.slow
def test_every_result_is_one_version_or_changed_during_read() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", "5", "--mib", "80"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failure" not in result.stdout and result.stdout.count("runs in") == 2
