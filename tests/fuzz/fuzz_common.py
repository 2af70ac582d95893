"""What the fuzz targets share: crash recording that keeps going, a memory cap."""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

MEMORY_LIMIT = 3 << 30  # a runaway allocation becomes a MemoryError (a crash we record), not an OOM kill
STRICT = os.environ.get("FUZZ_STRICT") == "1"  # re-raise crashes: for libFuzzer's -minimize_crash
ARTIFACTS = Path(os.environ.get("FUZZ_ARTIFACTS", "fuzz-crashes"))
_seen: set[str] = set()


def signature(error: BaseException) -> str:
    """Exception type and the innermost project frame: one signature per distinct bug."""
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if "gradcheck" in f.filename or "/analysis/" in f.filename
    ]
    frames = [f for f in frames if "/fuzz/" not in f.filename] or frames
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(error).__name__}@{where}"


def record(error: BaseException, data: bytes, target: str, suffix: str = ".bin") -> None:
    """Save the input (as `crash-*{suffix}`) and traceback of the first crash of each signature, then keep fuzzing."""
    name = f"{target}:{signature(error)}"
    if name in _seen:
        return
    _seen.add(name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = ARTIFACTS / f"crash-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    stem.with_suffix(suffix).write_bytes(data)
    text = "".join(traceback.format_exception(error))
    stem.with_suffix(".txt").write_text(f"{name}\n{text}")
    print(f"\n=== NEW CRASH {name} ({len(data)} bytes) -> {stem}\n{text}", file=sys.stderr, flush=True)


def call(
    target: str,
    data: bytes,
    expected: tuple[type[BaseException], ...],
    function: Callable,
    *args: object,
    suffix: str = ".bin",
    **kwargs: object,
) -> object:
    """Run one entry point: `expected` exceptions are answers, anything else is a recorded crash."""
    try:
        return function(*args, **kwargs)
    except expected:
        return None
    except Exception as error:  # anything but the expected answers is a bug
        if STRICT:
            raise
        record(error, data, target, suffix)
        return None


def limit_memory() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, hard))
