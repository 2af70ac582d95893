"""Tests for the PyTorch recorder: what lands on disk, bit for bit, on real (tiny) training loops."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from json_rows import per_step
from safetensors import safe_open
from safetensors.torch import load_file

import gradcheck.recording._summary as summary_module
import gradcheck.recording.torch as recorder_module
from gradcheck.analysis.runs import load_run
from gradcheck.analysis.stats import summarize_array
from gradcheck.cli.main import cli
from gradcheck.recording.snapshot import RecordingError
from gradcheck.recording.torch import Recorder

NAMES = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
STAT_FIELDS = ("min_abs", "mean_abs", "max_abs", "norm")
COUNT_FIELDS = ("count", "nan", "inf", "zeros")

Capture = dict[tuple[int, str, str], "torch.Tensor"]


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32, width: int = 16) -> torch.nn.Module:
    """A tiny MLP whose parameter names are NAMES."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 1),
    )
    return model.to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random batch for the same step, in every run."""
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 6, generator=generator)
    return x.to(dtype), x[:, :1].sin().to(dtype) * 3


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    before_step: Callable[[int], None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Capture:
    """Train and capture, outside the recorder, the grads, params and updates every step."""
    seen: Capture = {}
    for step in range(steps):
        x, y = batch(step, dtype)
        torch.nn.functional.mse_loss(model(x), y).backward()
        if before_step is not None:
            before_step(step)
        for name, p in model.named_parameters():
            if p.grad is not None:
                seen[(step, name, "grad")] = p.grad.detach().clone()
            seen[(step, name, "param")] = p.detach().clone()
        optimizer.step()
        for name, p in model.named_parameters():
            seen[(step, name, "update")] = p.detach() - seen[(step, name, "param")]
        optimizer.zero_grad()
    return seen


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor, so that comparisons are bit for bit (NaN and -0.0 included)."""
    return tensor.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert torch.equal(bits(actual), bits(expected))


def step_files(run_dir: Path) -> list[str]:
    return sorted(path.name for path in run_dir.glob("*.safetensors"))


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


# --- round trip --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        lambda params: torch.optim.Adam(params, lr=1e-3),
        lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, foreach=False),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_round_trip_is_bit_exact(tmp_path: Path, make_optimizer: Callable) -> None:
    model = make_model()
    optimizer = make_optimizer(model.parameters())
    with Recorder(model, optimizer, tmp_path, every=3):
        seen = train(model, optimizer, 8)

    assert step_files(tmp_path) == [f"step_{s:08d}.safetensors" for s in (0, 3, 6)]
    for step in (0, 3, 6):
        stored = load_file(str(tmp_path / f"step_{step:08d}.safetensors"))
        assert set(stored) == {f"{kind}/{name}" for kind in ("grad", "param", "update") for name in NAMES}
        for name in NAMES:
            for kind in ("grad", "param", "update"):
                assert_same_bits(stored[f"{kind}/{name}"], seen[(step, name, kind)])
        assert torch.count_nonzero(stored["update/0.weight"]) > 0  # the step did move the weights
    run = load_run(tmp_path)
    assert run.steps == (0, 3, 6)
    assert run.params == tuple(NAMES)
    metadata = metadata_of(tmp_path / "step_00000003.safetensors")
    assert metadata["step"] == "3"
    assert json.loads(metadata["order"]) == NAMES
    assert json.loads(metadata["gradcheck.no_grad"]) == []


def test_steps_are_counted_from_zero_per_optimizer_step(tmp_path: Path) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, optimizer, tmp_path, every=4, kinds=("grad",)):
        train(model, optimizer, 9)
    assert step_files(tmp_path) == [f"step_{s:08d}.safetensors" for s in (0, 4, 8)]
    assert set(load_file(str(tmp_path / "step_00000004.safetensors"))) == {f"grad/{n}" for n in NAMES}


