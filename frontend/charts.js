// One plotly chart of step series that grows live.
//
// Points are added one by one (from REST on load, from the websocket afterwards). Before the
// first draw they collect in the trace objects; afterwards they are batched and appended with
// Plotly.extendTraces (new series with Plotly.addTraces) — no full redraw per update.
//
// Non-finite values never vanish: NaN, +Inf and -Inf (and, on a log axis, values <= 0) leave a
// gap in their line and get a marker on a hidden overlay axis whose range is the plot height,
// so the marker sits at the top/bottom edge of whatever y-range the finite data has.
// Each trace has a stable key in its `meta`, for tests and for code: `s:<series>#<rank>`,
// `edge:<kind>`, and the key given to `addMarker` (e.g. `clip`). Its plotly `uid` is that key
// made CSS-safe (plotly builds selectors from uids; series names may hold any character).
//
// The visible step range is tracked (`range`, null = everything): zooming or a double-click
// reports it through `onRange(range)`, `setRange` changes it from code; it survives redraws.
//
// The y axis has a scale: 'linear', 'log' (values <= 0 are bottom-edge markers, as above) or
// 'symlog' (scales.js: a transformed linear axis labelled in the data's units; each point's
// own value is its `customdata`, which hover shows). `setScale` redraws from the points the
// chart was given (it keeps them, in order, for that). Counts on the right-hand axis (y3)
// get whole-number ticks only.

import { formatValue, plotlyText } from './format.js';
import { countTickStep, symlog, symlogConstant, symlogTicks } from './scales.js';

export const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';

/** Where each kind of off-scale value is drawn (y on the 0..1 overlay axis) and how. */
export const EDGES = {
  nan: { y: 1, label: 'NaN', symbol: 'x-thin-open', color: '#111827', size: 11, width: 3 },
  posinf: { y: 1, label: '+Inf', symbol: 'triangle-up', color: '#9333ea', size: 11, width: 1 },
  neginf: { y: 0, label: '-Inf', symbol: 'triangle-down', color: '#9333ea', size: 11, width: 1 },
  nonpos: { y: 0, label: '≤ 0 (off log scale)', symbol: 'circle-open', color: '#64748b', size: 8,
            width: 1.5 },
};

const CONFIG = {
  responsive: true,
  displaylogo: false,
  modeBarButtonsToRemove: ['select2d', 'lasso2d', 'autoScale2d'],
};

const FLUSH_MS = 50;

/** 'finite', or the EDGES kind under which `v` is drawn. */
export function classify(v, logY) {
  if (typeof v !== 'number' || Number.isNaN(v)) return 'nan';
  if (v === Infinity) return 'posinf';
  if (v === -Infinity) return 'neginf';
  if (logY && v <= 0) return 'nonpos';
  return 'finite';
}

/** Whether two x ranges (or nulls) are the same, to the step. */
export function sameRange(a, b) {
  if (a === null || b === null) return a === b;
  return Math.abs(a[0] - b[0]) < 0.5 && Math.abs(a[1] - b[1]) < 0.5;
}

/** A trace key as a plotly uid: only [A-Za-z0-9_-], never starting with a digit. */
export function safeUid(key) {
  return `t-${key.replace(/[^A-Za-z0-9-]/g, (c) => `_${c.codePointAt(0).toString(16)}_`)}`;
}

/** Whether trace `t` is drawn on the main y axis (not the edge markers', not the counts'). */
function onY(t) {
  return !t.yaxis || t.yaxis === 'y';
}

function edgeTrace(kind) {
  const e = EDGES[kind];
  return {
    type: 'scatter', mode: 'markers', name: e.label, yaxis: 'y2', cliponaxis: false,
    marker: { symbol: e.symbol, color: e.color, size: e.size, line: { color: e.color, width: e.width } },
    hovertemplate: '%{text}<extra></extra>', legendrank: 2000, // after the series
  };
}

