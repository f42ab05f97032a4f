// A column of charts that share the step axis: zooming one zooms all, and the new range is
// reported once (debounced) so the view can fetch finer data for it.
//
// Charts are figure cards (`figure.chart-card > div.chart#<id>`); tensor charts come and go
// with the data, so cards can be added at any time.

import { Chart, sameRange } from './charts.js';
import { h } from './dom.js';

const RANGE_DEBOUNCE_MS = 150;

export class ChartGroup {
  /**
   * @param {HTMLElement} container where the cards go
   * @param {object} hooks onRange(range) — the shown steps changed ([x0, x1] or null: all)
   */
  constructor(container, { onRange = () => {} } = {}) {
    this.container = container;
    this.onRange = onRange;
    this.charts = new Map(); // id -> {spec, chart, card, note}
    this.range = null;
    this.mark = null;
    this.timer = null;
  }

  /** The chart of `spec` (made, with its card, on first use). `options` go to `Chart`. */
  ensure(spec, options = {}) {
    let entry = this.charts.get(spec.id);
    if (entry) return entry;
    const el = h('div', { id: spec.id, class: 'chart', dataset: { chart: spec.id } });
    const note = h('p', { class: 'chart-note' }, spec.note);
    const extra = h('p', { class: 'chart-extra', hidden: true });
    const card = h('figure', { class: 'card chart-card', dataset: { tensor: spec.tensor ?? null } },
      h('figcaption', {}, h('h3', {}, spec.title), note, extra), el);
    const chart = new Chart(el, {
      logY: spec.logY, yTitle: spec.yTitle, y3Title: spec.y3Title ?? '', ...options,
      onRange: (range) => this.zoom(range, this.mark, chart),
    });
    chart.range = this.range;
    chart.markStep = this.mark;
    entry = { spec, chart, card, extra };
    this.charts.set(spec.id, entry);
    this.container.append(card);
    return entry;
  }

  get(id) {
    return this.charts.get(id) ?? null;
  }

  entries() {
    return [...this.charts.values()];
  }

  /** Width in CSS pixels of the plotting area (for the number of points worth fetching). */
  width() {
    const el = this.entries()[0]?.chart.el;
    return Math.max(100, Math.min(4000, Math.round((el?.clientWidth || 1000) - 80)));
  }

  /** Show steps `range` (null: all) on every chart, highlight `mark`; `source` already shows it. */
  zoom(range, mark = this.mark, source = null) {
    const changed = !sameRange(range, this.range);
    this.range = range;
    this.mark = mark;
    for (const { chart } of this.charts.values()) {
      if (chart !== source) chart.setRange(range, mark);
      else chart.markStep = mark;
    }
    if (!changed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { this.timer = null; this.onRange(this.range); }, RANGE_DEBOUNCE_MS);
  }

  /** Number of points in each trace of chart `id`, by trace key (what plotly holds now). */
  traceLengths(id) {
    const el = this.charts.get(id)?.chart.el;
    return Object.fromEntries((el?.data ?? []).map((t) => [t.meta, t.x.length]));
  }

  draws(id) {
    return this.charts.get(id)?.chart.draws ?? 0;
  }

  /** Resolves when every chart has applied what it was given. */
  async settled() {
    for (const { chart } of this.charts.values()) chart.flush();
    await Promise.all([...this.charts.values()].map(({ chart }) => chart.settled()));
  }

  destroy() {
    clearTimeout(this.timer);
    for (const { chart } of this.charts.values()) chart.destroy();
  }
}
