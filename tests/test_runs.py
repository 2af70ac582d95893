"""Tests for run discovery: which files count, kind and step of each tensor, parameter order, duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runs_builder import plain_name, write_file, write_plain, write_run, write_step
from safetensors import safe_open

from gradcheck.analysis.errors import RunError
from gradcheck.analysis.runs import Run, load_run
from gradcheck.analysis.stats import summarize_array


def arrays(seed: int, names: list[str], shape: tuple[int, ...] = (4, 3)) -> dict[str, np.ndarray]:
    """Small float32 arrays, one per name."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name in names}


def kinds_and_steps(run: Run) -> set[tuple[int, str, str]]:
    """The (step, param, kind) keys a run holds."""
    return set(run.tensors)


# --- kind and step from file names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "kind", "step"),
    [
        ("grads_100", "grad", 100),
        ("grad_step100", "grad", 100),
        ("step100_grads", "grad", 100),
        ("gradients_100", "grad", 100),
        ("params_100", "param", 100),
        ("param_step100", "param", 100),
        ("weights_100", "param", 100),
        ("updates_100", "update", 100),
        ("update_step100", "update", 100),
        ("step100_updates", "update", 100),
        ("GRADS_7", "grad", 7),
        ("run3_grads_step250", "grad", 250),  # the last integer is the step
        ("grads_00000042", "grad", 42),
        ("grads", "grad", 0),  # no integer at all
    ],
)
def test_kind_and_step_from_the_file_name(tmp_path, file_name: str, kind: str, step: int) -> None:
    write_file(tmp_path / f"{file_name}.safetensors", arrays(0, ["fc.weight"]))
    run = load_run(tmp_path)
    assert run.unreadable == ()
    assert kinds_and_steps(run) == {(step, "fc.weight", kind)}
    assert run.steps == (step,)


@pytest.mark.parametrize("pattern", ["{kinds}_{step}", "{kind}_step{step}", "step{step}_{kinds}"])
def test_plain_layout_of_a_whole_run(tmp_path, pattern: str) -> None:
    steps = {s: {"grad": arrays(s, ["a", "b"]), "param": arrays(s + 10, ["a", "b"])} for s in (10, 20)}
    write_run(tmp_path, steps, layout="plain", pattern=pattern)
    run = load_run(tmp_path)
    assert run.steps == (10, 20)
    assert kinds_and_steps(run) == {
        (s, p, k) for s in (10, 20) for p in ("a", "b") for k in ("grad", "param")
    }


@pytest.mark.parametrize(
    ("prefix", "kind"),
    [
        ("grad", "grad"),
        ("grads", "grad"),
        ("param", "param"),
        ("params", "param"),
        ("update", "update"),
        ("updates", "update"),
    ],
)
def test_kind_from_key_prefix_singular_and_plural(tmp_path, prefix: str, kind: str) -> None:
    write_file(tmp_path / "snapshot_5.safetensors", {f"{prefix}/enc.layers.0.weight": np.ones(3, np.float32)})
    run = load_run(tmp_path)
    assert kinds_and_steps(run) == {(5, "enc.layers.0.weight", kind)}


def test_file_name_kind_wins_over_a_key_prefix_of_another_kind(tmp_path) -> None:
    # Issue 11: a plain dump's name says what it holds; a key prefix naming another kind is part of the name.
    write_file(
        tmp_path / "grads_3.safetensors", {"param/w": np.ones(2, np.float32), "b": np.ones(2, np.float32)}
    )
    run = load_run(tmp_path)
    assert kinds_and_steps(run) == {(3, "param/w", "grad"), (3, "b", "grad")}


def test_a_key_prefix_agreeing_with_the_file_name_is_dropped(tmp_path) -> None:
    write_file(tmp_path / "grads_3.safetensors", {"grad/w": np.ones(2, np.float32)})
    assert kinds_and_steps(load_run(tmp_path)) == {(3, "w", "grad")}


