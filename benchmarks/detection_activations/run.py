"""Detection benchmark for the loss and activation checks (issue #16): recall on the buggy programs, false alarms
on their healthy twins, before (gradient checks only) and after (with the loss and activation checks).

    python benchmarks/detection_activations/run.py [--only NAME ...] [--out DIR] [--json]

Each program of programs.py trains twice (buggy, healthy) on scikit-learn's digits with the torch Recorder
(`activations=True`, `recorder.log(loss=...)`), and the run is judged in process by `inspect_run`. "Before" is
the same judgement without the findings of the new checks: those are appended to the gradient findings and
change nothing else (tests/test_signal_checks.py checks that a run without them reads and judges as before).
A buggy program is detected when a finding of one of its expected checks is reported (error or warning); "before"
counts the gradient checks that also catch the class (`Program.before`: `nonfinite` for the NaN, though it
cannot name the layer; `dead`; `update-ratio-low`). A healthy twin with an error finding is a false alarm.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from programs import HEALTHY_ONLY, PROGRAMS, Program

from gradcheck.analysis.inspection import inspect_run
from gradcheck.analysis.signal_checks import SIGNAL_CHECK_IDS


def judge(program: Program, variant: str, out: Path) -> dict[str, object]:
    run_dir = out / program.name / variant
    started = time.perf_counter()
    outcome = program.train(run_dir, variant == "buggy")
    report = inspect_run(run_dir)
    after = [(f.check, f.severity, f.param, f.step) for f in report.findings]
    before = [f for f in after if f[0] not in SIGNAL_CHECK_IDS]
    hit = {
        "before": _level(before, program.before),
        "after": _level(after, program.expected + program.before),
    }
    return {
        "program": program.name, "variant": variant, "outcome": outcome, "seconds": time.perf_counter() - started,
        "detected": hit, "errors": {"before": _errors(before), "after": _errors(after)},
        "findings": sorted({(check, severity, param) for check, severity, param, _ in after}),
        "messages": [f.message for f in report.findings if f.check in SIGNAL_CHECK_IDS],
    }  # fmt: skip


def _level(found: list[tuple[str, str, str, int]], expected: tuple[str, ...]) -> str:
    levels = {severity for check, severity, _, _ in found if check in expected}
    return "error" if "error" in levels else ("warning" if levels else "missed")


def _errors(found: list[tuple[str, str, str, int]]) -> int:
    return sum(severity == "error" for _, severity, _, _ in found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="detect_act_"))
    results = []
    for program in PROGRAMS + HEALTHY_ONLY:
        if args.only and program.name not in args.only:
            continue
        variants = ("buggy", "healthy") if program.expected else ("healthy",)
        results += [judge(program, variant, out) for variant in variants]
    if args.json:
        print(json.dumps(results, indent=1, default=str))
    else:
        print_table(results)
    return 0


def print_table(results: list[dict]) -> None:
    print(f"{'program':<18} {'variant':<8} {'before':<8} {'after':<8} {'err b/a':<8} accuracy  new findings")
    for r in results:
        new = [f"{c}({s[0]}):{p}" for c, s, p in r["findings"] if c in SIGNAL_CHECK_IDS]
        detected = r["detected"] if r["variant"] == "buggy" else {"before": "-", "after": "-"}
        errors = f"{r['errors']['before']}/{r['errors']['after']}"
        print(
            f"{r['program']:<18} {r['variant']:<8} {detected['before']:<8} {detected['after']:<8} {errors:<8} "
            f"{r['outcome']['accuracy']:<9.3f} {', '.join(new) or '-'}"
        )
    buggy = [r for r in results if r["variant"] == "buggy"]
    healthy = [r for r in results if r["variant"] == "healthy"]
    for when in ("before", "after"):
        found = sum(r["detected"][when] != "missed" for r in buggy)
        at_error = sum(r["detected"][when] == "error" for r in buggy)
        alarms = sum(r["errors"][when] > 0 for r in healthy)
        print(
            f"{when}: recall {found}/{len(buggy)} ({found / max(len(buggy), 1):.0%}; at error level {at_error}), "
            f"error-level false alarms {alarms}/{len(healthy)} healthy runs"
        )


if __name__ == "__main__":
    sys.exit(main())