export class Chart {
  /**
   * @param {HTMLElement} el the div plotly draws into
   * @param {object} options logY (or scale: 'linear' | 'log' | 'symlog'), height, yTitle; y3Title (a right-hand axis for traces with
   *   `yaxis: 'y3'`); prepare(chart) (called after every reset, to create traces in a fixed
   *   order); onRange(range) (the user zoomed: [x0, x1], or null for everything)
   */
  constructor(el, { logY = false, scale = logY ? 'log' : 'linear', height = 280, yTitle = '',
                    y3Title = '', prepare = null, onRange = null } = {}) {
    this.el = el;
    this.scale = scale;
    this.symC = 1; // the symlog constant (scales.js), chosen from the data at each draw
    this.height = height;
    this.yTitle = yTitle;
    this.y3Title = y3Title;
    this.prepare = prepare;
    this.onRange = onRange;
    this.range = null; // [x0, x1] shown, or null: all
    this.y3Visible = false; // the right-hand axis (and its traces) shows only when it has news
    this.markStep = null; // a step highlighted by a vertical line (alert clicked), or null
    this.listening = false;
    this.ops = Promise.resolve();
    this.timer = null;
    this.draws = 0; // full draws (Plotly.react) so far; live updates must not add to it
    // Plotly follows the window's size by itself; this follows the card's (a grid column that
    // changes with the layout, a scroll bar that appears).
    this.resizer = typeof ResizeObserver === 'function' ? new ResizeObserver(() => this.fit()) : null;
    if (this.resizer) this.resizer.observe(el);
    this.reset();
  }

  /** Whether the y axis is logarithmic (values <= 0 go to the bottom edge). */
  get logY() {
    return this.scale === 'log';
  }

  /** Forget all points (the next `draw` replaces what is shown). */
  reset() {
    this.traces = [];
    this.index = new Map(); // key -> trace index
    this.seen = new Map(); // trace index -> Set of point keys already added
    this.pending = new Map(); // trace index -> {x, y, text} waiting for extendTraces
    this.unsent = new Map(); // "kind:step" -> [text array, index] of an edge marker not sent yet
    this.plotted = 0; // traces [0, plotted) are on the plot
    this.drawn = false;
    this.history = []; // every point and marker added, in order (setScale redraws from them)
    this.extent = null; // [min, max] of the finite values on the y axis
    this.y3Max = 0; // the largest value on the right-hand (count) axis
    this.ticksShown = null; // the tick settings last given to plotly (see ticks())
    clearTimeout(this.timer);
    this.timer = null;
    for (const kind of Object.keys(EDGES)) {
      if (kind !== 'nonpos' || this.logY) this.trace(`edge:${kind}`, () => edgeTrace(kind));
    }
    if (this.prepare) this.prepare(this);
  }

  /** The index of the trace with key `key`, made with `make()` if it does not exist yet. */
  trace(key, make) {
    let i = this.index.get(key);
    if (i === undefined) {
      i = this.traces.length;
      const trace = { ...make(), meta: key, uid: safeUid(key), x: [], y: [], text: [], customdata: [] };
      if (trace.yaxis === 'y3') trace.visible = this.y3Visible ? true : 'legendonly';
      // On symlog, y is the transformed value; hover shows the point's own (customdata).
      if (this.scale === 'symlog' && onY(trace) && trace.hovertemplate) {
        trace.hovertemplate = trace.hovertemplate.replaceAll('%{y', '%{customdata');
      }
      this.traces.push(trace);
      this.index.set(key, i);
      this.seen.set(i, new Set());
    }
    return i;
  }

  /** The index of series trace `key`, made (named `label`, user text) if new. */
  series(key, label, make) {
    return this.trace(key, () => ({ ...make(), name: plotlyText(label) }));
  }

  /** Append a point to trace `i` (`raw`: its value in data units, the y before any
   * transform); returns where its text went ([array, index]). */
  push(i, x, y, text, raw = y) {
    let target = this.traces[i];
    if (this.drawn && i < this.plotted) {
      target = this.pending.get(i);
      if (!target) { target = { x: [], y: [], text: [], customdata: [] }; this.pending.set(i, target); }
    }
    target.x.push(x); target.y.push(y); target.text.push(text); target.customdata.push(raw);
    return [target.text, target.text.length - 1];
  }

  /** Where finite value `v` sits on the y axis (transformed on symlog). */
  toAxis(v) {
    return this.scale === 'symlog' ? symlog(v, this.symC) : v;
  }

  /** Note finite value `v` of trace `i` for the axes' ranges and ticks. */
  note(i, v) {
    if (!Number.isFinite(v)) return;
    if (this.traces[i].yaxis === 'y3') {
      this.y3Max = Math.max(this.y3Max, v);
    } else if (onY(this.traces[i])) {
      this.extent = this.extent ? [Math.min(this.extent[0], v), Math.max(this.extent[1], v)] : [v, v];
    }
  }

