"""A run as a self-contained HTML report: health, alerts, config and its charts.

The charts are Plotly figures built with the ``plotly`` package, with plotly.js embedded once,
so the file opens anywhere without a network. Long series are downsampled with M4 (extremes and
non-finite values kept), so a spike in a million steps is in the report too. As on the page,
NaN/±Inf are drawn as markers on the chart's edge, and every user-named string is escaped
(``html.escape`` for the page, entity-escaping for plotly's pseudo-HTML labels).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import plotly.graph_objects as go

from trainvitals.server.alerts import Alert
from trainvitals.server.store import ClipRow, RunRow, SeriesData, Store
from trainvitals.server.views.health import Health, num

__all__ = ["REPORT_BUCKETS", "html_report", "series_for_chart", "tensor_series"]

REPORT_BUCKETS = 2000  # M4 columns per series; shorter series are included whole
BAND = "rgba(2, 132, 199, 0.15)"  # fill between a tensor's min and max
REPORT_CLIPS = 20_000  # loss-guard markers drawn at most (the first ones)
STATS = ("min", "max", "mean", "nan", "posinf", "neginf")
EDGE = {"nan": ("NaN", 1.0, "x-thin-open", "#111827"),
        "posinf": ("+Inf", 1.0, "triangle-up", "#9333ea"),
        "neginf": ("-Inf", 0.0, "triangle-down", "#9333ea"),
        "nonpos": ("≤ 0 (off log scale)", 0.0, "circle-open", "#64748b")}
LINE = {"loss": ("#2563eb", "solid"), "loss_used": ("#f97316", "dot"),
        "grad_norm": ("#059669", "solid"), "grad_norm_post": ("#7c3aed", "dot"),
        "min": ("#0284c7", "solid"), "max": ("#0284c7", "solid"), "mean": ("#0c4a6e", "solid")}


def label(text: str) -> str:
    """User text for plotly labels, which read a few HTML-like tags: entity-escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def tensor_series(name: str) -> tuple[str, str] | None:
    """``("depth_raw", "max")`` for ``tensor/depth_raw/max``; None for other series."""
    if not name.startswith("tensor/") or name.count("/") < 2:
        return None
    tensor, stat = name[len("tensor/"):].rsplit("/", 1)
    return (tensor, stat) if stat in STATS else None


def series_for_chart(store: Store, run_id: int, name: str, points: int) -> list[SeriesData]:
    """All points of a series, or its M4 downsample when it has many."""
    if points > 4 * REPORT_BUCKETS:
        return store.series_m4(run_id, name, buckets=REPORT_BUCKETS)
    return store.series(run_id, name)


