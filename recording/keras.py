"""Record Keras 3 `fit()`: a callback that wraps the optimizer, since Keras callbacks never see gradients.

    from gradcheck.recording.keras import GradcheckCallback
    model.fit(x, y, callbacks=[GradcheckCallback("runs/my_run", every=10)])

Keras has no gradient hook, so `on_train_begin` puts two instance attributes on the optimizer (the inner one of a
`LossScaleOptimizer`) and `on_train_end` removes them: `apply(grads, variables)`, the public entry every backend's
`train_step` calls, where the parameters are read before and after the step; and `_backend_update_step`, which
receives the gradients the update rule really uses (after loss-scale division, accumulation and clipping).
Steps are the optimizer's `iterations` before the step, from 0; a step is recorded when `step % every == 0`.
The update is the parameter after the step minus before it (weight decay and constraints included).
Under the JAX backend `fit()` runs the step inside `jax.jit`: the tensors leave through `jax.debug.callback`
inside a `lax.cond` on the step, so only recorded steps copy anything to the host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradcheck.analysis.context import StepContext

from .adapters import check_arguments, step_metadata
from .writer import save_snapshot

__all__ = ["GradcheckCallback"]  # noqa: F822 (built on first access by __getattr__)
_WRAPPED = ("apply", "_backend_update_step")  # the optimizer methods the callback shadows during fit()
_MISSING = object()


@dataclass
class _Step:
    """One recorded step on the host, waiting for the batch's logged loss before it is written."""

    step: int
    grads: dict[str, Any]
    params: dict[str, Any]
    updates: dict[str, Any]
    lr: float | None
    loss_scale: float | None
    scalars: dict[str, float] = field(default_factory=dict)


class _KerasRecording:
    """The callback's machinery without the Keras base class, so this module imports without Keras."""

    def __init__(self, run_dir: str | Path, every: int, mode: str, overwrite: bool) -> None:
        self.run_dir = check_arguments(run_dir, every, mode)
        self.overwrite = overwrite
        self.every = every
        self.mode = mode
        self._pending: list[_Step] = []
        self._lock = threading.Lock()  # under JAX the host callback runs on an XLA thread
        self._optimizer: Any = None
        self._saved: dict[str, object] = {}
        self._used: dict[int, Any] = {}
        self._context = StepContext(framework="keras")

    def install(self, model: Any) -> None:
        """Shadow the optimizer's `apply` and `_backend_update_step` for the duration of fit()."""
        outer = model.optimizer
        inner = outer
        while getattr(inner, "inner_optimizer", None) is not None:  # LossScaleOptimizer
            inner = inner.inner_optimizer
        self.uninstall()
        self._optimizer, self._outer = inner, outer
        self._modules = _module_types(model)
        accumulation = getattr(inner, "gradient_accumulation_steps", None)
        self._context = StepContext(
            framework="keras", optimizer=type(inner).__name__, accumulation=accumulation or None
        )
        for name in _WRAPPED:  # left behind by a fit() that raised before on_train_end
            if getattr(vars(inner).get(name), "_gradcheck_stale", False):
                del vars(inner)[name]
        original_apply, original_update = inner.apply, inner._backend_update_step
        self._saved = {name: vars(inner).get(name, _MISSING) for name in _WRAPPED}

        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            return self._apply(original_apply, grads, trainable_variables)

        def update_step(grads: Any, trainable_variables: Any, learning_rate: Any) -> Any:
            # The gradients the update rule uses: unscaled, accumulated and clipped by now.
            self._used = {id(v): (g, learning_rate) for g, v in zip(grads, trainable_variables, strict=True)}
            return original_update(grads, trainable_variables, learning_rate)

        for wrapper in (apply, update_step):
            wrapper._gradcheck_stale = True  # type: ignore[attr-defined]
        inner.apply = apply
        inner._backend_update_step = update_step

    def uninstall(self) -> None:
        """Give the optimizer back its own methods (or whatever instance attributes it had before)."""
        if self._optimizer is None:
            return
        for name, value in self._saved.items():
            if value is _MISSING:
                vars(self._optimizer).pop(name, None)
            else:
                setattr(self._optimizer, name, value)
        self._optimizer = None

    def _apply(self, original: Callable[..., Any], grads: Any, variables: Any) -> Any:
        """Run the optimizer's apply, reading the parameters around it at recorded steps."""
        from keras import ops

        inner = self._optimizer
        # `_iterations` counts apply() calls; with gradient accumulation over k of them, Keras's `iterations`
        # (our step) counts updates, made at the calls where (calls + 1) % k == 0.
        calls, k = inner._iterations.value, inner.gradient_accumulation_steps or 1
        traced = _is_tracer(calls)
        if not traced:
            calls = int(ops.convert_to_numpy(calls))  # now: torch increments the variable's tensor in place
        step = calls // k
        due = (step % self.every == 0) & ((calls + 1) % k == 0)
        if not traced and not due:
            return original(grads, variables)
        tracked = list(variables) if variables is not None else list(inner._trainable_variables)
        before = [ops.copy(v.value) for v in tracked]
        self._used = {}
        result = original(grads, variables)
        used, self._used = self._used, {}
        if not used:  # the update rule did not run: no variable had a gradient
            return result
        names = [v.path for v in tracked]
        payload = (
            step,
            _learning_rate(next(iter(used.values()))[1]),
            _loss_scale(self._outer),
            [used.get(id(v), (None,))[0] for v in tracked],
            before,
            [ops.subtract(v.value, b) for v, b in zip(tracked, before, strict=True)],
        )
        if traced:
            _host_callback(due, payload, lambda *values: self._receive(names, *values))
        else:
            self._receive(names, *(_to_host(item) for item in payload))
        return result

    def _receive(
        self, names: list[str], step: Any, lr: Any, scale: Any, grads: Any, before: Any, updates: Any
    ) -> None:
        """Keep one recorded step's host arrays until its batch ends."""
        import numpy as np

        def named(values: list[Any]) -> dict[str, Any]:
            # a variable without a gradient gets no tensor at all, as in the torch Recorder
            pairs = zip(names, grads, values, strict=True)
            return {n: np.array(v, copy=True) for n, g, v in pairs if g is not None}

        recorded = _Step(
            step=int(step),
            grads=named(grads),
            params=named(before),
            updates=named(updates),
            lr=None if lr is None else float(lr),
            loss_scale=None if scale is None else float(scale),
        )
        with self._lock:
            self._pending.append(recorded)

    def batch_end(self, logs: dict[str, Any] | None) -> None:
        """Write the steps recorded during this batch, with the loss Keras logged for it."""
        # the loss first: under JAX reading it waits for the step, whose host callback has then run
        loss = float(logs["loss"]) if logs and "loss" in logs else None
        with self._lock:
            pending, self._pending = self._pending, []
        if pending and loss is not None:
            pending[-1].scalars["loss"] = loss
        for recorded in pending:
            self._write(recorded)

    def _write(self, recorded: _Step) -> None:
        lr = {} if recorded.lr is None else dict.fromkeys(recorded.grads, recorded.lr)
        context = StepContext(
            framework="keras",
            optimizer=self._context.optimizer,
            lr=lr,
            loss_scale=recorded.loss_scale,
            accumulation=self._context.accumulation,
            modules={n: kind for n, kind in self._modules.items() if n in recorded.params},
        )
        metadata = step_metadata(context, recorded.scalars)
        save_snapshot(
            self.run_dir, recorded.step, grads=recorded.grads, params=recorded.params,
            updates=recorded.updates, metadata=metadata, mode=self.mode, overwrite=self.overwrite,
        )  # fmt: skip


