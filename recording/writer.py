"""Write step files: safetensors serialisation by hand, published atomically so a reader never sees half."""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from gradcheck.analysis.dtypes import DTYPES
from gradcheck.analysis.header import MAX_HEADER_BYTES
from gradcheck.analysis.runs import FORMAT_VERSION
from gradcheck.analysis.summaries import STATS_KEY

from .snapshot import HostTensor, RecordingError, flatten, host_tensor, summarize_host, summary_entry

MODES = ("full", "stats")  # save_snapshot: tensor data, or only the per-tensor summaries
_HEADER_ALIGN = 8  # safetensors pads the header so the data section starts 8-byte aligned
_LINK_UNSUPPORTED = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}
_OS_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "the step file's name is taken by a directory",
    errno.EIO: "input/output error",
}


def step_file_name(step: int) -> str:
    """The file name of a step, `step_00000100.safetensors`."""
    return f"step_{step:08d}.safetensors"


def _fail(run_dir: object, step: int, problem: str) -> RecordingError:
    """Make the error for a step that cannot be written."""
    return RecordingError(f"cannot write step {step} to {run_dir}: {problem}")


def _os_reason(error: OSError) -> str:
    """Plain words for an OSError."""
    reason = _OS_REASONS.get(error.errno or 0)
    return reason or (error.strerror or str(error) or type(error).__name__).lower()


def _tensor_bytes(key: str, tensor: HostTensor) -> memoryview:
    """Validate a host tensor and return its data as flat bytes; ValueError says what is wrong."""
    info = DTYPES.get(tensor.dtype)
    if info is None:
        raise ValueError(f"tensor {key!r}: unknown dtype {tensor.dtype!r}")
    if not all(type(d) is int and d >= 0 for d in tensor.shape):
        raise ValueError(f"tensor {key!r}: shape {tensor.shape!r} is not a tuple of non-negative integers")
    data = memoryview(tensor.data)
    if not data.c_contiguous:
        raise ValueError(f"tensor {key!r}: data is not C-contiguous")
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    bits = math.prod(tensor.shape) * info.bits
    if bits % 8 or bits // 8 != data.nbytes:
        raise ValueError(
            f"tensor {key!r}: shape {list(tensor.shape)} of {tensor.dtype} needs {bits / 8:g} bytes, "
            f"data has {data.nbytes}"
        )
    return data


def _merged_metadata(
    step: int, metadata: Mapping[str, str] | None, summaries: Mapping[str, Mapping[str, object]] | None
) -> dict[str, str]:
    """User metadata plus the format version, the step and the summaries; ValueError on a conflict."""
    ours = {"gradcheck.format": FORMAT_VERSION, "step": str(step)}
    if summaries is not None:
        ours[STATS_KEY] = json.dumps(summaries, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    elif metadata and STATS_KEY in metadata:
        raise ValueError(
            f"metadata {STATS_KEY!r} is reserved: use mode='stats' (or write_snapshot's summaries=)"
        )
    merged: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata {key!r}: {type(value).__name__} value, safetensors needs str -> str")
        if key in ours and value != ours[key]:
            raise ValueError(f"metadata {key!r} is reserved (gradcheck sets it to {ours[key][:40]!r})")
        merged[key] = value
    merged.update(ours)
    return merged


def serialize_header(tensors: Mapping[str, HostTensor], metadata: Mapping[str, str]) -> bytes:
    """The 8-byte length and the padded JSON header for tensors laid out in sorted key order."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for key in sorted(tensors):
        if key == "__metadata__":
            raise ValueError("a tensor cannot be named '__metadata__'")
        tensor = tensors[key]
        size = _tensor_bytes(key, tensor).nbytes
        header[key] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    # ensure_ascii=False writes UTF-8 as the library does, and a lone surrogate fails here, not in the reader.
    raw = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % _HEADER_ALIGN)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(raw)} bytes, more than the {MAX_HEADER_BYTES} safetensors reads")
    return struct.pack("<Q", len(raw)) + raw


def _write_all(fd: int, data: memoryview | bytes) -> None:
    """Write every byte, looping on short writes."""
    view = memoryview(data)
    while view.nbytes:
        view = view[os.write(fd, view) :]


def _write_temp(path: Path, chunks: list[memoryview | bytes]) -> None:
    """Create `path` exclusively, write the chunks, fsync and make it world-readable."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o644)
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
        os.fsync(fd)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o644)  # not the 0600 of safetensors' own writer, and independent of the umask
    finally:
        os.close(fd)


