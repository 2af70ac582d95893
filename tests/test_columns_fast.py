"""The fast columnar paths (issue #14) against the per-object reference: load_run's filling, derive_columns,
Report.rows, and `previous=` reloading; all bit for bit."""

from __future__ import annotations

import gc
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from gradcheck.analysis import runs as runs_module
from gradcheck.analysis.columns import KINDS, Tensor, columns_from_tensors, derived_from_rows
from gradcheck.analysis.errors import RunError
from gradcheck.analysis.filling import fill, fill_sharded
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.metrics import derive, derive_columns
from gradcheck.analysis.runs import Run, load_run
from gradcheck.analysis.stats import summarize_array

SAMPLES = sorted(p for p in (Path(__file__).parent.parent / "sample_runs").iterdir() if p.is_dir())
DERIVED = ("update_ratio", "grad_param_ratio", "layer_norm", "layer_rms", "depth")
MASKS = ("present", "grad_param_known", "layer_known")


def cells(run: Run) -> dict[tuple[int, str, str], tuple[Tensor, int | None]]:
    """Every tensor of a run with its unit bitmap (Tensor equality ignores the bitmap)."""
    return {key: (tensor, tensor.stats.alive) for key, tensor in run.columns.cells()}


def same_bits(one: np.ndarray, other: np.ndarray) -> bool:
    """Equal arrays, NaN where NaN, and the same sign of zero."""
    return np.array_equal(one, other, equal_nan=True) and np.array_equal(np.signbit(one), np.signbit(other))


def assert_derived_equal(run: Run) -> None:
    """derive_columns(run.columns) is derive(run) as arrays, bit for bit."""
    reference = derived_from_rows(run.columns, derive(run))
    fast = derive_columns(run.columns)
    for name in DERIVED:
        assert same_bits(getattr(fast, name), getattr(reference, name)), name
    for name in MASKS:
        assert np.array_equal(getattr(fast, name), getattr(reference, name)), name
    for p, param in enumerate(run.params):  # the layer of every parameter (layer order is model order)
        if reference.present[:, p].any():
            assert fast.layers[fast.layer_index[p]] == reference.layers[reference.layer_index[p]], param


@pytest.mark.parametrize("run_dir", SAMPLES, ids=lambda p: p.name)
def test_filled_columns_equal_the_per_object_assembly(run_dir: Path) -> None:
    paths = [str(p) for p in runs_module.find_snapshot_files(run_dir)]
    reads, _ = runs_module._read_files(paths, None, None, str(run_dir))
    fast, slow = fill(list(reads), None), fill_sharded(reads)
    assert fast.columns.params == slow.columns.params
    assert np.array_equal(fast.columns.steps, slow.columns.steps)
    found = {key: (t, t.stats.alive) for key, t in fast.columns.cells()}
    assert found == {key: (t, t.stats.alive) for key, t in slow.columns.cells()}
    assert len(found) == sum(len(read.params) for read in reads)


@pytest.mark.parametrize("run_dir", SAMPLES, ids=lambda p: p.name)
def test_derive_columns_equals_derive_on_sample_runs(run_dir: Path) -> None:
    assert_derived_equal(load_run(run_dir))


@pytest.mark.parametrize("run_dir", SAMPLES[:3], ids=lambda p: p.name)
def test_report_rows_view_equals_derive(run_dir: Path) -> None:
    report = inspect_run(run_dir)
    reference = derive(report.run)
    assert list(report.rows) == list(reference)
    for key, row in reference.items():
        ours = report.rows[key]
        for name in ("grad", "value", "update", "layer", "update_ratio", "depth"):
            assert getattr(ours, name) == getattr(row, name), (key, name)
        for name in ("grad_param_ratio", "layer_norm", "layer_rms"):  # may be a real NaN
            a, b = getattr(ours, name), getattr(row, name)
            assert a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b)), (
                key,
                name,
            )
    assert (10**9, report.run.params[0]) not in report.rows


# Magnitudes that reach every branch of the sums: plain, F64 beyond the safe range (scaled sums), zeros.
VALUES = st.one_of(
    st.floats(-10, 10),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e300, -1e305, 1e-300, 2e-310, 1e200]),
)
PARAMS = ("enc.0.weight", "enc.0.bias", "enc.1.weight", "head", "dec.w_W", "dec.w_b")


@st.composite
def tensor_runs(draw: st.DrawFn) -> Run:
    """A run of random summaries: some kinds missing, NaN/Inf, F64 values needing scaled sums."""
    steps = sorted(draw(st.sets(st.integers(0, 50), min_size=1, max_size=4)))
    params = draw(st.lists(st.sampled_from(PARAMS), min_size=1, max_size=len(PARAMS), unique=True))
    tensors = {}
    for step in steps:
        for param in params:
            for kind in KINDS:
                if draw(st.integers(0, 4)) == 0:
                    continue
                values = np.array(draw(st.lists(VALUES, min_size=1, max_size=6)), dtype=np.float64)
                tensors[(step, param, kind)] = Tensor(summarize_array(values), (values.size,), "F64", "f")
    present = [p for p in params if any(key[1] == p for key in tensors)] or params[:1]
    columns = columns_from_tensors(steps, present, tensors)
    return Run("run", tuple(steps), tuple(present), columns, (), ())


@settings(max_examples=300, deadline=None)
@given(tensor_runs())
def test_derive_columns_equals_derive_on_generated_runs(run: Run) -> None:
    assert_derived_equal(run)


