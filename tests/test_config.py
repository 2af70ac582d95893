"""Tests for configuration: where it is found, what it may say, precedence, overrides and errors."""

from __future__ import annotations

import textwrap
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from runs_builder import write_run

from gradcheck.analysis.config import (
    CHECK_IDS,
    Config,
    Override,
    config_from_mapping,
    find_pyproject,
    load_config,
    parse_fail_on,
    parse_threshold_option,
    with_thresholds,
)
from gradcheck.analysis.errors import ConfigError, GradcheckError
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.thresholds import THRESHOLD_KEYS, Thresholds

FULL_TABLE = """
[tool.gradcheck]
fail-on = "warning"
ignore = ["update-ratio-low"]

[tool.gradcheck.thresholds]
vanishing-mean = 1e-8
spike-history = 4

[[tool.gradcheck.overrides]]
params = ["*.embed*"]
ignore = ["dead"]

[[tool.gradcheck.overrides]]
params = "*.bias"
thresholds = { vanishing-mean = 1e-12 }
"""


def write_toml(path: Path, text: str) -> Path:
    """Write dedented TOML text, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults() -> None:
    config = Config()
    assert config.thresholds == Thresholds()
    assert (config.ignore, config.overrides, config.fail_on, config.source) == (
        frozenset(),
        (),
        "error",
        None,
    )
    t = Thresholds()
    assert (t.vanishing_mean, t.vanishing_relative, t.exploding_mean, t.exploding_relative) == (
        1e-7,
        1e-3,
        1e6,
        70.0,
    )
    assert (t.spike_factor, t.spike_history, t.growth_factor, t.growth_window) == (100.0, 3, 2.0, 5)
    assert (t.shrink_factor, t.shrink_window) == (0.5, 5)
    assert (t.update_ratio_low, t.update_ratio_high) == (-3.4, -1.2)
    assert (t.min_steps, t.dead_units, t.dead_min_steps) == (2, 0.7, 2)
    assert (t.saturation_share, t.dead_activations_share, t.loss_stuck_drop) == (0.9, 0.5, 0.02)


def test_threshold_keys_are_the_field_names_with_dashes() -> None:
    assert THRESHOLD_KEYS["vanishing-mean"] == "vanishing_mean"
    assert set(THRESHOLD_KEYS.values()) == {f.name for f in fields(Thresholds)}


def test_check_ids() -> None:
    assert set(CHECK_IDS) == {
        "nonfinite",
        "vanishing",
        "exploding",
        "exploding-relative",
        "spike",
        "growth",
        "shrink",
        "dead",
        "dead-units",
        "update-ratio-high",
        "update-ratio-low",
        "nan-origin",
        "loss-nonfinite",
        "saturation",
        "dead-activations",
        "loss-stuck",
    }


def test_pyproject_table_is_read_fully(tmp_path) -> None:
    pyproject = write_toml(tmp_path / "pyproject.toml", FULL_TABLE)
    config = load_config(start=tmp_path)
    assert config.source == str(pyproject)
    assert config.fail_on == "warning"
    assert config.ignore == frozenset({"update-ratio-low"})
    assert config.thresholds == Thresholds(vanishing_mean=1e-8, spike_history=4)
    assert isinstance(config.thresholds.spike_history, int)
    assert config.overrides == (
        Override(params=("*.embed*",), ignore=frozenset({"dead"})),
        Override(params=("*.bias",), thresholds={"vanishing_mean": 1e-12}),
    )


def test_pyproject_is_found_from_a_subfolder_upwards(tmp_path) -> None:
    pyproject = write_toml(tmp_path / "pyproject.toml", FULL_TABLE)
    start = tmp_path / "runs" / "exp1"
    start.mkdir(parents=True)
    assert find_pyproject(start) == pyproject
    assert load_config(start=start).fail_on == "warning"


def test_nearest_pyproject_wins(tmp_path) -> None:
    write_toml(tmp_path / "pyproject.toml", FULL_TABLE)
    inner = write_toml(tmp_path / "sub" / "pyproject.toml", '[tool.gradcheck]\nfail-on = "never"\n')
    start = tmp_path / "sub" / "deeper"
    start.mkdir()
    config = load_config(start=start)
    assert (config.source, config.fail_on) == (str(inner), "never")
    assert config.thresholds == Thresholds()  # no merging with the outer file


def test_pyproject_without_gradcheck_table_is_passed_over(tmp_path) -> None:
    outer = write_toml(tmp_path / "pyproject.toml", FULL_TABLE)
    write_toml(tmp_path / "pkg" / "pyproject.toml", '[project]\nname = "pkg"\n')
    assert load_config(start=tmp_path / "pkg").source == str(outer)


def test_no_config_anywhere_gives_defaults(tmp_path) -> None:
    write_toml(tmp_path / "pyproject.toml", "[tool.ruff]\nline-length = 100\n")
    if find_pyproject(tmp_path) is not None:  # pragma: no cover - a stray pyproject above the tmp dir
        pytest.skip("a pyproject.toml with [tool.gradcheck] exists above the temporary directory")
    assert load_config(start=tmp_path) == Config()


def test_config_file_with_top_level_keys(tmp_path) -> None:
    path = write_toml(
        tmp_path / "gradcheck.toml",
        """
        fail-on = "never"
        ignore = "dead"
        [thresholds]
        exploding-mean = 1e4
        """,
    )
    config = load_config(path)
    assert (config.fail_on, config.ignore, config.source) == ("never", frozenset({"dead"}), str(path))
    assert config.thresholds.exploding_mean == 1e4


def test_config_file_with_a_tool_gradcheck_table(tmp_path) -> None:
    path = write_toml(tmp_path / "ci.toml", FULL_TABLE)
    assert load_config(path).fail_on == "warning"


def test_explicit_config_file_replaces_the_pyproject(tmp_path) -> None:
    write_toml(tmp_path / "pyproject.toml", FULL_TABLE)
    path = write_toml(tmp_path / "other.toml", "[thresholds]\nexploding-mean = 5e5\n")
    config = load_config(path, start=tmp_path)
    assert config.source == str(path)
    assert config.fail_on == "error"  # not "warning" from the pyproject
    assert config.thresholds == Thresholds(exploding_mean=5e5)


def test_explicit_pyproject_without_table_gives_defaults(tmp_path) -> None:
    path = write_toml(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    config = load_config(path)
    assert config.thresholds == Thresholds() and config.fail_on == "error"


def test_explicit_values_beat_the_file(tmp_path) -> None:
    write_toml(tmp_path / "pyproject.toml", FULL_TABLE)
    config = load_config(start=tmp_path)
    config = with_thresholds(config, dict([parse_threshold_option("vanishing-mean=1e-5")]), "--threshold")
    assert config.thresholds.vanishing_mean == 1e-5  # the option, not the file's 1e-8
    assert config.thresholds.spike_history == 4  # the file's value where the option says nothing
    assert config.fail_on == "warning"


def test_file_beats_defaults_and_explicit_values_beat_both_end_to_end(tmp_path) -> None:
    grad = np.random.default_rng(0).standard_normal(100).astype(np.float32) * 3e4  # mean|g| about 2.4e4
    run = tmp_path / "run"
    write_run(run, {1: {"grad": {"fc.weight": grad}}, 2: {"grad": {"fc.weight": grad}}})  # 2 steps: min-steps
    assert inspect_run(run).findings == []  # default exploding-mean 1e6
    file_config = load_config(write_toml(tmp_path / "g.toml", "[thresholds]\nexploding-mean = 1e4\n"))
    assert [f.check for f in inspect_run(run, file_config).findings] == ["exploding"]
    explicit = with_thresholds(file_config, {"exploding_mean": 1e5})
    assert inspect_run(run, explicit).findings == []


def test_parse_threshold_option() -> None:
    assert parse_threshold_option("vanishing-mean=1e-8") == ("vanishing_mean", 1e-8)
    assert parse_threshold_option(" spike-history = 5 ") == ("spike_history", 5)
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_threshold_option("vanishing-mean")
    with pytest.raises(ConfigError, match="'vanishing-man'"):
        parse_threshold_option("vanishing-man=1")


@pytest.mark.parametrize(
    ("table", "names"),
    [
        ({"fail_on": "error"}, ["'fail_on'"]),
        ({"thresholds": {"vanishing_mean": 1e-8}}, ["'vanishing_mean'", "thresholds"]),
        ({"thresholds": {"vanishing-mean": "tiny"}}, ["vanishing-mean", "'tiny'"]),
        ({"thresholds": {"vanishing-mean": True}}, ["vanishing-mean"]),
        ({"thresholds": {"vanishing-mean": [1e-8]}}, ["vanishing-mean"]),
        ({"thresholds": {"vanishing-mean": float("nan")}}, ["vanishing-mean"]),
        ({"thresholds": {"spike-history": 2.5}}, ["spike-history"]),
        ({"thresholds": {"growth-window": 0}}, ["growth-window"]),
        ({"thresholds": 3}, ["thresholds"]),
        ({"ignore": ["dead", "deadd"]}, ["ignore", "'deadd'"]),
        ({"ignore": 3}, ["ignore"]),
        ({"fail-on": "errors"}, ["fail-on", "'errors'"]),
        ({"overrides": {"params": "*"}}, ["overrides"]),
        ({"overrides": ["*.bias"]}, ["overrides[0]"]),
        ({"overrides": [{"ignore": ["dead"]}]}, ["overrides[0]", "params"]),
        ({"overrides": [{"params": []}]}, ["overrides[0]", "params"]),
        ({"overrides": [{"params": [3]}]}, ["overrides[0]", "params"]),
        ({"overrides": [{"params": "*", "ignor": ["dead"]}]}, ["overrides[0]", "'ignor'"]),
        (
            {"overrides": [{"params": "*"}, {"params": "*", "ignore": ["vanish"]}]},
            ["overrides[1]", "'vanish'"],
        ),
        ({"overrides": [{"params": "*", "thresholds": {"spike": 3}}]}, ["overrides[0]", "'spike'"]),
        ({"thresholds": {"update-ratio-low": -1.0}}, ["update-ratio-low", "update-ratio-high"]),
        ({"thresholds": {"saturation-share": 1.5}}, ["saturation-share", "at most 1"]),
        ({"thresholds": {"dead-activations-share": 0}}, ["dead-activations-share", "above 0"]),
        ({"thresholds": {"loss-stuck-drop": 1}}, ["loss-stuck-drop", "below 1"]),
        ({"thresholds": {"update-ratio-low": -3, "update-ratio-high": -5}}, ["update-ratio-low"]),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(table: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(table, source="pyproject.toml")
    message = str(info.value)
    assert message.startswith("pyproject.toml")
    for name in names:
        assert name in message


def test_config_errors_are_gradcheck_errors() -> None:
    assert issubclass(ConfigError, GradcheckError)


def test_bad_key_in_a_file_names_the_file_and_the_key(tmp_path) -> None:
    path = write_toml(tmp_path / "pyproject.toml", "[tool.gradcheck.thresholds]\nvanishing-mean = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(start=tmp_path)
    assert str(path) in str(info.value) and "vanishing-mean" in str(info.value)


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path) -> None:
    path = write_toml(tmp_path / "bad.toml", "fail-on = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_explicit_values_left_in_the_wrong_order_name_both_keys() -> None:
    config = config_from_mapping({"thresholds": {"update-ratio-low": -5.0}})
    with pytest.raises(ConfigError) as info:
        with_thresholds(config, {"update_ratio_high": -6.0}, "--threshold")
    assert "--threshold" in str(info.value)
    assert "update-ratio-low" in str(info.value) and "update-ratio-high" in str(info.value)


def test_equal_low_and_high_are_allowed() -> None:
    config = config_from_mapping({"thresholds": {"update-ratio-low": -3, "update-ratio-high": -3}})
    assert (config.thresholds.update_ratio_low, config.thresholds.update_ratio_high) == (-3.0, -3.0)


def test_numbers_given_as_strings_are_accepted() -> None:
    config = config_from_mapping({"thresholds": {"vanishing-mean": "1e-9", "growth-window": "7"}})
    assert config.thresholds.vanishing_mean == 1e-9
    assert config.thresholds.growth_window == 7


def test_parse_fail_on() -> None:
    assert [parse_fail_on(v, "x") for v in ("error", "warning", "never")] == ["error", "warning", "never"]
    with pytest.raises(ConfigError, match="--fail-on"):
        parse_fail_on("warn", "--fail-on")


def test_override_leaving_low_above_high_is_a_config_error() -> None:
    table = {"overrides": [{"params": "*.bias", "thresholds": {"update-ratio-low": -1.0}}]}
    with pytest.raises(ConfigError, match="update-ratio-low") as info:
        config_from_mapping(table, source="pyproject.toml")
    assert "overrides[0]" in str(info.value)


def test_command_line_thresholds_beat_overrides_when_pinned() -> None:
    config = config_from_mapping(
        {"overrides": [{"params": "*.bias", "thresholds": {"vanishing-mean": 1e-9, "spike-factor": 50}}]}
    )
    pinned = with_thresholds(config, {"vanishing_mean": 1e-5}, "--threshold", pin=True)
    thresholds, _ = pinned.for_param("fc.bias")
    assert thresholds.vanishing_mean == 1e-5  # the command line beats the file's override
    assert thresholds.spike_factor == 50  # what the command line does not set, the override still sets
    unpinned = with_thresholds(config, {"vanishing_mean": 1e-5})
    assert unpinned.for_param("fc.bias")[0].vanishing_mean == 1e-9
    assert unpinned.for_param("fc.weight")[0].vanishing_mean == 1e-5


def test_pinned_threshold_clashing_with_an_override_names_the_param() -> None:
    config = config_from_mapping(
        {"overrides": [{"params": "*.bias", "thresholds": {"update-ratio-low": -3.0}}]}
    )
    pinned = with_thresholds(config, {"update_ratio_high": -3.2}, "--threshold", pin=True)
    with pytest.raises(ConfigError) as info:
        pinned.for_param("fc.bias")
    assert "'fc.bias'" in str(info.value) and "update-ratio-low" in str(info.value)


@pytest.mark.parametrize("value", [0, -1e-3])
def test_non_positive_vanishing_relative_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError, match="vanishing-relative"):
        config_from_mapping({"thresholds": {"vanishing-relative": value}})


# --- overrides by glob -------------------------------------------------------------------------------


def test_for_param_without_overrides_is_the_base() -> None:
    config = config_from_mapping({"ignore": ["spike"], "thresholds": {"vanishing-mean": 1e-9}})
    thresholds, ignore = config.for_param("anything")
    assert thresholds == Thresholds(vanishing_mean=1e-9)
    assert ignore == frozenset({"spike"})


@pytest.mark.parametrize(
    ("param", "dead_ignored", "vanishing_mean"),
    [
        ("model.embed_tokens.weight", True, 1e-7),
        ("encoder.embeddings.word.weight", True, 1e-7),
        ("encoder.layers.0.attn.q_proj.bias", False, 1e-9),
        ("encoder.layers.0.attn.q_proj.weight", False, 1e-7),
        ("Model.Embed.weight", False, 1e-7),  # globs are case-sensitive
        ("embed.weight", False, 1e-7),  # "*.embed*" needs a dot before "embed"
    ],
)
def test_overrides_apply_by_glob(param: str, dead_ignored: bool, vanishing_mean: float) -> None:
    config = config_from_mapping(
        {
            "ignore": ["growth"],
            "overrides": [
                {"params": ["*.embed*"], "ignore": ["dead"]},
                {"params": "*.bias", "thresholds": {"vanishing-mean": 1e-9}},
            ],
        }
    )
    thresholds, ignore = config.for_param(param)
    assert ("dead" in ignore) is dead_ignored
    assert "growth" in ignore  # the global ignore always stays
    assert thresholds.vanishing_mean == vanishing_mean
    assert thresholds.exploding_mean == 1e6


def test_later_overrides_win_and_ignores_add_up() -> None:
    config = config_from_mapping(
        {
            "thresholds": {"exploding-mean": 1e5},
            "overrides": [
                {"params": "layers.*", "ignore": ["dead"], "thresholds": {"vanishing-mean": 1e-8}},
                {
                    "params": ["*.bias", "*.gamma"],
                    "ignore": ["spike"],
                    "thresholds": {"vanishing-mean": 1e-10},
                },
            ],
        }
    )
    thresholds, ignore = config.for_param("layers.3.bias")
    assert thresholds.vanishing_mean == 1e-10
    assert thresholds.exploding_mean == 1e5
    assert ignore == frozenset({"dead", "spike"})
    thresholds, ignore = config.for_param("layers.3.weight")
    assert (thresholds.vanishing_mean, ignore) == (1e-8, frozenset({"dead"}))


def test_override_matches_any_of_its_globs() -> None:
    override = Override(params=("*.bias", "norm*"))
    assert override.matches("fc.bias") and override.matches("norm.weight")
    assert not override.matches("fc.weight")
