"""Record a PyTorch training loop through optimizer step hooks, without changing the loop.

    with Recorder(model, optimizer, "runs/my_run", every=100):
        for x, y in data:
            loss_fn(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()

Optimizer steps are counted from 0; a step is recorded when `step % every == 0`. Right before the step the
recorder takes the gradients the optimizer is about to use (so after clipping and after
`GradScaler.unscale_`) and the parameters; right after it, the update `param_after - param_before`, computed
in the parameter's dtype. Parameters whose `.grad` is None are not recorded and are listed in the metadata
`gradcheck.no_grad`.

Grad scaling. A `torch.amp.GradScaler` that is not told to `unscale_` first hands fused optimizers (those with
`_step_supports_amp_scaling`, e.g. `Adam(fused=True)`) their gradients still SCALED, with the scale in
`optimizer.grad_scale`; the recorder divides the gradients it records by that scale. Steps the scaler skips
because of Inf/NaN never call `optimizer.step()` with unfused optimizers, so nothing is recorded and they do
not count as steps; fused optimizers are called anyway (with `optimizer.found_inf` set and no update), so such
a step is recorded with its non-finite gradients and a zero update.

Threads. At recorded steps the training thread takes the tensors: in full mode host copies, which a daemon
writer thread, fed by a bounded queue (`queue_size` steps), serialises and writes, so a slow disk holds
training back instead of filling memory. `mode="stats"` writes no tensor data, only the statistics gradcheck
reports (float64 sums): CPU tensors are summarised at once on the training thread, in one chunked pass with
no full-size temporaries (on the CPU a writer thread doing this work competes with training for the same
cores); on an accelerator the summaries are enqueued on the device and only 8 numbers per tensor come back,
in one transfer that the writer thread waits for (see `_summary`). A failed write is raised as
`RecordingError` (the original exception as `__cause__`) at the next recorded step or at `flush()`/`close()`.

Several processes. Under `torch.distributed`, each rank writes into `run_dir/rank{rank:05d}/`. A sharded
parameter (a DTensor, as FSDP2's `fully_shard` makes) is recorded as this rank's local shard under the
parameter's name, described in the metadata `gradcheck.shards`; a replicated parameter (e.g. under DDP) is
written by rank 0 only, unless `all_ranks=True`.

torch is imported when a Recorder is built, never when this module is imported.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradcheck.analysis import units
from gradcheck.analysis.context import CONTEXT_KEY, SCALARS_KEY, context_metadata, scalars_metadata
from gradcheck.analysis.runs import KINDS
from gradcheck.analysis.stats import TensorStats

from ._summary import HostSummarizer, RowsOnTheWay, device_row
from .activations import StepSignals
from .snapshot import RecordingError, float_dtype_code, host_tensor, summary_entry
from .torch_context import ContextProbe, module_types, unwrap_model, unwrap_optimizer
from .writer import MODES, write_snapshot

if TYPE_CHECKING:
    from typing_extensions import Self

# Devices whose tensors stats mode summarises at once on the training thread, from the tensors themselves
# (see _summary); elsewhere it enqueues the summary on the device and reads back 8 numbers per tensor.
HOST_DEVICES = ("cpu",)
NOT_RECORDED_KEY = "gradcheck.not_recorded"  # {key: why} of tensors skipped (complex dtypes)


@dataclass
class _Target:
    """One parameter this recorder looks at, and how this rank records it."""

    name: str
    param: Any
    owned: bool  # whether this rank writes it
    shard: dict[str, Any] | None = None  # the `gradcheck.shards` entry of a sharded parameter


@dataclass
class _Job:
    """What the training thread hands the writer thread for one recorded step."""

    step: int
    metadata: dict[str, str]
    tensors: dict[str, Any] = field(default_factory=dict)  # key -> contiguous CPU tensor (mode="full")
    # key -> (TensorStats, or a float64 row still on the device; shape; dtype) (mode="stats")
    summaries: dict[str, tuple[Any, tuple[int, ...], str]] = field(default_factory=dict)
    units: dict[str, Any] = field(default_factory=dict)  # key -> unit bitmap, or a bool row on the device
    rows: RowsOnTheWay | None = None  # the device rows' copy to the host, which the writer thread waits for


class Recorder:
    """Write grad/param/update snapshots of `model` every `every` steps of `optimizer` into `run_dir`."""

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        run_dir: str | Path,
        *,
        every: int = 10,
        kinds: Iterable[str] = KINDS,
        mode: str = "full",
        overwrite: bool = False,
        queue_size: int = 2,
        all_ranks: bool = False,
        scaler: Any = None,
        max_grad_norm: float | None = None,
        framework: str | None = None,
        activations: bool = False,
    ) -> None:
        import torch

        self._kinds = tuple(kinds)
        _check_arguments(every, self._kinds, mode, queue_size)
        self._torch = torch
        self._every = every
        self._mode = mode
        self._overwrite = overwrite
        self._step = 0
        self._capture: _Job | None = None
        self._before: dict[str, Any] = {}
        self._before_buffers: dict[str, Any] = {}  # stats mode on the host: `_before` copies, reused
        self._summarizer = HostSummarizer(torch)
        self._error: BaseException | None = None
        self._error_step = 0
        self._later_failures = 0
        self._lock = threading.Lock()
        self._closed = False
        model = unwrap_model(model)
        optimizer, wrapped_by, wrapper_scaler = unwrap_optimizer(optimizer)
        self._pending: _Job | None = None  # the last recorded step, written at the next step (see log())
        self._scalars: dict[int, dict[str, float]] = {}
        self._order = [name for name, _ in model.named_parameters()]
        self._base_metadata = {"order": json.dumps(self._order)}
        self._dir = Path(run_dir)
        rank = _distributed_rank(torch)
        if rank is not None:
            self._dir = self._dir / f"rank{rank:05d}"
            self._base_metadata["gradcheck.rank"] = str(rank)
            self._base_metadata["gradcheck.world_size"] = str(torch.distributed.get_world_size())
        self._targets = [_target(torch, name, p, rank, all_ranks) for name, p in model.named_parameters()]
        self._writes = any(t.owned for t in self._targets)
        self._queue: queue.Queue[_Job | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._drain, name="gradcheck-recorder", daemon=True)
        self._thread.start()
        self._context = ContextProbe(
            torch,
            list(model.named_parameters()),
            optimizer,
            framework=framework or wrapped_by or "torch",
            modules=module_types(model),
            on_skip=self._skipped_step,
            scaler=scaler if scaler is not None else wrapper_scaler,
            max_grad_norm=max_grad_norm,
            measure_norms=rank is None or torch.distributed.get_world_size() == 1,
        )
        self._context.arm(self._next_step() % every == 0)
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        # Loss and forward activations at recorded steps (recording/activations.py). The first step is recorded
        # when its number is a multiple of `every`: step 0 here, but the framework adapters number from
        # global_step + 1 (hooks attached at step 1 would count every forward pass up to the first recorded one).
        self._signals = StepSignals(torch, model, activations=activations)
        self._signals.start(recorded=self._next_step() % every == 0)

    @property
    def run_dir(self) -> Path:
        """The folder this process writes its step files into (a rank folder under torch.distributed)."""
        return self._dir

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log(self, step: int | None = None, **scalars: float) -> None:
        """Store scalars (`loss=...`) with the snapshot of `step`, by default the next optimizer step.

        Call it before `optimizer.step()` (e.g. right after backward), or pass the step: a snapshot is written
        at the following optimizer step (or at flush/close), so values for it can arrive until then. Values
        for steps that are not recorded are dropped; a later value of the same name replaces an earlier one.
        """
        step = self._next_step() if step is None else step
        if step % self._every == 0 and (self._pending is None or step >= self._pending.step):
            values = self._scalars.setdefault(step, {})
            values.update({name: float(value) for name, value in scalars.items()})

    def flush(self) -> None:
        """Wait until every recorded step is on disk; raise a write failure, if any."""
        self._submit_pending()
        self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        """Remove the hooks, write what is queued and stop the writer thread; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        for handle in self._hooks:
            handle.remove()
        self._context.close()
        self._submit_pending()
        self._signals.stop()
        self._queue.put(None)
        self._thread.join()
        self._before_buffers.clear()
        self._raise_failure()

    # --- training thread -------------------------------------------------------------------------------

    def _next_step(self) -> int:
        """The number of the next optimizer step (the framework adapters number steps their own way)."""
        return self._step

    def _skipped_step(self) -> int:
        """Count a step AMP skipped (optimizer.step() never ran) and return its number."""
        step = self._next_step()
        self._step = step + 1
        self._context.arm((step + 1) % self._every == 0)
        return step

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        self._submit_pending()
        step = self._next_step()
        self._capture = None
        if step % self._every:
            self._step = step + 1
            self._context.stepped(step, optimizer)
            return None
        self._raise_failure()  # before counting, so a step that never happened is not counted either
        self._step = step + 1
        self._context.stepped(step, optimizer)
        scale = getattr(optimizer, "grad_scale", None)
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
        if not callable(closure):
            with self._torch.no_grad():
                self._capture = self._capture_before(step, scale)
                self._signals.finish(step, self._capture.metadata)
            return None

        # The optimizer runs backward inside step() (Lightning passes forward, backward and clipping as the
        # closure): capture once the closure has returned, before the optimizer uses the gradients.
        def capture_after(*inner: Any, **named: Any) -> Any:
            loss = closure(*inner, **named)
            if self._capture is None:
                with self._torch.no_grad():
                    self._capture = self._capture_before(step, getattr(optimizer, "grad_scale", scale))
                    self._signals.finish(step, self._capture.metadata)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": capture_after}
        return (args[0], capture_after, *args[2:]), kwargs

    def _after_step(self, optimizer: Any, args: object, kwargs: object) -> None:
        job, self._capture = self._capture, None
        self._context.reset_window()
        self._context.arm(self._step % self._every == 0)  # the next step's number is this one's + 1
        self._signals.start(recorded=self._step % self._every == 0)
        if job is None:
            return
        with self._torch.no_grad():
            for target in self._targets:
                before = self._before.get(target.name)
                if before is not None:
                    self._add(job, "update", target.name, _local(target.param), owned=True, before=before)
        self._before = {}
        if not self._writes:
            return
        if self._mode == "stats":
            self._fetch_rows(job)
            _fetch_units(self._torch, job)
        self._pending = job

    def _submit_pending(self) -> None:
        """Queue the last recorded step for writing, with the scalars logged for it."""
        job, self._pending = self._pending, None
        if job is None:
            return
        scalars = self._scalars.pop(job.step, None)
        self._scalars = {step: values for step, values in self._scalars.items() if step > job.step}
        if scalars:
            job.metadata[SCALARS_KEY] = scalars_metadata(scalars)
        self._queue.put(job)

    def _capture_before(self, step: int, scale: Any) -> _Job:
        job = _Job(step, dict(self._base_metadata))
        self._before = {}
        no_grad, shards, grads = [], {}, {}
        for target in self._targets:
            grad = _local_grad(target.param)  # a collective when placements differ: every rank calls it
            if not target.owned:
                continue
            if grad is None:
                no_grad.append(target.name)
                continue
            if target.shard is not None:
                shards[target.name] = target.shard
            if scale is not None:
                grad = _unscale(grad, scale)
            grads[target.name] = grad
            if "grad" in self._kinds:
                self._add(job, "grad", target.name, grad, owned=scale is not None)
            param, owned = _local(target.param), False
            if "update" in self._kinds:
                param = self._copy_before(target.name, param)
                self._before[target.name], owned = param, True
            if "param" in self._kinds:
                self._add(job, "param", target.name, param, owned=owned)
        job.metadata["gradcheck.no_grad"] = json.dumps(no_grad)
        job.metadata[CONTEXT_KEY] = context_metadata(self._context.collect(step, grads, scale))
        if shards:
            job.metadata["gradcheck.shards"] = json.dumps(shards)
        return job

    def _copy_before(self, name: str, param: Any) -> Any:
        """A copy of a parameter before the step, for its update; reused across steps where it can be."""
        torch = self._torch
        if self._mode != "stats" or param.device.type not in HOST_DEVICES or param.layout != torch.strided:
            return param.clone(memory_format=torch.contiguous_format)  # full mode hands it to the writer
        buffer = self._before_buffers.get(name)
        if buffer is None or buffer.shape != param.shape or buffer.dtype != param.dtype:
            buffer = self._before_buffers[name] = torch.empty_like(
                param, memory_format=torch.contiguous_format
            )
        return buffer.copy_(param)  # no page faults of a fresh allocation, which cost more than the copy

    def _add(self, job: _Job, kind: str, name: str, tensor: Any, *, owned: bool, before: Any = None) -> None:
        """Queue one tensor; complex ones are skipped with a note, a failure names the tensor, run and step."""
        key = f"{kind}/{name}"
        if tensor.is_complex():  # not real: nothing gradcheck analyses (complex128 has no safetensors dtype)
            skipped = json.loads(job.metadata.get(NOT_RECORDED_KEY, "{}"))
            skipped[key] = f"{str(tensor.dtype).removeprefix('torch.')}: complex, not recorded"
            job.metadata[NOT_RECORDED_KEY] = json.dumps(skipped)
            return
        try:
            self._add_tensor(job, kind, name, tensor, owned=owned, before=before)
        except RecordingError:
            raise
        except Exception as error:  # e.g. a parameter on the meta device, which has no data to copy
            raise RecordingError(
                f"cannot record {key!r} of step {job.step} to {self._dir}: "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                f" (device {tensor.device}, dtype {tensor.dtype})"
            ) from error

    def _add_tensor(
        self, job: _Job, kind: str, name: str, tensor: Any, *, owned: bool, before: Any = None
    ) -> None:
        """Queue one tensor (or, given `before`, the update `tensor - before`): a host copy, or its summary.

        `owned` says the tensor is the recorder's own (a clone or a result), so it needs no further copy.
        Stats mode summarises host tensors here, on the training thread, and device tensors on the device.
        """
        torch, key = self._torch, f"{kind}/{name}"
        summarize_here = self._mode == "stats" and tensor.device.type in HOST_DEVICES
        if before is not None and (not summarize_here or tensor.layout != torch.strided):
            tensor, before, owned = tensor - before, None, True
        if tensor.layout != torch.strided:
            tensor, owned = tensor.to_dense(), True
        if self._mode == "full":
            job.tensors[key] = tensor.to("cpu", copy=not owned).contiguous()
            return
        dtype = float_dtype_code(str(tensor.dtype).removeprefix("torch."))
        if dtype is None:
            raise RecordingError(
                f"cannot record step {job.step} to {self._dir}: {key} is a {tensor.dtype} tensor, "
                "and stats mode summarises float tensors only"
            )
        if not summarize_here:
            summary = device_row(torch, tensor)
        elif kind == "param" and self._before.get(name) is tensor:
            summary = None  # summarised after the step, in the update's pass over the same copy
        elif before is not None and job.summaries.get(f"param/{name}", (0,))[0] is None:
            summary, param = self._summarizer.summarize_step(tensor, before)
            job.summaries[f"param/{name}"] = (param, *job.summaries[f"param/{name}"][1:])
        else:
            summary = self._summarizer.summarize(tensor, before)
        if kind == "grad":  # only gradients have dead units; the others' bitmaps would only cost
            job.units[key] = _unit_mask(tensor)
        job.summaries[key] = (summary, tuple(tensor.shape), dtype)

    def _fetch_rows(self, job: _Job) -> None:
        """Start the one transfer of the device rows to the host; the writer thread waits for it, not us."""
        rows = {
            key: value for key, (value, _, _) in job.summaries.items() if not isinstance(value, TensorStats)
        }
        if rows:
            job.rows = RowsOnTheWay(self._torch, rows)

    def _raise_failure(self) -> None:
        with self._lock:
            error, step, self._error = self._error, self._error_step, None
            more, self._later_failures = self._later_failures, 0
        if error is None:
            return
        message = str(error)
        if not isinstance(error, RecordingError):  # its message already names the run dir and the step
            message = f"cannot write step {step} to {self._dir}: {type(error).__name__}: {error}"
        also = f" (and {more} later step(s) failed too)" if more else ""
        raise RecordingError(message + also) from error

    # --- writer thread ---------------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._write(job)
            except Exception as error:  # noqa: BLE001 -- not swallowed: the training thread raises it
                with self._lock:
                    if self._error is None:
                        self._error, self._error_step = error, job.step  # type: ignore[union-attr]
                    else:
                        self._later_failures += 1
            finally:
                self._queue.task_done()

    def _write(self, job: _Job) -> None:
        tensors = {key: host_tensor(tensor, copy=False) for key, tensor in job.tensors.items()}
        for key, stats in job.rows.stats().items() if job.rows is not None else ():
            _, shape, dtype = job.summaries[key]
            job.summaries[key] = (stats, shape, dtype)
        summaries = {
            key: summary_entry(_with_units(value, job.units.get(key)), shape, dtype)
            for key, (value, shape, dtype) in job.summaries.items()
        }
        write_snapshot(
            self._dir,
            job.step,
            tensors,
            metadata=job.metadata,
            summaries=summaries if self._mode == "stats" else None,
            overwrite=self._overwrite,
        )


