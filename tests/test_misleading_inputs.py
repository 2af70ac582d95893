"""Runs that could mislead: tensors claimed twice, shapes that disagree, nested folders, odd or hostile names,
many files, bad configuration. Each gets a clear answer (docs/BAD_INPUT.md, "Misleading runs")."""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from doc_tables import check_table, code, markdown_table
from json_rows import per_step
from runs_builder import snapshot_metadata, write_file, write_step
from st_files import entry, file_bytes

from gradcheck.cli.jsonout import dumps
from gradcheck.cli.main import cli

G = np.full((3, 4), 0.01, np.float32)  # a healthy-looking gradient
HOSTILE = {
    "markup": "[red]x[/red].weight",
    "link markup": "[link=https://evil.example]click[/link].weight",
    "clear screen and carriage return": "evil\x1b[2J\r.weight",
    "OSC 8 hyperlink": "osc\x1b]8;;https://evil.example\x07.weight",
    "C1 control sequence introducer": "c1\x9b31m.weight",
    "bidi override": "bidi\u202eflow.weight",
}
ESCAPE_SEQUENCES = ("\x1b[2J", "\x1b]8", "\r", "\x9b", "\u202e", "\x07")


def inspect(*args: str | Path, runner: CliRunner | None = None) -> Result:
    """Run `gradcheck inspect`; never a traceback, never an exception escaping click."""
    result = (runner or CliRunner()).invoke(cli, ["inspect", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.stdout + result.stderr
    return result


# --- The table of cases: each builds a run under `root` and returns the arguments after `inspect`. ---

Build = Callable[[Path], list[str]]


@dataclass(frozen=True)
class Case:
    """A run that could mislead; `words` must be in the one stderr line (None: nothing is printed there)."""

    name: str
    build: Build
    words: str | None
    exit_code: int
    what: str  # what gradcheck does, for the doc


def same_step_in_two_files(root: Path) -> list[str]:
    write_step(root / "run", 5, {"grad": {"fc.weight": G}})
    write_file(root / "run" / "grads_5.safetensors", {"fc.weight": G})
    return [str(root / "run")]


def same_step_by_metadata(root: Path) -> list[str]:
    for name in ("a.safetensors", "b.safetensors"):
        write_file(root / "run" / name, {"grad/fc.weight": G}, snapshot_metadata(5))
    return [str(root / "run")]


def grad_and_param_shapes_differ(root: Path) -> list[str]:
    write_file(root / "run" / "grads_5.safetensors", {"fc.weight": G})
    write_file(root / "run" / "params_5.safetensors", {"fc.weight": G.T.copy()})
    return [str(root / "run")]


def update_shape_differs_in_one_file(root: Path) -> list[str]:
    write_step(root / "run", 5, {"grad": {"fc.weight": G}, "update": {"fc.weight": G[:2]}})
    return [str(root / "run")]


def nested_runs(root: Path) -> list[str]:
    for name in ("lr_0.1", "lr_0.01"):
        write_step(root / "runs" / name, 1, {"grad": {"fc.weight": G}})
    return [str(root / "runs")]


def rank_folders(root: Path) -> list[str]:
    for rank in range(2):
        shards = {"fc.weight": {"global": "fc.weight", "shape": [6, 4], "index": rank, "count": 2}}
        metadata = {**snapshot_metadata(5), "gradcheck.shards": json.dumps(shards)}
        write_file(
            root / "run" / f"rank{rank:05d}" / "step_00000005.safetensors", {"grad/fc.weight": G}, metadata
        )
    return [str(root / "run")]


def files_and_subfolders(root: Path) -> list[str]:
    write_step(root / "run", 1, {"grad": {"fc.weight": G}})
    write_step(root / "run" / "old", 1, {"grad": {"old.weight": G}})
    return [str(root / "run")]


def ranks_and_a_leftover_run(root: Path) -> list[str]:
    rank_folders(root)
    write_step(root / "run" / "old", 1, {"grad": {"old.weight": G}})
    return [str(root / "run")]


def run_dir(make: Callable[[Path], None]) -> Build:
    def build(root: Path) -> list[str]:
        make(root / "run")
        return [str(root / "run")]

    return build


def non_utf8_file_names(root: Path) -> list[str]:
    run = os.fsencode(root / "run")
    write_file(os.fsdecode(run + b"/grads_\xff_1.safetensors"), {"fc.weight": G})
    with open(run + b"/grads_\xfe_2.safetensors", "wb") as f:
        f.write(b"junk")
    return [str(root / "run")]


def non_utf8_run_dir(root: Path) -> list[str]:
    run = os.fsdecode(os.fsencode(root) + b"/run_\xff")
    write_step(run, 1, {"grad": {"fc.weight": G}})
    return [run]


def names_with_spaces(root: Path) -> list[str]:
    write_file(root / "my run" / "grads step 7.safetensors", {"fc layer.weight": G})
    return [str(root / "my run")]


def hostile_parameter_names(root: Path) -> list[str]:
    write_step(root / "run", 1, {"grad": {name: G for name in HOSTILE.values()}})
    return [str(root / "run")]


def hostile_name_in_a_bad_file(root: Path) -> list[str]:
    write_step(root / "run", 1, {"grad": {"fc.weight": G}})
    header = {"\x1b]8;;https://evil.example\x07[red]w[/red]": entry("F99", [1], 0, 4)}
    (root / "run" / "grads_2.safetensors").write_bytes(file_bytes(header, b"\0" * 4))
    return [str(root / "run")]


def hostile_file_name(root: Path) -> list[str]:
    write_step(root / "run", 1, {"grad": {"fc.weight": G}})
    (root / "run" / "grads_\x1b[2J\r[bold]2.safetensors").write_bytes(struct.pack("<Q", 99))
    return [str(root / "run")]


def config(text: str, *extra: str) -> Build:
    def build(root: Path) -> list[str]:
        write_step(root / "run", 1, {"grad": {"fc.weight": G}})
        (root / "gradcheck.toml").write_text(text)
        return [str(root / "run"), "--config", str(root / "gradcheck.toml"), *extra]

    return build


def option(*extra: str) -> Build:
    def build(root: Path) -> list[str]:
        write_step(root / "run", 1, {"grad": {"fc.weight": G}})
        return [str(root / "run"), *extra]

    return build


CASES = [
    Case(
        "the same tensor and step in two files",
        same_step_in_two_files,
        "is in two files",
        2,
        "refuses the run",
    ),
    Case(
        "two files claiming the same step in metadata",
        same_step_by_metadata,
        "is in two files",
        2,
        "refuses the run",
    ),
    Case(
        "gradient and parameter of one name with different shapes",
        grad_and_param_shapes_differ,
        "grad has shape [3, 4]",
        2,
        "refuses the run",
    ),
    Case(
        "update shape differs from the gradient's (one file)",
        update_shape_differs_in_one_file,
        "update has shape [2, 4]",
        2,
        "refuses the run",
    ),
    Case(
        "a folder of runs instead of a run",
        nested_runs,
        "these subfolders hold runs: lr_0.01, lr_0.1",
        2,
        "names the subfolders to choose from",
    ),
    Case("rank folders (rank00000, rank00001)", rank_folders, None, 0, "merges the ranks into one run"),
    Case(
        "snapshot files and subfolders",
        files_and_subfolders,
        None,
        0,
        "reads the files; subfolders are not searched",
    ),
    Case(
        "rank folders and another subfolder",
        ranks_and_a_leftover_run,
        None,
        0,
        "merges the rank folders; other subfolders are not searched",
    ),
    Case("an empty directory", run_dir(lambda p: p.mkdir()), "no .safetensors snapshot files", 2, "refuses"),
    Case(
        "a file instead of a directory", run_dir(lambda p: p.write_text("x")), "not a directory", 2, "refuses"
    ),
    Case("a missing directory", run_dir(lambda p: None), "no such directory", 2, "refuses"),
    Case(
        "file names that are not UTF-8",
        non_utf8_file_names,
        "grads_\\udcfe_2.safetensors",
        0,
        "reads them; prints each undecodable byte as `\\udcNN`",
    ),
    Case("a run directory name that is not UTF-8", non_utf8_run_dir, None, 0, "reads it"),
    Case("names with spaces", names_with_spaces, None, 0, "reads them"),
    Case(
        "markup and terminal controls in parameter names",
        hostile_parameter_names,
        None,
        0,
        "prints the names literally, control characters escaped",
    ),
    Case(
        "terminal controls in a tensor name of a bad file",
        hostile_name_in_a_bad_file,
        "tensor '\\x1b]8;;https://evil.example\\x07[red]w[/red]': unknown dtype",
        0,
        "warns, name escaped",
    ),
    Case(
        "terminal controls in a file name",
        hostile_file_name,
        "grads_\\x1b[2J\\r[bold]2.safetensors",
        0,
        "warns, name escaped",
    ),
    Case(
        "config: unknown key",
        config("[tool.gradcheck]\nfail_on = 'error'\n"),
        "unknown key 'fail_on'",
        2,
        "refuses",
    ),
    Case(
        "config: unknown threshold",
        config("[tool.gradcheck.thresholds]\nvanishing = 1e-8\n"),
        "unknown key 'vanishing'",
        2,
        "refuses",
    ),
    Case(
        "config: wrong type",
        config("[tool.gradcheck.thresholds]\nvanishing-mean = 'small'\n"),
        "vanishing-mean: expected a number",
        2,
        "refuses",
    ),
    Case(
        "config: ignore is not a list of checks",
        config("[tool.gradcheck]\nignore = 3\n"),
        "ignore: must be a list of check ids",
        2,
        "refuses",
    ),
    Case(
        "config: thresholds in the wrong order",
        config("[tool.gradcheck.thresholds]\nupdate-ratio-low = -1\nupdate-ratio-high = -3\n"),
        "update-ratio-low (-1.0) is above update-ratio-high (-3.0)",
        2,
        "refuses",
    ),
    Case(
        "config: an override puts thresholds in the wrong order",
        config("[[tool.gradcheck.overrides]]\nparams = ['*']\nthresholds = { update-ratio-low = -1 }\n"),
        "overrides[0]: update-ratio-low (-1.0) is above update-ratio-high (-1.2)",
        2,
        "refuses",
    ),
    Case(
        "`-t` puts thresholds in the wrong order",
        option("-t", "update-ratio-low=-1"),
        "update-ratio-low (-1.0) is above update-ratio-high (-1.2)",
        2,
        "refuses",
    ),
    Case("`-t` with an unknown name", option("-t", "vanish=1"), "unknown key 'vanish'", 2, "refuses"),
    Case("`--step` that was not recorded", option("--step", "3"), "step 3 was not recorded", 2, "refuses"),
]


def ids(case: Case) -> str:
    return case.name


@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("output", ["table", "json"])
def test_misleading_run(tmp_path: Path, case: Case, output: str) -> None:
    result = inspect(*case.build(tmp_path), "--format", output)
    assert result.exit_code == case.exit_code
    lines = result.stderr.splitlines()
    if case.words is None:
        assert lines == []
    else:
        (line,) = lines
        assert case.words in line
        assert line.startswith("gradcheck: error: " if case.exit_code == 2 else "gradcheck: warning: ")
    if output == "json":
        assert result.stdout_bytes.decode("utf-8") == result.stdout  # valid UTF-8, whatever the names
        if case.exit_code == 2:
            assert result.stdout == ""  # a refused run prints no document
        else:
            assert json.loads(result.stdout)["exit_code"] == case.exit_code


def test_bad_input_doc_lists_every_misleading_run(tmp_path: Path) -> None:
    rows = []
    for i, case in enumerate(CASES):
        root = tmp_path / str(i)
        root.mkdir()
        result = inspect(*case.build(root))
        said = result.stderr.strip().replace(str(root) + os.sep, "")
        rows.append([case.name, code(said), str(result.exit_code), case.what])
    check_table("runs", markdown_table(["run", "what gradcheck says (stderr)", "exit", "what it does"], rows))


# --- The cases in detail. ---


def test_two_files_for_one_tensor_names_both(tmp_path: Path) -> None:
    result = inspect(*same_step_in_two_files(tmp_path))
    assert result.exit_code == 2
    assert "'fc.weight' (grad) at step 5 is in two files" in result.stderr
    for name in ("step_00000005.safetensors", "grads_5.safetensors"):
        assert str(tmp_path / "run" / name) in result.stderr


def test_shape_mismatch_names_the_parameter_and_both_files(tmp_path: Path) -> None:
    result = inspect(*grad_and_param_shapes_differ(tmp_path))
    run = tmp_path / "run"
    assert result.exit_code == 2
    assert result.stderr == (
        f"gradcheck: error: 'fc.weight' at step 5: grad has shape [3, 4] (in {run / 'grads_5.safetensors'}) "
        f"but param has shape [4, 3] (in {run / 'params_5.safetensors'})\n"
    )


def test_same_shapes_at_different_steps_may_differ(tmp_path: Path) -> None:
    """A parameter that changes shape between steps (a grown vocabulary) is not a contradiction."""
    write_step(tmp_path, 1, {"grad": {"embed": G}, "param": {"embed": G}})
    write_step(tmp_path, 2, {"grad": {"embed": G[:2]}, "param": {"embed": G[:2]}})
    assert inspect(tmp_path).exit_code == 0


def test_rank_folders_are_merged(tmp_path: Path) -> None:
    doc = per_step(json.loads(inspect(*rank_folders(tmp_path), "--format", "json").stdout))
    (param,) = doc["params"]
    assert param["name"] == "fc.weight" and param["shape"] == [6, 4]
    assert param["steps"][0]["grad"]["count"] == 2 * G.size


def test_subfolders_beside_snapshot_files_are_not_searched(tmp_path: Path) -> None:
    doc = json.loads(inspect(*files_and_subfolders(tmp_path), "--format", "json").stdout)
    assert [p["name"] for p in doc["params"]] == ["fc.weight"]
    doc = json.loads(inspect(*ranks_and_a_leftover_run(tmp_path / "r"), "--format", "json").stdout)
    assert [p["name"] for p in doc["params"]] == ["fc.weight"]


def test_non_utf8_names_in_table_json_and_warnings(tmp_path: Path) -> None:
    (run,) = non_utf8_file_names(tmp_path)
    table = inspect(run)
    assert table.exit_code == 0 and "fc.weight" in table.stdout
    assert table.stderr.startswith(f"gradcheck: warning: {run}/grads_\\udcfe_2.safetensors: ")
    result = inspect(run, "--format", "json")
    text = result.stdout_bytes.decode("utf-8")  # strict: no lone surrogate reached the output
    assert "grads_\\udcff_1.safetensors" in text  # a JSON \u escape ...
    doc = per_step(json.loads(text))
    file = doc["params"][0]["steps"][0]["grad"]["file"]
    assert (
        os.fsencode(file) == os.fsencode(run) + b"/grads_\xff_1.safetensors"
    )  # ... that gives the bytes back
    assert os.fsencode(doc["unreadable"][0]["file"]).endswith(b"/grads_\xfe_2.safetensors")


def test_non_utf8_run_directory(tmp_path: Path) -> None:
    (run,) = non_utf8_run_dir(tmp_path)
    assert "run_\\udcff - step 1" in inspect(run).stdout
    doc = json.loads(inspect(run, "--format", "json").stdout_bytes.decode("utf-8"))
    assert os.fsencode(doc["run"]).endswith(b"/run_\xff")


def test_hostile_parameter_names_print_literally_or_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # no folding, so whole names can be looked for
    (run,) = hostile_parameter_names(tmp_path)
    table = inspect(run, "--color")  # colour on: rich would act on markup if it saw any
    assert table.exit_code == 0
    for sequence in ESCAPE_SEQUENCES:
        assert sequence not in table.stdout, repr(sequence)
    for shown in (
        "[red]x[/red].weight",
        "[link=https://evil.example]click[/link].weight",
        "evil\\x1b[2J\\r.weight",
    ):
        assert shown in table.stdout
    for shown in (
        "osc\\x1b]8;;https://evil.example\\x07.weight",
        "c1\\x9b31m.weight",
        "bidi\\u202eflow.weight",
    ):
        assert shown in table.stdout
    result = inspect(run, "--format", "json")
    assert all(char.isprintable() or char == "\n" for char in result.stdout)  # every control is a \u escape
    assert sorted(p["name"] for p in json.loads(result.stdout)["params"]) == sorted(HOSTILE.values())


@pytest.mark.parametrize(
    "text",
    ["\x1b[2J\r\x07", "\x9b31m", "\u202e\u2028\xa0", "\U000e0001\U0010ffff", "\udcff", "é 日本 \U0001f600"],
)
def test_json_escapes_every_unprintable_character_and_round_trips(text: str) -> None:
    out = dumps({"name": text, "list": [text]})
    assert all(char.isprintable() or char == "\n" for char in out)
    out.encode("utf-8")  # no lone surrogate left
    assert json.loads(out) == {"name": text, "list": [text]}
    assert "é 日本" in dumps({"name": "é 日本"})  # printable text stays readable, not \u-escaped


def test_hostile_layer_name_in_a_finding_is_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """exploding-relative quotes the last layer's name in its detail, which the findings table prints."""
    monkeypatch.setenv("COLUMNS", "300")
    last = "z[red]x[/red]\x1b[2J.weight"  # the recorded order puts it last (exploding-relative needs one)
    grads = {"a.weight": np.ones((8, 8), np.float32), last: G * 0.1}
    write_step(tmp_path, 1, {"grad": grads}, order=list(grads))
    result = inspect(tmp_path, "--color")
    assert result.exit_code == 0 and "exploding-relative" in result.stdout
    assert "the last layer's (z[red]x[/red]\\x1b[2J)" in result.stdout
    assert "\x1b[2J" not in result.stdout
    doc = json.loads(inspect(tmp_path, "--format", "json").stdout)
    assert doc["findings"][0]["message"].endswith("(z[red]x[/red]\x1b[2J)")


def test_hostile_names_in_warnings_are_escaped(tmp_path: Path) -> None:
    for build in (hostile_name_in_a_bad_file, hostile_file_name):
        (run,) = build(tmp_path / build.__name__)
        result = inspect(run)
        assert result.exit_code == 0
        for sequence in ESCAPE_SEQUENCES:
            assert sequence not in result.stderr, repr(sequence)
        assert "[red]" in result.stderr or "[bold]" in result.stderr  # text, not taken as markup


def test_bad_config_names_the_key_in_one_line(tmp_path: Path) -> None:
    for i, case in enumerate(c for c in CASES if c.name.startswith(("config", "`-t`"))):
        result = inspect(*case.build(tmp_path / str(i)))
        assert result.exit_code == 2 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert case.words in line


def many_step_files(root: Path, count: int) -> Path:
    """`count` one-tensor step files written byte by byte (fast), steps 0 .. count-1."""
    root.mkdir()
    for step in range(count):
        header = {"__metadata__": {"step": str(step)}, "grad/w": entry("F32", [2], 0, 8)}
        data = np.array([0.01 * (1 + step % 3), 0.02], np.float32).tobytes()
        (root / f"step_{step:06d}.safetensors").write_bytes(file_bytes(header, data))
    return root


@pytest.mark.parametrize("count", [2_000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_tens_of_thousands_of_files(tmp_path: Path, count: int) -> None:
    run = many_step_files(tmp_path / "run", count)
    (run / "step_000001.safetensors").write_bytes(b"")  # one bad file among them
    started = time.monotonic()
    result = inspect(run, "--format", "json")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0 and len(result.stderr.splitlines()) == 1
    doc = json.loads(result.stdout)
    assert len(doc["steps"]) == count - 1 and doc["steps"][-1] == count - 1
    assert elapsed < count / 100, f"{count} files took {elapsed:.1f} s"  # measured: 20,000 in about 11 s
