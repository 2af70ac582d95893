"""Coverage-guided fuzzing of the safetensors reader and the run loader with atheris (libFuzzer).

Each input is one whole file. It goes to `parse_header`, to `scan_file` (small buffer: many chunks) and to
`load_run` on a directory holding that file and a fixed valid one of the same step. A `GradcheckError` is the expected answer to a bad file;
any other exception is a crash. See README.md beside this file for how to run it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["gradcheck"]):
    from gradcheck.analysis.errors import GradcheckError
    from gradcheck.analysis.reader import parse_header, scan_file
    from gradcheck.analysis.runs import load_run
    from gradcheck.analysis.stats import TensorStats
    from gradcheck.analysis.summaries import summary_entry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from st_files import bf16_bits, file_bytes, write_arrays  # st_files lives in tests/

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_common import call, limit_memory

FILE_NAME = "grads_7.safetensors"  # names a kind, so keys without a grad/ prefix are still read
COMPANION = "params_7.safetensors"  # a valid file of the same step, always in the run directory
SCAN_BUFFER = 64  # small, so that every tensor is streamed in several chunks
_run_dir = Path()  # set by main()


def _call(target: str, data: bytes, function, *args, **kwargs) -> None:
    """A GradcheckError is the answer to a bad file; anything else is a crash, saved as a .safetensors input."""
    call(target, data, (GradcheckError,), function, *args, suffix=".safetensors", **kwargs)


def test_one_input(data: bytes) -> None:
    """The fuzz target: one whole file through the three entry points."""
    if len(data) >= 8:
        (length,) = struct.unpack_from("<Q", data)
        raw = data[8 : 8 + length] if length <= len(data) - 8 else data[8:]
        _call("parse_header", data, parse_header, raw, len(data), "fuzz.safetensors")
    path = _run_dir / FILE_NAME
    path.write_bytes(data)
    _call("scan_file", data, scan_file, path, buffer_bytes=SCAN_BUFFER)
    _call("load_run", data, load_run, _run_dir)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Header and data section of a file whose length prefix is consistent; else everything is header."""
    if len(data) >= 8:
        (length,) = struct.unpack_from("<Q", data)
        if length <= len(data) - 8:
            return data[8 : 8 + length], data[8 + length :]
    return data[8:], b""


# Values that sit on a boundary somewhere: u64 and f64 limits, Python's int-digit limit, deep nesting.
_NUMBERS = ("0", "-1", "1", "3", "4294967296", "9007199254740993", "18446744073709551615",
            "18446744073709551616", "100000000000", "1e400", "-0", "0.5", "1" * 400, "1" * 5000)  # fmt: skip
_WORDS = ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2", "I32", "F4", "F6_E2M3", "grad/w", "param/w",
          "w", "nan", "inf", "-inf", "", "step", "order", "count", "index", "shape", "global")  # fmt: skip
_NUMBER = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_STRING = re.compile(rb'(\\?")([^"\\]*)\1')  # a plain "word", or an escaped \"word\" inside a metadata value
_MEMBER = re.compile(rb'"[^"]*":\{[^{}]*\}')


def _mutate_text(header: bytes, rng: random.Random) -> bytes:
    """A token-aware edit: swap a number or a word for a boundary value, repeat a member, nest deeply."""
    roll = rng.random()
    pattern = _NUMBER if roll < 0.45 else _STRING if roll < 0.8 else _MEMBER if roll < 0.92 else None
    matches = list(pattern.finditer(header)) if pattern else []
    if not matches:  # deep nesting, half the time at the start of a string (metadata values hold JSON)
        strings = list(_STRING.finditer(header))
        at = rng.choice(strings).end(1) if strings and rng.random() < 0.5 else rng.randrange(len(header) + 1)
        return header[:at] + b"[" * rng.choice((127, 128, 1100)) + header[at:]
    m = rng.choice(matches)
    if pattern is _NUMBER:
        new = rng.choice(_NUMBERS).encode()
    elif pattern is _STRING:
        new = m.group(1) + rng.choice(_WORDS).encode() + m.group(1)
    else:
        new = m.group(0) + b"," + m.group(0)
    return header[: m.start()] + new + header[m.end() :]


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """Mutate the header or the data and usually rewrite the length prefix, so mutants get past it."""
    rng = random.Random(seed)
    roll = rng.random()
    if roll < 0.1:  # plain byte mutation, which also breaks the prefix
        return atheris.Mutate(data, max_size)
    header, body = _split(data)
    if roll < 0.4:
        header = _mutate_text(header, rng)
    elif roll < 0.85:
        header = atheris.Mutate(header, max(8, min(max_size - 8 - len(body), len(header) + 64)))
    else:
        body = atheris.Mutate(body, max(0, min(max_size - 8 - len(header), len(body) + 64)))
    return (struct.pack("<Q", len(header)) + header + body)[:max_size]


