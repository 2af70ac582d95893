"""`--format json` schema 2 (streamed, columnar) against schema 1, and `gradcheck export` against the JSON."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from json_rows import per_step
from runs_builder import write_step

from gradcheck.analysis.inspection import inspect_run
from gradcheck.cli import export as export_cli
from gradcheck.cli import jsonstream
from gradcheck.cli.ci_formats import format_report
from gradcheck.cli.main import cli

SAMPLES = sorted(
    p.name for p in (Path(__file__).resolve().parent.parent / "sample_runs").iterdir() if p.is_dir()
)
STATS = ("count", "nan", "inf", "zeros", "min_abs", "mean_abs", "max_abs", "norm")
ROW_METRICS = ("update_ratio", "grad_param_norm_ratio", "layer_grad_norm", "layer_grad_rms", "depth")


def _inspect(runner: CliRunner, run: Path, *options: str) -> tuple[int, str]:
    result = runner.invoke(cli, ["inspect", str(run), "--format", "json", *options])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, result.stdout


@pytest.mark.parametrize("name", SAMPLES)
def test_schema_2_holds_the_values_of_schema_1(runner: CliRunner, sample_runs: Path, name: str) -> None:
    code_1, text_1 = _inspect(runner, sample_runs / name, "--json-schema", "1")
    code_2, text_2 = _inspect(runner, sample_runs / name)
    one, two = json.loads(text_1), json.loads(text_2)
    assert code_1 == code_2 and one["schema"] == 1 and two["schema"] == 2
    assert {k: v for k, v in one.items() if k not in ("schema", "params", "thresholds")} == {
        k: v for k, v in two.items() if k not in ("schema", "params", "files", "layers", "thresholds")
    }
    # schema 2 adds the loss and activation checks' thresholds (docs/JSON.md); the others are the same
    signal_keys = {"saturation-share", "dead-activations-share", "loss-stuck-drop"}
    assert set(two["thresholds"]) == set(one["thresholds"]) | signal_keys
    assert {key: two["thresholds"][key] for key in one["thresholds"]} == one["thresholds"]
    rows = per_step(two)["params"]
    assert [p["name"] for p in rows] == [p["name"] for p in one["params"]]
    for old, new in zip(one["params"], rows, strict=True):
        assert {key: new[key] for key in old} == old  # every number the same float, every null in place


def test_schema_1_is_the_old_document_byte_for_byte(runner: CliRunner, sample_runs: Path) -> None:
    run = sample_runs / "exploding_nan"
    code, text = _inspect(runner, run, "--json-schema", "1")
    report = inspect_run(run)
    assert text == format_report("json", report, report.run.steps[-1], code)
    assert text.startswith('{\n  "schema": 1,\n')


def test_schema_2_is_streamed_in_pieces(sample_runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = inspect_run(sample_runs / "vanishing_sigmoid")
    whole: list[str] = []
    jsonstream.write_document(report, report.run.steps[-1], 1, whole.append)
    monkeypatch.setattr(jsonstream, "_FLUSH_BYTES", 2048)
    pieces: list[str] = []
    jsonstream.write_document(report, report.run.steps[-1], 1, pieces.append)
    assert len(whole) == 1 and len(pieces) > 10 and "".join(pieces) == whole[0]
    assert max(len(piece) for piece in pieces) < len(whole[0]) / 4  # never the whole document at once


def test_schema_2_arrays_sit_on_one_line_each(runner: CliRunner, sample_runs: Path) -> None:
    _, text = _inspect(runner, sample_runs / "exploding_nan")
    lines = text.splitlines()
    series = [line for line in lines if line.lstrip().startswith(tuple(f'"{s}": [' for s in STATS))]
    doc = json.loads(text)
    recorded = sum(param[kind] is not None for param in doc["params"] for kind in ("grad", "param", "update"))
    assert len(series) == recorded * len(STATS) > 0
    assert all(line.endswith(("],", "]")) for line in series)
    assert all(len(p["grad"]["norm"]) == len(doc["steps"]) for p in doc["params"])


def test_schema_2_output_file_is_the_stdout_document(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    _, text = _inspect(runner, sample_runs / "healthy_mlp")
    out = tmp_path / "doc.json"
    result = runner.invoke(
        cli, ["inspect", str(sample_runs / "healthy_mlp"), "--format", "json", "--output", str(out)]
    )
    assert result.exit_code == 0 and "0.weight" in result.stdout  # stdout keeps the table
    assert out.read_text(encoding="utf-8") == text
    assert not [p for p in tmp_path.iterdir() if p.name != "doc.json"]  # no temporary file left


def test_schema_2_unwritable_output_is_one_line_exit_2(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    target = tmp_path / "missing" / "doc.json"
    result = runner.invoke(
        cli, ["inspect", str(sample_runs / "healthy_mlp"), "--format", "json", "--output", str(target)]
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "cannot write --output file" in result.stderr


# --- gradcheck export -----------------------------------------------------------------------------------


def _json_rows(runner: CliRunner, run: Path) -> list[dict]:
    """One dict per (step, param, kind) from the schema 2 document, in the export's row order."""
    doc = json.loads(_inspect(runner, run)[1])
    found = []
    layers = {layer["name"]: layer for layer in doc["layers"]}
    for i, step in enumerate(doc["steps"]):
        for param in doc["params"]:
            layer = layers[param["layer"]]
            for kind in ("grad", "param", "update"):
                series = param[kind]
                if series is None or series["count"][i] is None:
                    continue
                row = {"step": step, "param": param["name"], "layer": param["layer"], "kind": kind}
                row |= {"file": doc["files"][series["file"][i]], "dtype": param["dtype"]}
                row |= {name: series[name][i] for name in STATS}
                row["update_ratio"] = param["update_ratio"][i]
                row["grad_param_norm_ratio"] = param["grad_param_norm_ratio"][i]
                row |= {"layer_grad_norm": layer["grad_norm"][i], "layer_grad_rms": layer["grad_rms"][i]}
                row["depth"] = layer["depth"][i]
                found.append(row)
    return found


