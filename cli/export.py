"""`gradcheck export RUN_DIR -o stats.parquet|stats.csv`: every statistic as rows for pandas, polars and DuckDB.

One row per recorded (step, parameter, kind), columns in EXPORT_COLUMNS (docs/EXPORT.md). The rows come from
the run's columns a chunk of steps at a time (analysis/export.py) and go out as they are made: one Parquet row
group, or one batch of CSV lines, per chunk, so memory stays bounded on a long run. The file is written under a
temporary name and renamed into place when complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from gradcheck.analysis.atomic import output_stream
from gradcheck.analysis.columns import KINDS
from gradcheck.analysis.config import Config
from gradcheck.analysis.errors import GradcheckError
from gradcheck.analysis.export import (
    EXPORT_LAYER_METRICS,
    EXPORT_STATS,
    PARAM_METRICS,
    export_chunks,
    layer_of,
)
from gradcheck.analysis.inspection import Report, inspect_run

from .common import EXIT_OK, InputError, progress_bar, reading_options, scan_options, warn_unreadable
from .console import printable

TEXT_COLUMNS = ("param", "layer", "kind", "file", "dtype", "shape")
INT_COLUMNS = ("step", "count", "nan", "inf", "zeros")
FLOAT_COLUMNS = tuple(n for n in EXPORT_STATS if n not in INT_COLUMNS) + tuple(PARAM_METRICS)
FLOAT_COLUMNS += tuple(EXPORT_LAYER_METRICS)
EXPORT_COLUMNS = ("step",) + TEXT_COLUMNS + EXPORT_STATS + tuple(PARAM_METRICS) + tuple(EXPORT_LAYER_METRICS)
SUFFIXES = (".parquet", ".csv")
EXPORT_HELP = """One row per recorded (step, parameter, kind): the file it was read
from, dtype, shape, every statistic (count, nan, inf, zeros, min/mean/max |x|, norm, rms) and the derived
metrics (update_ratio, grad_param_norm_ratio, layer_grad_norm, layer_grad_rms, depth); NaN and Inf are
empty (null). Parquet needs pyarrow: pip install 'gradcheck[export]'. More: gradcheck help export.

