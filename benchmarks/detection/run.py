"""Record every detection program (buggy and healthy twin), run gradcheck on each, print the confusion matrix.

Usage: `python benchmarks/detection/run.py [--jobs N] [--only PROGRAM[:VARIANT]] [--variant buggy|healthy]
[--json] [--save FILE] [--out DIR [--reuse]]`. Each training run and each `gradcheck inspect --format json`
is its own process of THIS Python (`sys.executable`), so another checkout's venv evaluates its own checks by
running this script with its python (`--out DIR --reuse` judges runs recorded earlier without training).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # so `detection.programs.<name>` imports, relative imports included

from detection.programs import PROGRAMS
from detection.score import Record, render, summarize

VARIANTS = ("buggy", "healthy")
TRAIN_TIMEOUT = 600  # seconds; a program takes a few seconds alone, much longer on a loaded machine
# gradcheck's CLI through this interpreter, whatever console scripts are (or are not) on PATH.
GRADCHECK = [sys.executable, "-c", "import sys; from gradcheck.cli.main import cli; sys.exit(cli())"]


def load(program: str) -> Any:
    """The program's module (its `CLASS` and `train`)."""
    return importlib.import_module(f"detection.programs.{program}")


def _finite(value: Any) -> Any:
    """NaN/Inf become None, so the outcome is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def train_here(program: str, variant: str, out_dir: Path) -> None:
    """Worker mode: train one variant into out_dir and print its Outcome as one JSON line."""
    from detection.common import configure_torch

    configure_torch()
    outcome = load(program).train(out_dir, buggy=variant == "buggy")
    print(json.dumps(_finite(dataclasses.asdict(outcome))))


def _inspect(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """gradcheck's JSON verdict on run_dir, or None and the reason it failed (exit 2/3, bad output)."""
    done = subprocess.run(
        [*GRADCHECK, "inspect", str(run_dir), "--format", "json", "--no-cache", "-q", "-j", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 1):
        return None, f"gradcheck exit {done.returncode}: {done.stderr.strip()[-300:]}"
    try:
        return json.loads(done.stdout), None
    except json.JSONDecodeError as e:
        return None, f"gradcheck printed no JSON ({e})"


def _train(program: str, variant: str, out_dir: Path) -> tuple[dict[str, Any], str | None]:
    """Train one variant into out_dir in a fresh process; its Outcome, or the reason it failed."""
    shutil.rmtree(out_dir, ignore_errors=True)
    trained = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--train", program, variant, str(out_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=TRAIN_TIMEOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    if trained.returncode != 0:
        return {}, f"training exit {trained.returncode}: {trained.stderr.strip()[-300:]}"
    return json.loads(trained.stdout.strip().splitlines()[-1]), None


def run_one(program: str, variant: str, root: Path, *, reuse: bool = False) -> Record:
    """Train one variant (or reuse its earlier recording), then inspect what it recorded.

    The Outcome is kept beside the run (`<variant>.outcome.json`, not inside it), so `--reuse` can judge the
    same recordings with another gradcheck without training again: the programs are deterministic.
    """
    spec = load(program).CLASS
    out_dir = root / program / variant
    saved = root / program / f"{variant}.outcome.json"
    start = time.perf_counter()
    if reuse and saved.is_file() and out_dir.is_dir():
        outcome, failure = json.loads(saved.read_text(encoding="utf-8")), None
    else:
        saved.unlink(missing_ok=True)
        outcome, failure = _train(program, variant, out_dir)
        if failure is None:
            saved.write_text(json.dumps(outcome) + "\n", encoding="utf-8")
    report = None
    if failure is None:
        report, failure = _inspect(out_dir)
    return Record(
        program=program,
        fault_class=spec.name,
        variant=variant,
        expected=spec.expected,
        shows_in=spec.shows_in,
        outcome=outcome,
        report=report,
        failure=failure,
        seconds=time.perf_counter() - start,
    )


def _selection(text: str) -> tuple[str, str | None]:
    """`PROGRAM` or `PROGRAM:VARIANT`, checked against the registry."""
    program, _, variant = text.partition(":")
    if program not in PROGRAMS or (variant and variant not in VARIANTS):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one of {', '.join(PROGRAMS)}, optionally :buggy/:healthy"
        )
    return program, variant or None


def _tasks(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (program, variant) pairs to run, in registry order."""
    variants = [args.variant] if args.variant else list(VARIANTS)
    chosen = args.only or [(p, None) for p in PROGRAMS]
    wanted = {(p, v) for p, only in chosen for v in ([only] if only else variants)}
    return [(p, v) for p in PROGRAMS for v in VARIANTS if (p, v) in wanted]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="programs run at once")
    parser.add_argument(
        "--only",
        action="append",
        type=_selection,
        metavar="PROGRAM[:VARIANT]",
        help="run only this program, or only one variant of it (repeatable)",
    )
    parser.add_argument("--variant", choices=VARIANTS, help="only the buggy programs or only the twins")
    parser.add_argument("--json", action="store_true", help="print the records and summary as JSON")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also write the JSON document to FILE")
    parser.add_argument("--out", type=Path, help="keep the recorded runs here (default: a temporary folder)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --out: judge the runs already recorded there, train the rest",
    )
    parser.add_argument("--train", nargs=3, metavar=("PROGRAM", "VARIANT", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _json_document(records: list[Record], summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Machine output: the summary and, per run, its outcome and findings (not the per-step statistics)."""
    runs = []
    for r in records:
        findings = (r.report or {}).get("findings", [])
        runs.append(
            {
                "program": r.program,
                "class": r.fault_class,
                "variant": r.variant,
                "expected": list(r.expected),
                "shows_in": r.shows_in,
                "status": (r.report or {}).get("status"),
                "findings": [
                    {k: f[k] for k in ("severity", "problem", "check", "param", "step")} for f in findings
                ],
                "outcome": r.outcome,
                "failure": r.failure,
                "seconds": round(r.seconds, 2),
            }
        )
    return {"python": sys.executable, "seconds": round(seconds, 1), "summary": summary, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every program trained and was inspected, 1 otherwise."""
    args = _parse(argv)
    if args.train:
        program, variant, out = args.train
        train_here(program, variant, Path(out))
        return 0
    tasks = _tasks(args)
    if args.reuse and not args.out:
        raise SystemExit("--reuse needs --out DIR (the folder of the earlier recordings)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gradcheck-detection-") as tmp:
        root = args.out or Path(tmp)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            records = list(pool.map(lambda task: run_one(*task, root, reuse=args.reuse), tasks))
    seconds = time.perf_counter() - start
    summary = summarize(records)
    document = json.dumps(_json_document(records, summary, seconds), indent=2)
    if args.save:
        args.save.write_text(document + "\n", encoding="utf-8")
    if args.json:
        print(document)
    else:
        print(render(records, summary, seconds))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
