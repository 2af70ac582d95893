"""Where each setting comes from, and config mistakes that would otherwise be silent.

`gradcheck config` prints the settled configuration with the source of every value; the warnings catch a
misspelt `[tool.gradchek]` table (ignored by the search, so the defaults apply) and an override glob that
matches no parameter of the run (its thresholds never apply). Pure: TOML in, plain data out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import Config, _read_toml, find_pyproject
from .errors import ConfigError
from .thresholds import Thresholds

_NAME = "gradcheck"


@dataclass(frozen=True)
class Setting:
    """One settled value and where it came from: `default`, a file path, or a command-line option."""

    key: str
    value: str
    source: str


def config_file(explicit: Path | None, start: Path) -> Path | None:
    """The file the settings come from: --config, else the nearest pyproject.toml with [tool.gradcheck]."""
    return explicit if explicit is not None else find_pyproject(start.resolve())


def settings(
    config: Config,
    file: Path | None,
    *,
    cli_thresholds: Mapping[str, float],
    cli_ignore: Sequence[str],
    cli_fail_on: str | None,
) -> list[Setting]:
    """Every setting of `config` with its source; `cli_*` are what the command line set."""
    table = _table(file) if file is not None else {}
    in_file = table.get("thresholds", {}) if isinstance(table.get("thresholds", {}), Mapping) else {}
    where = str(file) if file is not None else "default"
    fail_source = "--fail-on" if cli_fail_on else (where if "fail-on" in table else "default")
    rows = [Setting("fail-on", config.fail_on, fail_source)]
    file_ignore = set(
        table.get("ignore", []) if isinstance(table.get("ignore"), list) else [table.get("ignore")]
    )
    ignored = sorted(config.ignore)
    ignore_sources = sorted(
        {"--ignore" for c in ignored if c in cli_ignore} | {where for c in ignored if c in file_ignore}
    )
    rows.append(Setting("ignore", ", ".join(ignored) or "(none)", " and ".join(ignore_sources) or "default"))
    for f in fields(Thresholds):
        key = f.name.replace("_", "-")
        value = getattr(config.thresholds, f.name)
        source = "--threshold" if f.name in cli_thresholds else where if key in in_file else "default"
        rows.append(Setting(f"thresholds.{key}", f"{value:g}", source))
    for i, override in enumerate(config.overrides):
        changed = [f"{k.replace('_', '-')}={v:g}" for k, v in override.thresholds.items()]
        changed += [f"ignore {c}" for c in sorted(override.ignore)]
        rows.append(Setting(f"overrides[{i}] {', '.join(override.params)}", "; ".join(changed) or "-", where))
    return rows


def near_miss_sections(start: Path) -> list[str]:
    """`FILE: [tool.gradchek] ...` for each pyproject.toml from `start` upwards with a [tool.*] table one edit
    away from `gradcheck` (a typo the search passes over silently)."""
    found = []
    for folder in (start.resolve(), *start.resolve().parents):
        candidate = folder / "pyproject.toml"
        for name in _tool_names(candidate) if candidate.is_file() else ():
            if name != _NAME and one_edit_away(name, _NAME):
                found.append(f"{candidate}: [tool.{name}] is ignored; did you mean [tool.{_NAME}]?")
    return found


def unmatched_globs(config: Config, params: Sequence[str]) -> list[str]:
    """Override globs that match no parameter of the run: their settings never apply."""
    unmatched = []
    for i, override in enumerate(config.overrides):
        for pattern in override.params:
            probe = type(override)(params=(pattern,))
            if not any(probe.matches(param) for param in params):
                where = config.source or "config"
                unmatched.append(
                    f"{where}: overrides[{i}] params {pattern!r} matches no parameter of the run"
                )
    return unmatched


def one_edit_away(a: str, b: str) -> bool:
    """Whether `a` becomes `b` by one insertion, deletion, substitution or swap of neighbours."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        swapped = (
            len(diffs) == 2
            and diffs[1] == diffs[0] + 1
            and a[diffs[0]] == b[diffs[1]]
            and a[diffs[1]] == b[diffs[0]]
        )
        return len(diffs) == 1 or swapped
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def _tool_names(file: Path) -> list[str]:
    """The [tool.*] table names of a TOML file; none when it cannot be read (the search reports that)."""
    try:
        tool = _read_toml(file).get("tool", {})
    except ConfigError:
        return []
    return [str(name) for name in tool] if isinstance(tool, Mapping) else []


def _table(file: Path) -> Mapping[str, Any]:
    data = _read_toml(file)
    tool = data.get("tool", {})
    table = tool.get(_NAME) if isinstance(tool, Mapping) else None
    if table is None:
        return data if file.name != "pyproject.toml" else {}
    return table if isinstance(table, Mapping) else {}