def _export(runner: CliRunner, run: Path, out: Path, *options: str) -> None:
    result = runner.invoke(cli, ["export", str(run), "-o", str(out), *options])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("gradcheck: wrote ")


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


@pytest.mark.parametrize("name", ["exploding_nan", "vanishing_sigmoid"])
def test_csv_export_round_trips_the_json_values(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "stats.csv"
    _export(runner, sample_runs / name, out)
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = _json_rows(runner, sample_runs / name)
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        got = {
            key: row[key] if key in ("param", "layer", "kind", "file", "dtype") else _number(row[key])
            for key in want
        }
        assert got == want
        rms = _number(row["rms"])
        assert (rms is None) == (want["norm"] is None or want["count"] == want["nan"] + want["inf"])


@pytest.mark.parametrize("name", ["exploding_nan", "healthy_mlp"])
def test_parquet_export_round_trips_the_json_values(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, name: str
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "stats.parquet"
    _export(runner, sample_runs / name, out)
    rows = pq.read_table(out).to_pylist()
    expected = _json_rows(runner, sample_runs / name)
    assert len(rows) == len(expected)
    assert [{key: row[key] for key in want} for row, want in zip(rows, expected, strict=True)] == expected
    assert all(isinstance(row["shape"], str) and json.loads(row["shape"]) for row in rows if row["count"] > 1)


def test_export_streams_row_groups(runner: CliRunner, sample_runs: Path, tmp_path: Path, monkeypatch) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from gradcheck.analysis import export as export_module

    real = export_module.export_chunks
    monkeypatch.setattr(
        "gradcheck.cli.export.export_chunks", lambda columns, derived: real(columns, derived, rows=40)
    )
    out = tmp_path / "stats.parquet"
    _export(runner, sample_runs / "exploding_nan", out)
    meta = pq.ParquetFile(out).metadata
    assert meta.num_row_groups > 5 and meta.num_rows == 270  # 10 params x 9 steps x 3 kinds, 30 rows a group


def test_export_refuses_an_existing_file_without_force(
    runner: CliRunner, sample_runs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stats.csv"
    out.write_text("mine\n")
    result = runner.invoke(cli, ["export", str(sample_runs / "healthy_mlp"), "-o", str(out)])
    assert result.exit_code == 2 and "already exists; add --force" in result.stderr
    assert out.read_text() == "mine\n"
    _export(runner, sample_runs / "healthy_mlp", out, "--force")
    assert out.read_text().startswith("step,param,layer,kind,file,")


@pytest.mark.parametrize(
    ("target", "words"),
    [("stats.xlsx", "unknown export format '.xlsx'"), ("missing/stats.csv", "cannot write the export file")],
)
def test_export_bad_target_is_one_line_exit_2(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, target: str, words: str
) -> None:
    result = runner.invoke(cli, ["export", str(sample_runs / "healthy_mlp"), "-o", str(tmp_path / target)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and words in result.stderr
    assert not list(tmp_path.rglob("*.tmp"))


def test_export_of_a_run_without_snapshots_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli, ["export", str(tmp_path / "empty"), "-o", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert not (tmp_path / "s.csv").exists()


def test_export_nonfinite_values_are_empty(runner: CliRunner, sample_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.csv"
    _export(runner, sample_runs / "exploding_nan", out)
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    nan_rows = [row for row in rows if int(row["nan"]) == int(row["count"]) > 0]
    assert nan_rows and all(row["mean_abs"] == "" and row["norm"] == "" for row in nan_rows)
    assert all(math.isfinite(float(row["mean_abs"])) for row in rows if row["mean_abs"])


DOCS = Path(__file__).resolve().parent.parent / "docs"


def _documented(doc: Path, heading: str) -> set[str]:
    """The backticked names in the first column of the table under `heading`."""
    section = doc.read_text(encoding="utf-8").split(heading, 1)[1].split("\n#", 1)[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def test_schema_2_tables_name_every_field(runner: CliRunner, sample_runs: Path) -> None:
    doc = json.loads(_inspect(runner, sample_runs / "exploding_nan")[1])
    json_md = DOCS / "JSON.md"
    param = doc["params"][0]
    assert _documented(json_md, "### `params[]` (schema 2") == set(param)
    assert _documented(json_md, "### `params[].grad`, `.param`, `.update` (schema 2") == set(param["grad"])
    assert _documented(json_md, "### `layers[]` (schema 2") == set(doc["layers"][0])


def test_export_doc_names_every_column() -> None:
    assert _documented(DOCS / "EXPORT.md", "## Columns") == set(export_cli.EXPORT_COLUMNS)


def test_parquet_without_pyarrow_names_the_extra(
    runner: CliRunner, sample_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    result = runner.invoke(
        cli, ["export", str(sample_runs / "healthy_mlp"), "-o", str(tmp_path / "s.parquet")]
    )
    assert result.exit_code == 2 and "pip install 'gradcheck[export]'" in result.stderr
    assert result.stderr.count("\n") == 1 and not list(tmp_path.iterdir())


def test_csv_export_quotes_names_with_commas_quotes_and_line_breaks(
    runner: CliRunner, tmp_path: Path
) -> None:
    names = ["a,b.weight", 'say "hi".weight', "line\nbreak.weight", "cr\rreturn.weight", "é 日本.weight"]
    write_step(tmp_path / "run", 1, {"grad": {name: np.ones((2, 3), np.float32) for name in names}})
    out = tmp_path / "stats.csv"
    _export(runner, tmp_path / "run", out)
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["param"] for row in rows) == sorted(names)
    assert {row["shape"] for row in rows} == {"[2, 3]"} and {row["norm"] for row in rows} == {repr(6**0.5)}


def test_json_schema_without_format_json_is_a_usage_error(sample_runs: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(sample_runs / "healthy_mlp"), "--json-schema", "1"])
    assert result.exit_code == 2
    assert "--json-schema applies to --format json, not --format table" in result.output