def _publish(temp: Path, final: Path, overwrite: bool) -> None:
    """Give the finished temp file its final name; without `overwrite`, never replace an existing file."""
    if overwrite:
        os.replace(temp, final)
        return
    try:
        os.link(temp, final)  # atomic, and fails if `final` exists
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _LINK_UNSUPPORTED:
            raise
        if os.path.lexists(final):  # no hard links here: a check then a rename, racy only between writers
            raise FileExistsError(errno.EEXIST, "file exists", str(final)) from None
        os.replace(temp, final)
        return
    try:
        os.unlink(temp)
    except OSError:
        pass  # the step is published; a leftover hidden .tmp is ignored by the reader


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entry durable, where the platform can open directories."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def write_snapshot(
    run_dir: str | os.PathLike[str],
    step: int,
    tensors: Mapping[str, HostTensor],
    *,
    metadata: Mapping[str, str] | None = None,
    summaries: Mapping[str, Mapping[str, object]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `run_dir/step_{step:08d}.safetensors` atomically and return its path."""
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"step must be 0 or more, got {step}")
    try:
        header = serialize_header(tensors, _merged_metadata(step, metadata, summaries))
        chunks = [header, *(_tensor_bytes(key, tensors[key]) for key in sorted(tensors))]
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise _fail(run_dir, step, str(e)) from e
    directory = Path(run_dir)
    final = directory / step_file_name(step)
    temp = directory / f".{final.name}.{secrets.token_hex(8)}.tmp"
    try:
        _publish_new_file(directory, temp, final, chunks, overwrite)
    except FileExistsError as e:
        raise RecordingError(
            f"step {step} already exists in {run_dir} (pass overwrite=True to replace it)"
        ) from e
    except OSError as e:
        raise _fail(run_dir, step, _os_reason(e)) from e
    try:
        _fsync_directory(directory)
    except OSError as e:
        raise RecordingError(
            f"step {step} was written to {run_dir}, but the directory could not be synced "
            f"to disk: {_os_reason(e)}"
        ) from e
    return final


def _publish_new_file(
    directory: Path, temp: Path, final: Path, chunks: list[memoryview | bytes], overwrite: bool
) -> None:
    """Write the temp file and publish it; on any failure the temp file is gone and `final` untouched.

    Only the publishing step raises FileExistsError (a run directory that is a file raises NotADirectory).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory)) from e
    published = False
    try:
        _write_temp(temp, chunks)
        _publish(temp, final, overwrite)
        published = True
    finally:
        if not published:
            _remove_quietly(temp)


def _remove_quietly(path: Path) -> None:
    """Delete a temp file if it exists; cleanup must not hide the error that caused it."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _named_values(kinds: Mapping[str, object]) -> list[tuple[str, str, object]]:
    """(key, param name, value) for every recorded tensor, kind by kind, None values left out."""
    named: list[tuple[str, str, object]] = []
    for kind, tree in kinds.items():
        if tree is None:
            continue
        if not isinstance(tree, Mapping):
            raise RecordingError(f"{kind}s must be a mapping of name -> array, not {type(tree).__name__}")
        for name, value in flatten(tree).items():
            if not name:
                raise RecordingError(f"a {kind} has an empty name")
            if value is not None:
                named.append((f"{kind}/{name}", name, value))
    return named


def save_snapshot(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    grads: Mapping[str, object] | None = None,
    params: Mapping[str, object] | None = None,
    updates: Mapping[str, object] | None = None,
    metadata: Mapping[str, str] | None = None,
    mode: str = "full",
    overwrite: bool = False,
    order: Sequence[str] | None = None,
) -> Path:
    """Record one step from any framework: name -> array mappings (nested ones flatten to dotted names).

    `mode="stats"` stores only per-tensor summaries, a few hundred bytes per tensor. None values (a
    parameter without a gradient) are left out. The model order (first layer to last: the table's rows, the
    "last layer" of exploding-relative) is `order` when given, else the order of the names in the mappings
    (grads first). An `order` key in `metadata` replaces both.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    try:
        named = _named_values({"grad": grads, "param": params, "update": updates})
    except RecordingError as e:
        raise _fail(run_dir, step, str(e)) from e
    names = list(order) if order is not None else list(dict.fromkeys(name for _, name, _ in named))
    if not all(isinstance(name, str) for name in names):
        raise _fail(run_dir, step, "order must be a sequence of parameter names (str)")
    order_text = json.dumps(list(dict.fromkeys(names)), ensure_ascii=False)
    tensors: dict[str, HostTensor] = {}
    summaries: dict[str, dict[str, object]] | None = {} if mode == "stats" else None
    for key, _, value in named:
        try:
            tensor = host_tensor(value, copy=False)  # written (or summarised) before the caller goes on
        except RecordingError as e:
            raise _fail(run_dir, step, f"tensor {key!r}: {e}") from e
        if summaries is None:
            tensors[key] = tensor
        else:
            summaries[key] = summary_entry(summarize_host(tensor), tensor.shape, tensor.dtype)
    merged = {"order": order_text, **(metadata or {})}
    return write_snapshot(run_dir, step, tensors, metadata=merged, summaries=summaries, overwrite=overwrite)
