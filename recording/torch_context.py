"""The training context the torch Recorder stores beside each snapshot (`gradcheck.context`).

How each field is observed, without changing the training loop:
- learning rate and optimizer class: the param groups and type of the optimizer that really steps, after
  unwrapping accelerate's `AcceleratedOptimizer` (`.optimizer`) and Lightning's `LightningOptimizer`
  (`._optimizer`);
- micro-batches per step and the gradient norm before clipping: a post-accumulate-grad hook on every
  parameter counts the backward passes since the previous optimizer step and, before a recorded step, keeps
  each gradient's norm as backward leaves it (before any clipping, still multiplied by the loss scale);
  the clip coefficient is the norm the optimizer receives divided by that one;
- loss scale and AMP-skipped steps: `GradScaler.get_scale()` at the recorded step, and the scaler's
  `update()` (wrapped on the instance while recording): a step the scaler stepped (`OptState.STEPPED`)
  without calling `optimizer.step()` was skipped for Inf/NaN gradients. Fused optimizers are called even
  then, with `optimizer.found_inf` set: that flag is kept on the device and read at the next snapshot.

torch is passed in by the Recorder; nothing here imports a framework.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gradcheck.analysis.context import StepContext

# Above this ratio of post- to pre-clip norm a step counts as not clipped: the two norms are summed in a
# different order (and the pre-clip one divided by the loss scale), so an unclipped step can differ from 1
# by a few float32 ulps of the total; clip_grad_norm_ itself clips by max_norm / (norm + 1e-6).
UNCLIPPED_RATIO = 1.0 - 1e-5
# Optimizer wrappers and the attribute holding the optimizer they wrap.
_WRAPPERS = {"AcceleratedOptimizer": "optimizer", "LightningOptimizer": "_optimizer"}
_WRAPPER_FRAMEWORK = {"AcceleratedOptimizer": "accelerate", "LightningOptimizer": "lightning"}


def unwrap_optimizer(optimizer: Any) -> tuple[Any, str | None, Any]:
    """(the optimizer that really steps, the framework of its outermost wrapper, the wrapper's GradScaler)."""
    framework, scaler = None, None
    while type(optimizer).__name__ in _WRAPPERS:
        name = type(optimizer).__name__
        framework = framework or _WRAPPER_FRAMEWORK[name]
        scaler = scaler or getattr(optimizer, "scaler", None)
        optimizer = getattr(optimizer, _WRAPPERS[name])
    return optimizer, framework, scaler


def unwrap_model(model: Any) -> Any:
    """The module torch.compile wrapped (`OptimizedModule._orig_mod`), so names match the uncompiled model."""
    return getattr(model, "_orig_mod", model)


def module_types(model: Any) -> dict[str, str]:
    """Parameter name -> class name of the module that holds it directly (`Linear`, `LayerNorm`, ...)."""
    out: dict[str, str] = {}
    for prefix, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            out.setdefault(f"{prefix}.{name}" if prefix else name, _class_name(module))
    return out


def _class_name(module: Any) -> str:
    """The module's class name; for FSDP2's `fully_shard` swapped-in subclass `FSDPLinear`, `Linear`."""
    cls = type(module)
    base = next((b for b in cls.__mro__[1:] if cls.__name__ == f"FSDP{b.__name__}"), cls)
    return base.__name__


class ContextProbe:
    """Watches one optimizer (and its GradScaler) and builds the StepContext of each recorded step."""

    def __init__(
        self,
        torch: Any,
        params: list[tuple[str, Any]],
        optimizer: Any,
        *,
        framework: str,
        modules: dict[str, str],
        on_skip: Callable[[], int],
        scaler: Any = None,
        max_grad_norm: float | None = None,
        measure_norms: bool = True,
    ) -> None:
        self._torch = torch
        self._params = dict(params)
        self._optimizer = optimizer
        self._on_skip = on_skip  # numbers (and counts) a step the scaler skipped
        self._framework = framework
        self._modules = modules
        self._scaler = scaler if scaler is not None and _enabled(scaler) else None
        self._max_grad_norm = max_grad_norm
        self._measure = measure_norms
        self._armed = False  # keep gradient norms: the next optimizer step is recorded
        self._fires: dict[str, int] = {}
        self._norms: dict[str, Any] = {}
        self._stepped = False  # optimizer.step() ran since the scaler's last update()
        self._skipped: list[int] = []
        self._maybe_skipped: list[tuple[int, Any]] = []  # (step, found_inf on the device) of fused steps
        self._handles = [
            _hook_on(param, self._hook(name))
            for name, param in params
            if param.requires_grad and param.is_floating_point()
        ]
        self._handles = [handle for handle in self._handles if handle is not None]
        self._own_update = None  # an update() already set on the scaler instance, restored by close()
        if self._scaler is not None:
            self._own_update = vars(self._scaler).get("update")
            self._scaler.update = self._wrap_update(self._scaler.update)

    def close(self) -> None:
        """Remove the hooks and the scaler wrapper."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._scaler is not None and "update" in vars(self._scaler):
            if self._own_update is not None:
                self._scaler.update = self._own_update
            else:
                del self._scaler.update

    def arm(self, armed: bool) -> None:
        """Whether the backward passes until the next optimizer step feed a recorded step."""
        self._armed = armed

    def stepped(self, step: int, optimizer: Any) -> None:
        """Note an optimizer step (every step, recorded or not); keeps a fused step's found_inf flag."""
        self._stepped = True
        found_inf = getattr(optimizer, "found_inf", None)
        if found_inf is not None:
            self._maybe_skipped.append((step, found_inf.detach().reshape(-1)[:1]))

    def _hook(self, name: str) -> Callable[[Any], None]:
        def hook(param: Any) -> None:
            self._fires[name] = self._fires.get(name, 0) + 1
            if self._armed and self._measure and param.grad is not None:
                self._norms[name] = self._torch.linalg.vector_norm(param.grad, dtype=self._torch.float32)

        return hook

    def _wrap_update(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def update(*args: Any, **kwargs: Any) -> Any:
            states = getattr(self._scaler, "_per_optimizer_states", {})  # GradScaler's own, reset by update()
            state = states.get(id(self._optimizer))
            stage = getattr(state.get("stage") if state else None, "name", None)
            if stage == "STEPPED" and not self._stepped:
                self._skipped.append(self._on_skip())
                self._fires = {}
            self._stepped = False
            return original(*args, **kwargs)

        return update

    def collect(self, step: int, grads: dict[str, Any], grad_scale: Any) -> StepContext:
        """The context of recorded step `step`; `grads` are the gradients the optimizer uses (unscaled)."""
        names = {id(p): name for name, p in self._params.items()}
        lr = {
            names[id(p)]: float(group["lr"])
            for group in self._optimizer.param_groups
            for p in group["params"]
            if id(p) in names and names[id(p)] in grads
        }
        scale = self._loss_scale(grad_scale)
        grad_norm, clip_coef = self._clipping(grads, scale)
        skipped = self._take_skipped(step)
        accumulation = max(self._fires.values(), default=0) or None
        self._fires, self._norms = {}, {}
        return StepContext(
            framework=self._framework,
            optimizer=type(self._optimizer).__name__,
            lr=lr,
            loss_scale=scale,
            skipped_count=len(skipped),
            skipped=tuple(skipped),
            grad_norm=grad_norm,
            clip_coef=clip_coef,
            max_grad_norm=self._max_grad_norm,
            accumulation=accumulation,
            modules={name: kind for name, kind in self._modules.items() if name in grads},
        )

    def reset_window(self) -> None:
        """Forget the backward passes counted so far (called after every optimizer step)."""
        self._fires = {}

    def _loss_scale(self, grad_scale: Any) -> float | None:
        if self._scaler is not None:
            return float(self._scaler.get_scale())
        if grad_scale is not None:
            return float(grad_scale)
        return None

    def _clipping(self, grads: dict[str, Any], scale: float | None) -> tuple[float | None, float | None]:
        """(gradient norm before clipping, clip coefficient), from the norms backward left and `grads`."""
        if not self._norms:
            return None, None
        torch = self._torch
        before = _total(torch, list(self._norms.values()))
        if scale:
            before /= scale
        after = _total(
            torch,
            [torch.linalg.vector_norm(g, dtype=torch.float32) for n, g in grads.items() if n in self._norms],
        )
        if not (math.isfinite(before) and math.isfinite(after)):
            return before, None
        if before == 0.0 or after >= before * UNCLIPPED_RATIO:
            return before, 1.0
        return before, after / before

    def _take_skipped(self, step: int) -> list[int]:
        skipped = list(self._skipped)
        if self._maybe_skipped:
            flags = self._torch.cat([flag.float().cpu() for _, flag in self._maybe_skipped]).tolist()
            skipped += [s for (s, _), flag in zip(self._maybe_skipped, flags, strict=True) if flag]
        self._skipped, self._maybe_skipped = [], []
        return sorted(skipped)


def _hook_on(param: Any, hook: Callable[[Any], None]) -> Any:
    """A post-accumulate-grad hook on `param`, None where autograd does not accumulate into it."""
    try:
        return param.register_post_accumulate_grad_hook(hook)
    except RuntimeError:  # not a leaf (a view or a computed tensor passed as a parameter)
        return None


def _enabled(scaler: Any) -> bool:
    is_enabled = getattr(scaler, "is_enabled", None)
    return bool(is_enabled()) if is_enabled is not None else True


def _total(torch: Any, norms: list[Any]) -> float:
    """The 2-norm of several per-tensor norms (on any devices), as a float: one read per device."""
    device = norms[0].device
    stacked = torch.stack([n.to(device, torch.float64) for n in norms])
    return float(torch.linalg.vector_norm(stacked))
