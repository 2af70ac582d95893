"""Malformed, moving and hostile snapshot files, run through the CLI next to a valid one (docs/BAD_INPUT.md).

Every bad file must give exactly one warning line on stderr naming it and the problem, appear in the JSON
`unreadable` list, and leave the valid file analysed (exit 0); alone, or with --strict, it is exit 2.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner, Result
from doc_tables import check_table, code, markdown_table
from json_rows import per_step
from runs_builder import write_file, write_step
from safetensors.numpy import save_file
from st_files import entry, file_bytes

from gradcheck.analysis import reader
from gradcheck.analysis.errors import UnreadableFileError
from gradcheck.analysis.header import MAX_HEADER_BYTES
from gradcheck.analysis.reader import read_header, scan_file
from gradcheck.cli.main import cli

CASE_FILE = "grads_2.safetensors"  # names a kind and a step, so unprefixed keys are read as gradients
TIMEOUT = 10.0  # seconds; a FIFO opened for reading would block forever
Z = b"\0"
W = {"w": entry("F32", [2, 3], 0, 24)}

Build = Callable[[Path], Path]


@dataclass(frozen=True)
class Case:
    """A file put into a run; `words` is what its warning must say, None when the file is valid."""

    name: str
    build: Build  # writes the file into the run directory and returns its path
    words: str | None = None
    while_reading: Callable[[Path], None] | None = None  # done to the file as its tensor data is read
    grad: dict[str, Any] | None = None  # for a valid file: fields its step-2 gradient 'w' must have


def raw(content: bytes, name: str = CASE_FILE) -> Build:
    """A file holding exactly these bytes."""

    def build(run: Path) -> Path:
        path = run / name
        path.write_bytes(content)
        return path

    return build


def crafted(header: object, data: bytes = b"", *, name: str = CASE_FILE, **kw: Any) -> Build:
    """A hand-built safetensors file (st_files.file_bytes)."""
    return raw(file_bytes(header, data, **kw), name)  # type: ignore[arg-type]


def arrays(
    tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None, name: str = CASE_FILE
) -> Build:
    """A file written by the safetensors library itself."""
    return lambda run: write_file(run / name, tensors, metadata)


def huge_header(run: Path) -> Path:
    """A sparse file whose declared header is just over the library's 100 MB limit."""
    path = run / CASE_FILE
    with path.open("wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        f.truncate(MAX_HEADER_BYTES + 100)  # sparse: no real disk use
    return path


def directory(run: Path) -> Path:
    (run / "x.safetensors").mkdir()
    return run / "x.safetensors"


def fifo(run: Path) -> Path:
    os.mkfifo(run / "x.safetensors")
    return run / "x.safetensors"


def dangling_symlink(run: Path) -> Path:
    (run / "x.safetensors").symlink_to(run / "gone.safetensors")
    return run / "x.safetensors"


def truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def replace_with_twos(path: Path) -> None:
    """Atomically put a different valid file (all gradients 2.0) where `path` is."""
    write_file(path.with_suffix(".tmp"), {"w": np.full(1024, 2.0, np.float32)})
    os.replace(path.with_suffix(".tmp"), path)


ONES = {"w": np.ones(1024, np.float32)}

CASES = [
    Case("empty file", raw(b""), "empty file (0 bytes)"),
    Case("cut inside the 8-byte length", raw(b"\x18\0\0\0\0"), "only 5 bytes"),
    Case("cut inside the header", raw(file_bytes(W, Z * 24)[:30]), "is larger than the file (30 bytes)"),
    Case(
        "header length past the end of the file",
        crafted(W, Z * 24, declared_length=1000),
        "header length 1000",
    ),
    Case("header length 2^64-1", crafted(W, Z * 24, declared_length=2**64 - 1), "18446744073709551615"),
    Case("header length over 100 MB", huge_header, "header is larger than 100 MB"),
    Case("invalid JSON", crafted(b"{oops}"), "header is not valid JSON"),
    Case("JSON that is not an object", crafted("[1, 2]"), "header is not a JSON object"),
    Case("invalid UTF-8", crafted(b'{"\xff":1}'), "header is not valid UTF-8"),
    Case("unknown dtype", crafted({"w": entry("F99", [1], 0, 4)}, Z * 4), "unknown dtype 'F99'"),
    Case("negative shape", crafted({"w": entry("F32", [-1, 3], 0, 4)}, Z * 4), "non-negative integers"),
    Case("overflowing shape", crafted({"w": entry("F32", [2**32, 2**32], 0, 0)}), "overflows 64 bits"),
    Case(
        "shape × dtype not matching the byte range",
        crafted({"w": entry("F32", [2, 3], 0, 20)}, Z * 20),
        "needs 24 bytes but its offsets span 20",
    ),
    Case(
        "overlapping offsets",
        crafted({"a": entry("F32", [12], 0, 48), "b": entry("F32", [2], 40, 48)}, Z * 48),
        "(overlap)",
    ),
    Case(
        "a hole between tensors",
        crafted({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, Z * 12),
        "(gap)",
    ),
    Case("trailing bytes", crafted(W, Z * 30), "trailing bytes"),
    Case("data cut in the middle of a tensor", raw(file_bytes(W, Z * 24)[:-10]), "file is cut short"),
    Case(
        "duplicate tensor names",
        crafted(
            '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
            Z * 4,
        ),
        "duplicate tensor name 'w'",
    ),
    Case("non-string metadata", crafted({"__metadata__": {"step": 2}, **W}, Z * 24), "is not a string"),
    Case("a directory named x.safetensors", directory, "is a directory"),
    Case("a FIFO named x.safetensors", fifo, "FIFO"),
    Case("a dangling symlink", dangling_symlink, "broken symbolic link"),
    Case("truncated while being read", arrays(ONES), "truncated while being read", truncate_to_half),
    Case(
        "no kind: unprefixed keys, no kind word in the file name",
        arrays({"w": np.ones(3, np.float32)}, name="snapshot_2.safetensors"),
        "cannot tell whether tensor 'w' is a gradient",
    ),
    Case(
        "file name naming two kinds",
        arrays({"w": np.ones(3, np.float32)}, name="grads_params_2.safetensors"),
        "names several kinds",
    ),
    Case(
        "step metadata not an integer", arrays(ONES, {"step": "1e3"}), "metadata step '1e3' is not an integer"
    ),
    Case("unknown run format", arrays(ONES, {"gradcheck.format": "2"}), "run format '2' is not supported"),
    Case(
        "one tensor under two keys",
        arrays({"grad/w": np.ones(3, np.float32), "grads/w": np.ones(3, np.float32)}),
        "keys 'grad/w' and 'grads/w' are the same tensor",
    ),
    Case(
        "malformed stats metadata",
        arrays(ONES, {"gradcheck.stats": "{"}),
        "gradcheck.stats is not valid JSON",
    ),
    Case(
        "a shard whose other shard is missing",
        arrays(ONES, {"gradcheck.shards": '{"w": {"global": "w", "shape": [2048], "index": 0, "count": 2}}'}),
        "shard(s) 1 of 2 missing",
    ),
    Case("zero-length tensor (valid)", crafted({"w": entry("F32", [0, 4], 0, 0)}), grad={"count": 0}),
    Case(
        "scalar tensor (valid)", arrays({"w": np.array(0.5, np.float32)}), grad={"count": 1, "max_abs": 0.5}
    ),
    Case("valid header over zero-filled data (valid)", crafted(W, Z * 24), grad={"count": 6, "zeros": 6}),
    Case(
        "atomically replaced while being read (valid: the open version is read)",
        arrays(ONES),
        while_reading=replace_with_twos,
        grad={"count": 1024, "mean_abs": 1.0},
    ),
]
BAD = [case for case in CASES if case.words is not None]
VALID = [case for case in CASES if case.words is None]


def ids(case: Case) -> str:
    return case.name


@contextmanager
def acting_during_read(path: Path, action: Callable[[Path], None] | None) -> Iterator[None]:
    """Do `action` to the file once, right when the reader first asks for bytes of its tensor data."""
    if action is None:
        yield
        return
    inode = path.stat().st_ino
    data_start = min(e.begin for e in read_header(path).entries)
    real = reader._read_at
    done: list[bool] = []

    def read_at(fd: int, view: memoryview, offset: int) -> int:
        if not done and offset >= data_start and os.fstat(fd).st_ino == inode:
            done.append(True)
            action(path)
        return real(fd, view, offset)

    with mock.patch.object(reader, "_read_at", read_at):
        yield
    assert done, "the file was never read"


def invoke(*args: str | Path) -> Result:
    """Run `gradcheck inspect` in a daemon thread, so that a hang fails the test instead of blocking it."""
    results: list[Result] = []
    worker = threading.Thread(
        target=lambda: results.append(CliRunner().invoke(cli, ["inspect", *map(str, args)])), daemon=True
    )
    worker.start()
    worker.join(TIMEOUT)
    assert results, f"gradcheck inspect {args} did not return within {TIMEOUT} s"
    result = results[0]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.stdout + result.stderr
    return result


def write_valid(run: Path) -> Path:
    """The healthy companion snapshot: step 1, one gradient."""
    return write_step(run, 1, {"grad": {"fc.weight": np.linspace(0.01, 0.02, 12, dtype=np.float32)}})


def outcome(tmp: Path, case: Case, mode: str, *options: str) -> tuple[Result, Path]:
    """Inspect a fresh run holding the case file: mode "beside" (with the valid file), "alone" or "strict"."""
    run = tmp / mode / "run"
    run.mkdir(parents=True)
    if mode != "alone":
        write_valid(run)
    path = case.build(run)
    with acting_during_read(path, case.while_reading):
        result = invoke(run, *options, *(["--strict"] if mode == "strict" else []))
    return result, path


@pytest.mark.parametrize("case", BAD, ids=ids)
@pytest.mark.parametrize("output", ["json", "table"])
def test_bad_file_beside_a_valid_one_is_one_warning(tmp_path: Path, case: Case, output: str) -> None:
    result, path = outcome(tmp_path, case, "beside", "--format", output)
    assert result.exit_code == 0
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"gradcheck: warning: {path}: ")
    assert case.words in line
    if output == "table":
        assert "fc.weight" in result.stdout and "healthy" in result.stdout
        return
    doc = json.loads(result.stdout)
    assert doc["steps"] == [1] and [p["name"] for p in doc["params"]] == ["fc.weight"]
    assert doc["unreadable"] == [{"file": str(path), "reason": line.split(f"{path}: ", 1)[1]}]


@pytest.mark.parametrize("case", BAD, ids=ids)
def test_bad_file_alone_exits_2(tmp_path: Path, case: Case) -> None:
    result, path = outcome(tmp_path, case, "alone", "--format", "json")
    assert result.exit_code == 2
    warning, error = result.stderr.splitlines()
    assert warning.startswith(f"gradcheck: warning: {path}: ") and case.words in warning
    assert error.startswith("gradcheck: error: ") and "no readable snapshot file" in error
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 2 and doc["steps"] == [] and doc["unreadable"][0]["file"] == str(path)


@pytest.mark.parametrize("case", BAD, ids=ids)
def test_bad_file_with_strict_exits_2(tmp_path: Path, case: Case) -> None:
    result, path = outcome(tmp_path, case, "strict")
    assert result.exit_code == 2
    warning, error = result.stderr.splitlines()
    assert warning.startswith(f"gradcheck: warning: {path}: ") and case.words in warning
    assert "1 unreadable file(s) and --strict is set" in error
    assert "fc.weight" in result.stdout  # the table is still printed


@pytest.mark.parametrize("case", VALID, ids=ids)
@pytest.mark.parametrize("mode", ["beside", "alone", "strict"])
def test_valid_odd_file_is_analysed(tmp_path: Path, case: Case, mode: str) -> None:
    result, path = outcome(tmp_path, case, mode, "--format", "json")
    assert result.exit_code == 0 and result.stderr == ""
    doc = per_step(json.loads(result.stdout))
    assert doc["unreadable"] == []
    (w,) = [p for p in doc["params"] if p["name"] == "w"]
    (row,) = w["steps"]
    assert row["step"] == 2 and row["grad"]["file"] == str(path)
    assert case.grad is not None
    for field, value in case.grad.items():
        assert row["grad"][field] == value, field


def doc_row(tmp: Path, case: Case) -> list[str]:
    """One row of the corpus table: the warning exactly as printed (run path shortened), and exit codes."""
    said, codes = "", []
    for mode in ("beside", "alone", "strict"):
        result, _ = outcome(tmp, case, mode)
        codes.append(str(result.exit_code))
        if mode == "beside":
            said = result.stderr.strip().replace(str(tmp / mode) + os.sep, "")
    return [case.name, code(said), *codes]


def test_bad_input_doc_lists_every_case_with_its_real_message(tmp_path: Path) -> None:
    rows = [doc_row(tmp_path / str(i), case) for i, case in enumerate(CASES)]
    header = [
        "file in the run",
        "what gradcheck says (stderr)",
        "exit: beside a valid file",
        "alone",
        "beside, `--strict`",
    ]
    check_table("files", markdown_table(header, rows))


# Files that change while they are read: real concurrency, so the outcome may be either of two answers.

BIG = 16 * 2**20  # float32 elements: a 64 MiB tensor, read in 64 chunks of 1 MiB
DELAYS = (0.0, 0.01, 0.05, 0.1, 0.3)  # seconds after the read starts; a scan takes about 0.2 s


def race(action: Callable[[], None], delay: float, path: Path) -> reader.FileScan | UnreadableFileError:
    """Scan `path` while another thread does `action` after `delay` seconds."""
    go = threading.Event()

    def later() -> None:
        go.wait()
        time.sleep(delay)
        action()

    other = threading.Thread(target=later)
    other.start()
    go.set()
    try:
        return scan_file(path)
    except UnreadableFileError as error:
        return error
    finally:
        other.join()


def test_file_truncated_by_another_thread(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file({"w": np.random.default_rng(1).standard_normal(BIG, dtype=np.float32)}, str(path))
    content = path.read_bytes()
    full = scan_file(path).stats["w"]
    for delay in DELAYS:
        path.write_bytes(content)
        got = race(lambda: os.truncate(path, len(content) // 2), delay, path)
        if isinstance(got, UnreadableFileError):
            assert "truncated while being read" in got.problem or "file is cut short" in got.problem
        else:
            assert got.stats["w"] == full  # the truncation came after the last read


def test_file_replaced_atomically_by_another_thread(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path, other = tmp_path / "big.safetensors", tmp_path / "big.safetensors.tmp"
    versions = []
    for scale in (1.0, 1000.0):
        save_file({"w": rng.standard_normal(BIG, dtype=np.float32) * np.float32(scale)}, str(other))
        versions.append((other.read_bytes(), scan_file(other).stats["w"]))
    for delay in DELAYS:
        path.write_bytes(versions[0][0])
        other.write_bytes(versions[1][0])
        got = race(lambda: os.replace(other, path), delay, path)
        assert not isinstance(got, UnreadableFileError), got
        assert got.stats["w"] in (versions[0][1], versions[1][1])


def test_replaced_file_reads_the_version_that_was_opened(tmp_path: Path) -> None:
    (case,) = [c for c in CASES if c.while_reading is replace_with_twos]
    result, path = outcome(tmp_path, case, "beside", "--format", "json")
    grad = next(p for p in per_step(json.loads(result.stdout))["params"] if p["name"] == "w")["steps"][0][
        "grad"
    ]
    assert grad["mean_abs"] == 1.0  # the old version, whole: not a mix with the 2.0 of the new one
    assert scan_file(path).stats["w"].abs_max == 2.0  # while the new version is now in place
