"""`gradcheck heatmap`: binning and scaling (pure), golden pictures of real runs, exit codes, odd runs.

The golden files under tests/golden/heatmap/ are the command's stdout. Regenerate them from the repository root:

    for run in vanishing_sigmoid exploding_nan; do for w in 80 200; do
      NO_COLOR=1 gradcheck heatmap sample_runs/$run --width $w > tests/golden/heatmap/$run-$w-plain.txt
      env -u NO_COLOR COLORTERM=truecolor gradcheck heatmap sample_runs/$run --width $w --color \
        > tests/golden/heatmap/$run-$w-color.txt
    done; done
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from runs_builder import write_step
from safetensors.numpy import load_file

from gradcheck.analysis.errors import RunError
from gradcheck.analysis.heatmap import (
    MISSING,
    NONFINITE,
    ZERO,
    bin_columns,
    bin_starts,
    build_heatmap,
    layer_values,
    level_bounds,
    scale_levels,
)
from gradcheck.analysis.inspection import inspect_run
from gradcheck.cli.heatmap import RAMP, heatmap, shorten

GOLDEN = Path(__file__).resolve().parent / "golden" / "heatmap"
REPO = Path(__file__).resolve().parent.parent


def draw(runner: CliRunner, *args: str | Path) -> Result:
    """Run `gradcheck heatmap` with arguments; never a traceback."""
    result = runner.invoke(heatmap, [str(a) for a in args])
    assert "Traceback" not in result.output + result.stderr
    return result


def grads_run(root: Path, steps: dict[int, dict[str, np.ndarray]]) -> Path:
    """A run with only gradients (and parameters of ones), in the given parameter order."""
    for step, grads in steps.items():
        params = {name: np.ones_like(g) for name, g in grads.items()}
        write_step(root, step, {"grad": grads, "param": params}, order=list(grads))
    return root


# --- binning -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 5, 15, 80, 81, 300, 1001])
@pytest.mark.parametrize("columns", [1, 3, 57, 80, 197])
def test_bins_cover_every_step_once_and_evenly(count: int, columns: int) -> None:
    starts = bin_starts(count, columns)
    assert len(starts) == min(count, columns)
    ends = [*starts[1:], count]
    covered = [i for start, end in zip(starts, ends, strict=True) for i in range(start, end)]
    assert covered == list(range(count))
    sizes = [end - start for start, end in zip(starts, ends, strict=True)]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_bins_refuse_zero_columns() -> None:
    with pytest.raises(ValueError):
        bin_starts(5, 0)


def test_a_bin_holds_the_max_of_its_steps() -> None:
    values = np.array([[-3.0, -1.0, -2.0, 5.0, 4.0]])
    binned, missing = bin_columns(values, np.zeros(values.shape, bool), [0, 3])
    np.testing.assert_array_equal(binned, [[-1.0, 5.0]])
    assert not missing.any()


def test_a_nan_wins_over_every_number_in_its_bin() -> None:
    values = np.array([[1.0, np.nan, 30.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    binned, _ = bin_columns(values, np.zeros(values.shape, bool), [0, 3])
    assert math.isnan(binned[0, 0]) and binned[0, 1] == 2.0
    np.testing.assert_array_equal(binned[1], [3.0, 4.0])


def test_zero_shows_only_when_no_step_of_the_bin_has_a_magnitude() -> None:
    values = np.array([[-np.inf, -np.inf, -np.inf, -7.0]])
    binned, _ = bin_columns(values, np.zeros(values.shape, bool), [0, 2])
    np.testing.assert_array_equal(binned, [[-np.inf, -7.0]])


def test_missing_only_when_every_step_of_the_bin_is_missing() -> None:
    values = np.array([[np.nan, np.nan, np.nan, 2.0]])
    missing = np.array([[True, True, True, False]])
    binned, binned_missing = bin_columns(values, missing, [0, 2])
    np.testing.assert_array_equal(binned_missing, [[True, False]])
    assert binned[0, 1] == 2.0  # a missing step is not a NaN


# --- scaling -----------------------------------------------------------------------------------------------


def test_levels_span_the_scale_from_min_to_max() -> None:
    values = np.array([[-10.0, -5.0, 0.0], [-9.99, -0.01, -2.5]])
    codes = scale_levels(values, np.zeros(values.shape, bool), -10.0, 0.0, 10)
    np.testing.assert_array_equal(codes, [[0, 5, 9], [0, 9, 7]])


def test_a_constant_row_has_one_level_and_a_constant_map_the_middle_one() -> None:
    values = np.array([[3.0, 3.0, 3.0], [1.0, 2.0, 5.0]])
    codes = scale_levels(values, np.zeros(values.shape, bool), 1.0, 5.0, 10)
    assert len(set(codes[0])) == 1 and codes[1, 0] == 0 and codes[1, 2] == 9
    flat = scale_levels(np.full((2, 3), 7.0), np.zeros((2, 3), bool), 7.0, 7.0, 10)
    assert (flat == 5).all()


def test_markers_for_nan_zero_and_missing() -> None:
    values = np.array([[np.nan, -np.inf, np.nan, 1.0]])
    missing = np.array([[False, False, True, False]])
    codes = scale_levels(values, missing, 0.0, 2.0, 10)
    np.testing.assert_array_equal(codes, [[NONFINITE, ZERO, MISSING, 5]])


def test_level_bounds_run_from_min_to_max() -> None:
    bounds = level_bounds(-4.0, 6.0, 10)
    assert len(bounds) == 11 and bounds[0] == -4.0 and bounds[-1] == 6.0 and bounds[5] == 1.0


def test_shorten_cuts_in_the_middle() -> None:
    assert shorten("encoder.layers.0.q", 5) == "en….q"
    assert shorten("short", 10) == "short"
    assert len(shorten("x" * 100, 20)) == 20


# --- the matrix of real runs -------------------------------------------------------------------------------


def test_vanishing_run_is_dim_in_early_layers(sample_runs: Path) -> None:
    drawn = build_heatmap(inspect_run(sample_runs / "vanishing_sigmoid"), "grad-norm", max_columns=80)
    assert drawn.layers[0] == "0" and drawn.layers[-1] == "22" and len(drawn.layers) == 12
    assert len(drawn.columns) == 6 and drawn.columns[0] == (0, 0) and drawn.columns[-1] == (400, 400)
    assert (drawn.values[0] < drawn.values[-1] - 8).all()  # nine orders of magnitude apart
    assert drawn.extreme(highest=False)[1] in ("0", "2") and drawn.extreme(highest=True)[1] == "22"


def test_exploding_run_turns_nan_from_step_11(sample_runs: Path) -> None:
    drawn = build_heatmap(inspect_run(sample_runs / "exploding_nan"), "grad-norm", max_columns=80)
    nan_columns = [
        first for (first, _), col in zip(drawn.columns, drawn.values.T, strict=True) if np.isnan(col).all()
    ]
    assert nan_columns == [11, 12, 13, 14]
    value, layer, column = drawn.extreme(highest=True)
    assert column == (10, 10) and layer == "0" and value > 24


def test_a_nan_step_stays_visible_when_binned(sample_runs: Path) -> None:
    drawn = build_heatmap(inspect_run(sample_runs / "exploding_nan"), "grad-norm", max_columns=4)
    assert drawn.columns == ((0, 2), (3, 6), (7, 10), (11, 14))
    assert drawn.steps_per_column == (3, 4)
    assert not np.isnan(drawn.values[:, 2]).any() and np.isnan(drawn.values[:, 3]).all()


def test_grad_mean_equals_numpy_on_the_raw_tensors(sample_runs: Path) -> None:
    _, values, missing = layer_values(inspect_run(sample_runs / "exploding_nan"), "grad-mean")
    raw = load_file(str(sample_runs / "exploding_nan" / "step_00000003.safetensors"))
    layer0 = np.concatenate(
        [np.abs(raw[f"grad/0.{p}"].astype(np.float64)).ravel() for p in ("weight", "bias")]
    )
    np.testing.assert_allclose(values[0, 3], math.log10(layer0.mean()), rtol=1e-9)
    assert not missing.any()


def test_dead_layer_shows_as_zero(sample_runs: Path) -> None:
    drawn = build_heatmap(inspect_run(sample_runs / "dead_relu"), "grad-norm", max_columns=80)
    assert np.isneginf(drawn.values[0]).all() and np.isfinite(drawn.values[1:]).all()


def test_a_metric_with_nothing_recorded_is_an_error(tmp_path: Path) -> None:
    run = grads_run(tmp_path, {0: {"fc.weight": np.ones(4, np.float32)}})
    with pytest.raises(RunError, match="update-ratio"):
        build_heatmap(inspect_run(run), "update-ratio", max_columns=80)


# --- the command -------------------------------------------------------------------------------------------

GOLDEN_CASES = [
    (run, width, colour)
    for run in ("vanishing_sigmoid", "exploding_nan")
    for width in (80, 200)
    for colour in ("plain", "color")
]


@pytest.mark.parametrize(("run", "width", "colour"), GOLDEN_CASES)
def test_golden_pictures(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, run: str, width: int, colour: str
) -> None:
    monkeypatch.chdir(REPO)
    args = [f"sample_runs/{run}", "--width", str(width)]
    if colour == "color":
        monkeypatch.delenv("NO_COLOR")
        monkeypatch.setenv("COLORTERM", "truecolor")
        args.append("--color")
    result = draw(runner, *args)
    assert result.exit_code == 0
    assert result.stdout == (GOLDEN / f"{run}-{width}-{colour}.txt").read_text(encoding="utf-8")
    assert ("\x1b[38;2;" in result.stdout) == (colour == "color")


@pytest.mark.parametrize("width", [80, 200])
def test_plain_lines_fit_the_width(runner: CliRunner, sample_runs: Path, width: int) -> None:
    for run in ("vanishing_sigmoid", "exploding_nan", "healthy_gru"):
        result = draw(runner, sample_runs / run, "--width", width)
        assert result.exit_code == 0
        assert max(map(len, result.stdout.splitlines()[1:])) <= width  # the title may wrap, nothing else


def test_every_metric_draws_and_labels_itself(runner: CliRunner, sample_runs: Path) -> None:
    labels = {
        "grad-norm": "‖g‖",
        "grad-mean": "mean|g|",
        "update-ratio": "mean|update|",
        "param-norm": "‖param‖",
    }
    for metric, label in labels.items():
        result = draw(runner, sample_runs / "healthy_mlp", "--metric", metric, "--width", 80)
        assert result.exit_code == 0 and label in result.stdout.splitlines()[0]


def test_an_unhealthy_run_still_exits_0(runner: CliRunner, sample_runs: Path) -> None:
    result = draw(runner, sample_runs / "exploding_nan", "--no-cache", "--jobs", "2", "--quiet")
    assert result.exit_code == 0
    assert "!" in result.stdout and result.stderr == ""


def test_piped_output_has_no_ansi_and_shows_the_ramp(
    runner: CliRunner, sample_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR")
    result = draw(runner, sample_runs / "vanishing_sigmoid")
    assert result.exit_code == 0 and "\x1b[" not in result.stdout
    assert "'@'" in result.stdout and "'%'" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["does/not/exist"],
        ["{runs}/healthy_mlp", "--metric", "loss"],
        ["{runs}/healthy_mlp", "--width", "10"],
        ["{runs}/healthy_mlp", "--jobs", "0"],
    ],
)
def test_bad_input_exits_2(runner: CliRunner, sample_runs: Path, args: list[str]) -> None:
    result = draw(runner, *(a.format(runs=sample_runs) for a in args))
    assert result.exit_code == 2 and result.stdout == ""


def test_nothing_for_the_metric_is_one_line_and_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    run = grads_run(tmp_path, {0: {"fc.weight": np.ones(4, np.float32)}})
    result = draw(runner, run, "--metric", "update-ratio")
    assert result.exit_code == 2
    assert result.stderr.startswith("gradcheck: error: ") and result.stderr.count("\n") == 1


def test_an_empty_directory_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = draw(runner, tmp_path)
    assert result.exit_code == 2 and "no .safetensors" in result.stderr


def test_a_single_step_run_is_one_column(runner: CliRunner, tmp_path: Path) -> None:
    run = grads_run(
        tmp_path, {70: {"a.weight": np.full(4, 1e-3, np.float32), "b.weight": np.ones(4, np.float32)}}
    )
    result = draw(runner, run, "--width", 80)
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    assert rows[2] == "     a │ " + RAMP[0] * 12 and rows[3] == "     b │ " + RAMP[-1] * 12
    assert "first step 70, last step 70; 1 recorded step(s) each" in result.stdout


def test_a_one_layer_run_uses_the_middle_of_the_scale(runner: CliRunner, tmp_path: Path) -> None:
    run = grads_run(tmp_path, {s: {"only.weight": np.full(3, 0.5, np.float32)} for s in range(3)})
    result = draw(runner, run, "--width", 80)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[2] == "  only │ " + RAMP[len(RAMP) // 2] * 36  # 3 cells of the widest


def test_long_and_hostile_names_are_shortened_and_escaped(runner: CliRunner, tmp_path: Path) -> None:
    long = "encoder.layers.11.self_attention.query_projection_with_a_very_long_name"
    run = grads_run(
        tmp_path,
        {0: {f"{long}.weight": np.ones(2, np.float32), "evil\x1b[2J.weight": np.ones(2, np.float32)}},
    )
    result = draw(runner, run, "--width", 80)
    assert result.exit_code == 0 and "\x1b" not in result.stdout
    assert "\\x1b[2J" in result.stdout
    names = [line.split(" │")[0].strip() for line in result.stdout.splitlines()[2:5]]
    # shortened by structure: the block prefix as a header row, then the rest cut in the middle
    assert (
        names[0] == "encoder.layers.11."
        and names[1] == "self_attention.query_projection_with_a_very_long_name"
    )
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_the_doc_names_every_option_and_shows_the_current_output() -> None:
    doc = (REPO / "docs" / "HEATMAP.md").read_text(encoding="utf-8")
    for param in heatmap.params:
        for flag in param.opts + param.secondary_opts:
            assert flag.startswith("-") is False or flag in doc, flag
    assert (GOLDEN / "exploding_nan-80-plain.txt").read_text(encoding="utf-8") in doc