def test_flax_style_plain_run_pairs_grads_and_params(tmp_path) -> None:
    # flatten_dict(grads, sep="/") keys start with the `params` collection even in the gradients file.
    for step in (0, 1):
        write_file(
            tmp_path / f"grads_{step}.safetensors", {"params/Dense_0/kernel": np.ones((2, 3), np.float32)}
        )
        write_file(
            tmp_path / f"params_{step}.safetensors",
            {
                "params/Dense_0/kernel": np.ones((2, 3), np.float32),
                "batch_stats/bn/mean": np.ones(3, np.float32),
            },
        )
    run = load_run(tmp_path)
    assert run.params == ("Dense_0/kernel", "batch_stats/bn/mean")
    assert (
        run.get(1, "Dense_0/kernel", "grad") is not None and run.get(1, "Dense_0/kernel", "param") is not None
    )


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (["module.fc.weight", "module.fc.bias"], ["fc.weight", "fc.bias"]),  # DDP
        (["_orig_mod.fc.weight", "_orig_mod.fc.bias"], ["fc.weight", "fc.bias"]),  # torch.compile
        (["module._orig_mod.fc.weight", "module.head.weight"], ["fc.weight", "head.weight"]),
        (["model.fc.weight", "model.head.weight"], ["fc.weight", "head.weight"]),  # Lightning's self.model
        (
            ["model.layers.0.weight", "lm_head.weight"],
            ["model.layers.0.weight", "lm_head.weight"],
        ),  # HF: kept
    ],
)
def test_wrapper_prefixes_are_stripped(tmp_path, raw: list[str], shown: list[str]) -> None:
    write_file(tmp_path / "grads_1.safetensors", {name: np.ones(2, np.float32) for name in raw})
    assert set(load_run(tmp_path).params) == set(shown)


def test_stripping_that_would_merge_two_parameters_is_not_done(tmp_path) -> None:
    write_file(tmp_path / "grads_1.safetensors", {n: np.ones(2, np.float32) for n in ("_orig_mod.w", "w")})
    assert set(load_run(tmp_path).params) == {"_orig_mod.w", "w"}


def test_file_name_with_two_kinds_is_fine_when_every_key_is_prefixed(tmp_path) -> None:
    write_file(tmp_path / "grads_and_params_3.safetensors", {"grad/w": np.ones(2, np.float32)})
    assert kinds_and_steps(load_run(tmp_path)) == {(3, "w", "grad")}


@pytest.mark.parametrize(
    "file_name", ["grads_params_100", "step100_grads_updates", "weights_and_gradients_1"]
)
def test_name_naming_two_kinds_makes_the_file_unreadable(tmp_path, file_name: str) -> None:
    bad = write_file(tmp_path / f"{file_name}.safetensors", arrays(0, ["w"]))
    write_plain(tmp_path, 100, "grad", arrays(1, ["w"]))  # the rest of the run still loads
    run = load_run(tmp_path)
    assert [note.file for note in run.unreadable] == [str(bad)]
    reason = run.unreadable[0].reason
    assert "several kinds" in reason
    assert kinds_and_steps(run) == {(100, "w", "grad")}


def test_name_naming_no_kind_with_unprefixed_keys_is_unreadable(tmp_path) -> None:
    bad = write_file(tmp_path / "snapshot_100.safetensors", arrays(0, ["fc.weight"]))
    write_step(tmp_path, 100, {"grad": arrays(1, ["fc.bias"])})
    run = load_run(tmp_path)
    assert [note.file for note in run.unreadable] == [str(bad)]
    reason = run.unreadable[0].reason
    assert "'fc.weight'" in reason
    assert "grad/" in reason  # tells how to fix it
    assert kinds_and_steps(run) == {(100, "fc.bias", "grad")}


def test_metadata_step_wins_over_the_file_name(tmp_path) -> None:
    write_file(tmp_path / "grads_100.safetensors", arrays(0, ["w"]), {"step": "7"})
    assert load_run(tmp_path).steps == (7,)


def test_metadata_step_that_is_not_an_integer_makes_the_file_unreadable(tmp_path) -> None:
    bad = write_file(tmp_path / "grads_100.safetensors", arrays(0, ["w"]), {"step": "ten"})
    run = load_run(tmp_path)
    assert run.steps == ()
    assert [note.file for note in run.unreadable] == [str(bad)]
    assert "'ten'" in run.unreadable[0].reason


@pytest.mark.parametrize("step", ["--5", "²", "", "1e3", "3.0"])
def test_malformed_metadata_step_is_an_unreadable_note_not_a_crash(tmp_path, step: str) -> None:
    # "--5" and "²" once passed an isdigit() pre-check and then made int() raise ValueError.
    write_file(tmp_path / "grads_100.safetensors", arrays(0, ["w"]), {"step": step})
    run = load_run(tmp_path)
    assert len(run.unreadable) == 1
    assert "step" in run.unreadable[0].reason


@pytest.mark.parametrize(("step", "expected"), [(" 12 ", 12), ("-3", -3), ("007", 7)])
def test_metadata_step_forms_that_are_integers(tmp_path, step: str, expected: int) -> None:
    write_file(tmp_path / "grads_100.safetensors", arrays(0, ["w"]), {"step": step})
    assert load_run(tmp_path).steps == (expected,)


def test_unknown_run_format_is_unreadable(tmp_path) -> None:
    write_file(tmp_path / "step_1.safetensors", {"grad/w": np.ones(2, np.float32)}, {"gradcheck.format": "2"})
    good = write_step(tmp_path, 2, {"grad": arrays(0, ["w"])})
    run = load_run(tmp_path)
    assert run.steps == (2,)
    assert len(run.unreadable) == 1 and "'2'" in run.unreadable[0].reason
    assert run.get(2, "w", "grad").file == str(good)