def test_close_removes_the_hooks_and_is_idempotent(tmp_path: Path) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    recorder = Recorder(model, optimizer, tmp_path, every=1)
    train(model, optimizer, 2)
    recorder.flush()
    assert len(step_files(tmp_path)) == 2
    recorder.close()
    recorder.close()
    train(model, optimizer, 3)
    assert len(step_files(tmp_path)) == 2
    assert not optimizer._optimizer_step_pre_hooks
    assert not optimizer._optimizer_step_post_hooks


@pytest.mark.parametrize("mode", ["full", "stats"])
def test_recorded_tensors_are_private_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Zeroing grads in place and stepping again before the writer runs must not change what it writes."""
    release = threading.Event()
    real = recorder_module.write_snapshot

    def slow_write(*args, **kwargs):
        assert release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(recorder_module, "write_snapshot", slow_write)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with Recorder(model, optimizer, tmp_path / mode, every=2, mode=mode):
        seen = {}
        for step in range(2):
            x, y = batch(step)
            torch.nn.functional.mse_loss(model(x), y).backward()
            seen[step] = {name: p.grad.clone() for name, p in model.named_parameters()}
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # in place, while step 0 still waits for the writer
        release.set()
    run = load_run(tmp_path / mode)
    for name in NAMES:
        stored, expected = run.get(0, name, "grad").stats, summarize_array(seen[0][name].numpy())
        assert (stored.count, stored.zeros, stored.abs_min, stored.abs_max) == (
            expected.count,
            expected.zeros,
            expected.abs_min,
            expected.abs_max,
        )
        assert stored.sq_sum == pytest.approx(expected.sq_sum, rel=1e-12)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"every": 0}, "every"),
        ({"every": 2.0}, "every"),
        ({"kinds": ("grad", "grads")}, "kinds"),
        ({"kinds": ()}, "kinds"),
        ({"mode": "summary"}, "mode"),
        ({"queue_size": 0}, "queue_size"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, arguments: dict, message: str) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=message):
        Recorder(model, optimizer, tmp_path, **arguments)
    assert not optimizer._optimizer_step_pre_hooks


def test_import_does_not_import_torch() -> None:
    code = "import sys, gradcheck.recording.torch; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- what the optimizer sees: clipping, grad scaling --------------------------------------------------


def test_clipped_gradients_are_recorded(tmp_path: Path) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    norms = []

    def clip(step: int) -> None:
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)))

    with Recorder(model, optimizer, tmp_path, every=2, kinds=("grad",)):
        seen = train(model, optimizer, 3, before_step=clip)
    assert min(norms) > 1e-2  # clipping did change the gradients
    stored = load_file(str(tmp_path / "step_00000002.safetensors"))
    for name in NAMES:
        assert_same_bits(stored[f"grad/{name}"], seen[(2, name, "grad")])
    total = math.sqrt(sum(float(stored[f"grad/{n}"].double().pow(2).sum()) for n in NAMES))
    assert total == pytest.approx(1e-3, rel=1e-5)


def _grad_scaler() -> torch.amp.GradScaler:
    try:
        return torch.amp.GradScaler("cpu", init_scale=1024.0)
    except (AttributeError, RuntimeError, TypeError) as error:
        pytest.skip(f"no CPU GradScaler here: {error}")


def scaled_train(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, *, unscale: bool
) -> Capture:
    """Train through a GradScaler; capture the gradients as they are right before scaler.step."""
    scaler = _grad_scaler()
    seen: Capture = {}
    for step in range(steps):
        x, y = batch(step)
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        if unscale:
            scaler.unscale_(optimizer)
        for name, p in model.named_parameters():
            seen[(step, name, "grad")] = p.grad.detach().clone()
        seen[(step, "", "scale")] = scaler.get_scale() if not unscale else 1.0
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    return seen


def test_grad_scaler_unscale_gives_unscaled_gradients(tmp_path: Path) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with Recorder(model, optimizer, tmp_path, every=1, kinds=("grad",)):
        seen = scaled_train(model, optimizer, 2, unscale=True)
    stored = load_file(str(tmp_path / "step_00000001.safetensors"))
    for name in NAMES:
        assert_same_bits(stored[f"grad/{name}"], seen[(1, name, "grad")])
    assert float(stored["grad/4.bias"].abs()) < 100  # unscaled: the scale is 1024


def test_fused_grad_scaler_path_divides_by_the_scale(tmp_path: Path) -> None:
    """A fused optimizer gets SCALED gradients plus optimizer.grad_scale: the recorder divides."""
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        pytest.skip("fused Adam does not take grad_scale here")
    with Recorder(model, optimizer, tmp_path, every=1, kinds=("grad",)):
        seen = scaled_train(model, optimizer, 2, unscale=False)
    for step in (0, 1):
        scale = seen[(step, "", "scale")]
        assert scale > 1
        stored = load_file(str(tmp_path / f"step_{step:08d}.safetensors"))
        for name in NAMES:
            assert_same_bits(stored[f"grad/{name}"], seen[(step, name, "grad")] / scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_grad_scale_on_the_optimizer_is_divided_out(tmp_path: Path, dtype: torch.dtype) -> None:
    """optimizer.grad_scale as GradScaler sets it for fused optimizers (float32, shape [1]).

    Half-precision gradients are unscaled in float32, as fused optimizers do, so small values do not flush
    to zero; they are stored as F32.
    """
    model = make_model(dtype=dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    # plain SGD refuses grad_scale, so set it for the recorder's hook only: hooks run in registration order
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: setattr(opt, "grad_scale", torch.tensor([8.0]))
    )
    recorder = Recorder(model, optimizer, tmp_path, every=1, kinds=("grad",))
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: delattr(opt, "grad_scale"))
    with recorder:
        seen = train(model, optimizer, 1, dtype=dtype)
    stored = load_file(str(tmp_path / "step_00000000.safetensors"))
    for name in NAMES:
        expected = seen[(0, name, "grad")].float() / torch.tensor(8.0)
        assert stored[f"grad/{name}"].dtype == torch.float32
        assert_same_bits(stored[f"grad/{name}"], expected)
        assert not torch.equal(stored[f"grad/{name}"], seen[(0, name, "grad")])


# --- dtypes and parameters without gradients -----------------------------------------------------------


def test_bf16_model_is_stored_as_bf16_bits(tmp_path: Path) -> None:
    model = make_model(dtype=torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Recorder(model, optimizer, tmp_path, every=2):
        seen = train(model, optimizer, 3, dtype=torch.bfloat16)
    with open(tmp_path / "step_00000002.safetensors", "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {"BF16"}
    stored = load_file(str(tmp_path / "step_00000002.safetensors"))
    for name in NAMES:
        for kind in ("grad", "param", "update"):
            assert_same_bits(stored[f"{kind}/{name}"], seen[(2, name, kind)])
    assert load_run(tmp_path).get(2, "0.weight", "update").dtype == "BF16"


def test_parameters_without_gradient_are_listed_not_recorded(tmp_path: Path) -> None:
    model = make_model()
    model[1].register_parameter("unused", torch.nn.Parameter(torch.ones(3)))  # never used in forward
    model[2].requires_grad_(False)  # frozen
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with Recorder(model, optimizer, tmp_path, every=1):
        train(model, optimizer, 2)
    path = tmp_path / "step_00000001.safetensors"
    skipped = ["1.unused", "2.weight", "2.bias"]
    assert json.loads(metadata_of(path)["gradcheck.no_grad"]) == skipped
    assert set(load_file(str(path))) == {
        f"{kind}/{name}" for kind in ("grad", "param", "update") for name in NAMES if name not in skipped
    }
    assert set(load_run(tmp_path).params) == {"0.weight", "0.bias", "4.weight", "4.bias"}


# --- stats mode ----------------------------------------------------------------------------------------


def inspect_stats(runner, run_dir: Path) -> dict[tuple[str, int, str], dict]:
    """{(param, step, kind): statistics} from `gradcheck inspect --format json`."""
    result = runner.invoke(cli, ["inspect", str(run_dir), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    document = per_step(json.loads(result.stdout))
    return {
        (param["name"], row["step"], kind): row[kind]
        for param in document["params"]
        for row in param["steps"]
        for kind in ("grad", "param", "update")
        if row[kind] is not None
    }


def assert_same_stats(stats: dict, full: dict) -> None:
    assert stats.keys() == full.keys()
    for key, expected in full.items():
        actual = stats[key]
        for field in COUNT_FIELDS:
            assert actual[field] == expected[field], (key, field)
        for field in STAT_FIELDS:
            if expected[field] is None:
                assert actual[field] is None, (key, field)
            else:
                assert actual[field] == pytest.approx(expected[field], rel=1e-9, abs=0), (key, field)


def test_stats_mode_matches_full_mode(tmp_path: Path, runner) -> None:
    runs = {}
    for mode in ("full", "stats"):
        model = make_model(width=256)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        with Recorder(model, optimizer, tmp_path / mode, every=2, mode=mode):
            train(model, optimizer, 5)
        runs[mode] = inspect_stats(runner, tmp_path / mode)
    assert len(runs["full"]) == 3 * len(NAMES) * 3
    assert_same_stats(runs["stats"], runs["full"])
    for path in (tmp_path / "stats").iterdir():
        assert path.stat().st_size < 8192
        with safe_open(str(path), "pt") as handle:
            assert list(handle.keys()) == []
    full_size = sum(path.stat().st_size for path in (tmp_path / "full").iterdir())
    stats_size = sum(path.stat().st_size for path in (tmp_path / "stats").iterdir())
    # The training context (lr and module type per parameter, ~340 bytes a file here) is the same in both
    # modes and does not grow with the tensors: the summaries themselves must stay a tenth of the data.
    context_size = 0
    for path in (tmp_path / "stats").iterdir():
        with safe_open(str(path), "pt") as handle:
            context_size += len(handle.metadata().get("gradcheck.context", ""))
    assert context_size < 400 * 3
    assert stats_size - context_size < full_size / 10


def _special_values(model: torch.nn.Module) -> Callable[[int], None]:
    """Put NaN, ±Inf, ±0 and an all-NaN tensor into the gradients at step 0, before the recorder sees them."""

    def inject(step: int) -> None:
        if step:
            return
        grad = model[0].weight.grad
        grad[0, :4] = torch.tensor([math.nan, math.inf, -math.inf, -0.0])
        grad[1, :3] = 0.0
        model[4].bias.grad.fill_(math.nan)
        model[2].bias.grad[:] = torch.tensor(1e-30)  # its square underflows float32, not float64

    return inject


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("host_devices", [("cpu",), ()], ids=["writer-thread", "on-device"])
def test_stats_mode_matches_full_mode_on_special_values(
    tmp_path: Path, runner, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, host_devices: tuple
) -> None:
    """Both summary paths: CPU tensors on the writer thread, and the sync-free one meant for accelerators."""
    monkeypatch.setattr(recorder_module, "HOST_DEVICES", host_devices)
    monkeypatch.setattr(summary_module, "HOST_CHUNK", 7)  # several chunks per tensor: exercises merging
    monkeypatch.setattr(summary_module, "DEVICE_CHUNK", 7)
    runs = {}
    for mode in ("full", "stats"):
        model = make_model(dtype=dtype)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        with Recorder(model, optimizer, tmp_path / mode, every=1, mode=mode):
            train(model, optimizer, 2, before_step=_special_values(model), dtype=dtype)
        runs[mode] = inspect_stats(runner, tmp_path / mode)
    assert runs["full"][("0.weight", 0, "grad")]["nan"] == 1
    assert runs["full"][("0.weight", 0, "grad")]["inf"] == 2
    assert runs["full"][("0.weight", 0, "grad")]["zeros"] >= 4
    assert runs["full"][("4.bias", 0, "grad")]["max_abs"] is None
    assert_same_stats(runs["stats"], runs["full"])


@pytest.mark.parametrize("host_devices", [("cpu",), ()], ids=["writer-thread", "on-device"])
def test_empty_parameter_is_recorded_with_no_elements(
    tmp_path: Path, runner, monkeypatch: pytest.MonkeyPatch, host_devices: tuple
) -> None:
    monkeypatch.setattr(recorder_module, "HOST_DEVICES", host_devices)
    runs = {}
    for mode in ("full", "stats"):
        model = torch.nn.Module()
        model.register_parameter("empty", torch.nn.Parameter(torch.zeros(0, 3)))
        model.register_parameter("weight", torch.nn.Parameter(torch.ones(2, 3)))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with Recorder(model, optimizer, tmp_path / mode, every=1, mode=mode):
            (model.empty.sum() + model.weight.pow(2).sum()).backward()
            optimizer.step()
            optimizer.zero_grad()
        runs[mode] = inspect_stats(runner, tmp_path / mode)
    assert runs["full"][("empty", 0, "grad")]["count"] == 0
    assert runs["full"][("empty", 0, "grad")]["max_abs"] is None
    assert_same_stats(runs["stats"], runs["full"])


# --- writer failures -----------------------------------------------------------------------------------


class Boom(OSError):
    """The failure the fake writer raises."""


def failing_writer(monkeypatch: pytest.MonkeyPatch, fail_steps: set[int]) -> list[int]:
    """Make write_snapshot raise Boom for `fail_steps`; returns the steps written successfully."""
    real = recorder_module.write_snapshot
    written: list[int] = []

    def write(run_dir, step, tensors, **kwargs):
        if step in fail_steps:
            raise Boom(f"disk on fire at {step}")
        written.append(step)
        return real(run_dir, step, tensors, **kwargs)

    monkeypatch.setattr(recorder_module, "write_snapshot", write)
    return written


def test_writer_error_surfaces_at_a_later_recorded_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    failing_writer(monkeypatch, {0})
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    recorder = Recorder(model, optimizer, tmp_path, every=1)
    with pytest.raises(RecordingError) as caught:
        for _ in range(200):
            train(model, optimizer, 1)
            time.sleep(0.005)  # give the writer thread time to fail
    assert isinstance(caught.value.__cause__, Boom)
    assert "step 0" in str(caught.value)
    assert str(tmp_path) in str(caught.value)
    recorder.close()  # reported once, not again
    assert capfd.readouterr().err == ""


def test_writer_error_surfaces_at_close_and_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = failing_writer(monkeypatch, {2, 4})
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    recorder = Recorder(model, optimizer, tmp_path, every=2)
    train(model, optimizer, 3)
    with pytest.raises(RecordingError, match="step 2") as caught:
        recorder.flush()
    assert isinstance(caught.value.__cause__, Boom)
    train(model, optimizer, 2)
    with pytest.raises(RecordingError, match="step 4") as caught:
        recorder.close()
    assert isinstance(caught.value.__cause__, Boom)
    assert written == [0]
    recorder.close()


def test_writer_error_inside_with_block_raises_on_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_writer(monkeypatch, {0})
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(RecordingError) as caught, Recorder(model, optimizer, tmp_path, every=5):
        train(model, optimizer, 1)
    assert isinstance(caught.value.__cause__, Boom)


def test_existing_step_is_an_error_unless_overwrite(tmp_path: Path) -> None:
    def record(overwrite: bool) -> None:
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        with Recorder(model, optimizer, tmp_path, every=1, overwrite=overwrite):
            train(model, optimizer, 1)

    record(False)
    with pytest.raises(RecordingError, match="already exists"):
        record(False)
    record(True)


def test_fp16_gradients_are_unscaled_without_underflow(tmp_path: Path) -> None:
    """A small fp16 gradient divided by 65536 in fp16 would be 0; in float32 it keeps its value."""
    model = torch.nn.Linear(2, 1, bias=False).half()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: setattr(opt, "grad_scale", torch.tensor([65536.0]))
    )
    recorder = Recorder(model, optimizer, tmp_path, every=1, kinds=("grad",))
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: delattr(opt, "grad_scale"))
    model.weight.grad = torch.full((1, 2), 2.0**-10, dtype=torch.float16)  # a scaled gradient of 2**-26
    with recorder:
        optimizer.step()
    stored = load_file(str(tmp_path / "step_00000000.safetensors"))["grad/weight"]
    assert stored.dtype == torch.float32 and torch.all(stored == 2.0**-26)
