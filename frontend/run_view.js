// One run on screen: header with exports, its incidents (one card per root cause, first),
// health in words, linked charts (loss, gradients, one per watched tensor) and every alert
// (the incidents' evidence). Loads from REST, then follows live updates.
//
// Gap-free loading: the app subscribes to the run *before* the REST snapshot is fetched; live
// records that arrive meanwhile are buffered and applied after the snapshot is drawn. Charts
// drop points they already hold, so the overlap between snapshot and buffer costs nothing.
// The section carries data-state="loading|ready|error" and data-run-id.
//
// Read-only (an exported report, `api.readOnly`): the same drawing from data the file carries;
// nothing is followed live, nothing finer is fetched on zoom, and there are no export links.
//
// Long runs: series are fetched for the charts' pixel width, and the server thins long ranges
// with M4 (per pixel column first/last/min/max, NaN/Inf kept), so a lone spike is still drawn.
// If anything came thinned, every zoom re-fetches the visible range for that width: finer and
// finer until each point is there.

import { AlertsPanel } from './alerts.js';
import { h, replaceChildren } from './dom.js';
import { displayStatus, formatFullTime, formatStep, formatValue, plotlyText } from './format.js';
import { HealthBanner } from './health.js';
import { IncidentsPanel } from './incidents.js';
import { ChartGroup } from './linked.js';
import { ScaleToggle } from './scale_toggle.js';
import { parseSeries } from './series.js';
import { CHARTED_STATS, CHARTS, LOSS_CHART, clipText, clipTrace, tensorChart, tensorOf } from './vitals.js';

const HEALTH_DEBOUNCE_MS = 400;
const ZOOM_HALF_WIDTH = 25; // steps either side of a clicked alert or incident, at least
const COUNT_STATS = ['nan', 'posinf', 'neginf'];
// Draw order: raw loss first (it gets the first legend slot), markers later; tensor stats in
// CHARTED_STATS order per rank, so each band's max trace follows its min.
const FIRST = ['loss', 'loss_used', 'grad_norm', 'grad_norm_post'];

function drawOrder(s) {
  const t = tensorOf(s.name);
  if (t) return [1, t.tensor, s.rank, CHARTED_STATS.indexOf(t.stat)];
  return [0, '', s.rank, FIRST.indexOf(s.name) >>> 0];
}

function compareOrder(a, b) {
  const [x, y] = [drawOrder(a), drawOrder(b)];
  for (let i = 0; i < x.length; i += 1) {
    if (x[i] < y[i]) return -1;
    if (x[i] > y[i]) return 1;
  }
  return 0;
}

export class RunView {
  /**
   * @param {HTMLElement} root the #run-view section
   * @param {import('./api.js').Api} api
   * @param {number} runId
   * @param {object} hooks follow(names) → Promise<generation> (subscribes; resolves once the
   *   subscription is sent, or -1 when offline); onError(message); conditionsLine(name) → the
   *   line of the run's open conditions for its header (conditions.js; optional)
   */
  constructor(root, api, runId, { follow, onError, conditionsLine = null }) {
    this.root = root;
    this.api = api;
    this.readOnly = Boolean(api.readOnly);
    this.runId = runId;
    this.hooks = { follow, onError, conditionsLine };
    this.run = null;
    this.firstBad = null; // {rank, step, rule, series}: the rank that went bad first (REST)
    this.generation = null; // live generation the loaded data is consistent with
    this.loading = false;
    this.loadToken = 0;
    this.buffer = [];
    this.destroyed = false;
    this.pointsReceived = 0; // live step records applied to this view (tests read this)
    this.refetches = 0; // zoomed re-fetches drawn (tests read this)
    this.thinned = false; // whether the last full load came downsampled
    this.names = []; // the series on the charts
    this.componentOrder = new Map();
    this.counts = new Map(); // tensor -> Map(step -> {nan, posinf, neginf}) of steps with any
    this.healthTimer = null;
    this.build();
  }

  get name() {
    return this.run?.name ?? null;
  }

  /** Whether live updates of run `name` belong here. */
  follows(name) {
    return name === this.name;
  }