  /**
   * Add the value of series `key` at `step`; a step already present is ignored (so REST and
   * live data may overlap). `label` (user text, escaped here) names the series; `make()`
   * builds its trace the first time; `note` (plotly text) goes into the point's hover text,
   * or the off-scale marker's. Off-scale values of several series at one step share one
   * marker while it is not drawn yet (hover lists them all). Returns false for a duplicate.
   */
  addPoint(key, label, make, step, value, note = '') {
    const i = this.series(key, label, make);
    const seen = this.seen.get(i);
    if (seen.has(step)) return false;
    seen.add(step);
    this.history.push({ key, label, make, step, value, note });
    const kind = classify(value, this.logY);
    this.note(i, value);
    this.push(i, step, kind === 'finite' ? this.toAxis(value) : null, note ? `<br>${note}` : '', value);
    if (kind !== 'finite') {
      const line = `${plotlyText(label)}${kind === 'nonpos' ? ` = ${formatValue(value)}` : ''}`
        + `${note ? ` (${note})` : ''}`;
      const key = `${kind}:${step}`;
      const shared = this.unsent.get(key);
      if (shared) {
        shared[0][shared[1]] += `<br>${line}`;
      } else {
        const head = kind === 'nonpos' ? '≤ 0, not on the log scale,' : EDGES[kind].label;
        this.unsent.set(key, this.push(this.index.get(`edge:${kind}`), step, EDGES[kind].y,
          `<b>${head} at step ${step}</b><br>${line}`));
      }
    }
    return true;
  }

  /** Add one point to the marker trace `key` (e.g. clip events); `pointKey` dedupes. */
  addMarker(key, make, pointKey, x, y, text) {
    const i = this.trace(key, make);
    const seen = this.seen.get(i);
    if (seen.has(pointKey)) return false;
    seen.add(pointKey);
    this.history.push({ marker: key, make, pointKey, x, y, text });
    const axis = onY(this.traces[i]);
    if (axis) this.note(i, y);
    this.push(i, x, axis && Number.isFinite(y) ? this.toAxis(y) : y, text, y);
    return true;
  }

  /**
   * Show the y axis on `scale` ('linear', 'log' or 'symlog'): every point given so far is
   * added again under the new scale and, if the chart was drawn, drawn anew.
   */
  setScale(scale) {
    if (scale === this.scale) return;
    const { history, drawn } = this;
    this.scale = scale;
    this.reset();
    for (const p of history) {
      if (p.marker) this.addMarker(p.marker, p.make, p.pointKey, p.x, p.y, p.text);
      else this.addPoint(p.key, p.label, p.make, p.step, p.value, p.note);
    }
    if (drawn) this.draw();
  }

  /** On symlog: choose the constant for the values held, and place every point by it. */
  placeSymlog() {
    if (this.scale !== 'symlog') return;
    const values = this.history.filter((p) => !p.marker && onY(this.traces[this.index.get(p.key)]))
      .map((p) => p.value);
    this.symC = symlogConstant(values);
    for (const t of this.traces) {
      if (onY(t)) t.y = t.customdata.map((v) => (Number.isFinite(v) ? symlog(v, this.symC) : null));
    }
  }

  /** Tick settings plotly does not choose by itself: the symlog axis's ticks (in the data's
   * units) and whole-number steps on the count axis. */
  ticks() {
    const out = {};
    if (this.scale === 'symlog') {
      const [lo, hi] = this.extent ?? [0, 1];
      const { tickvals, ticktext } = symlogTicks(Math.min(lo, 0), Math.max(hi, 0), this.symC);
      Object.assign(out, { 'yaxis.tickmode': 'array', 'yaxis.tickvals': tickvals, 'yaxis.ticktext': ticktext });
    }
    if (this.y3Title) Object.assign(out, { 'yaxis3.tickmode': 'linear', 'yaxis3.tick0': 0,
                                           'yaxis3.dtick': countTickStep(this.y3Max) });
    return out;
  }

  yTitleText() {
    if (this.scale === 'symlog') return `${this.yTitle} (symlog, c = ${formatValue(this.symC)})`;
    if (this.scale === 'log' && this.yTitle) return `${this.yTitle} (log)`;
    return this.yTitle;
  }

