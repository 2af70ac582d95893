"""The self-contained HTML report: verdict, findings linked to their charts, the charts, all inlined."""

from __future__ import annotations

import base64
import gzip
import html
import json
from importlib.metadata import version
from importlib.resources import files
from typing import Any

from gradcheck.analysis.inspection import Report
from gradcheck.analysis.story import Group

from ..ci_formats import verdict_line
from ..console import printable
from .charts import CHART_OF_CHECK, ChartData, grouped_findings
from .specs import ALL_LAYERS, datasets, specs

VENDORED = ("vega.min.js", "vega-lite.min.js")
TITLES = {
    "norms": "Gradient norm per parameter over the recorded steps",
    "ratio": "Update ratio (log10 mean|update| / mean|param|), healthy band shaded",
    "param": "Mean |param| per parameter",
    "flow": "Gradient flow: mean and max |g| per layer in model order",
    "heatmap": "Layers × recorded steps",
    "loss": "Loss recorded with the snapshots",
    "activations": "Module outputs (forward order): share of zeros or at the activation's bounds",
    "context": "Training context recorded with the snapshots",
}
PARAMS_SHOWN = 8  # a group of more parameters lists them folded (a 100-parameter NaN would fill the screen)
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1000px;padding:16px;color:#222}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 6px}
.verdict{font-weight:600;padding:8px 10px;border-radius:4px;margin:10px 0}
.ok{background:#e6f4ea;color:#1e6b32}.warn{background:#fff4d6;color:#7a5200}.error{background:#fde7e7;color:#9b1c1c}
#findings li{margin:4px 0}#findings .sev{font-weight:600;display:inline-block;min-width:75px}
#findings .problem{font-weight:600}#findings .params{font-size:13px;margin:1px 0 0 79px}
.cause{font-weight:600;background:#fdf1e7;border-left:4px solid #b42318;padding:6px 10px;margin:8px 0}
.cause a{font-weight:400}
.sev-error{color:#b42318}.sev-warning{color:#8a6100}.hint{color:#555;font-size:13px;margin:4px 0}
.chart{min-height:120px}.muted{color:#666;font-size:13px}
.vega-bind{display:inline-block;margin:4px 12px 0 0;font-size:13px}
"""
# Glue only: unzip the data (the browser's DecompressionStream), compile each Vega-Lite spec with the shared
# datasets, render it, and let finding links pick a layer.
_SCRIPT = """
(function () {
  var views = {};
  window.gradcheckViews = views;
  function inflate(id) {
    var text = atob(document.getElementById(id).textContent.trim());
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) { bytes[i] = text.charCodeAt(i); }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).text().then(JSON.parse);
  }
  inflate('gradcheck-data').then(draw).catch(function (error) {
    console.error('gradcheck report: cannot read the embedded data: ' + error);
  });
  function draw(data) {
  var charts = JSON.parse(document.getElementById('gradcheck-specs').textContent);
  var pending = Object.keys(charts).map(function (id) {
    var spec = charts[id];
    spec.datasets = data;
    var compiled = vegaLite.compile(spec).spec;
    var view = new vega.View(vega.parse(compiled), {
      renderer: 'canvas', container: '#chart-' + id, hover: true, logLevel: vega.Warn
    });
    views[id] = view;
    return view.runAsync();
  });
  Promise.all(pending).then(function () {
    document.body.setAttribute('data-rendered', String(pending.length));
  }, function (error) {
    console.error('gradcheck report: a chart failed to render: ' + error);
  });
  }
  document.querySelectorAll('a[data-layer]').forEach(function (link) {
    link.addEventListener('click', function () {
      var view = views[link.getAttribute('data-chart')];
      if (view) { view.signal('layer', link.getAttribute('data-layer')).runAsync(); }
    });
  });
})();
"""


def report_html(report: Report, data: ChartData, *, heatmap_metric: str = "grad-norm") -> str:
    """The whole page as one string: no external reference, the libraries and data inlined."""
    charts = specs(data)
    if "heatmap" in charts:
        _choose_metric(charts["heatmap"], heatmap_metric)
    run = html.escape(printable(data.run))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gradcheck report: {run}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>gradcheck report: {run}</h1>",
        _shape_line(data),
        f'<div class="verdict {report.status}" id="verdict">{html.escape(verdict_line(report))}</div>',
        _findings_html(report, data, charts),
        _context_note(data),
        *(_chart_html(chart_id) for chart_id in charts),
        _zipped_script("gradcheck-data", datasets(data)),
        _json_script("gradcheck-specs", charts),
        *(f"<script>{_vendored(name)}</script>" for name in VENDORED),
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _choose_metric(spec: dict[str, Any], metric: str) -> None:
    """Start the heatmap on the metric asked for (`--metric`, as `gradcheck heatmap`)."""
    param = spec["params"][0]
    key = metric.replace("-", "_")
    if key in param["bind"]["options"]:
        param["value"] = key


def _shape_line(data: ChartData) -> str:
    span = f"({data.steps[0]} to {data.steps[-1]})" if data.steps else ""
    return (
        f'<p class="muted">{len(data.series)} parameter(s), {len(data.layers)} layer(s), '
        f"{len(data.steps)} recorded step(s) {span}; gradcheck {version('gradcheck')}</p>"
    )


def _findings_html(report: Report, data: ChartData, charts: dict[str, Any]) -> str:
    """The story of `inspect`: likely causes, one item per group (problem, parameters, steps), then the hints."""
    story = grouped_findings(report)
    out = ['<h2 id="findings-title">Findings</h2>']
    if not story.groups:
        return out[0] + "<p>No findings.</p>"
    layers = {s.param: s.layer for s in data.series}
    out += [
        f'<p class="cause" data-problem="{html.escape(c.cause.problem)}"><b>likely cause:</b> '
        f"{html.escape(printable(c.text))} {_link(_chart_of(c.cause, charts), c.cause.params, layers, 'see the chart')}</p>"
        for c in story.causes
    ]
    out.append('<ol id="findings">')
    out += [_group_html(group, _chart_of(group, charts), layers) for group in story.groups]
    out.append("</ol>")
    hints = [("likely cause", cause.hint) for cause in story.causes] + list(story.hints)
    out += [f'<p class="hint">hint ({html.escape(p)}): {html.escape(h)}</p>' for p, h in hints]
    return "\n".join(out)


def _chart_of(group: Group, charts: dict[str, Any]) -> str:
    chart = CHART_OF_CHECK.get(group.checks[0], "norms")
    return chart if chart in charts else "norms"


def _group_html(group: Group, chart: str, layers: dict[str, str]) -> str:
    """One group as the terminal's line; a group of several parameters lists each, linked to its own layer."""
    attributes = " ".join(
        f'data-{name}="{_attribute(str(value))}"'
        for name, value in (
            ("severity", group.severity), ("problem", group.problem), ("label", group.label),
            ("first-step", group.first_step), ("last-step", group.last_step),
            ("params", json.dumps(group.params, ensure_ascii=False)), ("checks", " ".join(group.checks)),
        )
    )  # fmt: skip
    line = (
        f'<li {attributes}><span class="sev sev-{group.severity}">{group.severity}</span> '
        f'<span class="problem">{html.escape(group.label)}</span> '
        f"{_link(chart, group.params, layers, printable(group.who))}, {html.escape(group.when)}: "
        f"{html.escape(printable(group.message))}"
    )
    if len(group.params) == 1:
        return line + "</li>"
    links = " · ".join(_link(chart, (param,), layers, printable(param)) for param in group.params)
    if len(group.params) <= PARAMS_SHOWN:
        return f'{line}<div class="params">{links}</div></li>'
    summary = f"the {len(group.params)} parameters"
    return f'{line}<details class="params"><summary>{summary}</summary>{links}</details></li>'


def _link(chart: str, params: tuple[str, ...], layers: dict[str, str], text: str) -> str:
    """A link to `chart` that selects the layer of `params`, or every layer when they span several."""
    chosen = {layers.get(param, param) for param in params}
    layer = chosen.pop() if len(chosen) == 1 else ALL_LAYERS
    return f'<a href="#{chart}" data-chart="{chart}" data-layer="{_attribute(layer)}">{html.escape(text)}</a>'


def _attribute(text: str) -> str:
    """An attribute value the page's script reads back unchanged (a layer to select), defused for CI logs.

    The HTML may reach a log (`-o /dev/stdout`, `cat report.html`): a `::` at a line start or a `##[` is a
    GitHub workflow command (issue #13, class 6), and character references decode to the same name.
    """
    return html.escape(text).replace("::", ":&#58;").replace("##[", "#&#35;[")


def _context_note(data: ChartData) -> str:
    if data.context:
        return ""
    return (
        '<p class="muted" id="context-note">No training context (learning rate, loss scale, loss) was recorded '
        "with these snapshots.</p>"
    )


def _chart_html(chart_id: str) -> str:
    return f'<h2 id="{chart_id}">{html.escape(TITLES[chart_id])}</h2><div class="chart" id="chart-{chart_id}"></div>'


def _json_script(element_id: str, value: Any) -> str:
    """JSON in a script element; `<` escaped so no text of a name can close the element or open a comment."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False).replace(
        "<", "\\u003c"
    )
    # `::` and `##[` only occur inside JSON strings; \u003a and \u0023 parse back to the same name
    text = text.replace("::", ":\\u003a").replace("##[", "#\\u0023[")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _zipped_script(element_id: str, value: Any) -> str:
    """JSON, gzipped and base64-encoded: a 100 x 200 run's 1 MB of numbers becomes 0.3 MB (issue #15's budget)."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    packed = base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")
    return f'<script type="application/gzip-base64-json" id="{element_id}">{packed}</script>'


def read_zipped(packed: str) -> Any:
    """The value `_zipped_script` embedded (for tests and tools that read a report back)."""
    return json.loads(gzip.decompress(base64.b64decode(packed)))


def _vendored(name: str) -> str:
    text = files("gradcheck.cli.pictures").joinpath("vendor", name).read_text(encoding="utf-8")
    return "\n".join(line for line in text.splitlines() if not line.startswith("//# sourceMappingURL="))
