"""Replace a file atomically: write a temporary file beside it, then rename it into place."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def replace_atomically(target: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `target` so readers see the old file or the new one, never half; raises OSError.

    The file gets `mode` (default: mkstemp's 0600). No fsync: callers here lose nothing but a redo on a crash.
    """
    # A short temporary name: the target's own may already be the longest a file system allows (255 bytes).
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_output(target: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write a report: a regular file (or a new one) is replaced atomically, through symlinks, never the link.

    An existing FIFO or device (/dev/stdout, /dev/null, /dev/full) is written in place, never replaced by a
    regular file (which, as root, would break the device node); a FIFO nobody reads is refused, not waited
    for. Raises OSError.
    """
    try:
        info = os.stat(target)  # follows symlinks: what the name leads to
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
    if info is not None and not stat.S_ISREG(info.st_mode):
        _write_in_place(target, data)
        return
    replace_atomically(Path(os.path.realpath(target)), data, mode=mode)


def _open_for_writing(target: str | os.PathLike[str], flags: int) -> int:
    """Open without blocking: a FIFO with no reader is an error now, not a wait forever."""
    try:
        return os.open(target, os.O_WRONLY | _NONBLOCK | flags, 0o666)
    except OSError as error:
        if error.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "a FIFO that nobody reads") from None
        raise


def _write_in_place(target: Path, data: bytes) -> None:
    fd = _open_for_writing(target, 0)
    try:
        os.set_blocking(fd, True)  # non-blocking was only for the open
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class NotRegularFileError(OSError):
    """A path we read or append to is a FIFO, a device, a socket or a directory, or is over its size cap."""


_NONBLOCK = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _check_regular(fd: int, limit: int | None) -> os.stat_result:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise NotRegularFileError(errno.EISDIR, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFileError(errno.EINVAL, "is a FIFO, socket or device, not a regular file")
    if limit is not None and info.st_size > limit:
        raise NotRegularFileError(errno.EFBIG, f"is larger than {limit >> 20} MiB")
    return info


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, opened without blocking (a FIFO cannot hang us).

    Raises OSError (NotRegularFileError for a FIFO, device, directory or a file over the cap).
    """
    fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    try:
        _check_regular(fd, limit)
        chunks, total = [], 0
        while total <= limit:  # the file may grow while we read it
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
        raise NotRegularFileError(errno.EFBIG, f"is larger than {limit >> 20} MiB")
    finally:
        os.close(fd)


def append_regular(path: str | os.PathLike[str], data: bytes) -> None:
    """Append to a regular file (created if missing), refusing FIFOs and devices instead of blocking on them."""
    fd = _open_for_writing(path, os.O_APPEND | os.O_CREAT)
    try:
        _check_regular(fd, None)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_stream(target: Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to write a large output into piece by piece, with `write_output`'s rules.

    A regular file (or a new one) is written under a temporary name beside it and renamed into place when the
    block ends without an exception (readers never see half of it); an existing FIFO or device is written in
    place. Raises OSError.
    """
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
    if info is not None and not stat.S_ISREG(info.st_mode):
        fd = _open_for_writing(target, 0)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as out:
            yield out
        return
    real = Path(os.path.realpath(target))
    fd, temporary = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
