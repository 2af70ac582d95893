"""The run as columns (analysis/columns.py): the per-object view and the vectorised properties agree bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradcheck.analysis.columns import KINDS, StatsBlock, columns_from_tensors, derived_from_rows
from gradcheck.analysis.metrics import derive
from gradcheck.analysis.runs import load_run

SAMPLES = sorted(p for p in (Path(__file__).parent.parent / "sample_runs").iterdir() if p.is_dir())


@pytest.mark.parametrize("run_dir", SAMPLES, ids=lambda p: p.name)
def test_columns_hold_every_tensor_of_the_run(run_dir: Path) -> None:
    run = load_run(run_dir)
    columns = columns_from_tensors(run.steps, run.params, run.tensors)
    assert dict(columns.cells()) == run.tensors
    for key, tensor in run.tensors.items():
        found = columns.tensor(*key)
        assert found is not None and found.stats.alive == tensor.stats.alive


@pytest.mark.parametrize("run_dir", SAMPLES, ids=lambda p: p.name)
def test_vectorised_properties_equal_the_per_object_ones(run_dir: Path) -> None:
    run = load_run(run_dir)
    columns = columns_from_tensors(run.steps, run.params, run.tensors)
    for (step, param, kind), tensor in run.tensors.items():
        s, p = columns.step_index(step), columns.param_index(param)
        for name in ("mean_abs", "norm", "rms", "min_abs", "max_abs"):
            ours, theirs = getattr(columns.kinds[kind], name)[s, p], getattr(tensor.stats, name)
            assert ours == theirs or (np.isnan(ours) and np.isnan(theirs)), (name, step, param, kind)


def test_absent_cells_are_none_and_not_present() -> None:
    run = load_run(SAMPLES[0])
    columns = columns_from_tensors(run.steps, run.params, run.tensors)
    assert columns.tensor(run.steps[-1] + 1, run.params[0], "grad") is None
    assert columns.tensor(run.steps[0], "no.such.param", "grad") is None
    assert set(columns.kinds) == set(KINDS)


def test_stats_block_round_trips_per_object_stats() -> None:
    run = load_run(SAMPLES[0])
    stats = {
        f"{kind}/{param}": t.stats for (step, param, kind), t in run.tensors.items() if step == run.steps[0]
    }
    block = StatsBlock.from_stats(stats)
    assert len(block) == len(stats)
    assert block.as_dict() == stats
    assert [block.stats(i).alive for i in range(len(block))] == [s.alive for s in stats.values()]


def test_derived_reference_marks_every_row() -> None:
    run = load_run(SAMPLES[0])
    columns = columns_from_tensors(run.steps, run.params, run.tensors)
    rows = derive(run)
    derived = derived_from_rows(columns, rows)
    assert int(derived.present.sum()) == len(rows)
    first = rows[(run.steps[-1], run.params[0])]
    s, p = columns.step_index(first.step), columns.param_index(first.param)
    assert derived.update_ratio[s, p] == first.update_ratio or first.update_ratio is None
