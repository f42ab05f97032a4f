// One run on screen: header, charts and alerts. Loads from REST, then follows live updates.
//
// Gap-free loading: the app subscribes to the run *before* the REST snapshot is fetched; live
// records that arrive meanwhile are buffered and applied after the snapshot is drawn. Charts
// drop points they already hold, so the overlap between snapshot and buffer costs nothing.
// The section carries data-state="loading|ready|error" and data-run-id.

import { AlertsPanel } from './alerts.js';
import { Chart } from './charts.js';
import { h, replaceChildren } from './dom.js';
import { formatFullTime, formatStep, formatValue, plotlyText } from './format.js';
import { CHARTS, LOSS_CHART, clipText, clipTrace } from './vitals.js';

export class RunView {
  /**
   * @param {HTMLElement} root the #run-view section
   * @param {import('./api.js').Api} api
   * @param {number} runId
   * @param {object} hooks follow(name) → Promise<generation> (subscribes; resolves once the
   *   subscription is sent, or -1 when offline); onError(message)
   */
  constructor(root, api, runId, { follow, onError }) {
    this.root = root;
    this.api = api;
    this.runId = runId;
    this.hooks = { follow, onError };
    this.run = null;
    this.generation = null; // live generation the loaded data is consistent with
    this.loading = false;
    this.loadToken = 0;
    this.buffer = [];
    this.destroyed = false;
    this.pointsReceived = 0; // live step records applied to this view (tests read this)
    this.componentOrder = new Map();
    this.build();
  }

  get name() {
    return this.run?.name ?? null;
  }

  build() {
    this.nameEl = h('h2', { class: 'run-name' }, `run ${this.runId}`);
    this.statusEl = h('span', { class: 'status' });
    this.metaEl = h('p', { class: 'run-meta' });
    this.charts = new Map();
    const figures = CHARTS.map((spec) => {
      const el = h('div', { id: spec.id, class: 'chart', dataset: { chart: spec.id } });
      this.charts.set(spec.id, { spec, chart: new Chart(el, { logY: spec.logY, yTitle: spec.yTitle }) });
      return h('figure', { class: 'card chart-card' },
        h('figcaption', {}, h('h3', {}, spec.title), h('p', { class: 'chart-note' }, spec.note)),
        el);
    });
    const list = h('ul', { id: 'alerts', class: 'alerts-list' });
    const empty = h('p', { class: 'empty' }, 'No alerts for this run.');
    this.alerts = new AlertsPanel(list, empty);
    replaceChildren(this.root,
      h('div', { class: 'run-header' }, this.nameEl, this.statusEl, this.metaEl),
      h('div', { class: 'run-body' },
        h('div', { class: 'charts' }, figures),
        h('section', { class: 'card alerts-panel', 'aria-labelledby': 'alerts-heading' },
          h('h3', { id: 'alerts-heading' }, 'Alerts'), list, empty)));
    this.root.dataset.runId = String(this.runId);
    this.root.dataset.state = 'loading';
  }

