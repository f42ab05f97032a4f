// Two or more runs overlaid on the same charts, aligned by step (`#compare=<id>,<id>,...`).
//
// One colour per run; the series of one run are told apart by dash (raw loss solid, loss used
// dotted, ...). Loss, gradient norm, and each watched tensor's max (the value that overflows
// exp) are compared. Live updates of every compared run are appended as they come; long runs
// are thinned by the server (M4) for the charts' width, and zooming re-fetches, as on a run.
// Above the charts, a table says how the runs differ (compare_table.js): the config keys whose
// values differ, each run's first incident, its final loss and last step. The loss chart's y
// scale is remembered per comparison, as a run's is per run.

import { CompareTable } from './compare_table.js';
import { h, replaceChildren } from './dom.js';
import { ChartGroup } from './linked.js';
import { ScaleToggle } from './scale_toggle.js';
import { tensorSeries } from './series.js';
import { GRAD_CHART, LOSS_CHART, idPart, tensorOf } from './vitals.js';

const RUN_COLORS = ['#2563eb', '#dc2626', '#059669', '#9333ea', '#ea580c', '#0891b2', '#4d7c0f', '#be185d'];
const DASH = { loss: 'solid', loss_used: 'dot', grad_norm: 'solid', grad_norm_post: 'dot' };

/** Which series a compare chart shows, and its spec. */
function compareSpecs(tensors) {
  return [
    { ...LOSS_CHART, note: 'Solid: raw loss; dotted: backpropagated loss. One colour per run.',
      accepts: (n) => n === 'loss' || n === 'loss_used' },
    { ...GRAD_CHART, note: 'Solid: before clipping; dotted: after. One colour per run.' },
    ...tensors.map((tensor) => ({
      id: `chart-tensor-${idPart(tensor)}`, tensor, title: `Tensor ${tensor}: max`,
      note: 'Largest finite element, per run.', logY: false, yTitle: 'max',
      accepts: (n) => n === tensorSeries(tensor, 'max'),
    })),
  ];
}

export class CompareView {
  /**
   * @param {HTMLElement} root the #run-view section
   * @param {import('./api.js').Api} api
   * @param {number[]} runIds
   * @param {object} hooks follow(names) → Promise<generation>; onError(message)
   */
  constructor(root, api, runIds, { follow, onError }) {
    this.root = root;
    this.api = api;
    this.runIds = runIds;
    this.hooks = { follow, onError };
    this.runs = []; // run rows, in runIds order
    this.generation = null;
    this.loading = false;
    this.loadToken = 0;
    this.buffer = [];
    this.destroyed = false;
    this.pointsReceived = 0;
    this.refetches = 0;
    this.thinned = false;
    this.specs = [];
    this.build();
  }

  get key() {
    return `compare:${this.runIds.join(',')}`;
  }

  follows(name) {
    return this.runs.some((r) => r.name === name);
  }

  build() {
    this.titleEl = h('h2', { class: 'run-name' }, 'Compare runs');
    this.table = new CompareTable(RUN_COLORS);
    this.chartsEl = h('div', { class: 'charts' });
    this.group = new ChartGroup(this.chartsEl, { onRange: (range) => this.refetch(range) });
    this.lossScale = new ScaleToggle(this.key,
      { onChange: (scale) => this.group.get(LOSS_CHART.id)?.chart.setScale(scale) });
    replaceChildren(this.root,
      h('div', { class: 'run-header' }, this.titleEl),
      this.table.el,
      h('div', { class: 'compare-body' }, this.chartsEl));
    this.root.dataset.runId = this.runIds.join(',');
    this.root.dataset.state = 'loading';
  }

  showRun(run) {
    const i = this.runs.findIndex((r) => r.id === run?.id);
    if (i < 0) return;
    const lastStep = this.runs[i].last_step ?? null;
    this.runs[i] = { ...this.runs[i], ...run };
    if (lastStep !== null && (this.runs[i].last_step ?? -Infinity) < lastStep) this.runs[i].last_step = lastStep;
    this.table.setRuns(this.runs);
  }