  build() {
    this.nameEl = h('h2', { class: 'run-name' }, `run ${this.runId}`);
    this.statusEl = h('span', { class: 'status' });
    this.metaEl = h('p', { class: 'run-meta' });
    this.configEl = h('details', { id: 'config', class: 'config', hidden: true });
    this.conditionsLine = this.hooks.conditionsLine ? this.hooks.conditionsLine(() => this.name) : null;
    const exports = this.readOnly ? null : h('p', { class: 'exports' }, 'Export: ',
      h('a', { id: 'export-html', href: this.api.exportUrl(this.runId, 'report.html'), download: '' },
        'HTML report'), ' · ',
      h('a', { id: 'export-csv', href: this.api.exportUrl(this.runId, 'export.csv'), download: '' }, 'CSV'));
    this.health = new HealthBanner();
    const chartsEl = h('div', { class: 'charts' });
    this.group = new ChartGroup(chartsEl, { onRange: (range) => this.refetch(range) });
    this.tensorSpecs = new Map();
    // The loss chart's y scale is the user's choice, remembered per run (a loss that explodes
    // to 1e33 flattens everything before it on a linear axis).
    this.lossScale = new ScaleToggle(`run:${this.runId}`,
      { onChange: (scale) => this.group.get(LOSS_CHART.id).chart.setScale(scale) });
    for (const spec of CHARTS) this.group.ensure(spec, spec === LOSS_CHART ? { scale: this.lossScale.scale } : {});
    this.group.get(LOSS_CHART.id).tools.append(this.lossScale.el);
    const list = h('ul', { id: 'alerts', class: 'alerts-list' });
    const empty = h('p', { class: 'empty' }, 'No alerts for this run.');
    this.alerts = new AlertsPanel(list, empty,
      { onSelect: (a) => this.zoomTo(a.first_step, a.last_step) });
    // An incident is zoomed to from its onset to the step it failed at (a warning that
    // escalated), or around its onset.
    this.incidents = new IncidentsPanel(
      { onSelect: (i) => this.zoomTo(i.onset_step, i.escalated_step ?? i.onset_step) });
    replaceChildren(this.root,
      h('div', { class: 'run-header' }, this.nameEl, this.statusEl, exports, this.metaEl,
        this.conditionsLine?.el ?? null, this.configEl),
      this.incidents.el,
      this.health.el,
      h('div', { class: 'run-body' },
        chartsEl,
        h('section', { class: 'card alerts-panel', 'aria-labelledby': 'alerts-heading' },
          h('h3', { id: 'alerts-heading' }, 'All alerts'),
          h('p', { class: 'hint' }, 'The findings behind the incidents. Click one to zoom every chart to it.'),
          list, empty)));
    this.root.dataset.runId = String(this.runId);
    this.root.dataset.state = 'loading';
  }

  /** The chart spec series `name` is drawn on (a tensor's chart is made on first use), or null. */
  specFor(name) {
    const t = tensorOf(name);
    if (!t) return CHARTS.find((spec) => spec.accepts(name)) ?? null;
    let spec = this.tensorSpecs.get(t.tensor);
    if (!spec) {
      spec = tensorChart(t.tensor);
      this.tensorSpecs.set(t.tensor, spec);
      this.group.ensure(spec, { prepare: (chart) => spec.prepare(chart, (n, r) => this.label(spec, n, r)) });
    }
    return spec;
  }

