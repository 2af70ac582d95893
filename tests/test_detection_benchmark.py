"""The detection benchmark (benchmarks/detection) still trains, records, inspects and scores its programs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from detection.score import ERROR, MISSED, WARNING, Record, summarize, verdict


def _record(variant: str, findings: list[tuple[str, str]], expected: tuple[str, ...] = ("dead",)) -> Record:
    report = {
        "status": "ok",
        "findings": [
            {"severity": sev, "problem": problem, "check": problem, "param": "0.weight", "step": 0}
            for sev, problem in findings
        ],
    }
    return Record("p", "p", variant, expected, "gradients", {}, report, None, 0.0)


@pytest.mark.slow  # ~6 s of CPU on 2 cores (two torch processes), 40+ s wall on a loaded machine
def test_a_buggy_program_and_a_twin_through_the_runner(tmp_path: Path) -> None:
    """One buggy program (all-zero init: dead weights) and one healthy twin, trained, recorded and judged."""
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "detection" / "run.py"),
            "--only",
            "zero_init:buggy",
            "--only",
            "division_nan:healthy",
            "--json",
            "--jobs",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    runs = {(r["program"], r["variant"]): r for r in document["runs"]}
    assert set(runs) == {("zero_init", "buggy"), ("division_nan", "healthy")}
    buggy, twin = runs["zero_init", "buggy"], runs["division_nan", "healthy"]
    assert any(f["severity"] == "error" and f["problem"] == "dead" for f in buggy["findings"])
    assert document["summary"]["classes"]["zero_init"][ERROR] == 1
    assert not [f for f in twin["findings"] if f["severity"] == "error"]
    assert twin["outcome"]["value"] > 0.9  # the twin really trains
    assert document["summary"]["false_alarm_rate"] == 0.0
    assert (tmp_path / "zero_init" / "buggy").is_dir()


def test_only_expected_problems_count_as_detection() -> None:
    assert verdict(_record("buggy", [(ERROR, "dead")])) == ERROR
    assert verdict(_record("buggy", [(WARNING, "dead"), (ERROR, "nonfinite")])) == WARNING
    assert verdict(_record("buggy", [(ERROR, "vanishing")])) == MISSED


def test_any_error_on_a_twin_is_a_false_alarm() -> None:
    summary = summarize([_record("healthy", [(ERROR, "vanishing")]), _record("healthy", [(WARNING, "dead")])])
    assert summary["false_alarm_rate"] == 0.5
    assert summary["warning_rate"] == 0.5
