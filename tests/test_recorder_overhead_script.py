"""benchmarks/recorder_overhead.py --quick still runs: a tiny model, a few steps, every configuration."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "recorder_overhead.py"
FAST = "base,full@10,stats@10,full@100,stats@100,save_file@10,tb_hist@10"


def run_quick(configs: str, tmp_path: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--configs", configs, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []  # every run removed
    return result.stdout


def overhead_rows(output: str, configs: str) -> dict[str, list[str]]:
    """config -> the cells of its row in the overhead table."""
    lines = [line.split() for line in output.splitlines()]
    return {cells[0]: cells[1:] for cells in lines if cells and cells[0] in configs.split(",")}


def test_quick_run_reports_every_configuration(tmp_path: Path) -> None:
    rows = overhead_rows(run_quick(FAST, tmp_path), FAST)
    expected = FAST.split(",")
    if importlib.util.find_spec("tensorboard") is None:
        expected.remove("tb_hist@10")
    assert list(rows) == expected
    assert rows["base"][1:4] == ["+0.0%", "(", "+0.0"]  # the baseline against itself
    for cells in rows.values():
        assert float(cells[0]) > 0  # steps/s


@pytest.mark.slow
def test_quick_run_with_wandb(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    assert list(overhead_rows(run_quick("base,wandb@10", tmp_path), "base,wandb@10")) == ["base", "wandb@10"]
