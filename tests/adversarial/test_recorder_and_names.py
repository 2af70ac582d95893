"""Classes 9 and 10: the recorder skips complex parameters and names what fails; duplicate tensor names."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.numpy import load
from st_files import entry, file_bytes

from gradcheck.cli.main import cli

torch = pytest.importorskip("torch")

from gradcheck.recording.snapshot import RecordingError
from gradcheck.recording.torch import NOT_RECORDED_KEY, Recorder


class Mixed(torch.nn.Module):
    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3, device=device))
        self.c128 = torch.nn.Parameter(torch.ones(3, dtype=torch.complex128, device=device))
        self.c64 = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64, device=device))

    def loss(self) -> torch.Tensor:
        return self.w.sum() + (self.c128 * self.c128).real.sum() + (self.c64 * self.c64).real.sum()


@pytest.mark.parametrize("mode", ["full", "stats"])
def test_complex_parameters_are_skipped_with_a_note(tmp_path: Path, mode: str) -> None:
    model = Mixed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, optimizer, tmp_path, every=1, mode=mode):
        for _ in range(2):
            optimizer.zero_grad()
            model.loss().backward()
            optimizer.step()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "step_00000000.safetensors"), "np") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert not any("c128" in k or "c64" in k for k in keys)
    notes = json.loads(metadata[NOT_RECORDED_KEY])
    assert notes["grad/c128"] == "complex128: complex, not recorded"
    assert notes["param/c64"] == "complex64: complex, not recorded"
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 0 and "complex128: complex, not recorded" in result.stderr


def test_a_meta_device_model_fails_with_the_parameter_run_and_step(tmp_path: Path) -> None:
    model = Mixed("meta")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = Recorder(model, optimizer, tmp_path, every=1)
    optimizer.zero_grad()
    model.loss().backward()
    with pytest.raises(RecordingError) as caught:
        optimizer.step()
    message = str(caught.value)
    assert "'grad/w'" in message and str(tmp_path) in message and "step 0" in message
    assert "device meta" in message and isinstance(caught.value.__cause__, NotImplementedError)
    recorder.close()


def _duplicate(last_tiles: bool) -> bytes:
    """A header naming `w` twice; in one of them the last `w` alone tiles the data."""
    first, second = (
        entry("F32", [1], 0, 4),
        entry("F32", [1], 0, 4) if last_tiles else entry("F32", [1], 4, 8),
    )
    raw = '{"w":' + json.dumps(first) + ',"w":' + json.dumps(second) + "}"
    return file_bytes(raw, struct.pack("<f", 2.0) if last_tiles else struct.pack("<ff", 1.0, 2.0))


def test_duplicate_names_the_library_accepts_are_refused_on_purpose(tmp_path: Path) -> None:
    data = _duplicate(last_tiles=True)
    assert load(data)["w"].tolist() == [2.0]  # the safetensors library keeps the last entry
    (tmp_path / "grads_1.safetensors").write_bytes(data)
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "duplicate tensor name 'w' in header" in result.stderr
    docs = (Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md").read_text()
    assert "the last of two entries named `w` wins" in docs and "gradcheck refuses such a file" in docs


def test_duplicate_names_the_library_refuses_are_refused(tmp_path: Path) -> None:
    data = _duplicate(last_tiles=False)
    with pytest.raises(Exception, match="invalid offset"):
        load(data)
    (tmp_path / "grads_1.safetensors").write_bytes(data)
    assert CliRunner().invoke(cli, ["inspect", str(tmp_path)]).exit_code == 2
