"""summaries.summary_block: a file's stats-mode summaries as one StatsBlock, the same as entry by entry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck.analysis.stats import TensorStats, summarize_array
from gradcheck.analysis.summaries import shape_of, stats_from_entry, summary_block, summary_entry
from gradcheck.analysis.units import from_bools

RNG = np.random.default_rng(3)


def entry_by_entry(table: dict) -> tuple[dict, list, list]:
    """What runs.py did before blocks: stats_from_entry then shape_of per entry, in order."""
    stats, shapes = {}, []
    for key, entry in table.items():
        stats[key] = stats_from_entry(entry)
        shapes.append(shape_of(entry))
    return stats, shapes, [str(e.get("dtype", "?")) for e in table.values()]


def outcome(function, table: dict) -> object:
    try:
        return function(table)
    except (ValueError, TypeError) as error:
        return (type(error).__name__, str(error))


def as_compared(summaries) -> tuple:
    stats = summaries.block.as_dict()
    return stats, [s.alive for s in stats.values()], list(summaries.shapes), list(summaries.dtypes)


def valid_table(count: int) -> dict:
    table = {}
    for i in range(count):
        shape = tuple(int(d) for d in RNG.integers(0, 5, int(RNG.integers(0, 3))))
        values = RNG.standard_normal(shape).astype(np.float32)
        values[RNG.random(shape) < 0.3] = 0
        stats = summarize_array(values)
        if shape and values.size and i % 2:
            stats = TensorStats(*[getattr(stats, f) for f in ("count", "nan", "inf", "zeros")],
                                stats.abs_min, stats.abs_max, stats.abs_sum, stats.sq_sum,
                                alive=from_bools(np.any(values.reshape(shape[0], -1) != 0, axis=1)))  # fmt: skip
        table[f"grad/p{i}"] = summary_entry(stats, shape, "F32" if i % 3 else "BF16")
    return json.loads(json.dumps(table))  # as parse_summaries gives it


def test_a_valid_table_gives_the_entries_bit_for_bit() -> None:
    table = valid_table(40)
    got = summary_block(table)
    stats, shapes, dtypes = entry_by_entry(table)
    assert as_compared(got) == (stats, [s.alive for s in stats.values()], shapes, dtypes)
    assert list(got.block.keys) == list(table)


def test_special_values_and_scales_are_read_as_entry_by_entry() -> None:
    entry = summary_entry(TensorStats(3, 3, 0, 0), (3,), "F64")  # no finite value: abs_min "inf"
    scaled = summary_entry(TensorStats(2, 0, 0, 0, 1.0, 2.0, 1.5, 1.25, scale=2.0**1000), (2,), "F64")
    table = json.loads(
        json.dumps({"grad/a": entry, "grad/b": scaled, "grad/c": {**scaled, "abs_sum": "inf"}})
    )
    got = summary_block(table)
    assert got.block.abs_min[0] == math.inf and got.block.scale[1] == 2.0**1000
    assert as_compared(got)[0] == entry_by_entry(table)[0]


BAD_VALUES = [None, -1, 1.5, "nan", "-inf", "x", True, 2**64, 10**400, [1], -0.5, float("nan")]
FIELDS = [
    "count",
    "nan",
    "inf",
    "zeros",
    "abs_min",
    "abs_max",
    "abs_sum",
    "sq_sum",
    "scale",
    "shape",
    "alive",
]


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 6),
    damage=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(FIELDS), st.sampled_from(BAD_VALUES)), max_size=3
    ),
    drop=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(FIELDS)), max_size=2),
)
def test_any_damage_gives_the_same_result_or_error_as_entry_by_entry(
    size: int, damage: list, drop: list
) -> None:
    table = valid_table(size)
    keys = list(table)
    for index, field, value in damage:
        table[keys[index % size]][field] = value
    for index, field in drop:
        table[keys[index % size]].pop(field, None)
    expected = outcome(entry_by_entry, table)
    got = outcome(summary_block, table)
    if isinstance(expected, tuple) and isinstance(expected[0], str):
        assert got == expected
    else:
        stats, shapes, dtypes = expected
        assert as_compared(got) == (stats, [s.alive for s in stats.values()], shapes, dtypes)


def test_an_empty_table_is_an_empty_block() -> None:
    got = summary_block({})
    assert len(got.block) == 0 and got.shapes == () and got.dtypes == ()


@pytest.mark.parametrize("count", [2**62, 2**63 - 1])
def test_huge_counts_take_the_entry_by_entry_path(count: int) -> None:
    entry = {"shape": [count], "dtype": "F32", "count": count, "nan": count, "inf": 0, "zeros": 0,
             "abs_min": "inf", "abs_max": 0.0, "abs_sum": 0.0, "sq_sum": 0.0}  # fmt: skip
    assert summary_block({"grad/w": entry}).block.count[0] == count