  /** The y axis of the layout for the chart's scale. */
  yaxis(grid) {
    const log = this.logY;
    const ticks = this.ticks();
    return {
      type: log ? 'log' : 'linear', title: { text: this.yTitleText() }, gridcolor: grid,
      // On a log axis, label 2 and 5 in full (20, 0.5), not as bare digits next to 10^n.
      ...(log ? { minorloglabels: 'complete', tickformat: '~g' } : {}),
      ...(this.scale === 'symlog' ? { tickmode: 'array', tickvals: ticks['yaxis.tickvals'],
                                      ticktext: ticks['yaxis.ticktext'] } : {}),
      zeroline: !log, zerolinecolor: '#9ca3af', automargin: true, exponentformat: 'power',
      uirevision: this.scale, // a y zoom made on one scale means nothing on another
    };
  }

  layout() {
    const grid = '#e5e7eb';
    return {
      height: this.height,
      margin: { l: 60, r: 16, t: 12, b: 40 },
      font: { family: FONT, size: 12, color: '#1f2937' },
      paper_bgcolor: '#ffffff',
      plot_bgcolor: '#ffffff',
      hovermode: 'closest',
      hoverlabel: { font: { family: FONT }, align: 'left' },
      uirevision: 'keep', // keep the user's zoom across updates
      showlegend: true,
      legend: { orientation: 'h', x: 0, y: 1.03, yanchor: 'bottom', font: { size: 11 },
                traceorder: 'normal' },
      xaxis: this.xaxis(),
      yaxis: this.yaxis(grid),
      // The edge-marker axis: 0 = bottom border of the plot, 1 = top border; never shown or
      // zoomed. Markers sit on the borders (cliponaxis: false), just outside the data's range.
      yaxis2: { overlaying: 'y', range: [0, 1], visible: false, fixedrange: true },
      ...(this.y3Title ? { yaxis3: {
        overlaying: 'y', side: 'right', rangemode: 'nonnegative', showgrid: false, zeroline: false,
        title: { text: this.y3Title }, automargin: true, tickformat: '~s', visible: this.y3Visible,
        // Counts are whole numbers: so are the ticks (plotly would put one at 0.5).
        tickmode: 'linear', tick0: 0, dtick: countTickStep(this.y3Max) } } : {}),
      ...(this.range ? { xaxis: { ...this.xaxis(), range: this.range, autorange: false } } : {}),
      shapes: this.shapes(),
    };
  }

  xaxis() {
    return { title: { text: 'step', standoff: 6 }, gridcolor: '#e5e7eb', zeroline: false,
             automargin: true, ticklabelstandoff: 6 };
  }

  /** The vertical line at the highlighted step, if any. */
  shapes() {
    if (this.markStep === null) return [];
    return [{ type: 'line', xref: 'x', yref: 'paper', x0: this.markStep, x1: this.markStep,
              y0: 0, y1: 1, line: { color: '#dc2626', width: 1.5, dash: 'dash' } }];
  }

  /** Show steps [x0, x1] (null: everything) and highlight `mark` (a step, or null). */
  setRange(range, mark = this.markStep) {
    this.range = range;
    this.markStep = mark;
    if (!this.drawn) return Promise.resolve();
    const update = range ? { 'xaxis.range': [...range], 'xaxis.autorange': false }
      : { 'xaxis.autorange': true };
    return this.enqueue(() => window.Plotly.relayout(this.el, { ...update, shapes: this.shapes() }));
  }

  /** Show or hide the right-hand axis and the traces on it (hidden ones stay in the legend). */
  setY3Visible(on) {
    if (on === this.y3Visible) return;
    this.y3Visible = on;
    for (const t of this.traces) if (t.yaxis === 'y3') t.visible = on ? true : 'legendonly';
    if (!this.drawn) return;
    const indices = this.traces.map((t, i) => (t.yaxis === 'y3' && i < this.plotted ? i : -1)).filter((i) => i >= 0);
    this.enqueue(async () => {
      await window.Plotly.relayout(this.el, { 'yaxis3.visible': on });
      if (indices.length) await window.Plotly.restyle(this.el, { visible: on ? true : 'legendonly' }, indices);
    });
  }

  /** The x range a plotly_relayout event set: [x0, x1], null (autorange), or undefined. */
  static rangeOf(ev) {
    if (ev['xaxis.autorange'] === true) return null;
    if (Array.isArray(ev['xaxis.range'])) return [...ev['xaxis.range']];
    if ('xaxis.range[0]' in ev && 'xaxis.range[1]' in ev) return [ev['xaxis.range[0]'], ev['xaxis.range[1]']];
    return undefined;
  }

