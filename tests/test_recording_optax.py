"""JAX training loops recorded through `gradcheck.recording.optax.record`, under jax.jit, on the digits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import load_file

from gradcheck.analysis.context import CONTEXT_KEY, SCALARS_KEY, parse_context, parse_scalars
from gradcheck.cli.main import cli

pytestmark = pytest.mark.frameworks
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")
datasets = pytest.importorskip("sklearn.datasets")
from gradcheck.recording.optax import record

BATCH = 64


@pytest.fixture(scope="module")
def digits() -> tuple[Any, Any]:
    x, y = datasets.load_digits(return_X_y=True)
    return jnp.asarray((x / 16).astype(np.float32)), jnp.asarray(y.astype(np.int32))


def _init(key: Any) -> dict[str, Any]:
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {"w": jax.random.normal(k1, (64, 32)) * 0.1, "b": jnp.zeros(32)},
        "out": {"w": jax.random.normal(k2, (32, 10)) * 0.1, "b": jnp.zeros(10)},
    }


def _loss(params: dict[str, Any], x: Any, y: Any) -> Any:
    h = jax.nn.relu(x @ params["hidden"]["w"] + params["hidden"]["b"])
    logits = h @ params["out"]["w"] + params["out"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train(
    tx: Any, data: tuple[Any, Any], steps: int, loss: Callable[..., Any] = _loss
) -> list[dict[str, Any]]:
    """A jitted optax loop; returns per step the params before it, the grads and the updates it used."""
    params, (x, y) = _init(jax.random.key(0)), data
    state = tx.init(params)

    @jax.jit
    def step(params: Any, state: Any, xb: Any, yb: Any) -> tuple[Any, ...]:
        value, grads = jax.value_and_grad(loss)(params, xb, yb)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state, grads, updates

    trace = []
    for i in range(steps):
        start = i * BATCH % (len(x) - BATCH)
        new, state, grads, updates = step(params, state, x[start : start + BATCH], y[start : start + BATCH])
        trace.append({"params": params, "grads": grads, "updates": updates, "after": new})
        params = new
    jax.effects_barrier()  # the host callbacks of the last steps have written their files
    return trace


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(path, simple=True, separator="."): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _bits(array: np.ndarray) -> np.ndarray:
    assert array.dtype == np.float32
    return array.view(np.uint32)


def _adam() -> Any:
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)


def test_recording_does_not_change_training(digits: tuple[Any, Any], tmp_path: Path) -> None:
    plain = _train(_adam(), digits, steps=12)[-1]["after"]
    recorded = _train(record(_adam(), tmp_path, every=1), digits, steps=12)[-1]["after"]
    for name, value in _flat(plain).items():
        np.testing.assert_array_equal(_bits(_flat(recorded)[name]), _bits(value), err_msg=name)
    assert len(list(tmp_path.glob("step_*.safetensors"))) == 12


def test_steps_are_counted_in_the_state_under_jit(digits: tuple[Any, Any], tmp_path: Path) -> None:
    trace = _train(record(_adam(), tmp_path, every=3), digits, steps=10)
    steps = sorted(int(f.stem.split("_")[1]) for f in tmp_path.glob("step_*.safetensors"))
    assert steps == [0, 3, 6, 9]
    for step in steps:  # each file holds its own step's tensors, not a neighbour's
        recorded = load_file(tmp_path / f"step_{step:08d}.safetensors")
        for name, value in _flat(trace[step]["params"]).items():
            np.testing.assert_array_equal(_bits(recorded[f"param/{name}"]), _bits(value), err_msg=name)


def test_recorded_tensors_are_what_the_optimizer_used(digits: tuple[Any, Any], tmp_path: Path) -> None:
    trace = _train(record(_adam(), tmp_path, every=2), digits, steps=6)
    for step in (0, 2, 4):
        recorded = load_file(tmp_path / f"step_{step:08d}.safetensors")
        grads, updates = _flat(trace[step]["grads"]), _flat(trace[step]["updates"])
        before, after = _flat(trace[step]["params"]), _flat(trace[step]["after"])
        assert sorted(grads) == ["hidden.b", "hidden.w", "out.b", "out.w"]
        for name in grads:
            np.testing.assert_array_equal(_bits(recorded[f"grad/{name}"]), _bits(grads[name]))
            update = recorded[f"update/{name}"]
            np.testing.assert_array_equal(_bits(update), _bits(updates[name]))
            # param_after - param_before is the update up to one rounding: under jit XLA may fuse the update's
            # last multiply into the add (an FMA), so the applied value skips the rounding of the update itself
            change = after[name] - before[name]
            ulp = np.spacing(np.maximum.reduce([np.abs(after[name]), np.abs(before[name]), np.abs(update)]))
            assert np.all(np.abs(change - update) <= ulp), name
            assert np.any(update != 0)


def test_context_has_learning_rate_rule_and_loss(digits: tuple[Any, Any], tmp_path: Path) -> None:
    _train(record(_adam(), tmp_path, every=5), digits, steps=6)
    with safe_open(str(tmp_path / "step_00000005.safetensors"), "np") as handle:
        metadata = handle.metadata()
    context, problems = parse_context(metadata[CONTEXT_KEY])
    assert problems == []
    assert (context.framework, context.optimizer) == ("optax", "scale_by_adam")
    assert dict(context.lr) == pytest.approx(dict.fromkeys(["hidden.b", "hidden.w", "out.b", "out.w"], 1e-2))
    scalars, _ = parse_scalars(metadata[SCALARS_KEY])
    assert 0 < scalars["loss"] < np.log(10) + 1


def test_scheduled_learning_rate_is_the_one_each_step_used(digits: tuple[Any, Any], tmp_path: Path) -> None:
    schedule = optax.linear_schedule(0.1, 0.0, 10)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    _train(record(tx, tmp_path, every=1, optimizer="sgd"), digits, steps=4)
    for step in range(4):
        with safe_open(str(tmp_path / f"step_{step:08d}.safetensors"), "np") as handle:
            context, _ = parse_context(handle.metadata()[CONTEXT_KEY])
        assert context.optimizer == "sgd"
        assert list(context.lr.values()) == pytest.approx([float(schedule(step))] * 4)


def test_stats_mode_writes_summaries_only(digits: tuple[Any, Any], tmp_path: Path) -> None:
    _train(record(_adam(), tmp_path, every=2, mode="stats"), digits, steps=4)
    assert load_file(tmp_path / "step_00000002.safetensors") == {}
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert {p["name"] for p in json.loads(result.stdout)["params"]} == {
        "hidden.b",
        "hidden.w",
        "out.b",
        "out.w",
    }


def test_multisteps_wrapped_records_every_micro_batch(tmp_path: Path) -> None:
    tx = record(optax.MultiSteps(optax.sgd(1.0), every_k_schedule=2), tmp_path, every=1)
    params = {"w": jnp.zeros(2)}
    state, step = tx.init(params), jax.jit(tx.update)
    for i in range(4):
        _, state = step({"w": jnp.full(2, float(i))}, state, params)
    jax.effects_barrier()
    recorded = [load_file(tmp_path / f"step_{i:08d}.safetensors") for i in range(4)]
    assert [float(r["grad/w"][0]) for r in recorded] == [0.0, 1.0, 2.0, 3.0]
    assert [float(r["update/w"][0]) for r in recorded] == [0.0, -0.5, 0.0, -2.5]  # the mean of each pair


def test_flax_linen_names(digits: tuple[Any, Any], tmp_path: Path) -> None:
    nn = pytest.importorskip("flax.linen")
    model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])
    x, y = digits
    variables = model.init(jax.random.key(0), x[:1])
    tx = record(optax.sgd(0.1), tmp_path, every=1)
    state = tx.init(variables)

    @jax.jit
    def step(variables: Any, state: Any) -> tuple[Any, Any]:
        def loss(v: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(
                model.apply(v, x[:BATCH]), y[:BATCH]
            ).mean()

        updates, state = tx.update(jax.grad(loss)(variables), state, variables)
        return optax.apply_updates(variables, updates), state

    step(variables, state)
    jax.effects_barrier()
    keys = set(load_file(tmp_path / "step_00000000.safetensors"))
    assert {f"grad/params.layers_{i}.{p}" for i in (0, 2) for p in ("kernel", "bias")} <= keys


def test_flax_nnx_names(digits: tuple[Any, Any], tmp_path: Path) -> None:
    nnx = pytest.importorskip("flax.nnx")

    class Mlp(nnx.Module):
        def __init__(self, rngs: Any) -> None:
            self.hidden = nnx.Linear(64, 32, rngs=rngs)
            self.out = nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.out(jax.nn.relu(self.hidden(x)))

    model = Mlp(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, record(optax.adam(1e-2), tmp_path, every=2), wrt=nnx.Param)
    x, y = digits

    @nnx.jit
    def step(model: Mlp, optimizer: Any, xb: Any, yb: Any) -> None:
        def loss(m: Mlp) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

        optimizer.update(model, nnx.grad(loss)(model))

    for i in range(3):
        step(model, optimizer, x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH])
    jax.effects_barrier()
    assert sorted(f.name for f in tmp_path.glob("step_*")) == [
        "step_00000000.safetensors",
        "step_00000002.safetensors",
    ]
    names = {key.split("/", 1)[1] for key in load_file(tmp_path / "step_00000002.safetensors")}
    assert names == {"hidden.kernel", "hidden.bias", "out.kernel", "out.bias"}


@pytest.mark.parametrize(("broken", "exit_code"), [(False, 0), (True, 1)])
def test_inspect_verdict(digits: tuple[Any, Any], tmp_path: Path, broken: bool, exit_code: int) -> None:
    x, y = digits
    if broken:  # one corrupt sample in the second batch: NaN loss, NaN gradients from there on
        x = x.at[BATCH + 6, 5].set(jnp.nan)
    _train(record(optax.sgd(0.1), tmp_path, every=2), (x, y), steps=30)
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"])
    assert result.exit_code == exit_code, result.output
    problems = {finding["problem"] for finding in json.loads(result.stdout)["findings"]}
    assert ("nonfinite" in problems) == broken, problems


SHARDED = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from gradcheck.recording.optax import record

mesh = Mesh(np.array(jax.devices()), ("x",))
w = jax.device_put(jnp.arange(16.0).reshape(8, 2) / 10, NamedSharding(mesh, PartitionSpec("x", None)))
tx = record(optax.sgd(0.1), sys.argv[1], every=1)

@jax.jit
def step(params, state):
    grads = jax.grad(lambda p: (p["w"] ** 3).sum())(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, grads

after, _, grads = step({"w": w}, tx.init({"w": w}))
jax.effects_barrier()
assert len(after["w"].sharding.device_set) == 2
np.save(sys.argv[1] + "/grads.npy", np.asarray(grads["w"]))
np.save(sys.argv[1] + "/params.npy", np.asarray(w))
"""


def test_sharded_params_under_jit_are_recorded_whole(tmp_path: Path) -> None:
    """One process, two (virtual CPU) devices: the callback receives the gathered arrays."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-c", SHARDED, str(tmp_path)], check=True, capture_output=True, timeout=300
    )
    recorded = load_file(tmp_path / "step_00000000.safetensors")
    assert recorded["grad/w"].shape == (8, 2)
    np.testing.assert_array_equal(recorded["grad/w"], np.load(tmp_path / "grads.npy"))
    np.testing.assert_array_equal(recorded["param/w"], np.load(tmp_path / "params.npy"))
