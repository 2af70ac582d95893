"""Classes 7 and 8: a shard bomb costs what the shards present cost; an unreadable rank folder is reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from st_files import write_arrays

from gradcheck.analysis import runs
from gradcheck.analysis.shards import MAX_SHARDS
from gradcheck.cli.main import cli


def test_a_shard_count_of_2_to_the_20_in_thousands_of_tensors_is_cheap(tmp_path: Path) -> None:
    """Before: the merge listed 2^20 indices per tensor (hours for 3,000 tensors); now it looks at one."""
    names = [f"layer{i}.w" for i in range(3000)]
    shards = {
        name: {"global": name, "shape": [MAX_SHARDS * 2], "index": 0, "count": MAX_SHARDS} for name in names
    }
    tensors = {f"grad/{name}": ("F32", np.ones(2, np.float32)) for name in names}
    (tmp_path / "rank00000").mkdir()
    write_arrays(
        tmp_path / "rank00000" / "step_1.safetensors",
        tensors,
        {"gradcheck.shards": json.dumps(shards), "step": "1"},
    )
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"])
    assert result.exit_code == 2  # nothing whole is left
    reasons = [
        note["reason"] for note in json.loads(result.stdout or "{}").get("unreadable", [])
    ] or result.stderr
    assert (
        f"shard(s) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and {MAX_SHARDS - 11} more of {MAX_SHARDS} missing"
        in str(reasons)
    )


@pytest.mark.parametrize(
    ("shard", "problem"),
    [
        ({"shape": [2], "index": 0, "count": MAX_SHARDS + 1}, "is not a valid shard position"),
        ({"shape": [2**62, 8], "index": 0, "count": 1}, "is too large (over 2^63 elements)"),
        ({"shape": [10**40], "index": 0, "count": 1}, "is not a list of non-negative integers"),
    ],
)
def test_impossible_shard_descriptions_are_a_bad_file(tmp_path: Path, shard: dict, problem: str) -> None:
    write_arrays(
        tmp_path / "step_1.safetensors",
        {"grad/w": ("F32", np.ones(2, np.float32))},
        {"gradcheck.shards": json.dumps({"w": shard}), "step": "1"},
    )
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and problem in result.stderr and "Traceback" not in result.stderr


def test_an_unreadable_rank_folder_is_warned_and_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rank in range(2):
        (tmp_path / f"rank{rank:05d}").mkdir()
        write_arrays(
            tmp_path / f"rank{rank:05d}" / "step_1.safetensors",
            {"grad/w": ("F32", np.full(4, 0.01, np.float32))},
            {"step": "1"},
        )
    locked = tmp_path / "rank00001"
    real = os.listdir

    def listdir(path: object = ".") -> list[str]:  # chmod 000 does not stop root, so refuse here
        if Path(os.fspath(path)) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(runs.os, "listdir", listdir)
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0
    assert (
        result.stderr.strip()
        == f"gradcheck: warning: {locked}: rank folder cannot be listed: permission denied"
    )
    assert json.loads(result.stdout)["unreadable"] == [
        {"file": str(locked), "reason": "rank folder cannot be listed: permission denied"}
    ]
    strict = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--strict"])
    assert strict.exit_code == 2


def test_all_rank_folders_unreadable_is_no_readable_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rank00000").mkdir()
    real = os.listdir
    monkeypatch.setattr(
        runs.os,
        "listdir",
        lambda p=".": (
            (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
            if Path(p).name.startswith("rank")
            else real(p)
        ),
    )
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "rank folder cannot be listed" in result.stderr