  /** Header text from a run row (REST shape). */
  showRun(run) {
    if (!run || this.destroyed) return;
    const lastStep = this.run?.last_step ?? null;
    const before = this.run ? displayStatus(this.run) : null;
    this.run = { ...this.run, ...run };
    if (lastStep !== null && (this.run.last_step ?? -Infinity) < lastStep) this.run.last_step = lastStep;
    const r = this.run;
    const status = displayStatus(r);
    this.nameEl.textContent = r.name;
    this.nameEl.title = r.name;
    this.statusEl.className = `status status-${status}`;
    this.statusEl.textContent = status;
    this.statusEl.title = r.reason || '';
    const ranks = r.world_size > 1 ? `${r.world_size} ranks` : '1 rank';
    const parts = [`step ${formatStep(r.last_step)}`, ranks, `started ${formatFullTime(r.first_time ?? r.created)}`];
    const bad = r.world_size > 1 ? this.firstBad : null; // from /api/runs/{id}: which rank went bad first
    replaceChildren(this.metaEl, parts.join(' · '),
      bad ? h('span', { class: 'warn first-bad' },
        ` · rank ${bad.rank} went bad first, at step ${formatStep(bad.step)} (${bad.rule}: ${bad.series})`) : null,
      r.dropped ? h('span', { class: 'warn' }, ` · ${r.dropped} record(s) dropped by the trainer`) : null,
      r.reason ? h('span', { class: 'reason' }, ` · ${r.reason}`) : null);
    this.alerts.multiRank = r.world_size > 1;
    this.incidents.multiRank = r.world_size > 1;
    this.conditionsLine?.render();
    this.showConfig(r.config ?? {});
    if (before !== null && before !== status) this.scheduleHealth();
  }

  /** The run's config, as text (keys and values are the user's). */
  showConfig(config) {
    const entries = Object.entries(config);
    const text = JSON.stringify(config);
    if (this.configEl.dataset.shown === text) return; // keep it open or closed as the user left it
    this.configEl.dataset.shown = text;
    this.configEl.hidden = entries.length === 0;
    this.configEl.open = this.readOnly; // a report is read top to bottom: show it
    replaceChildren(this.configEl, h('summary', {}, `Config (${entries.length})`),
      h('table', { class: 'config-table' }, entries.map(([k, v]) =>
        h('tr', {}, h('th', {}, k), h('td', {}, typeof v === 'string' ? v : JSON.stringify(v))))));
  }

  /** (Re)load everything from REST; live records arriving meanwhile are buffered. */
  async load() {
    const token = ++this.loadToken;
    this.loading = true;
    this.buffer = [];
    this.generation = null;
    this.root.dataset.state = 'loading';
    try {
      const detail = await this.api.run(this.runId);
      if (this.stale(token)) return;
      this.firstBad = detail.first_bad ?? null;
      this.showRun(detail.run);
      const generation = await this.hooks.follow([detail.run.name]);
      if (this.stale(token)) return;
      this.generation = generation;
      this.names = [...new Set(detail.series.map((s) => s.name))].filter((n) => this.specFor(n));
      const buckets = this.group.width();
      this.scheduleHealth(0);
      const [series, clips, alerts, incidents] = await Promise.all([
        this.api.series(this.runId, this.names, { buckets }),
        this.api.clips(this.runId, { limit: 4 * buckets }), this.api.alerts(detail.run.name),
        this.api.incidents(this.runId)]);
      if (this.stale(token)) return;
      this.thinned = series.some((s) => s.downsampled);
      this.draw(series, clips, 4 * buckets);
      this.alerts.set(alerts);
      this.incidents.set(incidents);
      this.finishLoading();
      this.root.dataset.state = 'ready';
      if (this.thinned && this.group.range) this.refetch(this.group.range);
    } catch (err) {
      if (this.stale(token)) return;
      this.loading = false;
      this.root.dataset.state = 'error';
      if (err.status === 404) {
        this.destroy();
        replaceChildren(this.root, h('p', { class: 'empty placeholder' }, `There is no run with id ${this.runId}.`));
      } else {
        this.hooks.onError(`Could not load run ${this.runId}: ${err.message ?? err}`);
      }
    }
  }

  /** Fetch the visible steps again for the charts' width (only if the full view was thinned). */
  async refetch(range) {
    if (this.readOnly || !this.thinned || this.destroyed || this.root.dataset.state !== 'ready') return;
    const token = ++this.loadToken;
    this.loading = true;
    this.buffer = [];
    const buckets = this.group.width();
    const span = range ? { start: Math.floor(range[0]), end: Math.ceil(range[1]) } : {};
    try {
      const [series, clips] = await Promise.all([
        this.api.series(this.runId, this.names, { buckets, ...span }),
        this.api.clips(this.runId, { ...span, limit: 4 * buckets })]);
      if (this.stale(token)) return;
      this.draw(series, clips, 4 * buckets);
      this.refetches += 1;
    } catch (err) {
      if (this.stale(token)) return;
      this.hooks.onError(`Could not load steps ${span.start ?? ''}–${span.end ?? ''}: ${err.message ?? err}`);
    }
    this.finishLoading();
  }

