"""Keras 3 `fit()` recorded by GradcheckCallback, with the torch and the JAX backend.

Keras picks its backend once per process, so each backend trains in its own subprocess (tests/keras_fit.py)
and these tests read what it wrote; the suite can import Keras with any backend without affecting them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from gradcheck.analysis.context import CONTEXT_KEY, SCALARS_KEY, parse_context, parse_scalars
from gradcheck.cli.main import cli

pytestmark = pytest.mark.frameworks
SCRIPT = Path(__file__).with_name("keras_fit.py")
BACKEND_MODULES = {"torch": "torch", "jax": "jax"}


@pytest.fixture(scope="module", params=sorted(BACKEND_MODULES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs one backend's subprocess trained and recorded."""
    # find_spec, not importorskip: importing Keras here would fix this process's backend
    for module in ("keras", "sklearn", BACKEND_MODULES[request.param]):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    out = tmp_path_factory.mktemp(f"keras-{request.param}")
    subprocess.run([sys.executable, str(SCRIPT), request.param, str(out)], check=True, timeout=600)
    return out


def _steps(run: Path) -> dict[int, dict[str, np.ndarray]]:
    return {int(f.stem.split("_")[1]): load_file(f) for f in sorted(run.glob("step_*.safetensors"))}


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        return handle.metadata()


def _bits(array: np.ndarray) -> np.ndarray:
    assert array.dtype == np.float32
    return array.view(np.uint32)


def test_every_step_of_fit_is_recorded_from_zero(trained: Path) -> None:
    assert sorted(_steps(trained / "spy")) == list(range(10))
    assert sorted(_steps(trained / "healthy")) == list(range(0, 30, 2))


def test_only_the_fit_with_the_callback_is_recorded(trained: Path) -> None:
    assert sorted(_steps(trained / "refit")) == [5, 6, 7, 8, 9]


def test_a_fit_that_raised_leaves_no_recording_behind(trained: Path) -> None:
    """The next callback replaces the wrappers the interrupted fit() left on the optimizer."""
    assert sorted(_steps(trained / "crashed")) == [15, 16, 17]
    assert sorted(_steps(trained / "after")) == [18, 19, 20, 21, 22]


def test_recorded_gradient_is_the_one_the_update_rule_used(trained: Path) -> None:
    used = np.load(trained / "spy.npz")
    steps = _steps(trained / "spy")
    assert len(used.files) == 40  # 10 steps x 4 parameters
    for key in used.files:
        step, path = key.split("/", 1)
        recorded = steps[int(step)][f"grad/{path}"]
        np.testing.assert_array_equal(_bits(recorded), _bits(used[key]), err_msg=key)
        # after clipping: clipnorm=0.05 bounds each gradient's norm (the raw ones are larger)
        assert np.linalg.norm(recorded.astype(np.float64)) <= 0.05 * (1 + 1e-5)


def test_recording_does_not_change_training(trained: Path) -> None:
    weights = np.load(trained / "weights.npz")
    assert len(weights.files) == 8
    for i in range(4):
        np.testing.assert_array_equal(_bits(weights[f"recorded{i}"]), _bits(weights[f"alone{i}"]))


def test_update_is_param_after_minus_param_before(trained: Path) -> None:
    steps = _steps(trained / "spy")
    names = [key.removeprefix("param/") for key in steps[0] if key.startswith("param/")]
    assert sorted(names) == sorted(
        f"sequential/{layer}/{part}" for layer in ("dense", "dense_1") for part in ("kernel", "bias")
    )
    for step in range(9):
        for name in names:
            after, before = steps[step + 1][f"param/{name}"], steps[step][f"param/{name}"]
            update = steps[step][f"update/{name}"]
            np.testing.assert_array_equal(_bits(update), _bits(after - before), err_msg=f"{step} {name}")
            assert np.any(update != 0)


def test_accumulation_records_each_update_once(trained: Path) -> None:
    """10 batches accumulated in pairs: 5 updates, numbered as Keras's `iterations` counts them."""
    steps = _steps(trained / "accumulated")
    assert sorted(steps) == [0, 1, 2, 3, 4]
    for step in range(4):
        for key in (k for k in steps[step] if k.startswith("update/")):
            name = key.removeprefix("update/")
            change = steps[step + 1][f"param/{name}"] - steps[step][f"param/{name}"]
            np.testing.assert_array_equal(_bits(steps[step][key]), _bits(change))
            # the recorded gradient is the averaged pair SGD used: update = -lr * grad, up to param rounding
            np.testing.assert_allclose(
                steps[step][key], -0.1 * steps[step][f"grad/{name}"], rtol=0, atol=1e-7
            )
    context, _ = parse_context(_metadata(trained / "accumulated" / "step_00000002.safetensors")[CONTEXT_KEY])
    assert context.accumulation == 2


def test_context_has_optimizer_lr_loss_scale_modules_and_loss(trained: Path) -> None:
    metadata = _metadata(trained / "healthy" / "step_00000004.safetensors")
    context, problems = parse_context(metadata[CONTEXT_KEY])
    assert problems == []
    assert (context.framework, context.optimizer) == ("keras", "SGD")
    assert context.loss_scale == 2.0**15  # LossScaleOptimizer's initial dynamic scale, not yet grown
    assert dict(context.lr) == pytest.approx(dict.fromkeys(context.modules, 0.1))
    assert set(context.modules.values()) == {"Dense"} and len(context.modules) == 4
    scalars, problems = parse_scalars(metadata[SCALARS_KEY])
    assert problems == [] and 0 < scalars["loss"] < math.log(10) + 1


@pytest.mark.parametrize(("run", "exit_code"), [("healthy", 0), ("broken", 1)])
def test_inspect_verdict(trained: Path, run: str, exit_code: int) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(trained / run), "--format", "json"])
    assert result.exit_code == exit_code, result.output
    problems = {finding["problem"] for finding in json.loads(result.stdout)["findings"]}
    assert ("nonfinite" in problems) == (run == "broken"), problems
