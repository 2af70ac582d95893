"""Record a JAX training loop through its optax transformation, jitted or not.

    from gradcheck.recording.optax import record
    tx = record(optax.adamw(1e-3), "runs/my_run", every=10)

`record` wraps the user's transformation: its `update` passes the gradients on unchanged and, at recorded steps,
hands the gradients going in, the params passed to `update` and the updates coming out to the host through
`jax.debug.callback` inside a `lax.cond`, so unrecorded steps copy nothing. Steps are counted in the
transformation's own state (an int32 counter beside the inner state), from 0, which is what makes the count
right under `jax.jit`: a Python counter would be read once, at trace time. A step is recorded when
`step % every == 0`. The training numbers are untouched: the inner transformation computes exactly what it
would alone, and the callback only reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from gradcheck.analysis.context import StepContext

from .adapters import check_arguments, step_metadata
from .writer import save_snapshot

__all__ = ["RecordState", "record"]
# State types that say nothing about the update rule (wrappers, stateless steps).
_PLUMBING_STATES = frozenset({
    "EmptyState", "InjectHyperparamsState", "InjectStatefulHyperparamsState", "WrappedScheduleState",
    "ScaleByScheduleState", "MaskedState", "MultiTransformState",
})  # fmt: skip


class RecordState(NamedTuple):
    """The wrapped transformation's state and the number of `update` calls before this one."""

    count: Any  # int32 scalar array
    inner: Any


def record(
    tx: Any,
    run_dir: str | os.PathLike[str],
    every: int = 10,
    *,
    mode: str = "full",
    optimizer: str | None = None,
    overwrite: bool = False,
) -> Any:
    """Wrap an optax `GradientTransformation` so that every `every`-th update is written to `run_dir`.

    `optimizer` names the rule in the snapshots' context (default: the stateful transformations inside `tx`,
    e.g. `scale_by_adam`). `overwrite=True` replaces step files left by an earlier run instead of failing.
    A `value=` keyword passed to `update` (optax's name for the loss) is stored as the
    scalar `loss`. Returns a `GradientTransformationExtraArgs`; its state is a `RecordState`.
    """
    import jax
    import jax.numpy as jnp
    import optax

    writer = _Writer(check_arguments(run_dir, every, mode), mode, overwrite)
    inner_tx = optax.with_extra_args_support(tx)

    def init_fn(params: Any) -> RecordState:
        return RecordState(count=jnp.zeros([], jnp.int32), inner=inner_tx.init(params))

    def update_fn(
        grads: Any, state: RecordState, params: Any = None, **extra: Any
    ) -> tuple[Any, RecordState]:
        updates, inner = inner_tx.update(grads, state.inner, params, **extra)
        payload = {
            "step": state.count,
            "grads": _named(jax, grads),
            "params": _named(jax, params),
            "updates": _named(jax, updates),
            "lr": _learning_rate(inner),  # the new state holds the values this step used
            "loss": extra.get("value"),
        }
        label = optimizer or _rule_name(state.inner)

        def send(values: dict[str, Any]) -> None:
            jax.debug.callback(lambda host: writer.write(host, label), values)

        jax.lax.cond(state.count % every == 0, send, lambda values: None, payload)
        return updates, RecordState(count=optax.safe_int32_increment(state.count), inner=inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _Writer:
    """Writes one step's host arrays; runs inside the host callback."""

    def __init__(self, run_dir: Path, mode: str, overwrite: bool) -> None:
        self.run_dir, self.mode, self.overwrite = run_dir, mode, overwrite

    def write(self, host: dict[str, Any], label: str | None) -> None:
        grads = host["grads"]
        lr = {} if host["lr"] is None else dict.fromkeys(grads, float(host["lr"]))
        context = StepContext(framework="optax", optimizer=label, lr=lr)
        scalars = {} if host["loss"] is None else {"loss": float(host["loss"])}
        metadata = step_metadata(context, scalars)
        save_snapshot(
            self.run_dir, int(host["step"]), grads=grads, params=host["params"] or None,
            updates=host["updates"], metadata=metadata, mode=self.mode, overwrite=self.overwrite,
        )  # fmt: skip


def _named(jax: Any, tree: Any) -> dict[str, Any]:
    """A pytree as dotted key path -> leaf (`params.Dense_0.kernel`); nnx's `.value` suffix dropped."""
    if tree is None:
        return {}
    named: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
            path = path[:-1]  # an nnx Variable's array
        named[jax.tree_util.keystr(path, simple=True, separator=".") or "param"] = leaf
    return named


def _learning_rate(state: Any) -> Any:
    """The learning rate an `optax.inject_hyperparams` state inside `state` holds, else None."""
    for node in _nodes(state):
        hyperparams = getattr(node, "hyperparams", None)
        if isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
            return hyperparams["learning_rate"]
    return None


def _rule_name(state: Any) -> str | None:
    """The stateful transformations in an optax state, `ScaleByAdamState` -> `scale_by_adam`."""
    names = []
    for node in _nodes(state):
        kind = type(node).__name__
        if hasattr(node, "_fields") and kind.endswith("State") and kind not in _PLUMBING_STATES:
            names.append(re.sub(r"(?<!^)(?=[A-Z])", "_", kind.removesuffix("State")).lower())
    return "+".join(dict.fromkeys(names)) or None


def _nodes(state: Any) -> Iterator[Any]:
    """The containers of an optax state, outermost first (states are NamedTuples, tuples and dicts)."""
    yield state
    children = (
        state.values() if isinstance(state, dict) else state if isinstance(state, (tuple, list)) else ()
    )
    for child in children:
        yield from _nodes(child)
