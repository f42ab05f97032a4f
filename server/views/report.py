"""A run as one self-contained HTML file, drawn by the dashboard's own JavaScript.

There is one chart renderer: the page's. The report is the run view of the dashboard
(``frontend/run_view.js`` and what it imports), read-only, over the run's data inlined in the
file — the very answers the REST API would give it (run row, series list, health, incidents,
alerts, clip events, and the points of every series the run view charts; long series
M4-downsampled as for a chart ``REPORT_BUCKETS`` pixels wide, NaN/±Inf as
``"NaN"``/``"Infinity"``/``"-Infinity"``).
``frontend/report.js`` answers the view's API calls from that data (``ReportApi`` in api.js).

The file opens offline, from disk, with no network at all. It holds:

* ``<script type="application/json">`` blocks: the contract (``contract.json``), the run's
  data, and the text of our ES modules. Every ``<`` in them is written ``\\u003c`` (the same
  character to ``JSON.parse``), so no user-named string can end the block: a run named
  ``</script><img onerror=…>`` stays data, and the page shows it as text (dom.js ``h()``);
* plotly.min.js from the installed ``plotly`` package, inline;
* ``report_loader.js``, the one inline module: it makes each inlined module a blob: URL and
  imports ``report.js`` (ES modules cannot load from file://; see that file).

A Content-Security-Policy in a ``<meta>`` lets exactly those two inline scripts (by hash) and
the blob: modules run, and nothing be fetched, wherever the file is opened.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from trainvitals.protocol.series import parse_series
from trainvitals.protocol.wire_json import to_wire
from trainvitals.server.store import RunRow, Store
from trainvitals.server.store.downsample import for_width
from trainvitals.server.views.incidents import incident_json
from trainvitals.server.views.ranks import bad_ranks

__all__ = ["REPORT_BUCKETS", "REPORT_CLIPS", "charted", "html_report", "report_data"]

REPORT_BUCKETS = 2000  # M4 columns per series; series of at most 4 points per column go whole
REPORT_CLIPS = 20_000  # loss-guard events inlined at most (the first ones)
ENTRY = "report.js"  # the report's entry module, in frontend/
LOADER = "report_loader.js"  # inlined as a script of its own, not as a module of the bundle
# What the run view charts (frontend/vitals.js: LOSS_CHART, GRAD_CHART, CHARTED_STATS), so the
# file carries no series that nobody draws. Should the page chart more, ReportApi says so in
# the console for each series it is asked for and lacks (and the report tests fail on it).
CHARTED_TOP = ("loss", "loss_used", "grad_norm", "grad_norm_post")
CHARTED_TENSOR_STATS = ("min", "max", "mean", "nan", "posinf", "neginf")
# Text after which an inline <script> would stop being script (or change how it is parsed).
_UNSAFE_IN_SCRIPT = re.compile(r"</script|<!--", re.IGNORECASE)


def charted(name: str) -> bool:
    """Whether the run view draws series ``name`` (raw and used loss, components, gradient
    norms, and the charted statistics of each tensor)."""
    parsed = parse_series(name)
    if parsed.kind == "top":
        return name in CHARTED_TOP
    if parsed.kind == "tensor":
        return parsed.stat in CHARTED_TENSOR_STATS
    return parsed.kind == "component"


def report_data(store: Store, run: RunRow, *, run_body: dict[str, Any],
                health_body: dict[str, Any], made: float) -> dict[str, Any]:
    """What the report's ``ReportApi`` answers from, in wire encoding (JSON-ready).

    ``run_body`` is the run as ``GET /api/runs`` shows it, ``health_body`` what
    ``GET /api/runs/{id}/health`` answers; ``made`` is when the report was made (Unix time).
    """
    listed = store.series_list(run.id)
    alerts = store.alerts(run=run.name)
    ranked = bad_ranks(alerts)
    data: dict[str, Any] = to_wire({
        "run_id": run.id,
        "made": made,
        "detail": {"run": run_body, "series": listed,  # as GET /api/runs/{id}
                   "first_bad": ranked[0] if ranked else None, "bad_ranks": ranked},
        "series": _charted_points(store, run.id, sorted({s.name for s in listed})),
        "clips": store.clips(run.id, limit=REPORT_CLIPS),
        "health": health_body,
        "alerts": alerts,
    })
    data["incidents"] = _incidents(store, run)  # already in wire encoding
    return data


def _incidents(store: Store, run: RunRow) -> list[dict[str, Any]]:
    """The run's incidents as ``GET /api/runs/{id}/incidents`` answers: by onset, evidence in."""
    found = sorted(store.incidents(run=run.name), key=lambda i: (i.onset_step, i.number))
    return [incident_json(i, run.id) for i in found]


