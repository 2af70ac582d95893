"""Coverage-guided fuzzing of the stats-summary parser ("stats mode" metadata) with atheris (libFuzzer).

Each input is the text of `__metadata__["gradcheck.stats"]` of a gradient file (step 1), written beside a
fixed parameter file of the same step and a healthy gradient file of step 0, and the run goes through
`inspect_run` (parsing, merging, derived numbers, every check), the JSON and GitHub formats and the depth
profile: the paths that a forged or broken summary reaches. A GradcheckError is the expected answer (the
file is unreadable); anything else is a crash. See README.md.

    python tests/fuzz/fuzz_summaries.py --seeds seeds_summaries
    FUZZ_ARTIFACTS=crashes python tests/fuzz/fuzz_summaries.py -max_total_time=660 corpus_sum seeds_summaries
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["gradcheck"]):
    from gradcheck.analysis.errors import GradcheckError
    from gradcheck.analysis.history import layer_depths
    from gradcheck.analysis.inspection import inspect_run
    from gradcheck.analysis.stats import TensorStats, summarize_array
    from gradcheck.analysis.summaries import parse_summaries, shape_of, stats_from_entry, summary_entry
    from gradcheck.cli.ci_formats import format_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fuzz_common import call, limit_memory
from st_files import file_bytes, write_arrays

_run_dir = Path()
# FUZZ_LIGHT=1: the parser and the derived numbers only (thousands of inputs a second instead of tens)
LIGHT = os.environ.get("FUZZ_LIGHT") == "1"


def _parse(text: str) -> None:
    for summary in parse_summaries({"gradcheck.stats": text}).values():
        stats = stats_from_entry(summary)
        shape_of(summary)
        merged = stats.merge(stats).merge(TensorStats())
        _ = (merged.norm, merged.rms, merged.mean_abs, merged.log10_norm, merged.min_abs, merged.max_abs)


def _inspect() -> None:
    report = inspect_run(_run_dir)
    steps = report.run.steps
    shown = steps[-1] if steps else None
    for name in ("json", "github", "markdown"):
        format_report(name, report, shown, 0, selection=steps or None)
    if shown is not None:
        layer_depths(report.run.columns, shown)


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    if LIGHT:  # what stats_from_entry promises: ValueError (or a JSON error, also a ValueError) for bad input
        call("parse", data, (ValueError, TypeError, RecursionError), _parse, text)
        return
    metadata = {"gradcheck.stats": text, "step": "1", "gradcheck.format": "1"}
    try:
        raw = file_bytes({"__metadata__": metadata})
    except UnicodeEncodeError:  # lone surrogates: a header is UTF-8, so such text cannot be in a file
        return
    (_run_dir / "grads_1.safetensors").write_bytes(raw)
    call("inspect", data, (GradcheckError,), _inspect)


def write_seeds(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "plain": np.array([0.5, -2.0, 0.0, 1.0], np.float32),
        "special": np.array([np.nan, np.inf, 1.0, 0.0]),
        "tiny": np.full(4, 1e-170),
        "huge": np.full(4, 1e308),
        "zero": np.zeros(4),
    }
    for name, values in arrays.items():
        with np.errstate(all="ignore"):
            entry = summary_entry(summarize_array(values), (4,), "F64")
        (folder / f"{name}.json").write_text(json.dumps({"grad/w": entry, "grad/b": entry}))
    empty = summary_entry(TensorStats(count=0), (0, 3), "F32")
    (folder / "empty.json").write_text(json.dumps({"grad/w": empty}))


def _make_run_dir() -> Path:
    base = Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    folder = base / f"gradcheck-fuzz-summaries-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    write_arrays(folder / "params_1.safetensors", {"w": ("F32", np.ones(4, np.float32))}, {"step": "1"})
    write_arrays(folder / "grads_0.safetensors", {"w": ("F32", np.ones(4, np.float32))}, {"step": "0"})
    write_arrays(
        folder / "updates_1.safetensors", {"w": ("F32", np.full(4, 1e-3, np.float32))}, {"step": "1"}
    )
    return folder


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(Path(sys.argv[2]))
        return
    global _run_dir
    _run_dir = _make_run_dir()
    limit_memory()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
