"""Findings told as a story (analysis/story.py): grouping across parameters, order by first step, causes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gradcheck.analysis.checks import HINTS, SEVERITY, Finding
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.story import LR_HINT, tell, worst_of
from gradcheck.cli.main import cli

PARAMS = ("a.weight", "a.bias", "b.weight", "b.bias")


def finding(
    check: str, param: str, first: int, last: int, problem: str | None = None, value: float = 1.0
) -> Finding:
    return Finding(
        check=check, problem=problem or check, severity=SEVERITY[check], param=param, layer=param.split(".")[0],
        kind="grad", step=first, last_step=last, count=last - first + 1, steps=tuple(range(first, last + 1)),
        value=value, threshold=0.0, message=f"{check} at {first}", hint=HINTS.get(problem or check, ""),
    )  # fmt: skip


def test_identical_findings_group_across_parameters() -> None:
    story = tell([finding("nonfinite", p, 20, 29) for p in PARAMS], PARAMS)
    (group,) = story.groups
    assert group.params == PARAMS and group.all_params and group.who == "all 4 parameters"
    assert group.when == "steps 20-29"


def test_groups_split_by_first_step_and_order_by_it() -> None:
    found = [
        finding("nonfinite", "b.weight", 20, 29),
        finding("nonfinite", "a.weight", 12, 29),
        finding("spike", "a.weight", 6, 9, problem="exploding"),
        finding("growth", "a.weight", 8, 9, problem="exploding"),  # same parameter and problem: one group
    ]
    story = tell(found, PARAMS)
    assert [(g.problem, g.first_step, g.params) for g in story.groups] == [
        ("exploding", 6, ("a.weight",)),
        ("nonfinite", 12, ("a.weight",)),
        ("nonfinite", 20, ("b.weight",)),
    ]
    assert story.groups[0].checks == ("spike", "growth") and story.groups[0].message == "spike at 6"


def test_high_update_ratio_before_errors_is_the_likely_cause() -> None:
    found = [finding("update-ratio-high", p, 0, 10, value=-0.2) for p in ("a.weight", "b.weight")]
    found += [finding("nonfinite", p, 20, 29) for p in PARAMS]
    found += [finding("vanishing", "b.bias", 10, 12)]
    story = tell(found, PARAMS)
    (cause,) = story.causes
    assert cause.cause.problem == "update-ratio-high" and [e.problem for e in cause.effects] == ["nonfinite"]
    assert cause.text == (
        "update ratio -0.2 (log10) from step 0 preceded the NaN/Inf at step 20: learning rate too high?"
    )
    assert cause.hint == LR_HINT
    # the cause explains the NaN and itself; vanishing on a parameter without the warning keeps its hint
    assert [problem for problem, _ in story.hints] == ["vanishing"]


def test_explosion_before_nan_is_the_cause_when_no_learning_rate_warning() -> None:
    found = [
        finding("spike", "a.weight", 6, 9, problem="exploding"),
        finding("nonfinite", "a.weight", 11, 14),
    ]
    (cause,) = tell(found, PARAMS).causes
    assert cause.text.startswith("the explosion from step 6 preceded the NaN/Inf at step 11")
    assert tell(found, PARAMS).hints == ()


def test_no_cause_without_a_shared_parameter_or_when_it_comes_later() -> None:
    apart = [finding("update-ratio-high", "a.weight", 0, 5), finding("nonfinite", "b.weight", 20, 29)]
    later = [finding("update-ratio-high", "a.weight", 30, 35), finding("nonfinite", "a.weight", 20, 29)]
    assert tell(apart, PARAMS).causes == () and tell(later, PARAMS).causes == ()
    assert {p for p, _ in tell(apart, PARAMS).hints} == {"update-ratio-high", "nonfinite"}


def test_worst_of_a_parameter_is_its_earliest_error() -> None:
    found = [
        finding("update-ratio-high", "a.weight", 0, 10),
        finding("nonfinite", "a.weight", 11, 14),
        finding("spike", "a.weight", 6, 10, problem="exploding"),
    ]
    assert worst_of(found) == ("error", "exploding", 6)
    assert worst_of(found[:1]) == ("warning", "update-ratio-high", 0)
    assert worst_of([]) is None


# --- acceptance 2 of issue #12: the real NaN run (SGD at lr 5.0, sample_runs/generate.py) -------------------


def test_lr_nan_run_tells_the_cause_first(
    runner: CliRunner, sample_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = runner.invoke(cli, ["inspect", str(sample_runs / "exploding_nan")]).stdout.splitlines()
    report = inspect_run(sample_runs / "exploding_nan")
    keys = {(f.problem, f.severity, min(g.step for g in report.findings if (g.param, g.problem) == (f.param, f.problem)))
            for f in report.findings}  # fmt: skip
    groups = [line for line in out if line.startswith((" ERROR", " warn "))]
    assert len(groups) == len(keys) == 5  # one line per (problem, first step), not 35 findings
    assert all(len(line) <= 80 for line in out)
    cause = next(i for i, line in enumerate(out) if line.startswith("likely cause: update ratio"))
    nan = next(i for i, line in enumerate(out) if line.startswith(" ERROR nonfinite"))
    assert cause < nan
    assert "preceded the explosion at step 6" in " ".join(line.strip() for line in out[cause : cause + 2])
    assert "all 6 parameters, steps 11-14" in out[nan]
    assert not any(line.startswith("hint (nonfinite)") for line in out)  # explained by the cause
    assert any(line.startswith("hint (likely cause): lower the learning rate") for line in out)


def test_json_carries_the_story(runner: CliRunner, sample_runs: Path) -> None:
    import json

    doc = json.loads(
        runner.invoke(cli, ["inspect", str(sample_runs / "exploding_nan"), "--format", "json"]).stdout
    )
    story = doc["story"]
    assert [g["problem"] for g in story["groups"]] == [
        "update-ratio-high", "exploding", "exploding", "exploding", "nonfinite",
    ]  # fmt: skip
    assert story["causes"][0]["effects"] == [
        {"problem": "exploding", "first_step": 6}, {"problem": "nonfinite", "first_step": 11},
    ]  # fmt: skip
    assert len(doc["findings"]) == 35  # the findings themselves stay complete, one per check and kind


def test_a_warning_that_only_points_to_a_problem_is_called_by_its_check() -> None:
    relative = [finding("exploding-relative", "a.weight", 3, 5, problem="exploding")]
    assert tell(relative, PARAMS).groups[0].label == "exploding-relative"
    assert worst_of(relative) == ("warning", "exploding-relative", 3)
    spike = [finding("spike", "a.weight", 3, 5, problem="exploding")]
    assert tell(spike, PARAMS).groups[0].label == "exploding" and worst_of(spike)[1] == "exploding"