def _charted_points(store: Store, run_id: int, names: list[str]) -> list[dict[str, Any]]:
    """Each charted series per rank, as ``GET …/series?buckets=REPORT_BUCKETS`` answers."""
    return [{**vars(data), "downsampled": thinned} for name in names if charted(name)
            for data, thinned in for_width(store, run_id, name, rank=None, start=None, end=None,
                                           buckets=REPORT_BUCKETS)]


def html_report(data: dict[str, Any]) -> str:
    """The report file for ``data`` (from ``report_data``)."""
    plotly, loader = _plotly_js(), _frontend_text(LOADER)
    blocks = {"trainvitals-contract": json.loads(_frontend_text("contract.json")),
              "trainvitals-report": data,
              "trainvitals-modules": {"entry": ENTRY, "modules": _modules()}}
    return "".join([
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{report_csp(plotly, loader)}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        "<title>trainvitals report</title>\n",  # report.js puts the run's name in
        f"<style>\n{_frontend_text('style.css')}</style>\n</head>\n",
        _BODY,
        *(_json_block(block_id, value) for block_id, value in blocks.items()),
        f"<script>{_inline_script(plotly)}</script>\n",
        f'<script type="module">{_inline_script(loader)}</script>\n',
        "</body>\n</html>\n"])


def report_csp(*scripts: str) -> str:
    """The report's own policy: only ``scripts`` (inline, by hash) and blob: modules run; no
    request leaves the file. Styles are inline, and plotly.js injects some (as on the page)."""
    hashes = " ".join(f"'sha256-{_sha256(s)}'" for s in scripts)
    return (f"default-src 'none'; script-src {hashes} blob:; style-src 'unsafe-inline'; "
            "img-src data: blob:; connect-src 'none'; object-src 'none'; base-uri 'none'; "
            "form-action 'none'")


def _json_block(block_id: str, value: Any) -> str:
    """``value`` as an inert JSON block that no string inside can close (``<`` escaped)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    inert = text.replace("<", "\\u003c")  # JSON's own escape: the same text to JSON.parse
    return f'<script type="application/json" id="{block_id}">{inert}</script>\n'


def _inline_script(text: str) -> str:
    """``text`` as the body of an inline <script>; refused if it could end the element early."""
    if _UNSAFE_IN_SCRIPT.search(text):
        raise ValueError("script text holds '</script' or '<!--' and cannot be inlined")
    return text


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


@cache
def _plotly_js() -> str:
    """plotly.min.js of the installed plotly package (the one the page gets from /static/)."""
    return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text("utf-8")


def _frontend_text(name: str) -> str:
    return resources.files("trainvitals.frontend").joinpath(name).read_text("utf-8")


def _modules() -> dict[str, str]:
    """The text of every ES module of the page, by file name (the loader picks what the entry
    module imports)."""
    folder = resources.files("trainvitals.frontend")
    return {p.name: p.read_text("utf-8") for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".js") and p.name != LOADER}


# The page's layout (index.html) with one view and no runs list; report.js fills #run-view.
_BODY = """<body class="report">
<header class="topbar"><span class="brand">trainvitals</span>
<span id="report-made" class="report-made">report</span></header>
<div id="error" class="error-banner" role="alert" hidden></div>
<noscript><p class="error-banner">This report draws its charts with JavaScript.</p></noscript>
<main class="layout report-layout">
<section id="run-view" class="run-view" data-state="loading" aria-live="polite">
<p class="empty placeholder">Drawing the report…</p></section>
</main>
<footer class="report-note">NaN, +Inf and −Inf are drawn as markers on the chart's top or bottom
edge; long series are downsampled keeping every extreme and every NaN/Inf (M4).</footer>
"""
