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
    st.sampled_from(
        [
            b'[[overrides]]\nparams = ["[", "**", "::error::x##[y"]\nignore = ["spike"]\n',
            b"[[overrides]]\nparams = 5\n",
            b'[[overrides]]\nparams = ["grad/*"]\n[overrides.thresholds]\nspike-factor = 1e400\n',
            b'[tool.gradchek]\nfail-on = 3\n[tool.gradcheck]\nignore = "x"\n',
        ]
    ),
)
OUTPUTS = st.one_of(
    st.none(),
    st.sampled_from(
        ["file", "directory", "/dev/null", "/dev/full", "symlink", "fifo", "missing/parent", "255 bytes"]
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
        # the commands that came with issues #12 and #15: they take --output/-o, --config, a baseline file
        ["baseline"], ["diff", "--baseline"], ["diff", "--baseline", "--format", "json"], ["config"],
        ["config", "--run"], ["config", "-t", "spike-factor=1e400"], ["help"], ["help", "config"],
        ["help", "::error::x"], ["report"], ["report", "--metric", "update-ratio"], ["plot", "--chart", "flow"],
        ["plot", "--chart", "heatmap"], ["plot", "--chart", "ratio", "--step", "5"],
    ]
)  # fmt: skip
BASELINES = st.one_of(
    st.just(b"written by gradcheck baseline"),
    st.binary(max_size=40),
    st.sampled_from(
        [
            b'{"gradcheck_baseline":1,"layers":["::error::x"],"steps":[0]}',
            b'{"gradcheck_baseline":99}',
            b'{"gradcheck_baseline":1,"gradcheck_version":"0","run":"r","steps":[1e400],"layers":{}}',
            b"[]",
            '{"run": "caf\u00e9"}'.encode("latin-1"),
        ]
    ),
)
# The file each command writes: report and plot need their suffix, so a kind of target keeps the name's end
OUTPUT_NAMES = {"inspect": "out.json", "report": "report.html", "plot": "chart.svg", "baseline": "base.json"}


def _target(root: Path, kind: str | None, name: str) -> str | None:
    """A path of the given kind under `root` (or a system device), its name ending in `name`."""
    if kind is None:
        return None
    if kind.startswith("/dev/"):
        return kind
    if kind == "missing/parent":
        return str(root / "missing" / name)
    path = root / {"255 bytes": "x" * (255 - len(name)) + name, "file": name}.get(kind, f"{kind}-{name}")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(root / "elsewhere.txt")
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
    baseline=BASELINES,
    as_pyproject=st.booleans(),
)
def test_every_command_over_bad_inputs_exits_0_1_or_2(
    files: list[bytes],
    healthy: bool,
    config,
    output,
    summary,
    cache,
    columns: int,
    command: list[str],
    baseline: bytes,
    as_pyproject: bool,
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
        env = _environment(root, summary, cache, columns)
        config = _config(root, config, as_pyproject)
        arguments = _arguments(root, run, command, config, output, baseline, env)
        previous = Path.cwd()
        os.chdir(root)  # the pyproject.toml search (and `config`'s near-miss warning) starts here
        try:
            result = CliRunner().invoke(cli, arguments, env=env)
        finally:
            os.chdir(previous)
        assert result.exit_code in (0, 1, 2), (
            arguments,
            result.exit_code,
            result.stderr,
            repr(result.exception),
        )
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def _config(root: Path, config, as_pyproject: bool) -> str | None:  # type: ignore[no-untyped-def]
    """--config's value; a generated file is sometimes a pyproject.toml found by the search instead."""
    if not isinstance(config, bytes):
        return _target(root, config, "config.toml")
    if as_pyproject:
        (root / "pyproject.toml").write_bytes(
            b"[tool.gradcheck]\n" + config if b"[tool" not in config else config
        )
        return None
    (root / "gradcheck.toml").write_bytes(config)
    return str(root / "gradcheck.toml")


def _arguments(  # type: ignore[no-untyped-def]
    root: Path, run: Path, command: list[str], config, output, baseline: bytes, env
) -> list[str]:
    """The command line: the run (twice for diff, or a baseline file first), --config, the output target."""
    name, *options = command
    if name == "help":
        return command
    first = [str(run)]
    if name == "diff" and "--baseline" in options:
        options.remove("--baseline")
        file = root / "base.json"
        if baseline == b"written by gradcheck baseline":
            CliRunner().invoke(cli, ["baseline", str(run), "-o", str(file)], env=env)
        if not file.exists():
            file.write_bytes(baseline)
        first = [str(file)]
    if name == "diff":
        first.append(str(run))
    if name == "config":
        first = [str(run)] if "--run" in options else []
        options = [o for o in options if o != "--run"]
    arguments = [name, *first, *options]
    if config is not None and name in ("inspect", "watch", "config", "report"):
        arguments += ["--config", config]
    if name in OUTPUT_NAMES:
        target = _target(root, output, OUTPUT_NAMES[name])
        if target is None and name != "inspect":
            target = str(root / OUTPUT_NAMES[name])  # -o is required: a plain new file
        arguments += ["--output", target] if target is not None else []
    return arguments
