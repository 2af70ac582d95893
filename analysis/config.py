"""Configuration: defaults < `[tool.gradcheck]` in pyproject.toml (or a --config file) < command-line options."""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .atomic import read_regular
from .errors import ConfigError
from .thresholds import THRESHOLD_KEYS, Thresholds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Checks judged per parameter from its gradient/param/update tensors (analysis/checks.py).
PARAM_CHECK_IDS = (
    "nonfinite",
    "vanishing",
    "exploding",
    "exploding-relative",
    "spike",
    "growth",
    "shrink",
    "dead",
    "dead-units",
    "update-ratio-high",
    "update-ratio-low",
)
# Checks on the recorded loss and forward activations (analysis/signal_checks.py, issue #16). Their findings name
# a module or `loss`, not a parameter; `dead-activations` is the activation-based dying-ReLU check (it was
# called `dead-units` like the gradient-based one before both could be told apart in --ignore).
SIGNAL_CHECK_IDS = ("nan-origin", "loss-nonfinite", "saturation", "dead-activations", "loss-stuck")
CHECK_IDS = PARAM_CHECK_IDS + SIGNAL_CHECK_IDS
FAIL_LEVELS = ("error", "warning", "never")
_TOP_KEYS = frozenset({"fail-on", "ignore", "thresholds", "overrides"})
_OVERRIDE_KEYS = frozenset({"params", "ignore", "thresholds"})
# Bounds on magnitudes and factors: zero or negative values make no sense (and log10 would fail).
_POSITIVE = frozenset(
    {
        "vanishing_mean",
        "vanishing_relative",
        "exploding_mean",
        "exploding_relative",
        "spike_factor",
        "growth_factor",
        "shrink_factor",
        "dead_units",
        "saturation_share",
        "dead_activations_share",
        "loss_stuck_drop",
    }
)
# Factors that must sit on one side of 1: growth multiplies the norm, shrinking divides it.
_ABOVE_ONE = frozenset({"growth_factor"})
_BELOW_ONE = frozenset({"shrink_factor", "loss_stuck_drop"})  # loss-stuck-drop: a fraction of the loss
# fractions: of a layer's units, of an output's values or units
_AT_MOST_ONE = frozenset({"dead_units", "saturation_share", "dead_activations_share"})
_ORDERED_PAIRS = (("update_ratio_low", "update_ratio_high"),)


@dataclass(frozen=True)
class Override:
    """Thresholds and ignored checks for the parameters matching any of the globs."""

    params: tuple[str, ...]
    ignore: frozenset[str] = frozenset()
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def matches(self, param: str) -> bool:
        """Whether this override applies to `param` (shell-style globs, case-sensitive)."""
        return any(fnmatch.fnmatchcase(param, pattern) for pattern in self.params)


