"""Two gloo processes on CPU with FSDP2 (`fully_shard`): per-rank folders, shard metadata, merged statistics."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors import safe_open
from safetensors.torch import load_file

from gradcheck.analysis.stats import TensorStats, summarize_array
from gradcheck.recording.snapshot import stats_from_entry

WORLD = 2
STEPS = 4
EVERY = 2
SHARDED = ["0.weight", "0.bias", "2.weight", "2.bias"]  # 2.* has 1 row: rank 1 holds an empty shard
REPLICATED = ["3.weight", "3.bias"]
GLOBAL_SHAPES = {"0.weight": [7, 5], "0.bias": [7], "2.weight": [1, 7], "2.bias": [1]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, root: str) -> None:
    """Train a half-sharded model on one rank with three recorders attached; save the full gradients."""
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from gradcheck.recording.torch import Recorder

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1), torch.nn.Linear(1, 1)
        )
        fully_shard(model[0], mesh=mesh)
        fully_shard(model[2], mesh=mesh)  # model[3] stays a plain, replicated module
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        full_grads = {}
        with (
            Recorder(model, optimizer, f"{root}/full", every=EVERY),
            Recorder(model, optimizer, f"{root}/stats", every=EVERY, mode="stats"),
            Recorder(model, optimizer, f"{root}/all", every=EVERY, kinds=("grad",), all_ranks=True),
        ):
            for step in range(STEPS):
                x = torch.randn(8, 5, generator=torch.Generator().manual_seed(100 * step + rank))
                model(x).pow(2).mean().backward()
                if step % EVERY == 0:
                    for name, p in model.named_parameters():
                        grad = p.grad.full_tensor() if name in SHARDED else p.grad  # all-gathers
                        full_grads[f"{step}/{name}"] = grad.detach().clone()
                optimizer.step()
                optimizer.zero_grad()
        if rank == 0:
            torch.save(full_grads, f"{root}/full_grads.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("FSDP2 fully_shard is not available")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(root)), nprocs=WORLD, join=True)
    return root


def _header(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    return metadata, load_file(str(path))


def test_each_rank_writes_its_own_folder(run_root: Path) -> None:
    for rank in range(WORLD):
        folder = run_root / "full" / f"rank{rank:05d}"
        assert sorted(p.name for p in folder.iterdir()) == [
            f"step_{s:08d}.safetensors" for s in range(0, STEPS, EVERY)
        ]
        for step in range(0, STEPS, EVERY):
            metadata, tensors = _header(folder / f"step_{step:08d}.safetensors")
            assert metadata["gradcheck.rank"] == str(rank)
            assert metadata["gradcheck.world_size"] == str(WORLD)
            assert metadata["step"] == str(step)
            shards = json.loads(metadata["gradcheck.shards"])
            assert shards == {
                name: {"global": name, "shape": GLOBAL_SHAPES[name], "index": rank, "count": WORLD}
                for name in SHARDED
            }
            expected = SHARDED + (REPLICATED if rank == 0 else [])
            assert set(tensors) == {
                f"{kind}/{name}" for kind in ("grad", "param", "update") for name in expected
            }
    assert not (run_root / "full" / "rank00000.safetensors").exists()


def test_local_shards_put_together_are_the_full_gradient(run_root: Path) -> None:
    full_grads = torch.load(run_root / "full_grads.pt")
    for step in range(0, STEPS, EVERY):
        parts = [
            load_file(str(run_root / "full" / f"rank{r:05d}" / f"step_{step:08d}.safetensors"))
            for r in range(WORLD)
        ]
        assert parts[1]["grad/2.weight"].shape == (0, 7)  # uneven sharding: the last shard is empty
        for name in SHARDED:
            shards = [part[f"grad/{name}"] for part in parts]
            assert torch.equal(torch.cat(shards), full_grads[f"{step}/{name}"])
            merged = TensorStats()
            for shard in shards:
                merged = merged.merge(summarize_array(shard.numpy()))
            whole = summarize_array(full_grads[f"{step}/{name}"].numpy())
            _assert_stats_close(merged, whole)
        for name in REPLICATED:
            assert torch.equal(parts[0][f"grad/{name}"], full_grads[f"{step}/{name}"])


def test_stats_mode_shards_merge_to_the_full_statistics(run_root: Path) -> None:
    full_grads = torch.load(run_root / "full_grads.pt")
    for step in range(0, STEPS, EVERY):
        summaries = []
        for rank in range(WORLD):
            metadata, tensors = _header(
                run_root / "stats" / f"rank{rank:05d}" / f"step_{step:08d}.safetensors"
            )
            assert tensors == {}
            assert json.loads(metadata["gradcheck.shards"]).keys() == set(SHARDED)
            summaries.append(json.loads(metadata["gradcheck.stats"]))
        assert not any(key.endswith(tuple(REPLICATED)) for key in summaries[1])
        for name in SHARDED:
            merged = TensorStats()
            for summary in summaries:
                merged = merged.merge(stats_from_entry(summary[f"grad/{name}"]))
            _assert_stats_close(merged, summarize_array(full_grads[f"{step}/{name}"].numpy()))
        assert summaries[1]["grad/2.weight"]["count"] == 0


def test_all_ranks_writes_replicated_parameters_everywhere(run_root: Path) -> None:
    for rank in range(WORLD):
        tensors = load_file(str(run_root / "all" / f"rank{rank:05d}" / "step_00000002.safetensors"))
        assert set(tensors) == {f"grad/{name}" for name in SHARDED + REPLICATED}


def _assert_stats_close(actual: TensorStats, expected: TensorStats) -> None:
    assert (actual.count, actual.nan, actual.inf, actual.zeros) == (
        expected.count,
        expected.nan,
        expected.inf,
        expected.zeros,
    )
    assert (actual.abs_min, actual.abs_max) == (expected.abs_min, expected.abs_max)
    np.testing.assert_allclose(
        [actual.abs_sum, actual.sq_sum], [expected.abs_sum, expected.sq_sum], rtol=1e-12
    )


def test_context_under_fsdp2(run_root: Path) -> None:
    """Learning rates, module types and micro-batches per rank; no pre-clip norm under several processes."""
    from gradcheck.analysis.context import CONTEXT_KEY, parse_context

    for rank in range(WORLD):
        metadata, tensors = _header(run_root / "full" / f"rank{rank:05d}" / f"step_{EVERY:08d}.safetensors")
        context, problems = parse_context(metadata[CONTEXT_KEY])
        names = {key.split("/", 1)[1] for key in tensors}
        assert problems == [] and context.optimizer == "Adam" and context.framework == "torch"
        assert context.lr == dict.fromkeys(names, 1e-2)
        assert set(context.modules) == names
        assert set(context.modules.values()) == {"Linear"}  # not FSDP2's swapped-in FSDPLinear
        assert context.grad_norm is None and context.clip_coef is None
        assert context.accumulation == 1  # the post-accumulate-grad hooks fire on FSDP2's sharded parameters
