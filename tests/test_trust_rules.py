"""Issue 11/12 rules on hand-made runs: number formats, layer kinds, wrapper prefixes, the recorded order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runs_builder import write_step

from gradcheck.analysis.formatting import beyond, bound, compact, times
from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.naming import layer_role, strip_wrappers

# --- numbers in messages (issue 11 item 7, issue 12 item 4) ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "limit", "scientific", "shown"),
    [
        (-1.96, -2.0, False, "-1.96"),  # never "-2.0 > -2"
        (-1.9999, -2.0, False, "-1.9999"),
        (-2.04, -2.0, False, "-2.04"),
        (0.6, -1.2, False, "0.6"),
        (-12.9, -3.4, False, "-12.9"),
        (-3.403, -3.4, False, "-3.403"),
        (9.96e-8, 1e-7, True, "9.96e-8"),  # never "1.0e-7 < 1e-7"
        (7.6e-12, 1e-7, True, "7.6e-12"),
        (1.0000001e6, 1e6, True, "1.0000001e6"),
    ],
)
def test_a_value_never_reads_as_equal_to_its_bound(value, limit, scientific, shown) -> None:
    text = beyond(value, limit, scientific=scientific)
    assert text == shown
    assert (float(text) - limit) * (value - limit) > 0  # on the same side as the value


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1869446.0, "1.9e6×"), (101.3, "101×"), (2106.0, "2.1e3×"), (5.834, "5.83×"), (0.5, "0.5×")],
)
def test_ratios_are_compact(value: float, shown: str) -> None:
    assert times(value) == shown


def test_bounds_print_as_written_in_a_config() -> None:
    assert [bound(v) for v in (1e-7, 1e6, -2.0, -1.2, 0.7, 70.0)] == [
        "1e-7",
        "1e6",
        "-2",
        "-1.2",
        "0.7",
        "70",
    ]
    assert compact(999.7) == "1.0e3" and compact(0.004) == "4.0e-3"


# --- layer kinds (issue 11 item 3) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "module", "role"),
    [
        ("wte.weight", None, "embedding"),
        ("transformer.wpe.weight", None, "embedding"),
        ("model.embed_tokens.weight", None, "embedding"),
        ("tok_embeddings.weight", None, "embedding"),
        ("h.0.ln_1.weight", None, "norm"),
        ("layer1.0.bn2.bias", None, "norm"),
        ("encoder.norm.weight", None, "norm"),
        ("fc.weight", None, None),
        ("lnx.weight", None, None),
        ("table.weight", "Embedding", "embedding"),  # the recorded type wins over the name
        ("table.weight", "EmbeddingBag", "embedding"),
        ("scale", "LlamaRMSNorm", "norm"),
        ("embed.weight", "Linear", None),
    ],
)
def test_layer_role_from_module_type_else_name(param: str, module: str | None, role: str | None) -> None:
    assert layer_role(param, module) == role


# --- wrapper prefixes (issue 11 item 4) -------------------------------------------------------------------


def test_strip_wrappers_rules() -> None:
    assert strip_wrappers(["module.model.fc.weight", "module.model.head.bias"]) == {
        "module.model.fc.weight": "fc.weight",
        "module.model.head.bias": "head.bias",
    }
    assert strip_wrappers(["enc._orig_mod.fc.weight"]) == {"enc._orig_mod.fc.weight": "enc.fc.weight"}
    assert strip_wrappers(["params/Dense_0/kernel", "batch_stats/bn/mean"]) == {
        "params/Dense_0/kernel": "Dense_0/kernel",
        "batch_stats/bn/mean": "batch_stats/bn/mean",
    }
    assert strip_wrappers(["module."]) == {"module.": "module."}  # never an empty name


def test_module_types_are_matched_after_prefixes_are_stripped(tmp_path: Path) -> None:
    import json

    from runs_builder import snapshot_metadata, write_file

    from gradcheck.analysis.context import CONTEXT_KEY, StepContext, context_metadata

    context = context_metadata(StepContext(modules={"module.table.weight": "Embedding"}))
    for step in (0, 1):
        grad = np.zeros((100, 4), np.float32)
        grad[:3] = 1.0  # 97 % of the rows zero at every step
        metadata = {**snapshot_metadata(step, ["module.table.weight"]), CONTEXT_KEY: context}
        write_file(tmp_path / f"step_{step}.safetensors", {"grad/module.table.weight": grad}, metadata)
    report = inspect_run(tmp_path)
    assert report.run.params == ("table.weight",) and report.run.modules == {"table.weight": "Embedding"}
    assert report.findings == []
    assert json.dumps(report.run.modules)


# --- exploding-relative follows the recorded order (issue 11 item 6) ---------------------------------------


def _relative_run(root: Path, order: list[str] | None) -> set[str]:
    # `classifier` is the output layer; alphabetically it comes first, `features.1` last.
    rng = np.random.default_rng(0)
    for step in (0, 1):
        grads = {
            "features.0.weight": rng.standard_normal((8, 8)).astype(np.float32),
            "features.1.weight": rng.standard_normal((8, 8)).astype(np.float32) * 1e-4,
            "classifier.weight": rng.standard_normal((2, 8)).astype(np.float32),
        }
        write_step(root, step, {"grad": grads}, order=order)
    report = inspect_run(root)
    return {f.param for f in report.findings if f.check == "exploding-relative"}


def test_exploding_relative_uses_the_recorded_output_layer_and_never_the_alphabetical_one(tmp_path) -> None:
    order = ["features.0.weight", "features.1.weight", "classifier.weight"]
    assert _relative_run(tmp_path / "ordered", order) == set()  # classifier is as large as features.0
    assert _relative_run(tmp_path / "plain", None) == set()  # no recorded order: the check does not run
    reversed_model = [
        "classifier.weight",
        "features.0.weight",
        "features.1.weight",
    ]  # output-most: features.1
    assert _relative_run(tmp_path / "other", reversed_model) == {"features.0.weight", "classifier.weight"}


@pytest.mark.parametrize(("name", "warns"), [("embed.weight", False), ("proj.weight", True)])
def test_embeddings_get_no_update_ratio_low(tmp_path: Path, name: str, warns: bool) -> None:
    # 3 of 100 rows move each step: mean|update| is diluted 30x below what the moving rows get.
    rng = np.random.default_rng(0)
    value = rng.standard_normal((100, 8)).astype(np.float32) * 0.02
    for step in range(4):
        update = np.zeros_like(value)
        update[rng.choice(100, 3, replace=False)] = 1e-5
        grad = np.where(update != 0, 1e-2, 0).astype(np.float32)
        write_step(tmp_path, step, {"grad": {name: grad}, "param": {name: value}, "update": {name: update}})
        value = value + update
    checks = {f.check for f in inspect_run(tmp_path).findings}
    assert ("update-ratio-low" in checks) is warns