  listen() {
    if (this.listening || typeof this.el.on !== 'function') return;
    this.listening = true;
    this.el.on('plotly_relayout', (ev) => {
      const range = Chart.rangeOf(ev ?? {});
      if (range === undefined || sameRange(range, this.range)) return; // ours, or not x
      this.range = range;
      if (this.onRange) this.onRange(range);
    });
  }

  /** Draw everything from scratch (first load, reload after resync/reconnect). */
  draw() {
    clearTimeout(this.timer);
    this.timer = null;
    // A copy: plotly keeps the array it is given as gd.data and appends to it in addTraces.
    const traces = this.traces.slice();
    this.pending = new Map();
    this.unsent = new Map();
    this.plotted = traces.length;
    this.drawn = true;
    this.draws += 1;
    this.placeSymlog();
    const layout = this.layout();
    this.ticksShown = JSON.stringify(this.ticks());
    this.enqueue(async () => {
      await window.Plotly.react(this.el, traces, layout, CONFIG);
      this.listen();
    });
  }

  /** Fit the plot to its div again when the div's width changed (not the window's). */
  fit() {
    if (!this.drawn || !this.el.isConnected) return;
    this.enqueue(async () => {
      const shown = this.el._fullLayout?.width;
      if (shown && Math.abs(shown - this.el.clientWidth) >= 1) await window.Plotly.Plots.resize(this.el);
    });
  }

  /** The plot area in the div's pixels ({left, top, width, height}), once drawn. */
  plotArea() {
    const size = this.el._fullLayout?._size;
    return size ? { left: size.l, top: size.t, width: size.w, height: size.h } : null;
  }

  /** Where `step` is across the div (pixels from its left edge), or null off the plot. */
  xOfStep(step) {
    const xaxis = this.el._fullLayout?.xaxis;
    const area = this.plotArea();
    if (!xaxis || !area || typeof xaxis.l2p !== 'function') return null;
    const px = xaxis.l2p(step);
    return Number.isFinite(px) && px >= 0 && px <= area.width ? area.left + px : null;
  }

  /** The step under the pointer at `clientX` (a whole step), or null outside the plot area. */
  stepAt(clientX) {
    const xaxis = this.el._fullLayout?.xaxis;
    const area = this.plotArea();
    if (!xaxis || !area || typeof xaxis.p2l !== 'function') return null;
    const px = clientX - this.el.getBoundingClientRect().left - area.left;
    if (px < 0 || px > area.width) return null;
    return Math.round(xaxis.p2l(px));
  }

  /** Append what was added since the last draw/flush, soon (updates are batched). */
  schedule() {
    if (this.drawn && this.timer === null) this.timer = setTimeout(() => this.flush(), FLUSH_MS);
  }

  flush() {
    this.timer = null;
    if (!this.drawn) return;
    const added = this.traces.slice(this.plotted);
    const pending = this.pending;
    this.pending = new Map();
    this.unsent = new Map();
    this.plotted = this.traces.length;
    if (!added.length && !pending.size) return;
    const ticks = this.ticks(); // the data may have outgrown them
    const retick = JSON.stringify(ticks) !== this.ticksShown;
    this.ticksShown = JSON.stringify(ticks);
    this.enqueue(async () => {
      if (added.length) await window.Plotly.addTraces(this.el, added);
      if (pending.size) {
        const indices = [...pending.keys()];
        const take = (k) => indices.map((i) => pending.get(i)[k]);
        await window.Plotly.extendTraces(this.el, {
          x: take('x'), y: take('y'), text: take('text'), customdata: take('customdata') }, indices);
      }
      if (retick) await window.Plotly.relayout(this.el, ticks);
    });
  }

  /** Plotly calls run one after another, in the order they were asked for. */
  enqueue(op) {
    this.ops = this.ops.then(op).catch((err) => console.error('trainvitals: chart update failed', err));
    return this.ops;
  }

  /** Resolves when all queued plotly work is done (tests, chained updates). */
  settled() {
    return this.ops;
  }

  destroy() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.resizer) this.resizer.disconnect();
    this.enqueue(() => window.Plotly.purge(this.el));
  }
}
