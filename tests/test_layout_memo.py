"""Files sharing one header layout reuse the last file's plans (issue 14), and read exactly as alone."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from st_files import packed_header, write

from gradcheck.analysis import header as header_module
from gradcheck.analysis import reader
from gradcheck.analysis.errors import UnreadableFileError
from gradcheck.analysis.reader import FileScan, scan_file
from gradcheck.analysis.scanning import ScanOptions, scan_files
from gradcheck.analysis.units import BitmapList, pack_bitmaps

TENSORS = [
    ("grad/a", "F32", (16, 8)),
    ("grad/b", "F32", (8,)),
    ("grad/c", "F16", (4, 4)),
    ("grad/d", "F32", (1, 4)),
]


def _forget() -> None:
    header_module._LAST_LAYOUT.clear()
    reader._LAST_PLANS.clear()


def _alone(path: str) -> FileScan | str:
    _forget()
    try:
        return scan_file(path)
    except UnreadableFileError as e:
        return str(e)


def _variants() -> dict[str, Any]:
    """Edits of the shared header: each changes the layout (or its JSON types) but not the data size."""
    base, _ = packed_header(TENSORS)

    def edit(change: Any) -> dict[str, Any]:
        header = copy.deepcopy(base)
        change(header)
        return header

    def swap(h: dict[str, Any]) -> None:  # a and c trade places in the data section
        a, c = h["grad/a"]["data_offsets"], h["grad/c"]["data_offsets"]
        h["grad/c"]["data_offsets"] = [a[0], a[0] + 32]
        h["grad/b"]["data_offsets"] = [a[0] + 32, a[0] + 64]
        h["grad/a"]["data_offsets"] = [a[0] + 64, c[1]]

    return {
        "shape": edit(lambda h: h["grad/a"].update(shape=[8, 16])),
        "dtype": edit(lambda h: h["grad/c"].update(dtype="BF16")),
        "offsets": edit(swap),
        "float": edit(lambda h: h["grad/a"].update(shape=[16, 8.0])),  # equal as a dict, not valid
        "bool": edit(lambda h: h["grad/d"].update(shape=[True, 4])),  # True == 1, not valid
        "same": base,
    }


def make_run(root: Path) -> list[str]:
    """A shared layout with other data and metadata per file, each variant after a file of the shared one."""
    root.mkdir()
    rng = np.random.default_rng(3)
    base, size = packed_header(TENSORS)
    paths: list[str] = []

    def add(name: str, header: dict[str, Any], step: int) -> Path:
        data = rng.standard_normal(size // 4).astype(np.float32)
        data[rng.random(data.size) < 0.3] = 0  # some dead units
        path = write(
            root / f"{name}.safetensors", {"__metadata__": {"step": str(step)}, **header}, data.tobytes()
        )
        paths.append(str(path))
        return path

    for step, (name, header) in enumerate(_variants().items()):
        add(f"s{step:02d}_base", base, 2 * step)
        add(f"s{step:02d}_{name}", header, 2 * step + 1)
    truncated = add("s90_base", base, 90)
    add("s91_truncated", base, 91).write_bytes(truncated.read_bytes()[:-4])
    add("s92_base", base, 92)
    return paths


def test_a_run_sharing_a_layout_reads_as_each_file_alone(tmp_path: Path) -> None:
    paths = make_run(tmp_path / "run")
    _forget()
    together = [
        str(r) if isinstance(r, UnreadableFileError) else r for _, r in scan_files(paths, ScanOptions(jobs=1))
    ]
    alone = [_alone(path) for path in paths]
    assert together == alone
    scans = dict(zip(paths, together, strict=True))
    names = {Path(p).stem: p for p in paths}
    for bad in ("s03_float", "s04_bool", "s91_truncated"):
        assert isinstance(scans[names[bad]], str), bad
    first, same, last = (scans[names[n]] for n in ("s05_base", "s05_same", "s92_base"))
    assert isinstance(first, FileScan) and isinstance(same, FileScan) and isinstance(last, FileScan)
    assert same.header.entries is first.header.entries  # the memo was used for the next file
    assert last.header.entries is scans[names["s90_base"]].header.entries  # a truncated file between
    assert first.header.metadata != last.header.metadata
    assert first.stats != last.stats  # each file's own numbers
    for name in ("s00_shape", "s01_dtype", "s02_offsets"):
        scan = scans[names[name]]
        assert isinstance(scan, FileScan) and scan.header.entries != first.header.entries


def test_bitmaps_read_lazily_equal_the_list() -> None:
    bitmaps = [5, None, 0, 1 << 70, 3]
    items = BitmapList(pack_bitmaps(bitmaps[:4], [3, 0, 1, 71]))
    items.extend((3,))
    items.extend(())
    assert list(items) == bitmaps and len(items) == 5
    assert items[-2] == 1 << 70 and items[1:4] == bitmaps[1:4]
    copy_of = BitmapList(items)
    copy_of.extend([7])
    assert list(copy_of) == [*bitmaps, 7] and len(items) == 5
    with pytest.raises(IndexError):
        items[5]
