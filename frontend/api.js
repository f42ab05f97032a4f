// The server's REST API, and the wire encoding of floats it shares with the websocket:
// NaN and ±Inf travel as the strings "NaN", "Infinity", "-Infinity" in number positions.

const NON_FINITE = new Set(['NaN', 'Infinity', '-Infinity']);

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

/** A REST failure, with the HTTP status. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The view token from the page URL (`?token=...`), or null. */
export function pageToken() {
  return new URLSearchParams(window.location.search).get('token');
}

/** REST client; adds the view token (if any) to every request. */
export class Api {
  constructor(token = pageToken()) {
    this.token = token;
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
    return body.series.map((s) => ({ ...s, values: s.values.map(fromWire), downsampled: !!s.downsampled }));
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
}
