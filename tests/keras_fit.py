"""Train tiny Keras models on the digits through `model.fit` with GradcheckCallback; run as a script.

`python tests/keras_fit.py BACKEND OUT` picks the Keras backend before Keras is imported (Keras chooses it once
per process, hence a subprocess per backend) and writes into OUT:
- `spy/`: a clipped SGD whose update rule stashes the gradients it uses into `spy.npz` (every=1), and the final
  weights of that training with and without the callback in `weights.npz`;
- `healthy/`: SGD lr 0.1 inside a LossScaleOptimizer;
- `accumulated/`: SGD accumulating gradients over 2 batches (every=1);
- `refit/`: one model fitted three times on 5 batches, only the second time with the callback (every=1); then
  `crashed/`: a fit of it that raises after its third batch, and `after/`: the next fit, each with a callback;
- `broken/`: plain SGD lr 0.1 on the same data with one NaN pixel in the second batch (a corrupt sample);
- `timing.json`: seconds for the Keras import and for the three fits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STEPS_PER_EPOCH = 10


def main(backend: str, out: Path) -> None:
    os.environ["KERAS_BACKEND"] = backend
    start = time.perf_counter()
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    from gradcheck.recording.keras import GradcheckCallback

    imported = time.perf_counter()
    x, y = load_digits(return_X_y=True)
    x, y = (x[: 64 * STEPS_PER_EPOCH] / 16).astype("float32"), y[: 64 * STEPS_PER_EPOCH].astype("int32")
    stash: dict[str, np.ndarray] = {}

    def keep(path: str, step: object, gradient: object) -> None:
        stash[f"{int(np.asarray(step))}/{path}"] = np.array(gradient, copy=True)

    class SpySGD(keras.optimizers.Optimizer):
        """Plain SGD whose update rule hands the gradient it receives to the host."""

        def update_step(self, gradient: object, variable: object, learning_rate: object) -> None:
            _emit(keras, lambda s, g, p=variable.path: keep(p, s, g), self.iterations.value, gradient)
            lr = keras.ops.cast(learning_rate, variable.dtype)
            variable.assign_sub(keras.ops.multiply(lr, gradient))

    def fit(run: str | None, optimizer: object, every: int, epochs: int, x: np.ndarray = x) -> list[object]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
        )
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=optimizer, loss=loss)
        callbacks = [] if run is None else [GradcheckCallback(out / run, every=every)]  # the adapter
        model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)
        return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]

    recorded = fit("spy", SpySGD(learning_rate=0.5, clipnorm=0.05), every=1, epochs=1)
    np.savez(out / "spy.npz", **stash)
    alone = fit(None, SpySGD(learning_rate=0.5, clipnorm=0.05), every=1, epochs=1)
    np.savez(out / "weights.npz", **{f"recorded{i}": w for i, w in enumerate(recorded)},
             **{f"alone{i}": w for i, w in enumerate(alone)})  # fmt: skip
    fit(
        "accumulated",
        keras.optimizers.SGD(learning_rate=0.1, gradient_accumulation_steps=2),
        every=1,
        epochs=1,
    )
    refit(keras, x[:320], y[:320], GradcheckCallback, out)
    lso = keras.optimizers.LossScaleOptimizer
    fit("healthy", lso(keras.optimizers.SGD(learning_rate=0.1)), every=2, epochs=3)
    corrupt = x.copy()
    corrupt[70, 5] = np.nan
    fit("broken", keras.optimizers.SGD(learning_rate=0.1), every=2, epochs=3, x=corrupt)
    timing = {"import": imported - start, "fits": time.perf_counter() - imported}
    (out / "timing.json").write_text(json.dumps(timing))


def refit(keras: Any, x: Any, y: Any, callback: Any, out: Path) -> None:
    """A train function compiled before the callback, and one after it, must not decide what is recorded."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss=loss)
    for callbacks in ([], [callback(out / "refit", every=1)], []):
        model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            if batch == 2:
                raise KeyboardInterrupt  # on_train_end is not called: the optimizer keeps the wrappers

    try:
        callbacks = [callback(out / "crashed", every=1), Interrupt()]
        model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        pass
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[callback(out / "after", every=1)])


def _emit(keras: object, fn: object, *values: object) -> None:
    """Call fn with host arrays now (eager) or when the jitted step runs (JAX backend)."""
    if keras.backend.backend() == "jax":  # type: ignore[attr-defined]
        import jax

        jax.debug.callback(fn, *values)
    else:
        fn(*(keras.ops.convert_to_numpy(value) for value in values))  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
