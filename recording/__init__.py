"""Recording gradient snapshots from training code: writes runs that `gradcheck inspect` reads."""

from .snapshot import (
    HostTensor,
    RecordingError,
    flatten,
    host_tensor,
    stats_from_entry,
    summarize_host,
    summary_entry,
)
from .writer import FORMAT_VERSION, MODES, STATS_KEY, save_snapshot, step_file_name, write_snapshot

__all__ = [
    "FORMAT_VERSION",
    "MODES",
    "STATS_KEY",
    "HostTensor",
    "RecordingError",
    "flatten",
    "host_tensor",
    "save_snapshot",
    "stats_from_entry",
    "step_file_name",
    "summarize_host",
    "summary_entry",
    "write_snapshot",
]
