"""The context metadata contract: what the recorders write is what the reader parses back."""

import json
import math

from gradcheck.analysis.context import (
    StepContext,
    context_metadata,
    parse_context,
    parse_scalars,
    scalars_metadata,
)


def test_round_trip_keeps_every_field() -> None:
    context = StepContext(
        framework="torch", optimizer="AdamW", lr={"fc.weight": 1e-3, "fc.bias": 2e-3}, loss_scale=65536.0,
        skipped_count=2, skipped=(3, 7), grad_norm=4.6, clip_coef=0.22, max_grad_norm=1.0, accumulation=4,
        modules={"fc.weight": "Linear", "fc.bias": "Linear"},
    )  # fmt: skip
    parsed, problems = parse_context(context_metadata(context))
    assert problems == []
    assert parsed == context
    assert parsed.clipped is True


def test_only_recorded_fields_are_written() -> None:
    assert json.loads(context_metadata(StepContext(framework="optax"))) == {
        "version": 1,
        "framework": "optax",
    }
    assert parse_context(context_metadata(StepContext()))[0].clipped is None


def test_malformed_fields_are_dropped_one_by_one() -> None:
    text = json.dumps({"optimizer": "SGD", "lr": {"w": "fast"}, "accumulation": 0, "skipped": [1.5], "x": 1})
    parsed, problems = parse_context(text)
    assert parsed == StepContext(optimizer="SGD")
    assert len(problems) == 3 and all("gradcheck.context" in line for line in problems)


def test_garbage_is_an_empty_context_with_a_problem() -> None:
    for text in ("not json", "[1, 2]", "[" * 5000):
        parsed, problems = parse_context(text)
        assert parsed == StepContext() and len(problems) == 1


def test_scalars_round_trip_with_nonfinite_loss() -> None:
    values, problems = parse_scalars(scalars_metadata({"loss": math.inf, "acc": 0.5}))
    assert problems == [] and values == {"loss": math.inf, "acc": 0.5}
    values, problems = parse_scalars(json.dumps({"loss": "high", "lr": 0.1}))
    assert values == {"lr": 0.1} and len(problems) == 1
