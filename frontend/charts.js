// One plotly chart of step series that grows live.
//
// Points are added one by one (from REST on load, from the websocket afterwards). Before the
// first draw they collect in the trace objects; afterwards they are batched (a task later, or
// FLUSH_MS after a full update) and appended.
//
// Live updates take a fast path: a plotly redraw (Plotly.extendTraces recomputes and redraws
// the whole chart: ~20 ms on a slow core, so 8 charts could not keep up with 10 steps/s) is
// replaced by appending the new segments to the SVG plotly drew — in small paths of our own
// (class LIVE_CLASS) styled like each line's `path.js-line` and the min-max band's fill — at
// the pixels of the axes as drawn, and the points to the traces' data (`el.data`). Anything
// the fast path cannot draw as plotly would takes the full update (extendTraces): a new trace,
// a marker (NaN/Inf edges, clip events: they stay plotly's own), a trace not drawn yet, a
// point off the autoranged axes, new ticks. While following live data (`follow`, set by the
// view) the axes keep room past the data (`autorangeoptions.include`), grown in idle time
// before the data reaches it, so appending rarely needs a rescale. Plotly's own state (hover,
// autorange) catches up in idle time (`refresh`, one chart per idle callback; at most
// CATCHUP_MS after the first appended point, soon when the pointer moves over the chart),
// before any other plotly call on the chart (relayout, resize, restyle), and in `settled()`;
// each redraw removes our paths first. `updates` counts live updates by path.
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

const FLUSH_MS = 50; // batching of full updates (the slow path)
const FAST_FLUSH_MS = 0; // batching while the last update took the fast path: none (one task later)
const CATCHUP_MS = 10000; // fast-drawn points reach plotly's own state within this (hover: at once)
// Room kept on the axes while following live data: x runs this far past the newest step —
// a quarter of the steps shown, HEADROOM_S seconds at the rate steps arrive, HEADROOM_MIN
// steps, whichever is most; y spans the data and ROOM_Y of its span beyond each end.
const HEADROOM = 0.25;
const HEADROOM_S = 5;
const HEADROOM_MIN = 50;
const ROOM_Y = 0.2;
const LIVE_PATH_CHARS = 2000; // a fast-drawn path grows to about this, then a new one starts
const LIVE_CLASS = 'tv-live'; // fast-drawn paths

// Idle-time plotly work (catch-up redraws, growing the headroom): one chart per idle callback,
// so a live message waits for at most one chart's redraw.
const idle = { queue: new Set(), handle: null };

function whenIdle(fn) {
  return typeof requestIdleCallback === 'function' ? requestIdleCallback(fn, { timeout: 1000 })
    : setTimeout(fn, 50);
}

function queueIdle(chart) {
  idle.queue.add(chart);
  if (idle.handle === null) idle.handle = whenIdle(runIdle);
}

function runIdle() {
  idle.handle = null;
  const [chart] = idle.queue;
  if (chart) {
    idle.queue.delete(chart);
    chart.refresh();
  }
  if (idle.queue.size) idle.handle = whenIdle(runIdle);
}

