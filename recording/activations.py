"""Forward-activation statistics for the torch Recorder, at recorded steps only (the Recorder writes the loss).

Forward hooks go on every module (the root included) right after the optimizer step that precedes a recorded
step, and come off at that step's optimizer pre-hook: steps that are not recorded run with no hook at all, so
they pay nothing (a `torch.compile`d model sees hooks only around recorded steps; they run eagerly, and no
graph is compiled after the first recorded step's, tests/test_activations.py). Everything between those two
points is counted, including an evaluation forward pass the loop might run there.

Per module output (the first tensor of a tuple output), summed over the module's calls in the step: count, NaN,
Inf, exact zeros, mean/std/min/max over finite values, whether every float input was finite (to tell where a NaN
was born), the share of values at the bounds of sigmoid/tanh/softmax, and for ReLU-family outputs a per-unit
"ever non-zero" bitmap. Each call's statistics are a few device reductions stacked into one float64 row; rows
are read back in one transfer at the end of the step. The numbers are the same in `mode="full"` and
`mode="stats"`: activations are never stored as tensors.

torch is passed in by the Recorder; this module never imports it at import time.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from gradcheck.analysis.activations import ACTIVATIONS_KEY, activations_metadata

# Saturation bounds. Source: Glorot & Bengio 2010 ("Understanding the difficulty of training deep feedforward
# neural networks", AISTATS) show saturated sigmoid units (outputs pinned near 0 or 1) stall learning; at
# sigmoid outputs beyond 0.01/0.99 the derivative is below 0.0099, < 4 % of its maximum 0.25, and at
# |tanh| > 0.99 it is below 0.02, 2 % of its maximum 1: gradients through such a unit are nearly gone. A softmax
# row counts as saturated when its largest probability exceeds 0.99 (the output is one-hot to 1 %).
SATURATION_EPS = 0.01
_SIGMOID = ("Sigmoid", "Hardsigmoid", "LogSigmoid")
_TANH = ("Tanh", "Hardtanh", "Softsign")
_SOFTMAX = ("Softmax", "Softmax2d")
# Exact zeros mean "not firing" for these; LeakyReLU/GELU/ELU outputs are rarely exactly zero.
RELU_FAMILY = ("ReLU", "ReLU6", "Threshold")
# Row layout: count, nan, inf, zeros, sum, sum of squares, min, max, saturated, bounded total, nonfinite inputs.
_ROW = 11


def bound_of(type_name: str) -> str | None:
    """The saturation family of a module class name, or None."""
    if type_name in _SIGMOID and type_name != "LogSigmoid":
        return "sigmoid"
    if type_name in _TANH:
        return "tanh"
    return "softmax" if type_name in _SOFTMAX else None


class StepSignals:
    """Scalars logged for recorded steps and, if asked, forward hooks around recorded steps."""

    def __init__(self, torch: Any, model: Any, *, activations: bool) -> None:
        self._torch = torch
        self._modules = list(model.named_modules()) if activations else []
        self._handles: list[Any] = []
        self._rows: dict[str, list[Any]] = {}
        self._alive: dict[str, Any] = {}
        self._order: dict[str, int] = {}

    @property
    def attached(self) -> bool:
        """Whether forward hooks are on the model right now."""
        return bool(self._handles)

    def start(self, recorded: bool) -> None:
        """Attach the forward hooks when the next step is recorded (and activations were asked for)."""
        if not recorded or self._handles or not self._modules:
            return
        self._rows, self._alive, self._order = {}, {}, {}
        # Under torch.compile the hooks run eagerly (dynamo does not trace the summaries, whose host reads would
        # break the graph inside them); the compiled model graph-breaks around each hook at recorded steps only.
        disable = self._torch.compiler.disable
        self._handles = [
            module.register_forward_hook(disable(partial(self._hook, name, type(module).__name__)))
            for name, module in self._modules
        ]

    def stop(self) -> None:
        """Remove the hooks, if any."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def finish(self, step: int, metadata: dict[str, str]) -> None:
        """Stop hooking and put this step's activations into the snapshot's metadata (the Recorder writes the
        logged scalars)."""
        attached = self.attached
        self.stop()
        if attached and self._rows:
            metadata[ACTIVATIONS_KEY] = activations_metadata(self._entries())
        self._rows, self._alive = {}, {}

    # --- hooks (training thread, recorded steps only) ------------------------------------------------------

    def _hook(self, name: str, type_name: str, module: Any, args: tuple[Any, ...], output: Any) -> None:
        torch = self._torch
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return
        with torch.no_grad():
            x = out.detach()
            floats = [a for a in args if _is_float(torch, a)]
            row = _host_row(torch, x, bound_of(type_name), getattr(module, "dim", None), floats)
            if row is None:  # a device tensor, or a non-finite output: the general, branch-free row
                bad_inputs = [(~torch.isfinite(a)).any() for a in floats]
                row = _row(torch, x, bound_of(type_name), getattr(module, "dim", None), bad_inputs)
            self._order.setdefault(name, len(self._order))
            self._rows.setdefault(name, []).append(row)
            if type_name in RELU_FAMILY and x.dim() >= 1 and x.numel():
                alive = _alive(x)
                previous = self._alive.get(name)
                if previous is None or previous.shape != alive.shape:
                    self._alive[name] = alive
                else:
                    self._alive[name] = previous | alive

    def _entries(self) -> dict[str, dict[str, Any]]:
        torch = self._torch
        names = list(self._rows)
        per_call = [row for name in names for row in self._rows[name]]
        values = torch.stack(per_call).cpu().tolist()  # one transfer for the whole step
        types = {name: type(module).__name__ for name, module in self._modules}
        entries, at = {}, 0
        for name in names:
            calls = len(self._rows[name])
            rows, at = values[at : at + calls], at + calls
            alive = self._alive.get(name)
            bits = None if alive is None else bytes(_pack(alive.cpu().tolist()))
            entries[name] = _entry(types[name], self._order[name], rows, alive, bits)
        return entries