@dataclass
class _Chart:
    title: str
    log: bool = False
    y2: str = ""  # title of the right-hand axis of tensor NaN/Inf counts (when any is > 0)

    def __post_init__(self) -> None:
        self.fig = go.Figure()
        self.edges: dict[str, dict[int, list[str]]] = {}  # kind -> step -> hover lines
        self.counts = False  # whether any NaN/Inf count is drawn (on the right-hand axis)

    def line(self, data: SeriesData, name: str, color: str, dash: str, *,
             fill: bool = False, right: bool = False) -> None:
        """A series as a line; off-scale values become edge markers instead of vanishing."""
        ys: list[float | None] = []
        for step, v in zip(data.steps, data.values, strict=True):
            kind = _kind(v, self.log and not right)
            ys.append(v if kind == "finite" else None)
            if kind != "finite":  # one marker per kind and step; its hover lists the series
                lines = self.edges.setdefault(kind, {}).setdefault(step, [])
                lines.append(f"{label(name)} = {num(v)}")
        if right and not any(ys):
            return  # NaN/Inf counts that stayed 0 are left out, like an empty axis for them
        self.counts = self.counts or right
        self.fig.add_trace(go.Scatter(
            x=data.steps, y=ys, mode="lines", name=label(name), connectgaps=False,
            line={"color": color, "dash": dash, "width": 1 if fill else 2,
                  "shape": "hv" if right else "linear"},
            fill="tonexty" if fill else None, fillcolor=BAND if fill else None,
            yaxis="y3" if right else "y"))

    def clips(self, clips: list[ClipRow], run: RunRow) -> None:
        """Loss-guard events with a finite raw loss as markers (NaN/Inf ones are edge markers)."""
        shown = [c for c in clips if math.isfinite(c.raw)]
        if not shown:
            return
        self.fig.add_trace(go.Scatter(
            x=[c.step for c in shown], y=[c.raw for c in shown], mode="markers",
            name="loss guard fired", text=[_clip_text(c, run) for c in shown],
            hovertemplate="%{text}<extra></extra>",
            marker={"symbol": "diamond-open", "size": 10, "color": "#dc2626"}))

    def finish(self) -> go.Figure:
        for kind, by_step in self.edges.items():
            name, y, symbol, color = EDGE[kind]
            xs = sorted(by_step)
            texts = [f"<b>{name} at step {x}</b><br>" + "<br>".join(by_step[x]) for x in xs]
            self.fig.add_trace(go.Scatter(
                x=xs, y=[y] * len(xs), yaxis="y2", mode="markers", name=name, text=texts,
                hovertemplate="%{text}<extra></extra>", cliponaxis=False,
                marker={"symbol": symbol, "color": color, "size": 10}))
        layout: dict[str, object] = {
            "title": {"text": label(self.title)}, "height": 340, "template": "plotly_white",
            "margin": {"l": 60, "r": 60, "t": 50, "b": 40}, "hovermode": "closest",
            "xaxis": {"title": {"text": "step"}},
            "yaxis": {"type": "log" if self.log else "linear"},
            "yaxis2": {"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
            "legend": {"orientation": "h", "y": -0.2, "traceorder": "normal"}}
        if self.counts:
            layout["yaxis3"] = {"overlaying": "y", "side": "right", "rangemode": "tozero",
                                "title": {"text": self.y2}, "showgrid": False}
        self.fig.update_layout(**layout)
        return self.fig


def _clip_text(c: ClipRow, run: RunRow) -> str:
    rank = f" (rank {c.rank})" if run.world_size > 1 or c.rank else ""
    parts = [f"<b>loss guard fired</b> at step {c.step}{rank}",
             f"raw {num(c.raw)} · threshold {num(c.threshold)}",
             f"action {label(c.action)} · reason {label(c.reason)}"]
    if c.components:
        parts.append(", ".join(f"{label(k)} {num(v)}" for k, v in c.components.items()))
    return "<br>".join(parts)


def _kind(v: float, log: bool) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "posinf" if v > 0 else "neginf"
    return "nonpos" if log and v <= 0 else "finite"


def _charts(store: Store, run: RunRow) -> Iterator[_Chart]:
    counts = {(s.name): s.points for s in store.series_list(run.id)}  # max over ranks is enough

    def get(name: str) -> list[SeriesData]:
        return series_for_chart(store, run.id, name, counts[name]) if name in counts else []

    loss = _Chart("Loss: raw vs. backpropagated")
    names = ["loss", "loss_used", *sorted(n for n in counts if n.startswith("loss/"))]
    for i, name in enumerate(names):
        color, dash = LINE.get(name, (_PALETTE[i % len(_PALETTE)], "solid"))
        for d in get(name):
            loss.line(d, _ranked(name, d.rank, run), color, dash)
    loss.clips(store.clips(run.id, limit=REPORT_CLIPS), run)
    yield loss
    grad = _Chart("Gradient norm (log scale)", log=True)
    for name in ("grad_norm", "grad_norm_post"):
        for d in get(name):
            grad.line(d, _ranked(name, d.rank, run), *LINE[name])
    yield grad
    for tensor in sorted({t[0] for n in counts if (t := tensor_series(n))}):
        chart = _Chart(f"Tensor {tensor}: min/max band, mean", y2="NaN/Inf elements")
        by_rank: dict[int, dict[str, SeriesData]] = {}
        for stat in STATS:
            for d in get(f"tensor/{tensor}/{stat}"):
                by_rank.setdefault(d.rank, {})[stat] = d
        for rank, stats in sorted(by_rank.items()):
            for stat, d in sorted(stats.items(), key=lambda item: STATS.index(item[0])):
                # "max" fills down to the trace before it, "min" of the same rank: the band.
                color, dash = LINE[stat] if stat in LINE else (_COUNT_COLORS[stat], "dot")
                chart.line(d, _ranked(f"{tensor} {stat}", rank, run), color, dash,
                           fill=stat == "max" and "min" in stats,
                           right=stat in ("nan", "posinf", "neginf"))
        yield chart


_PALETTE = ("#0891b2", "#16a34a", "#ca8a04", "#db2777", "#4f46e5", "#65a30d", "#ea580c")
_COUNT_COLORS = {"nan": "#111827", "posinf": "#9333ea", "neginf": "#c026d3"}


def _ranked(name: str, rank: int, run: RunRow) -> str:
    return f"{name} [rank {rank}]" if run.world_size > 1 or rank else name


def html_report(store: Store, run: RunRow, health: Health, status: str) -> str:
    """The whole report page for ``run`` (its current ``status`` and ``health`` given)."""
    figures = [c.finish() for c in _charts(store, run)]
    plots = [f.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"chart-{i}",
                       config={"displaylogo": False, "responsive": True})
             for i, f in enumerate(figures)]
    alerts = store.alerts(run=run.name)
    e = html.escape
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.first_time or run.created))
    return _PAGE.format(
        title=e(run.name), status=e(status), steps=f"{run.steps:,}",
        last_step="—" if run.last_step is None else f"{run.last_step:,}", started=e(started),
        level=e(health.level), summary=e(health.summary),
        reason=f"· {e(run.reason)}" if run.reason else "",
        alerts="".join(_alert_row(a) for a in alerts) or _EMPTY_ALERTS,
        config="".join(f"<tr><th>{e(str(k))}</th><td>{e(_config_text(v))}</td></tr>"
                       for k, v in run.config.items()) or "<tr><td>none</td></tr>",
        charts="\n".join(f'<section class="chart">{p}</section>' for p in plots),
        made=e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())))


