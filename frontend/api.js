// All I/O of the page: the server's REST API, the live websocket, the shared contract
// (contract.json), and — for the exported report — the same API answered from data inlined in
// the file (`ReportApi`). The wire encoding of floats is shared with the websocket: NaN and
// ±Inf travel as the strings of the contract's `non_finite_strings` in number positions.

/** The JSON of an inline `<script type="application/json" id=...>` block, or null if absent. */
export function inlineJson(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

/** The contract the page shares with Python (protocol/contract.py writes contract.json):
 * inlined in an exported report, else fetched once from beside this module (/static/). */
async function loadContract() {
  const inline = inlineJson('trainvitals-contract');
  if (inline) return inline;
  const url = new URL('./contract.json', import.meta.url);
  const response = await fetch(url, { headers: { Accept: 'application/json' } });
  if (!response.ok) throw new ApiError(response.status, `${url.pathname}: ${response.status} ${response.statusText}`);
  return response.json();
}

/** `value`, frozen in place with everything inside it (the contract is shared by every module). */
function deepFreeze(value) {
  if (value && typeof value === 'object') {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

/** A REST failure, with the HTTP status. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const CONTRACT = deepFreeze(await loadContract());
const NON_FINITE = new Set(CONTRACT.non_finite_strings);

/** A number from the wire: the non-finite strings become NaN / ±Infinity, the rest unchanged. */
export function fromWire(v) {
  return typeof v === 'string' && NON_FINITE.has(v) ? Number(v) : v;
}

/** An object of wire numbers (e.g. a step's `values`) with each value decoded. */
export function fromWireMap(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj ?? {})) out[k] = fromWire(v);
  return out;
}

/** A clip event ({raw, threshold, action, reason, components}) decoded; null stays null. */
export function decodeClip(clip) {
  if (!clip) return null;
  return { ...clip, raw: fromWire(clip.raw), threshold: fromWire(clip.threshold),
           components: fromWireMap(clip.components) };
}

/** One live step record ({rank, step, time, values, clip}) decoded. */
export function decodeRecord(r) {
  return { ...r, values: fromWireMap(r.values), clip: decodeClip(r.clip) };
}

/** An alert decoded (its `details` may hold non-finite values). */
export function decodeAlert(a) {
  return { ...a, details: fromWireMap(a.details) };
}

/** An incident decoded: its facts and each evidence alert's details may hold non-finite values. */
export function decodeIncident(i) {
  return { ...i, facts: fromWireMap(i.facts), evidence: (i.evidence ?? []).map(decodeAlert) };
}

/** A condition (server or delivery trouble) decoded: its facts may hold non-finite values. */
export function decodeCondition(c) {
  return { ...c, facts: fromWireMap(c.facts) };
}

/** The view token from the page URL (`?token=...`), or null. */
export function pageToken() {
  return new URLSearchParams(window.location.search).get('token');
}

/** Points of one series as the REST API sends them ({name, rank, steps, values, downsampled}),
 * values decoded. */
export function decodeSeries(s) {
  return { ...s, values: s.values.map(fromWire), downsampled: !!s.downsampled };
}

/** REST client; adds the view token (if any) to every request. */
export class Api {
  constructor(token = pageToken()) {
    this.token = token;
    this.readOnly = false; // live: the view follows the socket and can fetch finer data
  }

  /** A same-origin URL for `path` with query `params` (arrays repeat the key) and the token. */
  url(path, params = {}) {
    const url = new URL(path, window.location.origin);
    for (const [key, value] of Object.entries(params)) {
      if (value === null || value === undefined) continue;
      for (const v of [value].flat()) url.searchParams.append(key, String(v));
    }
    if (this.token) url.searchParams.set('token', this.token);
    return url;
  }

  /** The websocket URL for `path` on this origin (ws: or wss:), with the token. */
  wsUrl(path) {
    const url = this.url(path);
    url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.toString();
  }

  /** A new websocket to the live feed (/ws/live); `Live` keeps it open and reconnects. */
  openLive() {
    return new WebSocket(this.wsUrl('/ws/live'));
  }

  async get(path, params) {
    const response = await fetch(this.url(path, params), { headers: { Accept: 'application/json' } });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail ?? detail; } catch { /* not JSON */ }
      throw new ApiError(response.status, `${path}: ${response.status} ${detail}`);
    }
    return response.json();
  }

  /** Every run, newest first. */
  async runs() {
    return (await this.get('/api/runs')).runs;
  }

  /** One run and the series it has: {run, series: [{name, rank, points}]}. */
  async run(runId) {
    return this.get(`/api/runs/${encodeURIComponent(runId)}`);
  }

  /**
   * Points of the named series: [{name, rank, steps, values, downsampled}], values decoded.
   * `buckets` (chart width in pixels) lets the server thin long ranges (M4: extremes and
   * NaN/Inf kept); `start`/`end` limit the steps.
   */
  async series(runId, names, { buckets = null, start = null, end = null } = {}) {
    if (!names.length) return [];
    const body = await this.get(`/api/runs/${encodeURIComponent(runId)}/series`,
      { name: names, buckets, start, end });
    return body.series.map(decodeSeries);
  }

  /** Clip events of a run (within [start, end] if given), decoded. */
  async clips(runId, { start = null, end = null, limit = 200000 } = {}) {
    const body = await this.get(`/api/runs/${encodeURIComponent(runId)}/clips`, { limit, start, end });
    return body.clips.map(decodeClip);
  }

  /** The run's health in words: {level: ok|warning|critical, summary, sentences}. */
  async health(runId) {
    return this.get(`/api/runs/${encodeURIComponent(runId)}/health`);
  }

  /** Download URLs of a run's exports (`report.html`, `export.csv`), token included. */
  exportUrl(runId, file) {
    return this.url(`/api/runs/${encodeURIComponent(runId)}/${file}`).toString();
  }

  /** Alerts of one run (by name), newest first, decoded. */
  async alerts(runName) {
    return (await this.get('/api/alerts', { run: runName })).alerts.map(decodeAlert);
  }

  /** Incidents of one run (one per root cause, with their evidence), by onset, decoded. */
  async incidents(runId) {
    return (await this.get(`/api/runs/${encodeURIComponent(runId)}/incidents`)).incidents.map(decodeIncident);
  }

  /** Conditions (server trouble, trainers' delivery trouble), open ones first, decoded;
   * `scope` 'server'|'run', `run` (a name) and `state` 'open'|'resolved' narrow them. */
  async conditions({ scope = null, run = null, state = null } = {}) {
    return (await this.get('/api/conditions', { scope, run, state })).conditions.map(decodeCondition);
  }
}