def _is_float(torch: Any, value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _host_row(torch: Any, x: Any, bound: str | None, dim: Any, inputs: list[Any]) -> Any:
    """The row of a finite CPU output in 4 passes (min/max, zeros, sum, squares), else None.

    On the CPU reading a value back costs nothing, so one min/max pass tells a finite output (NaN propagates
    through aminmax), and a finite output needs no look at its inputs: they matter only where a NaN is born.
    """
    if x.device.type != "cpu" or x.numel() == 0:
        return None
    flat = x.reshape(-1)
    if flat.element_size() < 4:
        flat = flat.float()
    low, high = (float(v) for v in torch.aminmax(flat))
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    saturated, total = _saturation(torch, x, bound, dim)
    values = [
        float(flat.numel()), 0.0, 0.0, float((flat == 0).sum()), float(flat.sum(dtype=torch.float64)),
        float(torch.dot(flat, flat)), low, high, float(saturated), float(total), 0.0,
    ]  # fmt: skip
    return torch.tensor(values, dtype=torch.float64)


def _row(torch: Any, x: Any, bound: str | None, dim: Any, bad_inputs: list[Any]) -> Any:
    """The step row of one call, as a float64 tensor on the output's device (no read-back)."""
    flat = x.reshape(-1)
    if flat.element_size() < 4:
        flat = flat.float()  # half-precision sums would overflow; float32 holds their values exactly
    finite = torch.isfinite(flat)
    nan = torch.isnan(flat).sum()
    kept = torch.where(finite, flat, 0.0)
    saturated, total = _saturation(torch, x, bound, dim)
    empty = flat.numel() == 0
    parts = [
        nan,
        flat.numel() - finite.sum() - nan,
        (flat == 0).sum(),
        kept.sum(dtype=torch.float64),
        torch.dot(kept, kept),  # blocked float32 accumulation: plenty for a standard deviation
        torch.full((), math.inf) if empty else torch.where(finite, flat, math.inf).min(),
        torch.full((), -math.inf) if empty else torch.where(finite, flat, -math.inf).max(),
        saturated,
        total,
        torch.stack(bad_inputs).any() if bad_inputs else torch.zeros((), dtype=torch.bool),
    ]
    head = torch.tensor([float(flat.numel())], dtype=torch.float64, device=x.device)
    return torch.cat([head, torch.stack([p.to(torch.float64).to(x.device).reshape(()) for p in parts])])


def _saturation(torch: Any, x: Any, bound: str | None, dim: Any) -> tuple[Any, Any]:
    """(values or rows at the bounds, values or rows looked at) of a bounded output; zeros otherwise."""
    if bound is None or x.numel() == 0:
        zero = torch.zeros((), device=x.device)
        return zero, zero
    if bound == "sigmoid":
        hits = ((x < SATURATION_EPS) | (x > 1 - SATURATION_EPS)).sum()
        return hits, torch.tensor(float(x.numel()), device=x.device)
    if bound == "tanh":
        return (x.abs() > 1 - SATURATION_EPS).sum(), torch.tensor(float(x.numel()), device=x.device)
    along = dim if isinstance(dim, int) else -1
    peak = x.amax(dim=along)
    return (peak > 1 - SATURATION_EPS).sum(), torch.tensor(float(peak.numel()), device=x.device)


def _alive(x: Any) -> Any:
    """Units (channels of 4-D/5-D outputs, else the last dimension) non-zero for at least one input."""
    unit_dim = 1 if x.dim() in (4, 5) else x.dim() - 1
    return (x != 0).movedim(unit_dim, -1).reshape(-1, x.shape[unit_dim]).any(dim=0)


def _pack(bits: list[bool]) -> bytearray:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return out


def _entry(type_name: str, order: int, rows: list[list[float]], alive: Any, bits: bytes | None) -> dict:
    count, nan, inf, zeros, total, squares = (sum(r[i] for r in rows) for i in range(6))
    finite = count - nan - inf
    mean = total / finite if finite else math.nan
    std = math.sqrt(max(squares / finite - mean * mean, 0.0)) if finite else math.nan
    low, high = min(r[6] for r in rows), max(r[7] for r in rows)
    bound = bound_of(type_name)
    looked = sum(r[9] for r in rows)
    return {
        "type": type_name,
        "order": order,
        "calls": len(rows),
        "count": int(count),
        "nan": int(nan),
        "inf": int(inf),
        "zeros": int(zeros),
        "mean": mean,
        "std": std,
        "min": low if finite else math.nan,
        "max": high if finite else math.nan,
        "inputs_finite": not any(r[10] for r in rows),
        "bound": bound,
        "saturated": (sum(r[8] for r in rows) / looked if looked else 0.0) if bound else None,
        "units": None if alive is None else int(alive.numel()),
        "alive": bits,
    }
