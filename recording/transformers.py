"""Record a Hugging Face Trainer run: `Trainer(..., callbacks=[GradcheckCallback("runs/x", every=10)])`.

The Trainer builds its optimizer inside `train()`; the callback builds a torch `Recorder` on it at
`on_train_begin` (unwrapping accelerate's `AcceleratedOptimizer` and taking its GradScaler), so it records what
the optimizer applies: gradients after `gradient_accumulation_steps` micro-batches, unscaled and clipped to
`max_grad_norm`, the parameters before the step and the update. Steps are numbered by `state.global_step`
after the update (the first optimizer step is step 1, as in the Trainer's logs); what the Trainer logs at a
recorded step (`loss`, `grad_norm`, `learning_rate`) goes with the snapshot as scalars.

`transformers` is imported when `GradcheckCallback` is first looked up, never when this module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .torch_adapter import NumberedRecorder, numeric_scalars


def _make_callback_class() -> type:
    from transformers import TrainerCallback

    class GradcheckCallback(TrainerCallback):
        """Write gradcheck snapshots every `every` optimizer steps; keyword arguments go to the Recorder."""

        def __init__(self, run_dir: str | Path, every: int = 10, **recorder_options: Any) -> None:
            self.run_dir = Path(run_dir)
            self.every = every
            self.options = recorder_options
            self.recorder: NumberedRecorder | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
            if model is None or optimizer is None:
                raise ValueError("GradcheckCallback needs the model and the optimizer at on_train_begin")
            options = {
                "max_grad_norm": float(args.max_grad_norm)
                if args.max_grad_norm and args.max_grad_norm > 0
                else None,
                "framework": "transformers",
                **self.options,
            }
            self.recorder = NumberedRecorder(
                lambda: state.global_step + 1, model, optimizer, self.run_dir, every=self.every, **options
            )

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if self.recorder is not None and logs:
                self.recorder.log(step=state.global_step, **numeric_scalars(dict(logs)))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.close()

        def close(self) -> None:
            """Write what is pending and stop recording (the callback does it when training ends)."""
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