def _module_types(model: Any) -> dict[str, str]:
    """Parameter path -> class name of the innermost layer that owns it."""
    layers = model._flatten_layers(include_self=True, recursive=True)  # outer layers before inner ones
    return {v.path: type(layer).__name__ for layer in layers for v in layer.trainable_weights}


def _is_tracer(value: Any) -> bool:
    """Whether `value` is a JAX tracer (fit() under jit), without importing JAX for other backends."""
    import sys

    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.core.Tracer)


def _learning_rate(value: Any) -> Any:
    """The learning rate as a tensor (a Keras variable's value) or a number."""
    return getattr(value, "value", value)


def _loss_scale(optimizer: Any) -> Any:
    """The dynamic loss scale of a LossScaleOptimizer in force for this step, else None."""
    scale = getattr(optimizer, "dynamic_scale", None)
    if scale is None:
        return None
    try:  # not public: under JAX the optimizers nest stateless scopes and the scale lives in the outer one
        from keras.src.backend.common.stateless_scope import get_stateless_scope
    except ImportError:
        return None
    scope = get_stateless_scope()
    while scope is not None:
        value = scope.get_current_value(scale)
        if value is not None:
            return value
        scope = getattr(scope, "original_scope", None)
    return scale.value


def _to_host(item: Any) -> Any:
    """Tensors (and lists of them) as numpy arrays; None stays None."""
    from keras import ops

    if item is None or isinstance(item, int):
        return item
    if isinstance(item, list):
        return [_to_host(value) for value in item]
    return ops.convert_to_numpy(item)


def _host_callback(due: Any, payload: tuple[Any, ...], receive: Callable[..., None]) -> None:
    """Inside jit: hand the payload to `receive` on the host at recorded steps only."""
    import jax

    def send(values: tuple[Any, ...]) -> None:
        jax.debug.callback(receive, *values)

    jax.lax.cond(due, send, lambda values: None, payload)


def __getattr__(name: str) -> Any:
    """Build `GradcheckCallback` on first use, so importing this module does not import Keras."""
    if name != "GradcheckCallback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = _callback_class()
    globals()[name] = cls
    return cls


def _callback_class() -> type:
    import keras

    class GradcheckCallback(keras.callbacks.Callback):
        """Record grads, params and updates every `every` optimizer steps of `fit()` into `run_dir`."""

        def __init__(
            self, run_dir: str | Path, every: int = 10, *, mode: str = "full", overwrite: bool = False
        ) -> None:
            super().__init__()
            self._recording = _KerasRecording(run_dir, every, mode, overwrite)

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self._recording.install(self.model)
            # fit() built (or reused) its train function before this call; under jit a function traced by an
            # earlier fit() would never call the shadowed methods, so build it again around them
            self.model.make_train_function(force=True)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self._recording.batch_end(logs)

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            try:
                if keras.backend.backend() == "jax":
                    import jax

                    jax.effects_barrier()  # host callbacks of the last steps have run
                self._recording.batch_end(None)
            finally:
                self._recording.uninstall()
                self.model.make_train_function(force=True)  # a later fit() must not trace our methods in

    GradcheckCallback.__module__ = __name__
    return GradcheckCallback
