"""Acceptance 1: every command over generated bad inputs exits 0, 1 or 2, never with a traceback.

Hypothesis builds a run directory of good, broken and odd files, a config file, environment variables and an
output target, then runs one command on them through CliRunner. Exit 3 only ever comes from a fault injected
on purpose (tests/adversarial/test_internal_errors.py), so here it is a failure like any traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runs_builder import write_step
from st_files import entry, file_bytes

from gradcheck.cli.main import cli

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(["nan", "inf", "-inf", "x", 10**400, -0.0, 5e-324, 1.7976931348623157e308]),
)
VALUES = st.sampled_from([1e-170, 1e-300, 1e308, 1e-12, 1.0, 1e6, np.nan, np.inf, 0.0, 5e-324])
DTYPES = st.sampled_from([np.float64, np.float32, np.float16])


@st.composite
def snapshot_bytes(draw: st.DrawFn, step: int) -> bytes:
    """One file: valid with odd values, a broken header, a bad summary, shards, or random bytes."""
    kind = draw(st.sampled_from(["valid", "summary", "shards", "mutated", "random", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "header":
        name = draw(st.sampled_from(["w", "grad/w", "::error::x", "##[y]", "param/w", ""]))
        fields = draw(
            st.fixed_dictionaries(
                {"dtype": st.sampled_from(["F32", "F64", "C64", "F99", "BF16"]),
                 "shape": st.lists(st.integers(-1, 4), max_size=3)},
            )
        )  # fmt: skip
        header = {name: {**fields, "data_offsets": [0, draw(st.integers(0, 16))]}}
        return file_bytes(header, bytes(draw(st.integers(0, 16))))
    if kind == "summary":
        summary = {
            k: draw(NUMBERS)
            for k in ("count", "nan", "inf", "zeros", "abs_min", "abs_max", "abs_sum", "sq_sum")
        }
        summary["shape"] = draw(st.lists(st.integers(0, 2**64), max_size=2))
        if draw(st.booleans()):
            summary["scale"] = draw(NUMBERS)
        stats = json.dumps({"grad/w": summary}, allow_nan=True)
        return file_bytes({"__metadata__": {"gradcheck.stats": stats, "step": str(step)}})
    with np.errstate(over="ignore"):  # 1e308 as F16 is Inf: fine, an odd value
        values = np.full(draw(st.integers(0, 6)), draw(VALUES)).astype(draw(DTYPES))
    raw = values.tobytes()
    dtype = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[
        values.dtype
    ]
    metadata = {"step": str(step)}
    if kind == "shards":
        count = draw(st.sampled_from([1, 2, 2**20, 2**20 + 1, 0]))
        shape = [draw(st.sampled_from([values.size, values.size * 2, 2**64]))]
        metadata["gradcheck.shards"] = json.dumps(
            {"w": {"shape": shape, "index": draw(st.integers(0, 3)), "count": count}}
        )
    data = file_bytes({"__metadata__": metadata, "grad/w": entry(dtype, [values.size], 0, len(raw))}, raw)
    if kind == "mutated" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


CONFIGS = st.one_of(
    st.none(),
    st.builds(
        lambda key, value: f"[thresholds]\n{key} = {value}\n".encode(),
        st.sampled_from(["vanishing-mean", "growth-window", "spike-factor", "update-ratio-low", "nope"]),
        st.sampled_from(["1" * 400, "1e400", "-1", "0", '"x"', "nan", "inf", "3", "[1]", "1" * 5000]),
    ),
    st.binary(max_size=40),
    st.just('fail-on = "caf\xe9"\n'.encode("latin-1")),
    st.sampled_from(["fifo", "/dev/zero", "directory"]),
)
OUTPUTS = st.one_of(
    st.none(),
    st.sampled_from(
        ["file", "directory", "/dev/null", "/dev/full", "symlink", "fifo", "missing/parent", "x" * 255]
    ),
)
SUMMARIES = st.one_of(st.none(), st.sampled_from(["file", "fifo", "/dev/zero", "directory"]))
CACHES = st.sampled_from(["private", "group-writable", "a file"])
COMMANDS = st.sampled_from(
    [
        ["inspect"], ["inspect", "--format", "json"], ["inspect", "--format", "github"],
        ["inspect", "--format", "junit"], ["inspect", "--format", "markdown"], ["inspect", "--view", "depth"],
        ["inspect", "--strict"], ["inspect", "--steps", "all"], ["inspect", "-j", "2"],
        ["heatmap"], ["heatmap", "--metric", "update-ratio"], ["heatmap", "--metric", "param-norm"],
        ["diff"], ["watch", "--timeout", "0", "--interval", "0.01"],
    ]
)  # fmt: skip


def _target(root: Path, kind: str | None, name: str) -> str | None:
    """A path of the given kind under `root` (or a system device)."""
    if kind is None:
        return None
    if kind.startswith("/dev/"):
        return kind
    path = root / (
        name
        if kind in ("file", "missing/parent", "symlink")
        else kind
        if len(kind) > 20
        else f"{name}.{kind}"
    )
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(root / "elsewhere.txt")
    elif kind == "missing/parent":
        path = root / "missing" / name
    return str(path)


def _environment(root: Path, summary: str | None, cache: str, columns: int) -> dict[str, str | None]:
    cache_dir = root / "cache"
    if cache == "a file":
        cache_dir.write_text("not a folder")
    else:
        cache_dir.mkdir(mode=0o700)
        if cache == "group-writable":
            os.chmod(cache_dir, 0o770)
    return {
        "GRADCHECK_CACHE_DIR": str(cache_dir),
        "GITHUB_STEP_SUMMARY": _target(root, summary, "summary.md"),
        "COLUMNS": str(columns),
    }


# GRADCHECK_PROPERTY_EXAMPLES=2000 for a longer hunt; 120 keeps the default run to about 15 s
@settings(
    max_examples=int(os.environ.get("GRADCHECK_PROPERTY_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    files=st.lists(st.integers(0, 3).flatmap(lambda step: snapshot_bytes(step)), min_size=0, max_size=4),
    healthy=st.booleans(),
    config=CONFIGS,
    output=OUTPUTS,
    summary=SUMMARIES,
    cache=CACHES,
    columns=st.integers(20, 260),
    command=COMMANDS,
)
def test_every_command_over_bad_inputs_exits_0_1_or_2(
    files: list[bytes], healthy: bool, config, output, summary, cache, columns: int, command: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        run = root / "run"
        run.mkdir()
        if healthy:
            for step in range(2):
                write_step(
                    run,
                    step,
                    {"grad": {"v": np.full(4, 0.01, np.float32)}, "param": {"v": np.ones(4, np.float32)}},
                )
        for index, data in enumerate(files):
            (run / f"grads_{index + 5}.safetensors").write_bytes(data)
        arguments = [command[0], str(run), *([str(run)] if command[0] == "diff" else []), *command[1:]]
        if isinstance(config, bytes):
            (root / "gradcheck.toml").write_bytes(config)
            config = str(root / "gradcheck.toml")
        elif config is not None:
            config = _target(root, config, "config.toml")
        if config is not None and command[0] in ("inspect", "watch"):
            arguments += ["--config", config]
        target = _target(root, output, "report.out")
        if target is not None and command[0] == "inspect":
            arguments += ["--output", target]
        env = _environment(root, summary, cache, columns)
        result = CliRunner().invoke(cli, arguments, env=env)
        assert result.exit_code in (0, 1, 2), (
            arguments,
            result.exit_code,
            result.stderr,
            repr(result.exception),
        )
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