  async load() {
    const token = ++this.loadToken;
    this.loading = true;
    this.buffer = [];
    this.root.dataset.state = 'loading';
    try {
      const details = await Promise.all(this.runIds.map((id) => this.api.run(id)));
      if (this.stale(token)) return;
      this.runs = details.map((d) => d.run);
      this.titleEl.textContent = `Compare: ${this.runs.map((r) => r.name).join(' vs ')}`;
      this.table.setRuns(this.runs);
      this.generation = await this.hooks.follow(this.runs.map((r) => r.name));
      if (this.stale(token)) return;
      const tensors = [...new Set(details.flatMap((d) => d.series.map((s) => tensorOf(s.name)))
        .filter((t) => t?.stat === 'max').map((t) => t.tensor))].sort();
      this.specs = compareSpecs(tensors);
      for (const spec of this.specs) {
        this.group.ensure(spec, spec.id === LOSS_CHART.id ? { scale: this.lossScale.scale } : {});
      }
      this.group.get(LOSS_CHART.id).tools.append(this.lossScale.el);
      this.names = details.map((d) => [...new Set(d.series.map((s) => s.name))]
        .filter((n) => this.specs.some((spec) => spec.accepts(n))));
      const [incidents] = await Promise.all([
        Promise.all(this.runs.map((r) => this.api.incidents(r.id))),
        this.fetchAndDraw(token, {})]);
      if (this.stale(token)) return;
      this.runs.forEach((r, i) => this.table.setIncidents(r.id, incidents[i]));
      this.thinned = this.lastThinned;
      this.root.dataset.state = 'ready';
    } catch (err) {
      if (this.stale(token)) return;
      this.loading = false;
      this.root.dataset.state = 'error';
      this.hooks.onError(`Could not load runs ${this.runIds.join(', ')}: ${err.message ?? err}`);
    }
  }

  async fetchAndDraw(token, span) {
    const buckets = this.group.width();
    const all = await Promise.all(this.runs.map((r, i) =>
      this.api.series(r.id, this.names[i], { buckets, ...span })));
    if (this.stale(token)) return;
    this.lastThinned = all.flat().some((s) => s.downsampled);
    for (const { chart } of this.group.entries()) chart.reset();
    this.table.resetLosses();
    all.forEach((series, i) => {
      for (const s of series) {
        for (let j = 0; j < s.steps.length; j += 1) this.addValue(i, s.name, s.rank, s.steps[j], s.values[j]);
      }
    });
    for (const { chart } of this.group.entries()) chart.draw();
    this.finishLoading();
  }

  finishLoading() {
    this.loading = false;
    const buffered = this.buffer;
    this.buffer = [];
    for (const item of buffered) this.apply(item.name, item.record);
  }

  async refetch(range) {
    if (!this.thinned || this.destroyed || this.root.dataset.state !== 'ready') return;
    const token = ++this.loadToken;
    this.loading = true;
    this.buffer = [];
    try {
      await this.fetchAndDraw(token, range ? { start: Math.floor(range[0]), end: Math.ceil(range[1]) } : {});
      if (!this.stale(token)) this.refetches += 1;
    } catch (err) {
      if (this.stale(token)) return;
      this.finishLoading();
      this.hooks.onError(`Could not load the zoomed steps: ${err.message ?? err}`);
    }
  }

  stale(token) {
    return this.destroyed || token !== this.loadToken;
  }

  addValue(runIndex, name, rank, step, value) {
    const spec = this.specs.find((s) => s.accepts(name));
    if (!spec) return;
    const run = this.runs[runIndex];
    if (name === 'loss' && rank === 0) this.table.noteLoss(run.id, step, value);
    const color = RUN_COLORS[runIndex % RUN_COLORS.length];
    const rankPart = rank ? ` [rank ${rank}]` : '';
    const series = tensorOf(name) ? 'max' : name;
    const make = () => ({
      type: 'scatter', mode: 'lines', connectgaps: false,
      line: { color, width: 2, dash: DASH[name] ?? 'solid' },
      hovertemplate: 'step %{x}<br>%{y:.5~g}%{text}',
    });
    this.group.get(spec.id).chart.addPoint(`s:${run.id}:${name}#${rank}`, `${run.name} · ${series}${rankPart}`,
      make, step, value);
  }

  onSteps(name, records) {
    for (const record of records) {
      if (this.loading) this.buffer.push({ name, record });
      else this.apply(name, record);
    }
  }

  onAlert() { /* alerts show on each run's own page */ }

  /** A live incident of a compared run: its first incident may have changed. */
  onIncident(incident) {
    const run = this.runs.find((r) => r.name === incident.run);
    if (run) this.table.upsertIncident(run.id, incident);
  }

  apply(name, { rank, step, values }) {
    const i = this.runs.findIndex((r) => r.name === name);
    if (i < 0) return;
    for (const [series, value] of Object.entries(values)) this.addValue(i, series, rank, step, value);
    this.pointsReceived += 1;
    if (step > (this.runs[i].last_step ?? -Infinity)) this.showRun({ id: this.runs[i].id, last_step: step });
    for (const { chart } of this.group.entries()) chart.schedule();
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
    this.table.destroy();
    this.group.destroy();
  }
}