# --- the preferred layout ----------------------------------------------------------------------------


def test_prefixed_layout_round_trip(tmp_path) -> None:
    names = ["embed.weight", "layers.0.weight", "layers.0.bias"]
    steps = {
        s: {
            "grad": arrays(s, names, (3,)),
            "param": arrays(s + 1, names, (3,)),
            "update": arrays(s + 2, names, (3,)),
        }
        for s in (0, 100, 200)
    }
    files = write_run(tmp_path, steps, order=names)
    assert [f.name for f in files] == [
        "step_00000000.safetensors",
        "step_00000100.safetensors",
        "step_00000200.safetensors",
    ]
    run = load_run(tmp_path)
    assert run.steps == (0, 100, 200)
    assert run.params == tuple(names)
    assert run.unreadable == () and run.skipped == ()
    for step, kinds in steps.items():
        for kind, named in kinds.items():
            for name, array in named.items():
                tensor = run.get(step, name, kind)
                assert tensor is not None
                assert tensor.shape == (3,)
                assert tensor.dtype == "F32"
                assert tensor.file == str(tmp_path / f"step_{step:08d}.safetensors")
                np.testing.assert_allclose(tensor.stats.abs_sum, summarize_array(array).abs_sum, rtol=1e-12)
    assert run.get(300, "embed.weight", "grad") is None


def test_steps_sorted_numerically_not_by_file_name(tmp_path) -> None:
    for step in (9, 10, 100, 2):
        write_plain(tmp_path, step, "grad", arrays(step, ["w"]))
    assert load_run(tmp_path).steps == (2, 9, 10, 100)


# --- parameter order ---------------------------------------------------------------------------------


def test_natural_order_without_metadata(tmp_path) -> None:
    names = ["layers.10.weight", "layers.2.weight", "layers.1.weight", "head.weight"]
    write_plain(tmp_path, 1, "grad", arrays(0, names))
    assert load_run(tmp_path).params == (
        "head.weight",
        "layers.1.weight",
        "layers.2.weight",
        "layers.10.weight",
    )


def test_metadata_order_is_model_order(tmp_path) -> None:
    order = ["embed.weight", "layers.10.weight", "layers.2.weight", "head.weight"]
    write_step(tmp_path, 1, {"grad": arrays(0, sorted(order))}, order=order)
    assert load_run(tmp_path).params == tuple(order)


def test_params_missing_from_metadata_order_follow_in_natural_order(tmp_path) -> None:
    write_step(
        tmp_path,
        1,
        {"grad": arrays(0, ["b.weight", "x.10", "x.9", "a.weight"])},
        order=["b.weight", "not.recorded", "a.weight"],
    )
    assert load_run(tmp_path).params == ("b.weight", "a.weight", "x.9", "x.10")


def test_unparseable_order_falls_back_to_natural_order(tmp_path) -> None:
    write_file(
        tmp_path / "step_1.safetensors",
        {"grad/l.10": np.ones(2, np.float32), "grad/l.2": np.ones(2, np.float32)},
        {"order": "not json"},
    )
    assert load_run(tmp_path).params == ("l.2", "l.10")


def test_order_of_the_run_is_json_list_from_metadata(tmp_path) -> None:
    path = write_step(tmp_path, 4, {"grad": arrays(0, ["z", "a"])}, order=["z", "a"])
    with safe_open(str(path), "numpy") as handle:
        metadata = handle.metadata()
    assert metadata == {"gradcheck.format": "1", "step": "4", "order": json.dumps(["z", "a"])}


# --- which files count -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ignored",
    [
        ".step_00000002.safetensors",
        "step_00000002.safetensors.tmp",
        "step_00000002.safetensors.partial",
        "notes.txt",
        "grads_2.npy",
    ],
)
def test_hidden_and_in_progress_files_are_ignored(tmp_path, ignored: str) -> None:
    write_step(tmp_path, 1, {"grad": arrays(0, ["w"])})
    (tmp_path / ignored).write_bytes(b"half-written garbage")  # would be unreadable if it were read
    run = load_run(tmp_path)
    assert run.steps == (1,)
    assert run.unreadable == ()


def test_valid_content_in_a_tmp_file_is_still_ignored(tmp_path) -> None:
    write_step(tmp_path, 1, {"grad": arrays(0, ["w"])})
    write_step(tmp_path, 2, {"grad": arrays(1, ["w"])}, name="step_00000002.safetensors.tmp")
    write_step(tmp_path, 3, {"grad": arrays(2, ["w"])}, name=".step_00000003.safetensors")
    assert load_run(tmp_path).steps == (1,)


