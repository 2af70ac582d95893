"""benchmarks/many_files.py, startup.py and watch_cpu.py still run (tiny sizes), and many_files' stats-mode run
is what the recorder's stats mode would write: the same table as the full run it summarises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradcheck.analysis.inspection import inspect_run

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GRADCHECK = Path(sys.executable).with_name("gradcheck")


def _script(name: str, *args: str, tmp_path: Path) -> str:
    if not GRADCHECK.exists():
        pytest.skip("no gradcheck console script beside this interpreter")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--gradcheck", str(GRADCHECK), *args],
        capture_output=True, text=True, timeout=600, check=False, cwd=BENCHMARKS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_many_files_prints_every_target_beside_the_peer(tmp_path: Path) -> None:
    out = _script(
        "many_files.py", "--files", "3", "--params", "12", "--single-files", "20", "--header-tensors", "50",
        "--repeats", "1", "--dir", str(tmp_path), tmp_path=tmp_path,
    )  # fmt: skip
    for name in ("full", "stats", "single"):
        assert f"  {name:6} cold vs peer" in out
    assert out.count("x the peer") >= 3 * 3 and "read_header" in out
    assert list(tmp_path.iterdir()) == []  # every run removed


@pytest.mark.slow
def test_startup_and_watch_cpu_run(tmp_path: Path) -> None:
    out = _script("startup.py", "--repeats", "1", tmp_path=tmp_path)
    assert "target: gradcheck --version <= 2x python -c pass (best wall)" in out
    out = _script(
        "watch_cpu.py",
        "--sizes",
        "2,4",
        "--new",
        "2",
        "--every",
        "0.1",
        "--dir",
        str(tmp_path),
        tmp_path=tmp_path,
    )
    assert "target: 4 files within 2x of 2" in out and list(tmp_path.iterdir()) == []


def test_the_stats_run_reads_as_the_full_run_it_summarises(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import many_files
    finally:
        sys.path.remove(str(BENCHMARKS))
    many_files.write_run(tmp_path / "full", 2, 12)
    many_files.write_stats_run(tmp_path / "stats", tmp_path / "full", 2)
    full, stats = inspect_run(tmp_path / "full"), inspect_run(tmp_path / "stats")
    assert not stats.run.unreadable and stats.run.params == full.run.params
    first = full.run.steps[0]
    for param in full.run.params:
        for kind in ("grad", "param", "update"):
            assert stats.run.get(first, param, kind).stats == full.run.get(first, param, kind).stats
    shutil.rmtree(tmp_path / "full")
