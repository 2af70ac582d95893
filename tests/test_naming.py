"""Tests for parameter names: natural ordering and grouping into layers."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck.analysis.naming import layer_of, natural_key


def natural_sorted(names: list[str]) -> list[str]:
    """Sort with the natural key."""
    return sorted(names, key=natural_key)


def test_layers_2_before_layers_10() -> None:
    assert natural_sorted(["layers.10.weight", "layers.2.weight", "layers.1.weight"]) == [
        "layers.1.weight",
        "layers.2.weight",
        "layers.10.weight",
    ]


def test_several_numbers_compare_one_after_another() -> None:
    names = [
        "blocks.10.mlp.2.weight",
        "blocks.2.mlp.10.weight",
        "blocks.2.mlp.2.weight",
        "blocks.1.attn.weight",
    ]
    assert natural_sorted(names) == [
        "blocks.1.attn.weight",
        "blocks.2.mlp.2.weight",
        "blocks.2.mlp.10.weight",
        "blocks.10.mlp.2.weight",
    ]


def test_text_parts_still_sort_alphabetically() -> None:
    assert natural_sorted(["head.weight", "embed.weight", "encoder.layers.0.bias"]) == [
        "embed.weight",
        "encoder.layers.0.bias",
        "head.weight",
    ]


def test_numbers_and_words_at_the_same_position_do_not_raise() -> None:
    # "layer1" vs "layerA": an int part meets a str part; the key must order them instead of raising TypeError.
    assert natural_sorted(["layerA", "layer1", "layer", "layer10", "layer9"]) == [
        "layer",
        "layer1",
        "layer9",
        "layer10",
        "layerA",
    ]


def test_natural_order_of_a_shuffled_model() -> None:
    names = [f"encoder.layers.{i}.{p}" for i in range(12) for p in ("bias", "weight")]
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    assert natural_sorted(shuffled) == names


@pytest.mark.parametrize(
    ("param", "layer"),
    [
        ("encoder.layers.0.attn.q_proj.weight", "encoder.layers.0.attn.q_proj"),
        ("encoder.layers.0.attn.q_proj.bias", "encoder.layers.0.attn.q_proj"),
        ("fc.weight", "fc"),
        ("layers.10.norm.weight", "layers.10.norm"),
        ("lstm-1_W", "lstm-1"),
        ("lstm-1_RW", "lstm-1"),
        ("lstm-1_b", "lstm-1"),
        ("norm-1_gamma", "norm-1"),
        ("norm-1_beta", "norm-1"),
        ("dense_1/kernel", "dense_1"),
        ("model/dense/bias", "model/dense"),
        ("cls_token", "cls_token"),  # "_token" is not a parameter suffix: the name is its own layer
        ("bias", "bias"),
        ("weight", "weight"),
    ],
)
def test_layer_of(param: str, layer: str) -> None:
    assert layer_of(param) == layer


def test_weight_and_bias_of_one_module_share_a_layer() -> None:
    assert layer_of("blocks.3.mlp.fc1.weight") == layer_of("blocks.3.mlp.fc1.bias")
    assert layer_of("blocks.3.mlp.fc1.weight") != layer_of("blocks.3.mlp.fc2.weight")