Exit codes: 0 written; 2 bad input or usage (no readable snapshot, unknown suffix, FILE exists without
--force, FILE not writable, pyarrow missing for .parquet); 3 internal error (a bug).
"""


@click.command(epilog=EXPORT_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, metavar="FILE",
    help="stats.parquet or stats.csv: the suffix chooses the format.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@reading_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line on stderr.")
def export(run_dir: Path, output: Path, force: bool, jobs: int | None, no_cache: bool, quiet: bool) -> None:
    """Write every statistic of RUN_DIR to a Parquet or CSV file, one row per step, parameter and kind."""
    suffix = output.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{output}: unknown export format {suffix or '(no suffix)'!r}: use .parquet or .csv")
    if os.path.lexists(output) and not force:
        raise InputError(f"{output}: already exists; add --force to replace it")
    writer = _parquet_writer() if suffix == ".parquet" else _write_csv
    progress = progress_bar(color=None, quiet=quiet, output_format="table")
    try:
        report = inspect_run(run_dir, Config(), scan_options(jobs, no_cache, progress))
    except GradcheckError as error:
        raise InputError(str(error)) from None
    finally:
        if progress is not None:
            progress.close()
    warn_unreadable(report.run.unreadable)
    if not report.readable:
        raise InputError(f"{run_dir}: no readable snapshot file")
    try:
        with output_stream(output, mode=0o666 & ~_umask()) as file:
            rows = writer(report, file)
    except OSError as error:
        raise InputError(f"{output}: cannot write the export file: {error.strerror or error}") from None
    if not quiet:
        click.echo(f"gradcheck: wrote {rows} rows to {printable(str(output))}", err=True)
    raise SystemExit(EXIT_OK)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tables(report: Report) -> tuple[dict[str, list[str]], np.ndarray]:
    """What each text column's indexes point into, and each parameter's index into the layer names."""
    columns, derived = report.run.columns, report.derived
    layers = [layer_of(derived, p, param) for p, param in enumerate(columns.params)]
    unique = list(dict.fromkeys(layers))
    positions = {name: i for i, name in enumerate(unique)}
    tables = {
        "param": list(columns.params),
        "layer": unique,
        "kind": list(KINDS),
        "file": list(columns.files),
        "dtype": list(columns.dtypes),
        "shape": [json.dumps(list(shape)) for shape in columns.shapes],
    }
    return tables, np.array([positions[name] for name in layers], dtype=np.int64)


def _indexes(chunk: dict[str, np.ndarray], layer_of_param: np.ndarray) -> dict[str, np.ndarray]:
    """The index array of each text column (a row's layer is its parameter's)."""
    return {name: layer_of_param[chunk["param"]] if name == "layer" else chunk[name] for name in TEXT_COLUMNS}


def _write_csv(report: Report, file: Any) -> int:
    """CSV with a header line; text as is, floats as Python writes them (exact), NaN/Inf as empty fields."""
    # a name that is not valid UTF-8 (a lone surrogate here) is written as its \\udcxx escape, as in the JSON
    text = io.TextIOWrapper(file, encoding="utf-8", errors="backslashreplace", newline="")
    text.write(",".join(EXPORT_COLUMNS) + "\n")
    (tables, layer_of_param), rows = _tables(report), 0
    # each name is quoted once, not once per row: csv.writer per row took 3x longer (benchmarks/json_stream.py)
    quoted = {name: [_csv_field(value) for value in table] for name, table in tables.items()}
    for chunk in export_chunks(report.run.columns, report.derived):
        indexes = _indexes(chunk, layer_of_param)
        fields: dict[str, list[str]] = {}
        for name in TEXT_COLUMNS:
            table = quoted[name]
            fields[name] = [table[i] for i in indexes[name].tolist()]
        for name in INT_COLUMNS:
            fields[name] = list(map(str, chunk[name].tolist()))
        for name in FLOAT_COLUMNS:
            fields[name] = ["" if value is None else repr(value) for value in _nullable(chunk[name])]
        lines = map(",".join, zip(*(fields[name] for name in EXPORT_COLUMNS), strict=True))
        text.write("\n".join(lines) + "\n")
        rows += len(chunk["step"])
    text.flush()
    text.detach()  # the caller closes the file
    return rows


def _csv_field(value: str) -> str:
    """One field as the csv module writes it (quoted when it holds a comma, a quote, \\r or \\n)."""
    buffer = io.StringIO()
    # csv quotes the characters of its line terminator: "\r\n" makes it quote both kinds of line break
    csv.writer(buffer, lineterminator="\r\n").writerow([value])
    return buffer.getvalue().removesuffix("\r\n")


def _nullable(values: np.ndarray) -> list[float | None]:
    items = values.tolist()
    bad = ~np.isfinite(values)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            items[i] = None
    return items


def _parquet_writer() -> Callable[[Report, Any], int]:
    """The Parquet writer, or an InputError naming the extra when pyarrow is missing."""
    try:
        import pyarrow as pa  # noqa: F401  (an optional extra: imported only for Parquet)
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError(
            "writing Parquet needs pyarrow: pip install 'gradcheck[export]' (or use .csv)"
        ) from None
    return _write_parquet


def _write_parquet(report: Report, file: Any) -> int:
    """Parquet, one row group per chunk; text columns dictionary-encoded, NaN/Inf as null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, layer_of_param = _tables(report)
    tables = {name: pa.array([_utf8(v) for v in values], type=pa.string()) for name, values in texts.items()}
    fields = [pa.field("step", pa.int64())]
    fields += [pa.field(name, pa.dictionary(pa.int32(), pa.string())) for name in TEXT_COLUMNS]
    fields += [
        pa.field(name, pa.int64() if name in INT_COLUMNS else pa.float64()) for name in EXPORT_COLUMNS[7:]
    ]
    schema = pa.schema(fields)
    rows = 0
    with pq.ParquetWriter(file, schema) as writer:
        for chunk in export_chunks(report.run.columns, report.derived):
            indexes = _indexes(chunk, layer_of_param)
            arrays = {"step": pa.array(chunk["step"], type=pa.int64())}
            for name in TEXT_COLUMNS:
                dictionary = tables[name]
                arrays[name] = pa.DictionaryArray.from_arrays(pa.array(indexes[name], pa.int32()), dictionary)
            for name in INT_COLUMNS[1:]:
                arrays[name] = pa.array(chunk[name], type=pa.int64())
            for name in FLOAT_COLUMNS:
                values = chunk[name]
                arrays[name] = pa.array(values, type=pa.float64(), mask=~np.isfinite(values))
            writer.write_table(pa.table([arrays[name] for name in EXPORT_COLUMNS], schema=schema))
            rows += len(chunk["step"])
    return rows


def _utf8(text: str) -> str:
    """Arrow strings are UTF-8: a lone surrogate (a non-UTF-8 file name) becomes its \\udcxx escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
