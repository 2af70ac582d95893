"""Size and render time of `gradcheck report` for a 100-parameter x 200-step run (issue #15: < 2 MB, < 2 s).

Writes a synthetic run (50 layers of weight (64, 64) + bias (64,), grad/param/update, 200 steps; one layer's
gradient NaN from step 150, one layer dead) to a temporary directory, then measures:
  - the report file's size, against the 2 MB budget and against the vendored libraries alone (the floor);
  - `gradcheck report` end to end, against `gradcheck inspect --format json` of the same run (cache warm);
  - opening it in headless Chromium until every chart is drawn (best of `--repeat`), wall time and the renderer
    process's CPU time (what a busy machine inflates least), against a page of the same libraries with one
    empty chart (the cost of parsing the JavaScript alone), and the 2 s budget.
Needs Debian's chromium and websocket-client (as the browser test does).

    python benchmarks/report_size.py [--params 100] [--steps 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import Chromium, find_browser  # the browser driver of the tests

BUDGET_BYTES, BUDGET_SECONDS = 2_000_000, 2.0
VENDORED = ("vega.min.js", "vega-lite.min.js")
READY = "document.body && document.body.getAttribute('data-rendered')"


def write_run(folder: Path, params: int, steps: int) -> None:
    """`params` parameters (weight + bias per layer) over `steps` recorded steps, one file per step."""
    rng = np.random.default_rng(0)
    layers = params // 2
    names = [f"blocks.{i}.{kind}" for i in range(layers) for kind in ("weight", "bias")]
    for step in range(steps):
        tensors = {}
        for i, name in enumerate(names):
            shape = (64, 64) if name.endswith("weight") else (64,)
            scale = 10.0 ** (-1 - 3 * (i // 2) / layers)  # deeper layers get smaller gradients
            grad = (rng.normal(size=shape) * scale).astype(np.float32)
            if i // 2 == 3:
                grad[:] = 0  # a dead layer
            if i // 2 == 7 and step >= 150:
                grad[0] = np.nan
            value = rng.normal(size=shape).astype(np.float32)
            tensors |= {f"grad/{name}": grad, f"param/{name}": value, f"update/{name}": value * 1e-3}
        metadata = {"gradcheck.format": "1", "step": str(step), "order": json.dumps(names)}
        save_file(tensors, str(folder / f"step_{step:08d}.safetensors"), metadata=metadata)


def best(command: list[str], repeat: int) -> float:
    """Best wall time of a gradcheck command (the stats cache warm after the first run)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=False, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def _vendored(name: str) -> str:
    return files("gradcheck.cli.pictures").joinpath("vendor", name).read_text(encoding="utf-8")


def baseline_page(folder: Path) -> Path:
    """The vendored libraries and one empty Vega-Lite chart: what every report costs before its data."""
    spec = json.dumps({"data": {"values": []}, "mark": "point"})
    script = (
        f"vegaEmbedless = new vega.View(vega.parse(vegaLite.compile({spec}).spec), {{renderer: 'canvas', "
        "container: '#c'}).runAsync().then(() => document.body.setAttribute('data-rendered', '1'));"
    )
    libraries = "".join(f"<script>{_vendored(name)}</script>" for name in VENDORED)
    path = folder / "baseline.html"
    path.write_text(f"<html><body><div id='c'></div>{libraries}<script>{script}</script></body></html>")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = folder / "run"
        run.mkdir()
        write_run(run, args.params, args.steps)
        target = folder / "report.html"
        gradcheck = str(Path(sys.executable).parent / "gradcheck")
        as_json = best([gradcheck, "inspect", str(run), "--format", "json", "-q"], args.repeat + 1)
        build = best([gradcheck, "report", str(run), "-o", str(target), "-q"], args.repeat)
        size = target.stat().st_size
        floor = sum(len(_vendored(name).encode()) for name in VENDORED)
        binary = find_browser()
        if binary is None:
            sys.exit("no chromium on PATH: apt-get install -y chromium")
        with Chromium(binary) as browser:
            loads = [browser.load(target.as_uri(), {}, ready=READY) for _ in range(args.repeat)]
            bases = [
                browser.load(baseline_page(folder).as_uri(), {}, ready=READY) for _ in range(args.repeat)
            ]
        render, base = min(r.seconds for r in loads), min(r.seconds for r in bases)
        cpu, base_cpu = min(r.cpu_seconds for r in loads), min(r.cpu_seconds for r in bases)
        errors = sorted({e for r in loads for e in r.errors})
    print(f"run: {args.params} parameters x {args.steps} steps")
    print(
        f"size: {size / 1e6:.2f} MB ({size / BUDGET_BYTES:.2f} of the 2 MB budget; libraries {floor / 1e6:.2f} MB)"
    )
    print(
        f"gradcheck report: {build:.2f} s ({build / as_json:.2f}x gradcheck inspect --format json, {as_json:.2f} s)"
    )
    print(
        f"render in chromium: {render:.2f} s ({render / BUDGET_SECONDS:.2f} of the 2 s budget; "
        f"{render / base:.1f}x the libraries with an empty chart, {base:.2f} s)"
    )
    print(
        f"renderer CPU time: {cpu:.2f} s ({cpu / BUDGET_SECONDS:.2f} of the 2 s budget; "
        f"{cpu / base_cpu:.1f}x the libraries with an empty chart, {base_cpu:.2f} s)"
    )
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"console errors: {errors or 'none'}")


if __name__ == "__main__":
    main()