  finishLoading() {
    this.loading = false;
    const buffered = this.buffer;
    this.buffer = [];
    for (const item of buffered) this.apply(item);
  }

  stale(token) {
    return this.destroyed || token !== this.loadToken;
  }

  /** Legend text of series `name` of `rank` on chart `spec` (user text; escaped by the chart). */
  label(spec, name, rank) {
    const base = spec.label ? spec.label(name) : name;
    return this.run?.world_size > 1 || rank !== 0 ? `${base} [rank ${rank}]` : base;
  }

  rankLabel(rank) {
    return this.run?.world_size > 1 || rank !== 0 ? ` (rank ${rank})` : '';
  }

  /** Hover note of series `name` at a step where the loss guard saw `clip` (or ''). */
  guardNote(name, clip) {
    if (name !== 'loss' || !clip) return '';
    if (!Number.isFinite(clip.raw)) return `loss guard: ${plotlyText(clip.reason)}, action ${plotlyText(clip.action)}`;
    return `loss guard fired: ${plotlyText(clip.action)} (threshold ${formatValue(clip.threshold)})`;
  }

  addValue(name, rank, step, value, clip) {
    const spec = this.specFor(name);
    if (!spec) return;
    if (!this.componentOrder.has(name) && parseSeries(name).kind === 'component') {
      this.componentOrder.set(name, this.componentOrder.size); // one colour per component
    }
    this.group.get(spec.id).chart.addPoint(`s:${name}#${rank}`, this.label(spec, name, rank),
      spec.style(name, this.componentOrder.get(name) ?? 0, rank), step, value, this.guardNote(name, clip));
    const t = tensorOf(name);
    if (t && COUNT_STATS.includes(t.stat) && value !== 0) this.noteCount(t.tensor, t.stat, step, value);
  }

  noteCount(tensor, stat, step, value) {
    if (!this.counts.has(tensor)) this.counts.set(tensor, new Map());
    const steps = this.counts.get(tensor);
    if (!steps.has(step)) steps.set(step, { nan: 0, posinf: 0, neginf: 0 });
    steps.get(step)[stat] = value;
  }

  /** Each tensor chart's caption line on its NaN/Inf element counts. */
  renderCounts() {
    for (const [tensor, spec] of this.tensorSpecs) {
      const { extra } = this.group.get(spec.id);
      const steps = this.counts.get(tensor);
      extra.hidden = false;
      this.group.get(spec.id).chart.setY3Visible(Boolean(steps?.size));
      if (!steps || !steps.size) {
        extra.className = 'chart-extra ok';
        extra.textContent = 'No NaN/Inf elements.';
        continue;
      }
      const last = Math.max(...steps.keys());
      const c = steps.get(last);
      extra.className = 'chart-extra bad';
      extra.textContent = `NaN/Inf elements on ${steps.size} step(s)${this.thinned ? ' shown' : ''}; `
        + `latest at step ${last}: ${formatValue(c.nan)} NaN, ${formatValue(c.posinf)} +Inf, `
        + `${formatValue(c.neginf)} −Inf.`;
    }
  }

  addClip(clip, rank, step) {
    if (!Number.isFinite(clip.raw)) return; // drawn as the loss's own NaN/Inf edge marker
    this.group.get(LOSS_CHART.id).chart.addMarker('clip', clipTrace, `${rank}:${step}`, step, clip.raw,
      clipText(clip, step, this.rankLabel(rank)));
  }