def _check_arguments(every: int, kinds: tuple[str, ...], mode: str, queue_size: int) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer, not {every!r}")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be some of {', '.join(KINDS)}, not {kinds!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ValueError(f"queue_size must be a positive integer, not {queue_size!r}")


def _distributed_rank(torch: Any) -> int | None:
    """This process's rank under an initialised torch.distributed, else None."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return int(distributed.get_rank())
    return None


def _dtensor_type(torch: Any) -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _target(torch: Any, name: str, param: Any, rank: int | None, all_ranks: bool) -> _Target:
    """How this rank records `param`: sharded DTensors by every holder of a shard, the rest by rank 0."""
    dtensor = _dtensor_type(torch)
    if dtensor is None or not isinstance(param, dtensor):
        return _Target(name, param, owned=all_ranks or not rank)
    mesh, placements = param.device_mesh, param.placements
    coordinate = mesh.get_coordinate() or [0] * mesh.ndim
    sharded = [dim for dim, placement in enumerate(placements) if placement.is_shard()]
    replica = any(coordinate[dim] for dim in range(mesh.ndim) if dim not in sharded)
    owned = all_ranks or not replica
    if not sharded:
        return _Target(name, param, owned=owned)
    index, count = 0, 1
    for dim in sharded:  # several sharded mesh dims: the row-major position among all shards
        index, count = index * mesh.size(dim) + coordinate[dim], count * mesh.size(dim)
    shard = {"global": name, "shape": list(param.shape), "index": index, "count": count}
    return _Target(name, param, owned=owned, shard=shard)


def _local(tensor: Any) -> Any:
    """The part of `tensor` this process holds: the local shard of a DTensor, else the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return (to_local() if to_local is not None else tensor).detach()