def _config_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _alert_row(a: Alert) -> str:
    e = html.escape
    resolved = "" if a.resolved_step is None else f" (step {a.resolved_step:,})"
    return (f'<tr class="sev-{e(a.severity)}"><td>{e(a.severity)}</td><td>{e(a.rule)}</td>'
            f"<td><code>{e(a.series)}</code></td><td>{e(a.state)}{resolved}</td>"
            f"<td>{a.first_step:,}–{a.last_step:,}</td><td>{a.count:,}</td>"
            f"<td>{e(a.message)}</td></tr>")


_EMPTY_ALERTS = '<tr><td colspan="7">No alerts.</td></tr>'
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title} — trainvitals report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; color: #1f2937; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; overflow-wrap: anywhere; }}
.meta {{ color: #6b7280; margin: 0 0 12px; }}
.health {{ padding: 10px 14px; border-radius: 6px; border-left: 5px solid #065f46;
          background: #d1fae5; }}
.health.warning {{ border-color: #b45309; background: #fef3c7; }}
.health.critical {{ border-color: #b91c1c; background: #fee2e2; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; width: 100%; }}
th, td {{ text-align: left; padding: 4px 8px; border-bottom: 1px solid #e5e7eb;
         vertical-align: top; overflow-wrap: anywhere; }}
#alerts td:nth-child(-n+6) {{ white-space: nowrap; overflow-wrap: normal; }}
tr.sev-critical td:first-child {{ color: #b91c1c; font-weight: 700; }}
tr.sev-warning td:first-child {{ color: #92400e; font-weight: 700; }}
.chart {{ margin: 12px 0; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="meta">status <b>{status}</b> · {steps} steps (last {last_step}) · started {started}
  {reason}</p>
<p class="health {level}" id="health">{summary}</p>
{charts}
<h2>Alerts</h2>
<table id="alerts"><tr><th>severity</th><th>rule</th><th>series</th><th>state</th>
<th>steps</th><th>count</th><th>message</th></tr>{alerts}</table>
<h2>Config</h2>
<table id="config">{config}</table>
<p class="meta">trainvitals report, made {made}. NaN, +Inf and -Inf are drawn as markers on
the chart's top or bottom edge; long series are downsampled keeping every extreme (M4).</p>
</body></html>
"""