  draw(series, clips, clipLimit) {
    for (const { chart } of this.group.entries()) chart.reset();
    this.counts.clear();
    const clipAt = new Map(clips.map((c) => [`${c.rank}:${c.step}`, c]));
    for (const s of [...series].sort(compareOrder)) {
      for (let i = 0; i < s.steps.length; i += 1) {
        this.addValue(s.name, s.rank, s.steps[i], s.values[i], clipAt.get(`${s.rank}:${s.steps[i]}`));
      }
    }
    for (const c of clips) this.addClip(c, c.rank, c.step);
    const { extra } = this.group.get(LOSS_CHART.id);
    extra.hidden = clips.length < clipLimit;
    extra.className = 'chart-extra';
    extra.textContent = `Showing the first ${clips.length} loss-guard events here; `
      + (this.readOnly ? 'the report holds no more.' : 'zoom in to see the others.');
    this.renderCounts();
    for (const { chart } of this.group.entries()) chart.draw();
  }

  /** Zoom every chart to steps first..last (an alert's, an incident's) and mark the first; a
   * long span shows only its beginning, where the cause is. */
  zoomTo(first, last) {
    const half = Math.max(ZOOM_HALF_WIDTH, Math.round((this.run?.last_step ?? 0) * 0.01));
    const long = last - first > 4 * half;
    const range = [first - half, (long ? first : last) + half];
    this.group.zoom(range, first);
  }

  /** A live `steps` message (decoded records) for this run. */
  onSteps(name, records) {
    for (const record of records) {
      if (this.loading) this.buffer.push({ record });
      else this.apply({ record });
    }
  }

  /** A live `alert` message (decoded alert) for this run. */
  onAlert(alert) {
    if (this.loading) this.buffer.push({ alert });
    else this.apply({ alert });
    this.scheduleHealth();
  }

  /** A live `incident` message (decoded incident) for this run. */
  onIncident(incident) {
    if (this.loading) this.buffer.push({ incident });
    else this.apply({ incident });
    this.scheduleHealth();
  }

  apply({ record, alert, incident }) {
    if (alert) {
      this.alerts.upsert(alert);
      return;
    }
    if (incident) {
      this.incidents.upsert(incident);
      return;
    }
    const { rank, step, values, clip } = record;
    for (const [name, value] of Object.entries(values)) this.addValue(name, rank, step, value, clip);
    if (clip) this.addClip(clip, rank, step);
    this.pointsReceived += 1;
    if (this.run && step > (this.newestStep ?? this.run.last_step ?? -Infinity)) this.newestStep = step;
    this.refreshText();
    for (const { chart } of this.group.entries()) {
      chart.follow = true; // live data flows: keep room for it on the axes (charts.js)
      if (chart.drawn) chart.schedule();
      else chart.draw(); // a tensor seen for the first time
    }
  }

  /** The header's step and the NaN/Inf notes, once per animation frame rather than per record
   * (at 100 records a second, rebuilding them for each kept the page from drawing). */
  refreshText() {
    if (this.textFrame) return;
    this.textFrame = requestAnimationFrame(() => {
      this.textFrame = null;
      if (this.destroyed) return;
      if (this.newestStep !== undefined && this.newestStep !== null) {
        this.showRun({ last_step: this.newestStep });
        this.newestStep = null;
      }
      this.renderCounts();
    });
  }

  scheduleHealth(delay = HEALTH_DEBOUNCE_MS) {
    clearTimeout(this.healthTimer);
    this.healthTimer = setTimeout(() => this.loadHealth(), delay);
  }

  async loadHealth() {
    try {
      const health = await this.api.health(this.runId);
      if (!this.destroyed) this.health.set(health);
    } catch (err) {
      if (!this.destroyed) this.health.failed(`Could not check the run’s health: ${err.message ?? err}`);
    }
  }

  traceLengths(id) {
    return this.group.traceLengths(id);
  }

  draws(id) {
    return this.group.draws(id);
  }

  updates(id) {
    return this.group.updates(id);
  }

  settled() {
    return this.group.settled();
  }

  destroy() {
    this.destroyed = true;
    this.conditionsLine?.remove();
    clearTimeout(this.healthTimer);
    this.group.destroy();
  }
}
