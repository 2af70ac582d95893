"""Replace a file atomically: write a temporary file beside it, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_atomically(target: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `target` so readers see the old file or the new one, never half; raises OSError.

    The file gets `mode` (default: mkstemp's 0600). No fsync: callers here lose nothing but a redo on a crash.
    """
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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
