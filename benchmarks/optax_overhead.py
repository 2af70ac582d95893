"""Cost of `gradcheck.recording.optax.record` in a jitted JAX loop: compile time and time per step.

A 64-512-512-10 MLP on the digits (batch 256, Adam), the same jitted step with the bare transformation and with
`record(..., every=N)` for each N, in interleaved repetitions in one process. Prints the compile seconds and
the median milliseconds per step, each as a ratio to the bare step measured in the same run. The timed part
holds /tmp/bench.lock (fcntl.flock), so measurements of other scripts never overlap.

    python benchmarks/optax_overhead.py                 # every=100 and every=10, 5 repetitions of 200 steps
    python benchmarks/optax_overhead.py --every 1000 100 10 1 --steps 500
"""

from __future__ import annotations

import argparse
import fcntl
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

LOCK = "/tmp/bench.lock"
WIDTH, BATCH = 512, 256


@contextmanager
def bench_lock() -> Iterator[None]:
    """Hold the shared benchmark lock so that no other measurement runs at the same time."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_loop(tx: Any) -> tuple[Callable[[int], float], float]:
    """A function running n jitted steps (returns seconds), and the seconds the step took to compile."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = jnp.asarray((x / 16).astype(np.float32)), jnp.asarray(y)
    keys = jax.random.split(jax.random.key(0), 3)
    sizes = [(64, WIDTH), (WIDTH, WIDTH), (WIDTH, 10)]
    params = [
        {"w": jax.random.normal(k, s) / s[0] ** 0.5, "b": jnp.zeros(s[1])}
        for k, s in zip(keys, sizes, strict=True)
    ]

    def loss(params: Any, xb: Any, yb: Any) -> Any:
        h = xb
        for layer in params[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        logits = h @ params[-1]["w"] + params[-1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(params: Any, state: Any, xb: Any, yb: Any) -> tuple[Any, Any]:
        grads = jax.grad(loss)(params, xb, yb)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x) - BATCH, BATCH)]
    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, state, *batches[0]).compile()
    compile_seconds = time.perf_counter() - start
    carry = [params, state]

    def run(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            carry[0], carry[1] = compiled(carry[0], carry[1], *batches[i % len(batches)])
        jax.block_until_ready(carry[0])
        jax.effects_barrier()
        return time.perf_counter() - start

    return run, compile_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, nargs="+", default=[100, 10])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import optax

    from gradcheck.recording.optax import record

    with tempfile.TemporaryDirectory() as tmp, bench_lock():
        loops = {"bare": make_loop(optax.adam(1e-3))}
        for every in args.every:
            loops[f"every={every}"] = make_loop(record(optax.adam(1e-3), f"{tmp}/e{every}", every=every))
        for run, _ in loops.values():
            run(5)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(args.repeats):
            for name, (run, _) in loops.items():
                times[name].append(run(args.steps) / args.steps)
    bare_ms, bare_compile = statistics.median(times["bare"]) * 1e3, loops["bare"][1]
    print(f"{'':>12} {'compile s':>10} {'ratio':>6} {'ms/step':>8} {'ratio':>6}")
    for name, (_, compile_seconds) in loops.items():
        ms = statistics.median(times[name]) * 1e3
        print(
            f"{name:>12} {compile_seconds:10.2f} {compile_seconds / bare_compile:6.2f} {ms:8.2f} {ms / bare_ms:6.3f}"
        )


if __name__ == "__main__":
    main()