/**
 * The API of one run answered from the data an exported report carries inline
 * (`<script type="application/json" id="trainvitals-report">`, written by
 * server/views/report.py): the same methods and answers as `Api`, so `RunView` draws the report
 * exactly as it draws the page. Read-only: nothing live, nothing finer to fetch, no exports.
 */
export class ReportApi {
  /** @param {object} data {run_id, detail, series, clips, health, alerts, incidents} in wire
   *   encoding */
  constructor(data) {
    this.data = data;
    this.runId = data.run_id;
    this.readOnly = true;
    this.inlined = new Set(data.series.map((s) => s.name));
  }

  /** The report's data, or an ApiError(404) for any other run (as the server would answer). */
  answer(runId, value) {
    if (Number(runId) !== this.runId) throw new ApiError(404, `no run with id ${runId} in this report`);
    return value;
  }

  async runs() {
    return [this.data.detail.run];
  }

  async run(runId) {
    return this.answer(runId, this.data.detail);
  }

  /** The inlined points of the named series within [start, end] (`buckets` is moot: the
   * server already thinned long series for the report). */
  async series(runId, names, { start = null, end = null } = {}) {
    this.answer(runId, null);
    const missing = names.filter((n) => !this.inlined.has(n)
      && this.data.detail.series.some((s) => s.name === n));
    if (missing.length) console.error('trainvitals: the report lacks series it should draw:', missing);
    const wanted = new Set(names);
    return this.data.series.filter((s) => wanted.has(s.name)).map((s) => within(decodeSeries(s), start, end));
  }

  async clips(runId, { start = null, end = null, limit = Infinity } = {}) {
    this.answer(runId, null);
    return this.data.clips.filter((c) => (start === null || c.step >= start) && (end === null || c.step <= end))
      .slice(0, limit).map(decodeClip);
  }

  async health(runId) {
    return this.answer(runId, this.data.health);
  }

  async alerts(runName) {
    return runName === this.data.detail.run.name ? this.data.alerts.map(decodeAlert) : [];
  }

  async incidents(runId) {
    return this.answer(runId, this.data.incidents.map(decodeIncident));
  }

  /** Conditions are the server's state now, not the run's record: a report has none. */
  async conditions() {
    return [];
  }

  /** No server to download from. */
  exportUrl() {
    return null;
  }
}

/** The points of `s` with steps in [start, end] (null: open). */
function within(s, start, end) {
  if (start === null && end === null) return s;
  const keep = s.steps.map((step) => (start === null || step >= start) && (end === null || step <= end));
  return { ...s, steps: s.steps.filter((_, i) => keep[i]), values: s.values.filter((_, i) => keep[i]) };
}
