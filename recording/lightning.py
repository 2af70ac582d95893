"""Record a Lightning run: `Trainer(callbacks=[GradcheckCallback("runs/x", every=10)])`.

The callback builds a torch `Recorder` on the optimizer Lightning steps, so it records what that optimizer
applies: the gradients after accumulation, AMP unscaling and `gradient_clip_val` clipping (Lightning's own
`on_before_optimizer_step` comes before clipping), the parameters before the step and the update. Steps are
numbered like `trainer.global_step` after the update: the first optimizer step is step 1. The loss the
training step returned (and the single-number `self.log` metrics) go with the snapshot as scalars.

`lightning` is imported when `GradcheckCallback` is first looked up, never when this module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .torch_adapter import NumberedRecorder, numeric_scalars


def _make_callback_class() -> type:
    from lightning.pytorch.callbacks import Callback

    class GradcheckCallback(Callback):
        """Write gradcheck snapshots every `every` optimizer steps; keyword arguments go to the Recorder."""

        def __init__(self, run_dir: str | Path, every: int = 10, **recorder_options: Any) -> None:
            self.run_dir = Path(run_dir)
            self.every = every
            self.options = recorder_options
            self.recorder: NumberedRecorder | None = None
            self._last_step = -1

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            if len(trainer.optimizers) != 1:
                raise ValueError(
                    f"GradcheckCallback records one optimizer, this module has {len(trainer.optimizers)}"
                )
            clip = trainer.gradient_clip_val
            algorithm = getattr(trainer.gradient_clip_algorithm, "value", trainer.gradient_clip_algorithm)
            norm_clipping = clip and algorithm in (None, "norm")  # None: Lightning's default, by norm
            options = {
                "scaler": getattr(trainer.precision_plugin, "scaler", None),
                "max_grad_norm": float(clip) if norm_clipping else None,
                "framework": "lightning",
                **self.options,
            }
            self._last_step = trainer.global_step
            self.recorder = NumberedRecorder(
                lambda: trainer.global_step + 1, pl_module, trainer.optimizers[0], self.run_dir,
                every=self.every, **options,
            )  # fmt: skip

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
        ) -> None:
            if self.recorder is None or trainer.global_step == self._last_step:
                return  # a micro-batch that was only accumulated
            self._last_step = trainer.global_step
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            scalars = numeric_scalars(dict(trainer.callback_metrics))
            if loss is not None:
                scalars.update(numeric_scalars({"loss": loss}))
            self.recorder.log(step=trainer.global_step, **scalars)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.close()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.close()

        def close(self) -> None:
            """Write what is pending and stop recording (the callback does it when fit ends)."""
            recorder, self.recorder = self.recorder, None
            if recorder is not None:
                recorder.close()

    return GradcheckCallback


_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name != "GradcheckCallback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CLASSES:
        _CLASSES[name] = _make_callback_class()
    return _CLASSES[name]
