// A grid of charts that share the step axis: zooming one zooms all, and the new range is
// reported once (debounced) so the view can fetch finer data for it. A crosshair follows the
// pointer across all of them: the step under it is marked by a vertical line on every chart.
//
// Charts are figure cards (`figure.chart-card > div.chart#<id>`, with the crosshair
// `div.crosshair[data-step]` beside the chart and controls in `.chart-tools`); tensor charts
// come and go with the data, so cards can be added at any time. The container lays them out
// (style.css: as many columns as fit).

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
    this.crosshairStep = null; // the step under the pointer, on whichever chart, or null
    this.frame = null;
  }

  /** The chart of `spec` (made, with its card, on first use). `options` go to `Chart`. */
  ensure(spec, options = {}) {
    let entry = this.charts.get(spec.id);
    if (entry) return entry;
    const el = h('div', { id: spec.id, class: 'chart', dataset: { chart: spec.id } });
    const note = h('p', { class: 'chart-note' }, spec.note);
    const extra = h('p', { class: 'chart-extra', hidden: true });
    const tools = h('div', { class: 'chart-tools' });
    const crosshair = h('div', { class: 'crosshair', hidden: true, 'aria-hidden': 'true' },
      h('span', { class: 'crosshair-label' }));
    const card = h('figure', { class: 'card chart-card', dataset: { tensor: spec.tensor ?? null } },
      h('figcaption', {}, h('div', { class: 'chart-head' }, h('h3', {}, spec.title), tools), note, extra),
      el, crosshair);
    const chart = new Chart(el, {
      logY: spec.logY, yTitle: spec.yTitle, y3Title: spec.y3Title ?? '', ...options,
      onRange: (range) => this.zoom(range, this.mark, chart),
    });
    chart.range = this.range;
    chart.markStep = this.mark;
    el.addEventListener('mousemove', (ev) => this.point(chart.stepAt(ev.clientX)));
    el.addEventListener('mouseleave', () => this.point(null));
    entry = { spec, chart, card, extra, tools, crosshair };
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
    this.point(null); // its place moved with the zoom; the next pointer move puts it back
    for (const { chart } of this.charts.values()) {
      if (chart !== source) chart.setRange(range, mark);
      else chart.markStep = mark;
    }
    if (!changed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { this.timer = null; this.onRange(this.range); }, RANGE_DEBOUNCE_MS);
  }

  /** The pointer is over `step` of some chart (null: over none): move every crosshair there,
   * once per frame. */
  point(step) {
    this.crosshairStep = step;
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.drawCrosshairs();
    });
  }

  /** Put each chart's crosshair at the pointer's step (hidden where that step is off the plot). */
  drawCrosshairs() {
    const step = this.crosshairStep;
    for (const { chart, crosshair } of this.charts.values()) {
      const x = step === null ? null : chart.xOfStep(step);
      const area = chart.plotArea();
      crosshair.hidden = x === null || area === null;
      if (crosshair.hidden) {
        delete crosshair.dataset.step;
        continue;
      }
      crosshair.dataset.step = String(step);
      crosshair.style.left = `${chart.el.offsetLeft + x}px`;
      crosshair.style.top = `${chart.el.offsetTop + area.top}px`;
      crosshair.style.height = `${area.height}px`;
      crosshair.firstChild.textContent = `step ${step}`;
    }
  }

  /** Number of points in each trace of chart `id`, by trace key (what plotly holds now). */
  traceLengths(id) {
    const el = this.charts.get(id)?.chart.el;
    return Object.fromEntries((el?.data ?? []).map((t) => [t.meta, t.x.length]));
  }

  draws(id) {
    return this.charts.get(id)?.chart.draws ?? 0;
  }

  /** {fast, full, refreshes}: chart `id`'s live updates by path (charts.js), or null. */
  updates(id) {
    const chart = this.charts.get(id)?.chart;
    return chart ? { ...chart.updates } : null;
  }

  /** Resolves when every chart has applied what it was given. */
  async settled() {
    for (const { chart } of this.charts.values()) chart.flush();
    await Promise.all([...this.charts.values()].map(({ chart }) => chart.settled()));
  }

  destroy() {
    clearTimeout(this.timer);
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    for (const { chart } of this.charts.values()) chart.destroy();
  }
}