def test_only_ignored_files_is_a_run_error(tmp_path) -> None:
    write_step(tmp_path, 2, {"grad": arrays(0, ["w"])}, name="step_2.safetensors.partial")
    with pytest.raises(RunError, match="no .safetensors snapshot files"):
        load_run(tmp_path)


def test_missing_directory_is_a_run_error(tmp_path) -> None:
    with pytest.raises(RunError, match="no such directory"):
        load_run(tmp_path / "nope")


def test_a_file_instead_of_a_directory_is_a_run_error(tmp_path) -> None:
    path = write_step(tmp_path, 1, {"grad": arrays(0, ["w"])})
    with pytest.raises(RunError, match="not a directory"):
        load_run(path)


def test_parent_of_runs_names_the_subfolders(tmp_path) -> None:
    write_step(tmp_path / "run_a", 1, {"grad": arrays(0, ["w"])})
    write_step(tmp_path / "run_b", 1, {"grad": arrays(0, ["w"])})
    with pytest.raises(RunError) as info:
        load_run(tmp_path)
    assert "run_a" in str(info.value) and "run_b" in str(info.value)


def test_corrupt_file_becomes_a_note_and_the_rest_loads(tmp_path) -> None:
    write_step(tmp_path, 1, {"grad": arrays(0, ["w"])})
    bad = tmp_path / "step_00000002.safetensors"
    bad.write_bytes(b"\x00" * 3)
    run = load_run(tmp_path)
    assert run.steps == (1,)
    assert [note.file for note in run.unreadable] == [str(bad)]
    assert run.unreadable[0].reason


def test_non_float_tensors_are_skipped_with_a_note(tmp_path) -> None:
    path = write_file(
        tmp_path / "step_1.safetensors",
        {"grad/w": np.ones(3, np.float32), "param/token_ids": np.arange(3, dtype=np.int64)},
        {"step": "1"},
    )
    run = load_run(tmp_path)
    assert kinds_and_steps(run) == {(1, "w", "grad")}
    assert [(note.file, note.tensor) for note in run.skipped] == [(str(path), "param/token_ids")]


# --- duplicates --------------------------------------------------------------------------------------


def test_same_tensor_in_two_files_names_both(tmp_path) -> None:
    first = write_plain(tmp_path, 100, "grad", arrays(0, ["fc.weight"]))
    second = write_step(tmp_path, 100, {"grad": arrays(1, ["fc.weight"])})
    with pytest.raises(RunError) as info:
        load_run(tmp_path)
    message = str(info.value)
    assert str(first) in message and str(second) in message
    assert "'fc.weight'" in message and "100" in message


def test_same_param_different_kind_or_step_is_not_a_duplicate(tmp_path) -> None:
    write_plain(tmp_path, 100, "grad", arrays(0, ["w"]))
    write_plain(tmp_path, 100, "param", arrays(1, ["w"]))
    write_plain(tmp_path, 200, "grad", arrays(2, ["w"]))
    assert kinds_and_steps(load_run(tmp_path)) == {
        (100, "w", "grad"),
        (100, "w", "param"),
        (200, "w", "grad"),
    }


def test_metadata_step_can_make_two_files_collide(tmp_path) -> None:
    a = write_file(tmp_path / "grads_1.safetensors", arrays(0, ["w"]), {"step": "5"})
    b = write_file(tmp_path / "grads_5.safetensors", arrays(1, ["w"]))
    with pytest.raises(RunError) as info:
        load_run(tmp_path)
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_two_keys_for_one_tensor_in_one_file_name_both_keys(tmp_path) -> None:
    path = write_file(
        tmp_path / "step_1.safetensors", {"grad/w": np.ones(2, np.float32), "grads/w": np.ones(2, np.float32)}
    )
    run = load_run(tmp_path)
    assert [note.file for note in run.unreadable] == [str(path)]
    assert "grad/w" in run.unreadable[0].reason and "grads/w" in run.unreadable[0].reason


def test_builder_plain_names() -> None:
    assert plain_name("grad", 100) == "grads_100.safetensors"
    assert plain_name("param", 3, "{kind}_step{step}") == "param_step3.safetensors"
    assert plain_name("update", 7, "step{step}_{kinds}") == "step7_updates.safetensors"


def test_builder_rejects_unknown_layout(tmp_path) -> None:
    with pytest.raises(ValueError, match="layout"):
        write_run(tmp_path, {}, layout="nested")


def test_builder_writes_nothing_else(tmp_path) -> None:
    write_run(tmp_path, {1: {"grad": arrays(0, ["w"])}, 2: {"grad": arrays(1, ["w"])}}, layout="plain")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["grads_1.safetensors", "grads_2.safetensors"]