  /** Header text from a run row (REST shape). */
  showRun(run) {
    if (!run || this.destroyed) return;
    const lastStep = this.run?.last_step ?? null;
    this.run = { ...this.run, ...run };
    if (lastStep !== null && (this.run.last_step ?? -Infinity) < lastStep) this.run.last_step = lastStep;
    const r = this.run;
    this.nameEl.textContent = r.name;
    this.nameEl.title = r.name;
    this.statusEl.className = `status status-${r.status}`;
    this.statusEl.textContent = r.status;
    this.statusEl.title = r.reason || '';
    const ranks = r.world_size > 1 ? `${r.world_size} ranks` : '1 rank';
    const parts = [`step ${formatStep(r.last_step)}`, ranks, `started ${formatFullTime(r.first_time ?? r.created)}`];
    replaceChildren(this.metaEl, parts.join(' · '),
      r.dropped ? h('span', { class: 'warn' }, ` · ${r.dropped} record(s) dropped by the trainer`) : null,
      r.reason ? h('span', { class: 'reason' }, ` · ${r.reason}`) : null);
    this.alerts.multiRank = r.world_size > 1;
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
      this.showRun(detail.run);
      const generation = await this.hooks.follow(detail.run.name);
      if (this.stale(token)) return;
      this.generation = generation;
      const names = [...new Set(detail.series.map((s) => s.name))]
        .filter((n) => CHARTS.some((spec) => spec.accepts(n)));
      const [series, clips, alerts] = await Promise.all([
        this.api.series(this.runId, names), this.api.clips(this.runId), this.api.alerts(detail.run.name)]);
      if (this.stale(token)) return;
      this.draw(series, clips);
      this.alerts.set(alerts);
      this.loading = false;
      const buffered = this.buffer;
      this.buffer = [];
      for (const item of buffered) this.apply(item);
      this.root.dataset.state = 'ready';
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

  stale(token) {
    return this.destroyed || token !== this.loadToken;
  }

  label(name, rank) {
    return this.run?.world_size > 1 || rank !== 0 ? `${name} [rank ${rank}]` : name;
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
    for (const { spec, chart } of this.charts.values()) {
      if (!spec.accepts(name)) continue;
      if (!this.componentOrder.has(name) && name.startsWith('loss/')) {
        this.componentOrder.set(name, this.componentOrder.size); // one colour per component
      }
      chart.addPoint(`s:${name}#${rank}`, this.label(name, rank),
        spec.style(name, this.componentOrder.get(name) ?? 0, rank), step, value, this.guardNote(name, clip));
    }
  }

  addClip(clip, rank, step) {
    if (!Number.isFinite(clip.raw)) return; // drawn as the loss's own NaN/Inf edge marker
    this.charts.get(LOSS_CHART.id).chart.addMarker('clip', clipTrace, `${rank}:${step}`, step, clip.raw,
      clipText(clip, step, this.rankLabel(rank)));
  }

  draw(series, clips) {
    for (const { chart } of this.charts.values()) chart.reset();
    const clipAt = new Map(clips.map((c) => [`${c.rank}:${c.step}`, c]));
    // loss and loss_used first so they get the first legend slots and draw under the markers.
    const order = (s) => ['loss', 'loss_used', 'grad_norm', 'grad_norm_post'].indexOf(s.name) >>> 0;
    for (const s of [...series].sort((a, b) => order(a) - order(b))) {
      for (let i = 0; i < s.steps.length; i += 1) {
        this.addValue(s.name, s.rank, s.steps[i], s.values[i], clipAt.get(`${s.rank}:${s.steps[i]}`));
      }
    }
    for (const c of clips) this.addClip(c, c.rank, c.step);
    for (const { chart } of this.charts.values()) chart.draw();
  }

  /** A live `steps` message (decoded records) for this run. */
  onSteps(records) {
    for (const record of records) {
      if (this.loading) this.buffer.push({ record });
      else this.apply({ record });
    }
  }

  /** A live `alert` message (decoded alert) for this run. */
  onAlert(alert) {
    if (this.loading) this.buffer.push({ alert });
    else this.apply({ alert });
  }

  apply({ record, alert }) {
    if (alert) {
      this.alerts.upsert(alert);
      return;
    }
    const { rank, step, values, clip } = record;
    for (const [name, value] of Object.entries(values)) this.addValue(name, rank, step, value, clip);
    if (clip) this.addClip(clip, rank, step);
    this.pointsReceived += 1;
    if (this.run && step > (this.run.last_step ?? -Infinity)) this.showRun({ last_step: step });
    for (const { chart } of this.charts.values()) chart.schedule();
  }

  /** Number of points in each trace of chart `id`, by trace key (what plotly holds now). */
  traceLengths(id) {
    const el = this.charts.get(id)?.chart.el;
    return Object.fromEntries((el?.data ?? []).map((t) => [t.meta, t.x.length]));
  }

  /** How many times chart `id` was drawn from scratch (live points are appended instead). */
  draws(id) {
    return this.charts.get(id)?.chart.draws ?? 0;
  }

  /** Resolves when every chart has applied what it was given. */
  async settled() {
    for (const { chart } of this.charts.values()) chart.flush();
    await Promise.all([...this.charts.values()].map(({ chart }) => chart.settled()));
  }

  destroy() {
    this.destroyed = true;
    for (const { chart } of this.charts.values()) chart.destroy();
  }
}
