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

Threads. Device-to-host copies happen on the training thread; serialising and writing the file happen on a
daemon thread fed by a bounded queue (`queue_size` steps), so a slow disk holds training back instead of
filling memory. `mode="stats"` writes no tensor data, only the statistics gradcheck reports (float64
accumulation): on an accelerator they are computed on the device and only 8 numbers per tensor reach the
host; CPU tensors are copied (as in full mode) and summarised on the writer thread. A failed write is raised
as `RecordingError` (the original exception as `__cause__`) at the next recorded step or at
`flush()`/`close()`.

Several processes. Under `torch.distributed`, each rank writes into `run_dir/rank{rank:05d}/`. A sharded
parameter (a DTensor, as FSDP2's `fully_shard` makes) is recorded as this rank's local shard under the
parameter's name, described in the metadata `gradcheck.shards`; a replicated parameter (e.g. under DDP) is
written by rank 0 only, unless `all_ranks=True`.

torch is imported when a Recorder is built, never when this module is imported.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradcheck.analysis.runs import KINDS
from gradcheck.analysis.stats import TensorStats, merge_all

from .activations import StepSignals
from .snapshot import RecordingError, float_dtype_code, host_tensor, summary_entry
from .writer import MODES, write_snapshot

if TYPE_CHECKING:
    from typing_extensions import Self

# Elements per chunk when summarising: bounds the float64 scratch memory to ~128 MiB per tensor.
STATS_CHUNK = 1 << 24
# Devices whose tensors stats mode copies and summarises on the writer thread; elsewhere it summarises on
# the device, on the training thread, and reads back 8 numbers per tensor.
HOST_DEVICES = ("cpu",)


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
        self._error: BaseException | None = None
        self._error_step = 0
        self._later_failures = 0
        self._lock = threading.Lock()
        self._closed = False
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
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        # Loss and forward activations at recorded steps (recording/activations.py); step 0 is recorded.
        self._signals = StepSignals(torch, model, activations=activations)
        self._signals.start(recorded=True)

    @property
    def run_dir(self) -> Path:
        """The folder this process writes its step files into (a rank folder under torch.distributed)."""
        return self._dir

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log(self, **scalars: float) -> None:
        """Store scalars (`loss=...`) with the next optimizer step's snapshot; call it before `optimizer.step()`."""
        if self._step % self._every == 0:
            self._signals.log(self._step, scalars)

    def flush(self) -> None:
        """Wait until every recorded step is on disk; raise a write failure, if any."""
        self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        """Remove the hooks, write what is queued and stop the writer thread; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        for handle in self._hooks:
            handle.remove()
        self._signals.stop()
        self._queue.put(None)
        self._thread.join()
        self._raise_failure()

    # --- training thread -------------------------------------------------------------------------------

    def _before_step(self, optimizer: Any, args: object, kwargs: object) -> None:
        step = self._step
        self._capture = None
        if step % self._every:
            self._step += 1
            return
        self._raise_failure()  # before counting, so a step that never happened is not counted either
        self._step += 1
        scale = getattr(optimizer, "grad_scale", None)
        with self._torch.no_grad():
            self._capture = self._capture_before(step, scale)
            self._signals.finish(step, self._capture.metadata)

    def _after_step(self, optimizer: Any, args: object, kwargs: object) -> None:
        job, self._capture = self._capture, None
        self._signals.start(recorded=self._step % self._every == 0)  # self._step: the next step's number
        if job is None:
            return
        with self._torch.no_grad():
            for target in self._targets:
                before = self._before.get(target.name)
                if before is not None:
                    self._add(job, "update", target.name, _local(target.param) - before, owned=True)
        self._before = {}
        if not self._writes:
            return
        if self._mode == "stats":
            self._fetch_rows(job)
        self._queue.put(job)

    def _capture_before(self, step: int, scale: Any) -> _Job:
        job = _Job(step, dict(self._base_metadata))
        self._before = {}
        no_grad, shards = [], {}
        for target in self._targets:
            grad = _local_grad(target.param)  # a collective when placements differ: every rank calls it
            if not target.owned:
                continue
            if grad is None:
                no_grad.append(target.name)
                continue
            if target.shard is not None:
                shards[target.name] = target.shard
            if "grad" in self._kinds:
                if scale is not None:
                    grad = _unscale(grad, scale)
                self._add(job, "grad", target.name, grad, owned=scale is not None)
            param, owned = _local(target.param), False
            if "update" in self._kinds:
                param = param.clone(memory_format=self._torch.contiguous_format)
                self._before[target.name], owned = param, True
            if "param" in self._kinds:
                self._add(job, "param", target.name, param, owned=owned)
        job.metadata["gradcheck.no_grad"] = json.dumps(no_grad)
        if shards:
            job.metadata["gradcheck.shards"] = json.dumps(shards)
        return job

    def _add(self, job: _Job, kind: str, name: str, tensor: Any, *, owned: bool) -> None:
        """Queue one tensor: a host copy (full mode, and stats mode on the CPU) or a device summary row.

        `owned` says the tensor is the recorder's own (a clone or a result), so it needs no further copy.
        """
        key = f"{kind}/{name}"
        if tensor.layout != self._torch.strided:
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
        if tensor.device.type in HOST_DEVICES:  # summarised by the writer thread, off the training thread
            summary = tensor if owned else tensor.clone()
        else:
            summary = _device_row(self._torch, tensor.reshape(-1))
        job.summaries[key] = (summary, tuple(tensor.shape), dtype)

    def _fetch_rows(self, job: _Job) -> None:
        """Bring the summary rows computed on a device to the host, all in one transfer."""
        pending = [
            key for key, (value, _, _) in job.summaries.items() if value.device.type not in HOST_DEVICES
        ]
        if not pending:
            return
        rows = self._torch.stack([job.summaries[key][0] for key in pending]).cpu().tolist()
        for key, row in zip(pending, rows, strict=True):
            _, shape, dtype = job.summaries[key]
            job.summaries[key] = (_stats_of_row(row), shape, dtype)

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
        summaries = {
            key: summary_entry(
                value if isinstance(value, TensorStats) else _host_stats(self._torch, value), shape, dtype
            )
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


def _host_stats(torch: Any, tensor: Any) -> TensorStats:
    """TensorStats of a CPU tensor, chunk by chunk so the float64 scratch stays bounded."""
    return merge_all(_host_chunk_stats(torch, chunk) for chunk in tensor.reshape(-1).split(STATS_CHUNK))


def _host_chunk_stats(torch: Any, chunk: Any) -> TensorStats:
    """As analysis.stats.summarize_array: only a chunk holding NaN or Inf takes the masking pass."""
    count = chunk.numel()
    if count == 0:
        return TensorStats()
    if chunk.element_size() == 1:
        chunk = chunk.float()  # float8 has few kernels; float32 holds its values exactly
    mags = chunk.abs()
    low, high = (float(value) for value in mags.aminmax())
    nan = inf = 0
    if not math.isfinite(high):
        nan = int(torch.isnan(mags).sum())
        mags = mags[torch.isfinite(mags)]
        inf = count - nan - mags.numel()
        if mags.numel() == 0:
            return TensorStats(count=count, nan=nan, inf=inf)
        low, high = (float(value) for value in mags.aminmax())
    zeros = mags.numel() - int(torch.count_nonzero(mags)) if low == 0.0 else 0
    wide = mags.to(torch.float64)
    return TensorStats(
        count=count,
        nan=nan,
        inf=inf,
        zeros=zeros,
        abs_min=low,
        abs_max=high,
        abs_sum=float(wide.sum()),
        sq_sum=float(wide.dot(wide)),
    )


def _device_row(torch: Any, flat: Any) -> Any:
    """TensorStats of a flat device tensor as a float64 row on the device, read nothing back (no sync)."""
    rows = [_device_chunk_row(torch, chunk) for chunk in flat.split(STATS_CHUNK)]
    if len(rows) == 1:
        return rows[0]
    table = torch.stack(rows)
    total = table.sum(dim=0)
    return torch.cat([total[:4], table[:, 4].min().reshape(1), table[:, 5].max().reshape(1), total[6:]])


def _device_chunk_row(torch: Any, chunk: Any) -> Any:
    """count, nan, inf, zeros, abs_min, abs_max, abs_sum, sq_sum of a chunk, in float64 on its device."""
    if chunk.numel() == 0:
        row = torch.zeros(8, dtype=torch.float64, device=chunk.device)  # fills, not host-to-device copies
        row[4] = math.inf
        return row
    mags = chunk.to(torch.float64).abs()
    finite = torch.isfinite(mags)
    kept = torch.where(finite, mags, 0.0)
    counts = torch.stack([torch.isnan(mags).sum(), finite.sum(), (mags == 0).sum()]).to(torch.float64)
    numel = float(chunk.numel())
    return torch.stack(
        [
            torch.full((), numel, dtype=torch.float64, device=chunk.device),
            counts[0],
            numel - counts[0] - counts[1],
            counts[2],
            torch.where(finite, mags, math.inf).min(),
            kept.max(),
            kept.sum(),
            kept.dot(kept),
        ]
    )


def _stats_of_row(row: list[float]) -> TensorStats:
    """TensorStats from a row fetched from the device (its counts are exact in float64 below 2**53)."""
    count, nan, inf, zeros = (int(value) for value in row[:4])
    return TensorStats(count, nan, inf, zeros, *row[4:])
