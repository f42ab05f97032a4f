// Y-axis scales that plotly does not have, and ticks it does not choose by itself. Pure
// functions: no DOM, no plotly.
//
// symlog: plotly has no symmetric-log axis, so the loss chart draws symlog(y) =
// sign(y)·log10(1 + |y|/c) on a linear axis and labels the ticks in the loss's own units.
// Unlike a log axis it keeps 0 (a zeroed loss) and negative losses on the line, and it still
// shows a loss that explodes to 4·10³³ without flattening everything before it: each decade
// above c gets the same height. Below c it is nearly linear; c is a power of ten near the
// small end of the values drawn (symlogConstant).

/** The y scales the loss chart offers: id, button label, and what it does (its tooltip). */
export const SCALES = [
  { id: 'linear', label: 'linear', help: 'Linear y axis' },
  { id: 'log', label: 'log',
    help: 'Logarithmic y axis: values ≤ 0 (a zeroed loss) are ○ markers on the bottom edge' },
  { id: 'symlog', label: 'symlog',
    help: 'Symmetric log: sign(y)·log10(1 + |y|/c) — every decade above c gets the same height, '
      + 'and 0 and negative values stay on the line' },
];

export const SCALE_IDS = SCALES.map((s) => s.id);

/** sign(v)·log10(1 + |v|/c): where a finite value `v` sits on the symlog axis. */
export function symlog(v, c) {
  return Math.sign(v) * Math.log10(1 + Math.abs(v) / c);
}

/** The inverse of `symlog`: the value at symlog-axis position `y`. */
export function symlogInverse(y, c) {
  return Math.sign(y) * c * (10 ** Math.abs(y) - 1);
}

/**
 * The symlog constant for these values: a power of ten at or just below the 10th percentile
 * of their nonzero magnitudes, so that almost every value is in the logarithmic part and the
 * smallest ones are not squashed into the linear part around 0. 1 when there are none.
 */
export function symlogConstant(values) {
  const mags = values.filter((v) => Number.isFinite(v) && v !== 0).map(Math.abs).sort((a, b) => a - b);
  if (!mags.length) return 1;
  const q = mags[Math.floor((mags.length - 1) * 0.1)];
  return 10 ** Math.floor(Math.log10(q));
}

/** A tick label in the loss's units: plain for ordinary magnitudes, m×10<sup>k</sup> beyond. */
function tickLabel(v) {
  if (v === 0) return '0';
  const sign = v < 0 ? '−' : '';
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) {
    const k = Math.floor(Math.log10(a) + 1e-9);
    const m = Number((a / 10 ** k).toPrecision(3));
    return `${sign}${m === 1 ? '' : `${m}×`}10<sup>${k}</sup>`;
  }
  return `${sign}${Number(a.toPrecision(6))}`;
}

/**
 * Ticks for a symlog axis over values in [lo, hi] with constant `c`: positions (`tickvals`,
 * on the transformed axis) and labels in the original units (`ticktext`). Powers of ten from c
 * on (every few decades when there are many, with 2 and 5 in between when there are few),
 * mirrored for negative values, and 0.
 */
export function symlogTicks(lo, hi, c) {
  const values = [0];
  const side = (extent) => {
    if (!(extent > 0)) return [];
    const k0 = Math.round(Math.log10(c));
    const k1 = Math.max(k0, Math.ceil(Math.log10(extent)));
    const decades = k1 - k0 + 1;
    const every = Math.max(1, Math.ceil(decades / 8));
    const out = [];
    for (let k = k0; k <= k1; k += every) {
      out.push(10 ** k);
      if (decades <= 3) out.push(2 * 10 ** k, 5 * 10 ** k);
    }
    return out.filter((v) => v <= extent * 10); // one tick past the data at most
  };
  for (const v of side(hi)) values.push(v);
  for (const v of side(-lo)) values.push(-v);
  values.sort((a, b) => a - b);
  return { tickvals: values.map((v) => symlog(v, c)), ticktext: values.map(tickLabel) };
}

/**
 * The distance between ticks on an axis of counts (NaN/Inf elements) whose largest value is
 * `max`: a whole number (1, 2, 5, 10, 20, 50, ...) giving at most about five intervals, so
 * that no tick is fractional.
 */
export function countTickStep(max) {
  const raw = (Number.isFinite(max) ? max : 0) / 5;
  if (raw <= 1) return 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}