/** A pixel coordinate as plotly writes it (2 decimals). */
function px(v) {
  return Math.round(v * 100) / 100;
}

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
    // Live updates by path (fast: appended; full: extendTraces), catch-up redraws, and why the
    // last full one could not append.
    this.updates = { fast: 0, full: 0, refreshes: 0, why: null };
    this.fastPoints = 0; // points drawn by the fast path that plotly's own state lacks
    this.catchup = null; // timer of the next catch-up redraw
    this.xEnd = null; // while following live data: the step the x axis reaches to (headroom)
    this.yRoom = null; // and the y span kept ([lo, hi] in axis units: log10 on a log axis)
    this.yExt = null; // the data's y extent when the room was last made
    this.rate = 0; // live steps per ms, measured (marks: [time, newest step] of recent updates)
    this.marks = [];
    this.follow = false; // live data comes (the view says so): draws keep room for it
    this.xMin = Infinity;
    this.xMax = -Infinity; // the steps held
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
    this.xMin = Infinity;
    this.xMax = -Infinity;
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
    if (x < this.xMin) this.xMin = x;
    if (x > this.xMax) this.xMax = x;
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
    this.yExt = null; // in the old scale's units
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
      ...(this.yRoom && this.xEnd !== null ? { autorangeoptions: { include: this.yIncluded() } } : {}),
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
             automargin: true, ticklabelstandoff: 6,
             ...(this.xEnd !== null ? { autorangeoptions: { include: this.xEnd } } : {}) };
  }

  /** How far past the newest step the x axis should reach while live data comes. */
  headroom() {
    const span = Number.isFinite(this.xMax - this.xMin) ? this.xMax - this.xMin : 0;
    return Math.max(HEADROOM_MIN, Math.ceil(span * HEADROOM), Math.ceil(this.rate * HEADROOM_S * 1000));
  }

  /** Note that live steps up to `xMax` arrived now (for the rate). */
  markRate() {
    const now = performance.now();
    this.marks.push([now, this.xMax]);
    while (this.marks.length > 2 && now - this.marks[0][0] > 3000) this.marks.shift();
    const [t0, x0] = this.marks[0];
    if (now - t0 > 200) this.rate = Math.max(0, (this.xMax - x0) / (now - t0));
  }

  /** [lo, hi] of the finite values on the main y axis, in axis units (log10 on a log axis;
   * el.data's y: transformed on symlog), or null. */
  yExtent(traces = this.el.data ?? this.traces) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const t of traces) {
      if (!onY(t) || t.visible === 'legendonly' || t.visible === false) continue;
      for (const v of t.y) {
        if (v === null || v === undefined) continue;
        const a = this.logY ? (v > 0 ? Math.log10(v) : NaN) : v;
        if (a < lo) lo = a;
        if (a > hi) hi = a;
      }
    }
    return lo <= hi ? [lo, hi] : null;
  }

  /** Room for live data on both axes, from the data held; written into plotly's layout too
   * (the next redraw applies it). */
  growRoom(traces = undefined) {
    this.xEnd = this.xMax + this.headroom();
    const ext = this.yExtent(traces);
    if (ext) {
      // ROOM_Y of the span beyond each end, or twice what the data moved that way since the
      // last time, if more: a trend needs fewer and fewer rescales.
      const pad = ROOM_Y * ((ext[1] - ext[0]) || Math.abs(ext[0]) || 1);
      const [was0, was1] = this.yExt ?? ext;
      this.yRoom = [ext[0] - Math.max(pad, 2 * (was0 - ext[0])), ext[1] + Math.max(pad, 2 * (ext[1] - was1))];
      this.yExt = ext;
    }
    const layout = this.el.layout;
    if (!layout) return;
    if (layout.xaxis) layout.xaxis.autorangeoptions = { ...(layout.xaxis.autorangeoptions ?? {}), include: this.xEnd };
    if (layout.yaxis && this.yRoom) {
      layout.yaxis.autorangeoptions = { ...(layout.yaxis.autorangeoptions ?? {}), include: this.yIncluded() };
    }
  }

  /** The y room as plotly's `autorangeoptions.include` takes it (data units on a log axis). */
  yIncluded() {
    return this.logY ? this.yRoom.map((a) => 10 ** a) : [...this.yRoom];
  }

  /** Whether the data is about to outgrow the room: half the x headroom used, or a value
   * beyond the y room (`a`, in axis units; default: the data's extent). */
  roomLow(ext = undefined) {
    if (this.xEnd === null) return false;
    if (this.xEnd - this.xMax < this.headroom() / 2) return true;
    const e = ext === undefined ? this.yExtent() : ext;
    return Boolean(this.yRoom && e && (e[0] < this.yRoom[0] || e[1] > this.yRoom[1]));
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
    return this.enqueueSynced(() => window.Plotly.relayout(this.el, { ...update, shapes: this.shapes() }));
  }

  /** Show or hide the right-hand axis and the traces on it (hidden ones stay in the legend). */
  setY3Visible(on) {
    if (on === this.y3Visible) return;
    this.y3Visible = on;
    for (const t of this.traces) if (t.yaxis === 'y3') t.visible = on ? true : 'legendonly';
    if (!this.drawn) return;
    const indices = this.traces.map((t, i) => (t.yaxis === 'y3' && i < this.plotted ? i : -1)).filter((i) => i >= 0);
    this.enqueueSynced(async () => {
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
    // Hover reads plotly's own state: bring it up to date when the pointer comes.
    this.el.addEventListener('pointermove', () => {
      if (!this.fastPoints || performance.now() - (this.hoverSync ?? -Infinity) < 1000) return;
      this.hoverSync = performance.now();
      queueIdle(this);
    });
    // A legend click redraws the traces; fast-drawn paths go with the next refresh.
    this.el.on('plotly_restyle', () => { if (this.fastPoints) this.refresh(); });
    this.el.on('plotly_relayout', (ev) => {
      // A zoom or pan by the user redraws from plotly's own state: fast-drawn points too.
      if (this.fastPoints) this.refresh();
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
    this.fastPoints = 0;
    this.placeSymlog();
    if (this.follow) {
      this.growRoom(this.traces); // before the layout, which takes the room from it
    } else {
      this.xEnd = null;
      this.yRoom = null;
      this.yExt = null;
    }
    const layout = this.layout();
    this.ticksShown = JSON.stringify(this.ticks());
    this.enqueue(async () => {
      this.clearLive();
      await window.Plotly.react(this.el, traces, layout, CONFIG);
      this.listen();
    });
  }

  /** Fit the plot to its div again when the div's width changed (not the window's). */
  fit() {
    if (!this.drawn || !this.el.isConnected) return;
    this.enqueue(async () => {
      const shown = this.el._fullLayout?.width;
      if (!shown || Math.abs(shown - this.el.clientWidth) < 1) return;
      await this.sync();
      await window.Plotly.Plots.resize(this.el);
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
    if (this.drawn && this.timer === null) {
      this.timer = setTimeout(() => this.flush(), this.lastFast ? FAST_FLUSH_MS : FLUSH_MS);
    }
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
      if (added.length) this.no('new trace');
      else if (retick) this.no('new ticks');
      this.lastFast = !added.length && !retick && this.drawFast(pending);
      if (this.lastFast) {
        this.updates.fast += 1;
        this.afterFast();
        return;
      }
      this.updates.full += 1;
      this.fastPoints = 0; // extendTraces recomputes everything from el.data
      this.clearLive();
      clearTimeout(this.catchup);
      this.catchup = null;
      this.markRate();
      if (this.range === null && (this.xEnd !== null
          || this.xMax > (this.el._fullLayout?.xaxis?.range?.[1] ?? Infinity))) {
        this.growRoom(); // live data went past the axes: keep room for what comes next
      }
      this.roomNeeded = false;
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

  /**
   * Draw the pending points by appending to the SVG plotly drew (see the top of this file);
   * true if done. Nothing is changed (false) when any of them needs plotly: a marker trace, a
   * line shape other than linear/hv, a point off an autoranged axis, no path to extend.
   */
  drawFast(pending) {
    this.drawing = pending;
    try {
      return this.appendPaths(pending);
    } finally {
      this.drawing = null;
    }
  }

  appendPaths(pending) {
    const gd = this.el;
    const full = gd._fullLayout;
    const size = full?._size;
    if (!size || !gd._fullData || !full.xaxis?.c2p) return this.no('not drawn');
    const xa = full.xaxis;
    const plan = []; // [element, d to append] and [parent, template, d] for new subpaths
    let lowY = false; // whether a value came beyond the room (or near the edge) of the y axis
    for (const [i, p] of pending) {
      const trace = gd.data[i];
      const fullTrace = gd._fullData[i];
      if (!trace || !fullTrace) return this.no('no trace');
      if (trace.visible === 'legendonly' || trace.visible === false) continue; // hidden: data only
      if (fullTrace.visible !== true) return this.no('empty trace'); // plotly has not drawn it yet
      if (fullTrace.mode !== 'lines') return this.no('markers'); // markers are plotly's
      const shape = fullTrace.line?.shape ?? 'linear';
      if (shape !== 'linear' && shape !== 'hv') return this.no('line shape');
      const ya = full[fullTrace.yaxis === 'y' ? 'yaxis' : `yaxis${fullTrace.yaxis.slice(1)}`];
      if (!ya?.c2p) return this.no('no axis');
      const group = gd.querySelector(`.trace.trace${fullTrace.uid}`);
      if (!group) return this.no('no trace group');
      const last = Chart.lastPath(group, '.lines', 'js-line');
      const n = trace.x.length;
      let prev = n && trace.y[n - 1] !== null && trace.y[n - 1] !== undefined
        ? [xa.c2p(trace.x[n - 1]), ya.c2p(trace.y[n - 1])] : null;
      let d = ''; // the new segments, from the last point drawn (if finite) on
      const at = (x, y) => {
        const X = xa.c2p(x);
        const Y = ya.c2p(y);
        if (!Number.isFinite(X) || !Number.isFinite(Y)) return null;
        if (xa.autorange && X > size.w + 0.5) return null;
        if (ya.autorange && (Y < -0.5 || Y > size.h + 0.5)) return null;
        if (ya === full.yaxis && ya.autorange) {
          if (this.yRoom && this.xEnd !== null) {
            const a = this.logY ? Math.log10(y) : y;
            if (a < this.yRoom[0] || a > this.yRoom[1]) lowY = true;
          } else if (Y < 0.03 * size.h || Y > 0.97 * size.h) {
            lowY = true;
          }
        }
        return [X, Y];
      };
      for (let k = 0; k < p.x.length; k += 1) {
        const y = p.y[k];
        if (y === null || y === undefined) { prev = null; open = null; continue; }
        const pt = at(p.x[k], y);
        if (pt === null) return this.no('off the axes');
        if (prev === null) {
          d += `M${px(pt[0])},${px(pt[1])}`;
        } else {
          if (!d) d = `M${px(prev[0])},${px(prev[1])}`;
          d += (shape === 'hv' ? `L${px(pt[0])},${px(prev[1])}` : '') + `L${px(pt[0])},${px(pt[1])}`;
        }
        prev = pt;
      }
      if (d) {
        if (!last) return this.no('no line to extend'); // nothing to take the line's style from
        plan.push(Chart.pathStep(group, '.lines', last, d));
      }
      if (fullTrace.fill === 'tonexty') {
        const band = this.bandPlan(i, p, xa, ya, group);
        if (band === false) return this.no('band');
        if (band) plan.push(band);
      } else if (fullTrace.fill && fullTrace.fill !== 'none') {
        return this.no('fill');
      }
    }
    // Everything can be drawn: the data first (el.data, what tests and the bench read), then
    // the paths.
    for (const [i, p] of pending) {
      const trace = gd.data[i];
      for (const k of ['x', 'y', 'text', 'customdata']) {
        if (!Array.isArray(trace[k])) trace[k] = [];
        for (const v of p[k]) trace[k].push(v);
      }
      this.fastPoints += p.x.length;
    }
    for (const step of plan) {
      if (step.el) {
        step.el.setAttribute('d', step.el.getAttribute('d') + step.d);
      } else {
        const path = step.template.cloneNode(false); // plotly's style (inline), not its data
        path.setAttribute('class', LIVE_CLASS);
        path.setAttribute('d', step.d);
        step.template.parentNode.appendChild(path);
      }
    }
    if (lowY) this.roomNeeded = true;
    return true;
  }

  /** Why the fast path was not taken (`updates.why`: tests, the console); false. */
  no(reason) {
    this.updates.why = reason;
    return false;
  }

  /** How to draw path data `d` after the path `last`: appended to it if it is a small one
   * of ours, else in a new path like it. Small paths keep each update's repaint small (a
   * changed path is repainted whole); the next redraw puts plotly's own back. */
  static pathStep(group, where, template, d) {
    const live = group.querySelectorAll(`${where} .${LIVE_CLASS}`);
    const last = live[live.length - 1];
    return last && last.getAttribute('d').length < LIVE_PATH_CHARS ? { el: last, d } : { template, d };
  }

  /** The last path of plotly's own (class `cls`) under `where` in a trace's group, or null. */
  static lastPath(group, where, cls) {
    const paths = group.querySelectorAll(`${where} path.${cls}`);
    return paths[paths.length - 1] ?? null;
  }

  /** Remove the fast-drawn paths (before plotly redraws: it draws those points itself, and
   * would not know what to make of paths it did not make). */
  clearLive() {
    for (const path of this.el.querySelectorAll(`.${LIVE_CLASS}`)) path.remove();
  }

  /**
   * The band (`fill: 'tonexty'`) of trace `i` over trace i-1: quads between the new steps of
   * both, appended to the fill path plotly drew; null if none to draw, false if it cannot.
   */
  bandPlan(i, p, xa, ya, group) {
    const gd = this.el;
    const lower = gd.data[i - 1];
    const own = gd.data[i];
    if (!lower || gd._fullData[i - 1]?.yaxis !== gd._fullData[i].yaxis) return this.no('band');
    const lowerPending = this.pendingOf(i - 1);
    const valueAt = (trace, extra, x) => {
      for (let k = (extra?.x.length ?? 0) - 1; k >= 0; k -= 1) if (extra.x[k] === x) return extra.y[k];
      for (let k = trace.x.length - 1, seen = 0; k >= 0 && seen < 64; k -= 1, seen += 1) {
        if (trace.x[k] === x) return trace.y[k];
      }
      return undefined;
    };
    let d = '';
    let x0 = own.x.length ? own.x[own.x.length - 1] : null;
    let y0 = own.x.length ? own.y[own.y.length - 1] : null;
    for (let k = 0; k < p.x.length; k += 1) {
      const x1 = p.x[k];
      const y1 = p.y[k];
      if (x0 !== null && y0 !== null && y1 !== null) {
        const l0 = valueAt(lower, lowerPending, x0);
        const l1 = valueAt(lower, lowerPending, x1);
        if (l0 === undefined || l1 === undefined) return this.no('band side missing'); // the band's other side is not there yet
        if (l0 !== null && l1 !== null) {
          const pts = [[x0, y0], [x1, y1], [x1, l1], [x0, l0]].map(([x, y]) => [xa.c2p(x), ya.c2p(y)]);
          if (!pts.every(([X, Y]) => Number.isFinite(X) && Number.isFinite(Y))) return this.no('band off the axes');
          d += `M${pts.map(([X, Y]) => `${px(X)},${px(Y)}`).join('L')}Z`;
        }
      }
      x0 = x1;
      y0 = y1;
    }
    if (!d) return null;
    const prevGroup = gd.querySelector(`.trace.trace${gd._fullData[i - 1].uid}`);
    for (const g of [prevGroup, group]) {
      const fill = g && Chart.lastPath(g, '.fills', 'js-fill');
      if (fill) return Chart.pathStep(g, '.fills', fill, d);
    }
    return this.no('no fill to extend');
  }

  /** The points of trace `i` in the update being drawn now (drawFast's), or null. */
  pendingOf(i) {
    return this.drawing?.get(i) ?? null;
  }

  /** After a fast update: plotly's own state catches up soon; the x headroom grows early. */
  afterFast() {
    this.markRate();
    if (this.roomNeeded || this.roomLow(null)) queueIdle(this);
    if (this.catchup === null) {
      this.catchup = setTimeout(() => { this.catchup = null; queueIdle(this); }, CATCHUP_MS);
    }
  }

  /** Redraw from the chart's data (el.data) so that plotly's own state holds every point, and
   * grow the x headroom if the newest step is near it. Enqueued like every plotly call. */
  refresh() {
    if (!this.drawn) return this.ops;
    return this.enqueue(async () => {
      const grow = this.range === null && (this.roomNeeded || this.roomLow());
      this.roomNeeded = false;
      if (grow) this.growRoom();
      if (!this.fastPoints && !grow) return;
      this.fastPoints = 0;
      clearTimeout(this.catchup); // caught up now; the next fast update sets it again
      this.catchup = null;
      this.updates.refreshes += 1;
      this.clearLive();
      await window.Plotly.redraw(this.el);
    });
  }

  /** `enqueue(op)`, after a catch-up redraw if fast-drawn points are not in plotly's state yet
   * (plotly redraws from that state on relayout and resize). */
  enqueueSynced(op) {
    return this.enqueue(async () => {
      await this.sync();
      await op();
    });
  }

  /** Inside an enqueued op: redraw if fast-drawn points are not in plotly's state yet. */
  async sync() {
    if (!this.fastPoints) return;
    this.fastPoints = 0;
    this.updates.refreshes += 1;
    this.clearLive();
    await window.Plotly.redraw(this.el);
  }

  /** Plotly calls run one after another, in the order they were asked for. */
  enqueue(op) {
    this.ops = this.ops.then(op).catch((err) => console.error('trainvitals: chart update failed', err));
    return this.ops;
  }

  /** Resolves when all queued plotly work is done, plotly's own state included (tests,
   * chained updates). */
  settled() {
    if (this.fastPoints) this.refresh();
    return this.ops;
  }

  destroy() {
    clearTimeout(this.timer);
    clearTimeout(this.catchup);
    idle.queue.delete(this);
    this.timer = null;
    if (this.resizer) this.resizer.disconnect();
    this.enqueue(() => window.Plotly.purge(this.el));
  }
}
