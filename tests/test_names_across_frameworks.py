"""Issue 11 acceptance 4: Flax-style plain dumps are read and judged; wrapper prefixes do not stop diff."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from gradcheck.cli.main import cli

torch = pytest.importorskip("torch")


def _flax_style_run(root: Path, *, dead: bool = False) -> Path:
    """What `flatten_dict(tree, sep="/")` of Flax grads and params gives: `params/...` keys in both files."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for step in range(0, 50, 10):
        grads = {
            "params/Dense_0/kernel": rng.standard_normal((8, 16)).astype(np.float32),
            "params/Dense_0/bias": rng.standard_normal(16).astype(np.float32),
            "params/Dense_1/kernel": np.zeros((16, 4), np.float32)
            if dead
            else rng.standard_normal((16, 4)).astype(np.float32),
        }
        params = {key: rng.standard_normal(value.shape).astype(np.float32) for key, value in grads.items()}
        params["batch_stats/BatchNorm_0/mean"] = np.zeros(16, np.float32)
        save_file(grads, str(root / f"grads_{step}.safetensors"))
        save_file(params, str(root / f"params_{step}.safetensors"))
    return root


def test_flax_style_plain_run_is_read_and_judged(tmp_path: Path) -> None:
    runner = CliRunner()
    healthy = runner.invoke(cli, ["inspect", str(_flax_style_run(tmp_path / "ok")), "--format", "json"])
    assert healthy.exit_code == 0, healthy.output
    doc = json.loads(healthy.stdout)
    names = [param["name"] for param in doc["params"]]
    assert set(names) == {"Dense_0/kernel", "Dense_0/bias", "Dense_1/kernel", "batch_stats/BatchNorm_0/mean"}
    judged = runner.invoke(
        cli, ["inspect", str(_flax_style_run(tmp_path / "dead", dead=True)), "--format", "json"]
    )
    assert judged.exit_code == 1
    assert {(f["check"], f["param"]) for f in json.loads(judged.stdout)["findings"]} >= {
        ("dead", "Dense_1/kernel")
    }


def _train(run_dir: Path, wrap: bool) -> None:
    """The same tiny MLP and data twice; once inside DataParallel, which names parameters `module.<name>`."""
    from gradcheck.recording.torch import Recorder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    net = torch.nn.DataParallel(model) if wrap else model
    assert next(iter(dict(net.named_parameters()))).startswith("module." if wrap else "0.")
    generator = torch.Generator().manual_seed(1)
    with Recorder(net, optimizer, run_dir, every=5):
        for _ in range(21):
            x = torch.randn(32, 6, generator=generator)
            loss = torch.nn.functional.mse_loss(net(x), x[:, :2])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def test_diff_matches_a_module_prefixed_run_to_an_unprefixed_one(tmp_path: Path) -> None:
    _train(tmp_path / "ddp", wrap=True)
    _train(tmp_path / "single", wrap=False)
    result = CliRunner().invoke(
        cli, ["diff", str(tmp_path / "ddp"), str(tmp_path / "single"), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [(layer["layer"], layer["status"]) for layer in doc["layers"]] == [("0", "ok"), ("2", "ok")]
    assert all(layer["grad_norm_log10_ratio"]["median"] == 0.0 for layer in doc["layers"])