def _stats_metadata() -> dict[str, str]:
    stats = summary_entry(TensorStats(5, 1, 1, 1, 0.0, 3.5, 4.0, 9.0), (5,), "F32")
    return {"gradcheck.stats": json.dumps({"grad/v": stats}), "gradcheck.format": "1", "step": "3"}


def write_seeds(folder: Path) -> None:
    """A small seed corpus of valid files: every decoded dtype, skipped dtypes, every metadata key we read."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.5, -2.25, 1e-8])
    seeds = {
        "floats": {
            "grad/a": ("F64", values),
            "grad/b": ("F32", values.astype(np.float32)),
            "grad/c": ("F16", values.astype(np.float16)),
            "grad/d": ("BF16", bf16_bits(values)),
        },
        "f8": {
            "e4": ("F8_E4M3", np.arange(0, 256, 17, dtype=np.uint8)),
            "e5": ("F8_E5M2", np.arange(3, 256, 23, dtype=np.uint8)),
        },
        "skipped": {
            "i": ("I32", np.arange(3, dtype=np.int32)),
            "m": ("BOOL", np.array([1, 0], np.uint8)),
            "w": ("F32", rng.standard_normal((2, 3)).astype(np.float32)),
        },
        "scalar_and_empty": {
            "param/s": ("F64", np.array(2.0)),
            "param/z": ("F32", np.zeros((0, 3), np.float32)),
        },
    }
    metadata = {
        "floats": {
            "gradcheck.format": "1",
            "step": "12",
            "order": '["d", "c", "b", "a"]',
            "gradcheck.no_grad": "[]",
        },
        "f8": None,
        "skipped": {"step": " -3 "},
        "scalar_and_empty": {"gradcheck.format": "1"},
    }
    for name, tensors in seeds.items():
        write_arrays(folder / f"{name}.safetensors", tensors, metadata[name])
    write_arrays(folder / "stats_mode.safetensors", {}, _stats_metadata())
    shards = {"w": {"global": "model.w", "shape": [2], "index": 0, "count": 1}}
    write_arrays(
        folder / "shard.safetensors",
        {"grad/w": ("F32", np.ones(2, np.float32))},
        {"gradcheck.shards": json.dumps(shards), "step": "1"},
    )
    sub_byte = {
        "f4": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]},
        "u": {"dtype": "U16", "shape": [1], "data_offsets": [2, 4]},
    }
    (folder / "sub_byte.safetensors").write_bytes(file_bytes(sub_byte, bytes(4)))
    (folder / "empty_header.safetensors").write_bytes(file_bytes({}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_run_dir() -> Path:
    """This process's run directory, in memory where possible, with a fixed companion file beside the input.

    libFuzzer ends the process without running Python's exit hooks, so leftovers of finished runs are
    removed here instead.
    """
    base = Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    for stale in base.glob("gradcheck-fuzz-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = base / f"gradcheck-fuzz-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    # Parameters of the same step as the fuzzed gradients: exercises merging kinds and the shape check.
    companion = {"w": ("F32", np.ones(2, np.float32)), "d": ("F32", np.ones(8, np.float32))}
    write_arrays(folder / COMPANION, companion, {"step": "7", "order": '["d", "w"]'})
    return folder


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(Path(sys.argv[2]))
        return
    global _run_dir
    _run_dir = _make_run_dir()
    limit_memory()
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()  # never returns: libFuzzer exits the process


if __name__ == "__main__":
    main()
