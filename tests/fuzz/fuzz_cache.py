"""Coverage-guided fuzzing of the stats-cache entry decoder with atheris (libFuzzer).

Each input is an entry payload (the JSON after the checksum line). The harness prepends the right sha256, so
mutants get past the checksum, and decodes it twice: under a fixed key and under the key the payload itself
claims, so mutants of the scan get past the key comparison. A decoded scan then goes through the analysis
(`pieces_of_scan`, the derived numbers of each tensor). `decode_entry` must answer None or a FileScan; a
GradcheckError from the analysis is an expected answer; anything else is a crash. See README.md.

    python tests/fuzz/fuzz_cache.py --seeds seeds_cache
    FUZZ_ARTIFACTS=crashes python tests/fuzz/fuzz_cache.py -max_total_time=660 corpus_cache seeds_cache
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["gradcheck"]):
    from gradcheck.analysis.cache import StatsCache, decode_entry, file_identity
    from gradcheck.analysis.errors import GradcheckError
    from gradcheck.analysis.reader import scan_file
    from gradcheck.analysis.runs import pieces_of_scan

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fuzz_common import call, limit_memory
from st_files import write_arrays

KEY = {"format": 3, "version": "0.1.0", "path": "/run/step_1.safetensors", "identity": [1, 2, 96, 4, 5]}


def _use(scan: object) -> None:
    """What the analysis does with a cached scan: make pieces, read every derived number."""
    for piece in pieces_of_scan(scan, 1):  # type: ignore[arg-type]
        stats = piece.stats
        _ = (stats.norm, stats.rms, stats.mean_abs, stats.log10_norm, stats.min_abs, stats.max_abs)
        stats.merge(stats)


def test_one_input(data: bytes) -> None:
    raw = hashlib.sha256(data).hexdigest().encode("ascii") + b"\n" + data
    call("decode_fixed", data, (), decode_entry, raw, KEY)
    try:
        claimed = json.loads(data)
    except (ValueError, RecursionError):
        return
    if isinstance(claimed, dict):
        claimed.pop("scan", None)
        scan = call("decode_claimed", data, (), decode_entry, raw, claimed)
        if scan is not None:
            call("use", data, (GradcheckError,), _use, scan)


_FLOATS = (0.0, -0.0, -1.0, 1.0, 5e-324, 1e308, float("inf"), float("-inf"), float("nan"), 3.0, 2.0**-1074)
_INTS = (0, 1, 2, 3, 7, 95, 96, 97, 2**63 - 1, 2**63, 2**64 - 1)


def _mutate_column(text: str, rng: random.Random, floats: bool) -> str:
    """Set one element of a base64 column to a boundary value, or drop or repeat one."""
    raw = bytearray(base64.b64decode(text))
    count = len(raw) // 8
    roll = rng.random()
    if count and roll < 0.7:
        at = rng.randrange(count) * 8
        value = struct.pack("<d", rng.choice(_FLOATS)) if floats else struct.pack("<Q", rng.choice(_INTS))
        raw[at : at + 8] = value
    elif count and roll < 0.85:
        del raw[-8:]
    else:
        raw += raw[-8:] if count else bytes(8)
    return base64.b64encode(bytes(raw)).decode("ascii")


def _mutate_entry(entry: dict, rng: random.Random) -> None:
    """A structure-aware edit of a decoded entry: a column element, a shape, a dtype, a name."""
    scan = entry.get("scan")
    if not isinstance(scan, dict):
        return
    stats = scan.get("stats") if isinstance(scan.get("stats"), dict) else {}
    columns = [(scan, k, False) for k in ("begins", "ends")]
    columns += [
        (stats, k, k in ("abs_min", "abs_max", "abs_sum", "sq_sum", "scale")) for k in stats if k != "names"
    ]
    roll = rng.random()
    holders = [(d, k, f) for d, k, f in columns if isinstance(d.get(k), str)]
    if roll < 0.6 and holders:
        holder, key, floats = rng.choice(holders)
        holder[key] = _mutate_column(holder[key], rng, floats)
    elif roll < 0.75 and isinstance(scan.get("shapes"), list) and scan["shapes"]:
        shape = rng.choice(scan["shapes"])
        if isinstance(shape, list):
            shape.append(rng.choice((0, 1, 2, 2**40)))
    elif roll < 0.9 and isinstance(scan.get("dtypes"), list) and scan["dtypes"]:
        scan["dtypes"][rng.randrange(len(scan["dtypes"]))] = rng.choice(
            ("F32", "F64", "I32", "BF16", "F4", "X")
        )
    elif isinstance(scan.get("names"), list) and scan["names"]:
        scan["names"][rng.randrange(len(scan["names"]))] = rng.choice(("grad/w", "w", "", "param/s"))


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """Half the time a structure-aware edit of the decoded entry, else libFuzzer's byte mutation."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        try:
            entry = json.loads(data)
        except (ValueError, RecursionError):
            entry = None
        if isinstance(entry, dict):
            try:
                for _ in range(rng.randint(1, 3)):
                    _mutate_entry(entry, rng)
                return json.dumps(entry, separators=(",", ":")).encode()[:max_size]
            except (ValueError, TypeError, struct.error):
                pass
    return atheris.Mutate(data, max_size)


def write_seeds(folder: Path) -> None:
    """Real entries: float, skipped, NaN/Inf, scaled F64, empty and scalar tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    cache = StatsCache(work / "cache")
    files = {
        "floats": {"grad/a": ("F64", np.array([0.0, -1.5, np.nan, np.inf, 1e-8]))},
        "scaled": {"grad/t": ("F64", np.full(3, 1e-170)), "grad/h": ("F64", np.full(2, 1e308))},
        "mixed": {
            "grad/w": ("F32", np.ones((2, 3), np.float32)),
            "param/i": ("I32", np.arange(3, dtype=np.int32)),
            "param/s": ("F64", np.array(2.0)),
            "param/z": ("F32", np.zeros((0, 3), np.float32)),
        },
    }
    for name, tensors in files.items():
        path = work / f"{name}_1.safetensors"
        write_arrays(path, tensors, {"step": "1", "order": '["w"]'})
        identity = file_identity(path.stat())
        cache.put(str(path), identity, scan_file(path))
        raw = cache.entry_path(str(path)).read_bytes()
        (folder / f"{name}.json").write_bytes(raw[65:])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(Path(sys.argv[2]))
        return
    limit_memory()
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
