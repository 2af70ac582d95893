"""`inspect --view depth`: mean and max |g| per layer as bars on one log10 axis, the terminal `plot_grad_flow`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from gradcheck.analysis.checks import Finding
from gradcheck.analysis.formatting import sci
from gradcheck.analysis.history import LayerDepth, layer_depths
from gradcheck.analysis.inspection import Report

from .console import printable
from .names import fit, middle

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}
_LABEL = {"error": "ERROR", "warning": "warn"}
_NAME_SHARE = 3  # layer names get at most a third of the width, shortened by structure (cli/names.py)
_MIN_BAR = 10  # below this the axis labels collide; the lines still fit from 60 columns
_LABEL_GAP = 5  # cells between decade labels at least, so "-12" and "-10" never touch


@dataclass(frozen=True)
class _Glyphs:
    mean: str
    max: str
    line: str
    axis: str
    tick: str


_UNICODE = _Glyphs(mean="█", max="░", line="│", axis="─", tick="┼")
_ASCII = _Glyphs(mean="#", max="-", line="|", axis="-", tick="+")


@dataclass(frozen=True)
class _Axis:
    low: int  # log10 at the first bar cell
    high: int  # log10 at the last bar cell
    width: int

    def cell(self, log: float) -> int:
        """The bar cell of a log10 value, clamped to the axis."""
        share = (log - self.low) / (self.high - self.low)
        return max(0, min(self.width - 1, round(share * (self.width - 1))))


def render_depth(console: Console, report: Report, step: int) -> None:
    """Print one bar line per layer at `step`, the axis with the thresholds, and a legend."""
    glyphs = _ASCII if console.no_color or console.color_system is None else _UNICODE
    layers = layer_depths(report.run.columns, step)
    what = f" - step {step}: mean, max |g| per layer (log10)"
    console.print(Text(middle(printable(report.run.path), max(8, console.width - len(what))) + what))
    if not layers:
        console.print(f"no gradient recorded at step {step}")
        return
    t = report.config.thresholds
    marks = {"V": math.log10(t.vanishing_mean), "E": math.log10(t.exploding_mean)}
    statuses = {layer.layer: _status(report.findings, layer, step) for layer in layers}
    status_width = max((len(text) for text, _ in statuses.values()), default=0)
    spare = console.width - 2 * 9 - 2 - _MIN_BAR - (status_width + 1 if status_width else 0) - 1
    rows = fit([layer.layer for layer in layers], max(20, min(console.width // _NAME_SHARE, spare)))
    name_width = max(len("layer"), *(len(shown) for _, shown in rows))
    fixed = name_width + 2 * 9 + 2 + (status_width + 1 if status_width else 0)
    axis = _axis(layers, marks, max(_MIN_BAR, console.width - fixed))
    header = f"{'layer':<{name_width}} {'mean|g|':>8} {'max|g|':>8}  "
    console.print(Text(header, style="bold"))
    by_name = {layer.layer: layer for layer in layers}
    for name, shown in rows:
        if name is None:
            console.print(Text(shown, style="bold"))
        else:
            line = _line(by_name[name], shown, statuses, name_width, axis, marks, glyphs)
            console.print(line, no_wrap=True, overflow="ellipsis")  # below 60 columns the status is cut
    pad = " " * len(header)
    console.print(Text(pad) + _axis_line(axis, marks, glyphs))
    console.print(pad + _labels(axis))
    console.print(Text(_legend(glyphs, t.vanishing_mean, t.exploding_mean), style="dim"))


def _status(findings: list[Finding], layer: LayerDepth, step: int) -> tuple[str, str]:
    """(text, style) of the worst finding of the layer's parameters at `step`; empty when there is none."""
    found = [f for f in findings if f.param in layer.params and step in f.steps]
    if not found:
        return ("", "green")
    severity = "error" if any(f.severity == "error" for f in found) else "warning"
    problems = ", ".join(dict.fromkeys(f.problem for f in found if f.severity == severity))
    return (f"{_LABEL[severity]} {problems}", _SEVERITY_STYLE[severity])


def _axis(layers: list[LayerDepth], marks: dict[str, float], width: int) -> _Axis:
    """Whole decades from one below the smallest mean (so its bar shows) to the largest max, thresholds included."""
    logs = [math.log10(v) for layer in layers for v in (layer.mean_abs, layer.max_abs) if v and v > 0]
    logs += marks.values()
    low, high = math.floor(min(logs)) - 1, math.ceil(max(logs))
    return _Axis(low, high if high > low else low + 1, width)


def _line(
    layer: LayerDepth,
    shown: str,
    statuses: dict[str, tuple[str, str]],
    name_width: int,
    axis: _Axis,
    marks: dict[str, float],
    glyphs: _Glyphs,
) -> Text:
    status, style = statuses[layer.layer]
    text = Text(f"{shown:<{name_width}} ", style=style if status else "")
    text.append(f"{sci(layer.mean_abs):>8} {sci(layer.max_abs):>8}  ")
    text.append_text(_bar(layer, axis, marks, glyphs, style))
    if status:
        text.append(" " + status, style=style)
    return text


def _bar(layer: LayerDepth, axis: _Axis, marks: dict[str, float], glyphs: _Glyphs, style: str) -> Text:
    """Mean cells, then the stretch up to the max, then blanks with the threshold lines showing through."""
    if layer.mean_abs is None or layer.max_abs is None:
        word = "NaN/Inf" if layer.nonfinite else "no finite gradient"
        return Text(word.ljust(axis.width), style="bold red" if layer.nonfinite else "")
    if layer.max_abs <= 0:
        return Text("all zero".ljust(axis.width), style=style)
    mean_end = axis.cell(math.log10(layer.mean_abs)) + 1 if layer.mean_abs > 0 else 0
    max_end = axis.cell(math.log10(layer.max_abs)) + 1
    lines = {axis.cell(log) for log in marks.values()}
    rest = "".join(glyphs.line if i in lines else " " for i in range(max_end, axis.width))
    text = Text(glyphs.mean * mean_end, style=style)
    text.append(glyphs.max * (max_end - mean_end), style=style)
    text.append(rest, style="dim")
    if layer.nonfinite:
        text.append(" NaN/Inf", style="bold red")
    return text


def _axis_line(axis: _Axis, marks: dict[str, float], glyphs: _Glyphs) -> Text:
    cells = [glyphs.axis] * axis.width
    for log in _labelled(axis):
        cells[axis.cell(log)] = glyphs.tick
    text = Text("".join(cells))
    for letter, log in marks.items():
        at = axis.cell(log)
        text = text[:at] + Text(letter, style="bold") + text[at + 1 :]
    return text


def _labelled(axis: _Axis) -> list[int]:
    """Decades that get a label: every 1, 2, 5 or 10 decades, whichever leaves room between labels."""
    per_decade = (axis.width - 1) / (axis.high - axis.low)
    every = next((k for k in (1, 2, 5, 10) if k * per_decade >= _LABEL_GAP), 20)
    return [d for d in range(axis.low, axis.high + 1) if d % every == 0]


def _labels(axis: _Axis) -> str:
    cells = [" "] * (axis.width + 3)
    for decade in _labelled(axis):
        label, at = str(decade), axis.cell(decade)
        cells[at : at + len(label)] = label
    return "".join(cells).rstrip()


def _legend(glyphs: _Glyphs, vanishing: float, exploding: float) -> str:
    return (
        f"{glyphs.mean} mean|g|  {glyphs.max} to max|g|  {glyphs.line} V vanishing-mean {sci(vanishing)}  "
        f"{glyphs.line} E exploding-mean {sci(exploding)}"
    )