@dataclass(frozen=True)
class Config:
    """Settled configuration of one inspection."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    ignore: frozenset[str] = frozenset()
    overrides: tuple[Override, ...] = ()
    fail_on: str = "error"
    source: str | None = None
    pinned: Mapping[str, float] = field(default_factory=dict)  # set on the command line: beats overrides

    def for_param(self, param: str) -> tuple[Thresholds, frozenset[str]]:
        """Thresholds and ignored checks for one parameter, later overrides winning."""
        thresholds, ignore = self.thresholds, self.ignore
        for override in self.overrides:
            if override.matches(param):
                thresholds = replace(thresholds, **override.thresholds)
                ignore = ignore | override.ignore
        thresholds = replace(thresholds, **self.pinned)
        _check_order(thresholds, f"{self.source or 'config'}: thresholds for {param!r} after overrides")
        return thresholds, ignore


MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; this bounds what /dev/zero could make us read


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml with a [tool.gradcheck] table, from `start` upwards."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _gradcheck_table(_read_toml(candidate), candidate) is not None:
            return candidate
    return None


def load_config(path: Path | None = None, *, start: Path | None = None) -> Config:
    """Config from `path` (a TOML file with [tool.gradcheck] or top-level keys), else the nearest pyproject."""
    if path is None:
        path = find_pyproject((start or Path.cwd()).resolve())
        if path is None:
            return Config()
    data = _read_toml(path)
    table = _gradcheck_table(data, path)
    if table is None:
        table = data if path.name != "pyproject.toml" else {}
    return config_from_mapping(table, source=str(path))


def _gradcheck_table(data: Mapping[str, Any], path: Path) -> Mapping[str, Any] | None:
    """The [tool.gradcheck] table of a TOML document, None when absent; an error when it is not a table."""
    tool = data.get("tool", {})
    table = tool.get("gradcheck") if isinstance(tool, Mapping) else None
    if table is not None and not isinstance(table, Mapping):
        raise ConfigError(f"{path}: [tool.gradcheck] must be a table, got {table!r}")
    return table


def config_from_mapping(table: Mapping[str, Any], *, source: str = "config") -> Config:
    """Validate a [tool.gradcheck] table and build the Config it describes."""
    _reject_unknown(table, _TOP_KEYS, source, "[tool.gradcheck]")
    config = Config(source=source)
    if "fail-on" in table:
        config = replace(config, fail_on=parse_fail_on(table["fail-on"], f"{source}: fail-on"))
    config = replace(config, ignore=_parse_checks(table.get("ignore", []), f"{source}: ignore"))
    thresholds = _parse_thresholds(table.get("thresholds", {}), f"{source}: thresholds")
    config = with_thresholds(config, thresholds, source)
    overrides = table.get("overrides", [])
    if not isinstance(overrides, list):
        raise ConfigError(f"{source}: overrides must be an array of tables ([[tool.gradcheck.overrides]])")
    parsed = tuple(_parse_override(item, f"{source}: overrides[{i}]") for i, item in enumerate(overrides))
    for i, override in enumerate(parsed):
        _check_order(replace(config.thresholds, **override.thresholds), f"{source}: overrides[{i}]")
    return replace(config, overrides=parsed)


def with_thresholds(
    config: Config, values: Mapping[str, float], where: str = "options", *, pin: bool = False
) -> Config:
    """Config with some thresholds replaced; `pin` makes them beat per-parameter overrides (command line)."""
    thresholds = replace(config.thresholds, **values)
    _check_order(thresholds, where)
    pinned = {**config.pinned, **values} if pin else config.pinned
    return replace(config, thresholds=thresholds, pinned=pinned)


def _check_order(thresholds: Thresholds, where: str) -> None:
    for low, high in _ORDERED_PAIRS:
        if getattr(thresholds, low) > getattr(thresholds, high):
            raise ConfigError(
                f"{where}: {low.replace('_', '-')} ({getattr(thresholds, low)}) is above "
                f"{high.replace('_', '-')} ({getattr(thresholds, high)})"
            )


def parse_threshold_option(text: str) -> tuple[str, float]:
    """Parse a `name=value` command-line threshold into (field name, value)."""
    key, equals, value = text.partition("=")
    if not equals:
        raise ConfigError(f"threshold {text!r}: expected NAME=VALUE, e.g. vanishing-mean=1e-8")
    return next(iter(_parse_thresholds({key.strip(): value.strip()}, "--threshold").items()))


def parse_fail_on(value: object, where: str) -> str:
    """Check a fail-on level."""
    if value not in FAIL_LEVELS:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(FAIL_LEVELS)}")
    return str(value)


def _parse_override(item: object, where: str) -> Override:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: must be a table")
    _reject_unknown(item, _OVERRIDE_KEYS, where, "an override")
    params = item.get("params")
    if isinstance(params, str):
        params = [params]
    if not params or not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        raise ConfigError(f'{where}: params must be a glob or a list of globs, e.g. params = ["*.bias"]')
    return Override(
        params=tuple(params),
        ignore=_parse_checks(item.get("ignore", []), f"{where}: ignore"),
        thresholds=_parse_thresholds(item.get("thresholds", {}), f"{where}: thresholds"),
    )


def _parse_checks(value: object, where: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of check ids")
    unknown = [v for v in value if v not in CHECK_IDS]
    if unknown:
        raise ConfigError(f"{where}: unknown check {unknown[0]!r} (known: {', '.join(CHECK_IDS)})")
    return frozenset(value)


def _parse_thresholds(value: object, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a table of name = number")
    _reject_unknown(value, frozenset(THRESHOLD_KEYS), where, "thresholds")
    parsed: dict[str, float] = {}
    for key, raw in value.items():
        name = THRESHOLD_KEYS[key]
        is_int = isinstance(getattr(Thresholds(), name), int)
        parsed[name] = _number(raw, f"{where}: {key}", integer=is_int)
        if name in _POSITIVE and parsed[name] <= 0:
            raise ConfigError(f"{where}: {key} must be above 0, got {raw!r}")
        if name in _ABOVE_ONE and parsed[name] <= 1:
            raise ConfigError(f"{where}: {key} must be above 1, got {raw!r}")
        if name in _BELOW_ONE and parsed[name] >= 1:
            raise ConfigError(f"{where}: {key} must be below 1, got {raw!r}")
        if name in _AT_MOST_ONE and parsed[name] > 1:
            raise ConfigError(f"{where}: {key} must be at most 1, got {raw!r}")
    return parsed


def _number(raw: object, where: str, *, integer: bool) -> float | int:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {raw!r}")
    try:
        number = float(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {_shorten(repr(raw))}") from None
    except OverflowError:  # a 400-digit integer
        raise ConfigError(f"{where}: {_shorten(repr(raw))} is not a finite number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {_shorten(repr(raw))} is not a finite number")
    if not integer:
        return number
    if number != int(number) or number < 1:
        raise ConfigError(f"{where}: expected a whole number of at least 1, got {raw!r}")
    return int(number)


def _shorten(text: str, keep: int = 60) -> str:
    """A value from a file or the command line, cut so that one error stays one readable line."""
    return text if len(text) <= keep else f"{text[: keep - 3]}... ({len(text)} characters)"


def _reject_unknown(table: Mapping[str, Any], known: frozenset[str], where: str, what: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} in {what} (known: {', '.join(sorted(known))})"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = read_regular(path, MAX_CONFIG_BYTES).decode("utf-8")
        return tomllib.loads(text)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8; a Latin-1 file is not TOML
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text: byte {error.start})") from None
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as error:  # ValueError: a 5,000-digit int
        raise ConfigError(f"{path}: not valid TOML ({_shorten(str(error))})") from None