def write_step(folder: Path, step: int, scale: float = 1.0) -> Path:
    """One step file of a two-layer model."""
    rng = np.random.default_rng(step)
    tensors = {
        f"{kind}/{name}": (rng.standard_normal(shape) * scale).astype(np.float32)
        for kind in KINDS
        for name, shape in (("fc1.weight", (4, 3)), ("fc1.bias", (4,)), ("fc2.weight", (2, 4)))
    }
    path = folder / f"step_{step:04d}.safetensors"
    save_file(tensors, str(path))
    return path


def test_previous_reads_only_new_or_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for step in range(4):
        write_step(tmp_path, step)
    first = load_run(tmp_path)
    scanned: list[list[str]] = []
    original = runs_module.scan_files

    def spy(paths: list[str], options: object, **where: object) -> object:
        scanned.append(list(paths))
        return original(paths, options, **where)  # type: ignore[arg-type]

    monkeypatch.setattr(runs_module, "scan_files", spy)
    assert cells(load_run(tmp_path, previous=first)) == cells(first) and scanned == [[]]
    write_step(tmp_path, 4)
    (tmp_path / "step_0001.safetensors").unlink()
    changed = write_step(tmp_path, 2, scale=3.0)
    grown = load_run(tmp_path, previous=first)
    assert sorted(scanned[-1]) == sorted([str(changed), str(tmp_path / "step_0004.safetensors")])
    cold = load_run(tmp_path)
    assert cells(grown) == cells(cold) and grown.steps == (0, 2, 3, 4)
    assert cells(load_run(tmp_path, previous=grown)) == cells(cold)


def test_previous_follows_a_new_parameter_and_renamed_display_names(tmp_path: Path) -> None:
    tensors = {f"{kind}/module.fc.weight": np.ones((2, 2), np.float32) for kind in KINDS}
    save_file(tensors, str(tmp_path / "step_1.safetensors"))
    first = load_run(tmp_path)
    assert first.params == ("fc.weight",)  # DDP's prefix stripped while every name has it
    tensors = {f"grad/{name}": np.full((2, 2), 2, np.float32) for name in ("module.fc.weight", "head")}
    save_file(tensors, str(tmp_path / "step_2.safetensors"))
    assert cells(load_run(tmp_path, previous=first)) == cells(load_run(tmp_path))


def test_previous_with_sample_runs_matches_a_cold_load(tmp_path: Path) -> None:
    for sample in ("exploding_nan", "plain_dumps"):
        run_dir = tmp_path / sample
        shutil.copytree(Path(__file__).parent.parent / "sample_runs" / sample, run_dir)
        files = sorted(run_dir.glob("*.safetensors"))
        held = [f.read_bytes() for f in files[len(files) // 2 :]]
        for f in files[len(files) // 2 :]:
            f.unlink()
        half = load_run(run_dir)
        for f, data in zip(files[len(files) // 2 :], held, strict=True):
            f.write_bytes(data)
        whole, cold = load_run(run_dir, previous=half), load_run(run_dir)
        assert cells(whole) == cells(cold)
        assert (whole.skipped, whole.unreadable, whole.contexts) == (
            cold.skipped,
            cold.unreadable,
            cold.contexts,
        )
        assert_derived_equal(whole)


def test_garbage_collector_is_back_on_after_loading_even_on_error(tmp_path: Path) -> None:
    assert gc.isenabled()
    load_run(SAMPLES[0])
    assert gc.isenabled()
    folder = tmp_path / "twice"
    folder.mkdir()
    for name in ("a_1.safetensors", "b_1.safetensors"):  # one tensor in two files of one folder
        save_file({"grad/w": np.ones(2, np.float32)}, str(folder / name))
    with pytest.raises(RunError, match="is in two files"):
        load_run(folder)
    assert gc.isenabled()


def test_tensors_view_answers_like_a_dict() -> None:
    run = load_run(SAMPLES[0])
    key = (run.steps[0], run.params[0], "grad")
    assert key in run.tensors and run.tensors[key] == run.get(*key)
    assert (run.steps[0], "nope", "grad") not in run.tensors and run.get(run.steps[0], "nope", "grad") is None
    assert len(run.tensors) == len(list(run.tensors)) == len(dict(run.tensors.items()))


def test_a_grown_run_derives_only_its_new_rows_and_equals_a_full_derive(tmp_path: Path) -> None:
    for step in range(3):
        write_step(tmp_path, step)
    first = inspect_run(tmp_path)
    write_step(tmp_path, 3, scale=1e-30)
    save_file({"grad/fc9.weight": np.ones(3, np.float32)}, str(tmp_path / "step_0001_extra.safetensors"))
    (tmp_path / "step_0001_extra.safetensors").rename(tmp_path / "step_0004.safetensors")
    grown = inspect_run(tmp_path, previous=first)
    assert grown.run._fresh is not None or grown.run.params != first.run.params
    full = derive_columns(grown.run.columns)
    for name in (*DERIVED, *MASKS):
        assert same_bits(getattr(grown.derived, name), getattr(full, name)), name
    write_step(tmp_path, 5, scale=1e3)
    again = inspect_run(tmp_path, previous=grown)
    assert again.run._fresh is not None and again.run._fresh.tolist() == [5]
    full = derive_columns(again.run.columns)
    for name in (*DERIVED, *MASKS):
        assert same_bits(getattr(again.derived, name), getattr(full, name)), name
    assert_derived_equal(again.run)