def _local_grad(param: Any) -> Any:
    grad = param.grad
    if grad is None:
        return None
    placements = getattr(param, "placements", None)
    if placements is not None and getattr(grad, "placements", placements) != placements:
        grad = grad.redistribute(param.device_mesh, placements)
    return _local(grad)


def _unscale(grad: Any, scale: Any) -> Any:
    """The gradient divided by a GradScaler scale, in float32 for half-precision gradients.

    Fused optimizers unscale in float32 too; dividing an fp16 gradient by a scale of 65536 in fp16 would
    flush its small values to zero and make healthy layers look dead or vanishing.
    """
    if grad.dtype.itemsize < 4 and grad.is_floating_point():
        grad = grad.float()
    if hasattr(scale, "reshape"):
        scale = scale.to(grad.device, grad.dtype).reshape(())
    return grad / scale


# --- per-unit bitmaps (dead-units) ----------------------------------------------------------------------


def _unit_mask(tensor: Any) -> Any:
    """Which units (indices along axis 0) hold a non-zero element, as a bool vector on the tensor's device.

    None for tensors that keep no bitmap (units.tracked). Computed where the tensor is, read back with the
    summary rows (_fetch_units), so a device tensor is never copied whole for it.
    """
    shape = tuple(tensor.shape)
    if not units.tracked(shape):
        return None
    if tensor.numel() == 0:
        return tensor.new_zeros(units.unit_count(shape), dtype=bool)
    return (tensor.reshape(units.unit_count(shape), -1) != 0).any(dim=1)


def _fetch_units(torch: Any, job: _Job) -> None:
    """Bring the unit masks computed on a device to the host as bitmaps, all in one transfer."""
    pending = {key: mask for key, mask in job.units.items() if mask is not None}
    if not pending:
        return
    flat = torch.cat([mask.reshape(-1) for mask in pending.values()]).cpu().numpy()
    start = 0
    for key, mask in pending.items():
        job.units[key] = units.from_bools(flat[start : start + mask.numel()])
        start += mask.numel()


def _with_units(stats: TensorStats, alive: Any) -> TensorStats:
    """A summary with its unit bitmap (gradients in stats mode), or as it is."""
    return stats if alive is None else replace(stats, alive=alive)
