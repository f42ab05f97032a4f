// Which series go on which chart, and how they look. Adding a chart = adding a spec here.

import { formatValue, plotlyText } from './format.js';
import { TENSOR_STATS, parseSeries, tensorSeries } from './series.js';

const COMPONENT_COLORS = ['#0891b2', '#16a34a', '#ca8a04', '#db2777', '#4f46e5', '#65a30d', '#ea580c'];

/** `hex` with its hue turned by `rank` steps, so the ranks of one series tell apart. */
export function rankColor(hex, rank) {
  if (!rank) return hex;
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
  const max = Math.max(r, g, b);
  const min = Math.min(r, g, b);
  const l = (max + min) / 2;
  const d = max - min;
  const sat = d === 0 ? 0 : d / (1 - Math.abs(2 * l - 1));
  let hue = 0;
  if (d !== 0) {
    if (max === r) hue = ((g - b) / d) % 6;
    else if (max === g) hue = (b - r) / d + 2;
    else hue = (r - g) / d + 4;
  }
  hue = (((hue * 60 + rank * 47) % 360) + 360) % 360;
  return `hsl(${hue.toFixed(0)}, ${(sat * 100).toFixed(0)}%, ${(l * 100).toFixed(0)}%)`;
}

// Lines only: a marker per point is an SVG element each, far too slow for long runs.
function line(color, { width = 2, dash = 'solid' } = {}) {
  return () => ({
    type: 'scatter', mode: 'lines', connectgaps: false, line: { color, width, dash },
    hovertemplate: 'step %{x}<br>%{y:.5~g}%{text}',
  });
}

/** The loss chart: raw loss and what was backpropagated on one axis, components, clip events. */
export const LOSS_CHART = {
  id: 'chart-loss',
  title: 'Loss: raw vs. backpropagated',
  note: 'A zeroed loss shows as loss_used on 0 while loss stays up. ◇ loss guard fired; '
    + '✕ NaN, ▲ +Inf, ▼ -Inf at the chart edge.',
  logY: false,
  yTitle: 'loss',
  accepts: (name) => name === 'loss' || name === 'loss_used' || parseSeries(name).kind === 'component',
  style(name, order, rank) {
    if (name === 'loss') return line(rankColor('#2563eb', rank), { width: 2 });
    if (name === 'loss_used') return line(rankColor('#f97316', rank), { width: 2.5, dash: 'dot' });
    return line(rankColor(COMPONENT_COLORS[order % COMPONENT_COLORS.length], rank), { width: 1 });
  },
};

/** Gradient norm before and after clipping, log scale. */
export const GRAD_CHART = {
  id: 'chart-grad',
  title: 'Gradient norm (log scale)',
  note: 'Values ≤ 0 cannot sit on a log axis: ○ at the bottom edge marks them.',
  logY: true,
  yTitle: 'grad norm',
  accepts: (name) => name === 'grad_norm' || name === 'grad_norm_post',
  style(name, order, rank) {
    return name === 'grad_norm' ? line(rankColor('#059669', rank), { width: 2 })
      : line(rankColor('#7c3aed', rank), { width: 2, dash: 'dot' });
  },
};

export const CHARTS = [LOSS_CHART, GRAD_CHART];

/** The clip-event marker trace of the loss chart. */
export function clipTrace() {
  return {
    type: 'scatter', mode: 'markers', name: 'loss guard fired', legendrank: 1500,
    marker: { symbol: 'diamond-open', size: 10, color: '#dc2626', line: { width: 2, color: '#dc2626' } },
    hovertemplate: '%{text}<extra></extra>',
  };
}

/** Hover text of one clip event (plotly pseudo-HTML; user-named parts escaped). */
export function clipText(clip, step, rankLabel = '') {
  const parts = [
    `<b>loss guard fired</b> at step ${step}${rankLabel}`,
    `raw ${formatValue(clip.raw)} · threshold ${formatValue(clip.threshold)}`,
    `action ${plotlyText(clip.action)} · reason ${plotlyText(clip.reason)}`,
  ];
  const comps = Object.entries(clip.components ?? {});
  if (comps.length) {
    parts.push(comps.map(([k, v]) => `${plotlyText(k)} ${formatValue(v)}`).join(', '));
  }
  return parts.join('<br>');
}

/** The tensor statistics a tensor's chart draws, in trace order (min right before max: the
 * band). Which to draw is the page's choice; that they exist is the contract's (TENSOR_STATS):
 * one the protocol drops is left out here rather than drawn empty. */
export const CHARTED_STATS = ['min', 'max', 'mean', 'nan', 'posinf', 'neginf']
  .filter((stat) => TENSOR_STATS.includes(stat));
const COUNT_STYLE = {
  nan: { color: '#111827', label: 'NaN elements' },
  posinf: { color: '#9333ea', label: '+Inf elements' },
  neginf: { color: '#c026d3', label: '−Inf elements' },
};

/** {tensor, stat} of a charted tensor series (`tensor/<name>/<stat>`), or null. */
export function tensorOf(name) {
  const { kind, name: tensor, stat } = parseSeries(name);
  return kind === 'tensor' && CHARTED_STATS.includes(stat) ? { tensor, stat } : null;
}

/** A DOM-id-safe form of a tensor name (ids are built from it; any character may appear). */
export function idPart(text) {
  return text.replace(/[^A-Za-z0-9-]/g, (c) => `_${c.codePointAt(0).toString(16)}_`);
}

/**
 * The chart of one watched tensor: a band from finite min to finite max with the mean line,
 * and the NaN/+Inf/−Inf element counts on a right-hand axis.
 */
export function tensorChart(tensor) {
  const style = (stat, rank) => {
    const base = { type: 'scatter', mode: 'lines', connectgaps: false,
                   hovertemplate: 'step %{x}<br>%{y:.5~g}%{text}' };
    if (stat === 'min') return { ...base, line: { color: rankColor('#0284c7', rank), width: 1 } };
    if (stat === 'max') {
      return { ...base, line: { color: rankColor('#0284c7', rank), width: 1 }, fill: 'tonexty',
               fillcolor: 'rgba(2, 132, 199, 0.15)' };
    }
    if (stat === 'mean') return { ...base, line: { color: rankColor('#0c4a6e', rank), width: 2 } };
    return { ...base, yaxis: 'y3', line: { color: rankColor(COUNT_STYLE[stat].color, rank), width: 1.5,
                                            shape: 'hv', dash: 'dot' } };
  };
  return {
    id: `chart-tensor-${idPart(tensor)}`,
    tensor,
    title: `Tensor ${tensor}`,
    note: 'Band: finite min to max; line: mean. Right axis, dotted: NaN / +Inf / −Inf elements.',
    logY: false,
    yTitle: 'value',
    y3Title: 'NaN/Inf elements',
    accepts: (name) => tensorOf(name)?.tensor === tensor,
    label: (name) => {
      const stat = tensorOf(name).stat;
      return COUNT_STYLE[stat]?.label ?? stat;
    },
    style: (name, order, rank) => () => style(tensorOf(name).stat, rank),
    /** Rank 0's traces in CHARTED_STATS order, so the band fills from min to max. */
    prepare(chart, label) {
      for (const stat of CHARTED_STATS) {
        const name = tensorSeries(tensor, stat);
        chart.series(`s:${name}#0`, label(name, 0), () => style(stat, 0));
      }
    },
  };
}
