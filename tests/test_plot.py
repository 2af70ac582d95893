"""`gradcheck plot`: PNG and SVG of one chart, the series of the report, sized for a README or PR comment."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runs_builder import write_run

from gradcheck.analysis.inspection import inspect_run
from gradcheck.cli.main import cli
from gradcheck.cli.pictures.charts import LAYER_COLOURS, chart_data

matplotlib = pytest.importorskip("matplotlib")
from gradcheck.cli.pictures.static import CHARTS, DPI, SIZE, figure

WIDTH, HEIGHT = int(SIZE[0] * DPI), int(SIZE[1] * DPI)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _pixels(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)


@pytest.mark.parametrize("chart", CHARTS)
def test_png_of_each_chart_has_the_size_and_is_not_blank(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, chart: str
) -> None:
    target = tmp_path / f"{chart}.png"
    result = runner.invoke(
        cli, ["plot", str(sample_runs / "exploding_nan"), "--chart", chart, "-o", str(target), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert _png_size(target) == (WIDTH, HEIGHT)
    pixels = _pixels(target)[..., :3]
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # drawn, not one flat colour
    assert (pixels < 0.9).any(axis=-1).mean() > 0.01  # some ink away from white


def test_svg_is_deterministic_and_has_one_path_per_series(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    paths = [tmp_path / "a.svg", tmp_path / "b.svg"]
    for path in paths:
        args = ["plot", str(sample_runs / "healthy_mlp"), "--chart", "norms", "-o", str(path), "-q"]
        assert runner.invoke(cli, args).exit_code == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    svg = paths[0].read_text()
    assert svg.count('<g id="line2d_') >= 6  # six parameters' lines, plus the axis ticks


@pytest.mark.parametrize(("chart", "series"), [("norms", 6), ("ratio", 6), ("param", 6)])
def test_one_line_per_parameter_in_its_layer_colour(sample_runs: Path, chart: str, series: int) -> None:
    data = chart_data(inspect_run(sample_runs / "healthy_mlp"))
    ax = figure(data, chart).axes[0]
    lines = [line for line in ax.get_lines() if line.get_label() != "_nolegend_" or len(line.get_xdata()) > 1]
    assert len(lines) == series
    colours = {matplotlib.colors.to_hex(line.get_color()) for line in lines}
    assert colours == {data.colour(layer) for layer in data.layers} <= set(LAYER_COLOURS)


def test_ratio_chart_shades_the_band_of_the_thresholds(sample_runs: Path) -> None:
    data = chart_data(inspect_run(sample_runs / "healthy_mlp"))
    ax = figure(data, "ratio").axes[0]
    (band,) = ax.patches
    assert (band.get_y(), band.get_y() + band.get_height()) == data.band


def test_flow_has_mean_and_max_bars_per_layer_at_the_step(sample_runs: Path) -> None:
    data = chart_data(inspect_run(sample_runs / "vanishing_sigmoid"))
    step = data.steps[2]
    ax = figure(data, "flow", step=step).axes[0]
    assert len(ax.patches) == 2 * len(data.layers)
    assert [t.get_text() for t in ax.get_xticklabels()] == [d.layer for d in data.flow[step]]
    assert str(step) in ax.get_xlabel()


def test_nan_steps_are_marked_on_the_norm_chart(sample_runs: Path) -> None:
    data = chart_data(inspect_run(sample_runs / "exploding_nan"))
    ax = figure(data, "norms").axes[0]
    (marks,) = [c for c in ax.collections if c.get_label() == "NaN/Inf gradient"]
    assert min(marks.get_offsets()[:, 0]) == 11


def test_heatmap_image_is_layers_by_columns(sample_runs: Path) -> None:
    data = chart_data(inspect_run(sample_runs / "exploding_nan"))
    ax = figure(data, "heatmap", metric="grad-norm").axes[0]
    image = ax.get_images()[0]
    assert image.get_array().shape == data.heatmaps["grad-norm"].values.shape
    assert image.get_cmap().name == "inferno"


def test_bad_suffix_unknown_step_and_missing_metric_exit_2(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    run = str(sample_runs / "healthy_mlp")
    jpg = runner.invoke(cli, ["plot", run, "--chart", "flow", "-o", str(tmp_path / "x.jpg")])
    assert jpg.exit_code == 2 and ".png or .svg" in jpg.stderr
    step = runner.invoke(cli, ["plot", run, "--chart", "flow", "--step", "7", "-o", str(tmp_path / "x.png")])
    assert step.exit_code == 2 and "step 7 was not recorded" in step.stderr
    rng = np.random.default_rng(0)
    write_run(
        tmp_path / "g",
        {s: {"grad": {"fc.weight": rng.normal(size=(3, 3)).astype(np.float32)}} for s in range(3)},
    )
    args = [
        "plot",
        str(tmp_path / "g"),
        "--chart",
        "heatmap",
        "-m",
        "update-ratio",
        "-o",
        str(tmp_path / "h.png"),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "no layer has a value for --metric update-ratio" in result.stderr


def test_step_charts_span_every_recorded_step(sample_runs: Path) -> None:
    data = chart_data(inspect_run(sample_runs / "exploding_nan"))
    low, high = figure(data, "ratio").axes[0].get_xlim()
    assert low < data.steps[0] and high > data.steps[-1]  # the NaN steps after the last finite ratio too


def test_without_matplotlib_plot_exits_2_with_the_extra_to_install(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    args = ["plot", str(sample_runs / "healthy_mlp"), "--chart", "flow", "-o", str(tmp_path / "f.png")]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    assert (
        "needs matplotlib: pip install 'gradcheck[report]'" in result.stderr
        and not (tmp_path / "f.png").exists()
    )


def test_analysis_and_the_cli_start_without_plotting_libraries() -> None:
    code = (
        "import sys, gradcheck.cli.main, gradcheck.analysis.heatmap, gradcheck.analysis.history;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'PIL')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
