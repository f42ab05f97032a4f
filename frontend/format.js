// Turning numbers and times into short, readable text. NaN and ±Inf are spelled out, never "".

/** A metric value: 4 significant digits, exponent form for very large/small magnitudes. */
export function formatValue(v) {
  if (typeof v !== 'number') return v === null || v === undefined ? '—' : String(v);
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-3) return v.toExponential(3).replace(/\.?0+e/, 'e');
  return String(Number(v.toPrecision(4)));
}

/** A step number (or "—" when there is none yet). */
export function formatStep(step) {
  return step === null || step === undefined ? '—' : String(step);
}

const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' }); // full time: tooltip
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'short' });
const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: 'short' });
const fullDateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

function validTime(seconds) {
  return typeof seconds === 'number' && Number.isFinite(seconds) && seconds > 0;
}

/** A Unix time in seconds, short: the time of day if today, else date and time. */
export function formatTime(seconds) {
  if (!validTime(seconds)) return '—';
  const date = new Date(seconds * 1000);
  return date.toDateString() === new Date().toDateString() ? timeOnly.format(date) : dateTime.format(date);
}

/** A Unix time in seconds, short, as [date or null (today), time of day]: the parts
 * `formatTime` joins, for a cell that may break between them. */
export function formatTimeParts(seconds) {
  if (!validTime(seconds)) return [null, '—'];
  const date = new Date(seconds * 1000);
  return [date.toDateString() === new Date().toDateString() ? null : dateOnly.format(date), timeOnly.format(date)];
}

/** A Unix time in seconds, in full (for tooltips). */
export function formatFullTime(seconds) {
  return validTime(seconds) ? fullDateTime.format(new Date(seconds * 1000)) : '';
}

/**
 * Text for plotly labels (legend names, hover text). Plotly reads a few HTML-like tags there,
 * so user-named things are entity-escaped first; plotly shows the entities as the characters.
 */
export function plotlyText(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** A speed in steps per second, short (or "—" when unknown). */
export function formatRate(rate) {
  if (typeof rate !== 'number' || !Number.isFinite(rate) || rate <= 0) return '—';
  if (rate >= 100) return String(Math.round(rate));
  if (rate >= 1) return rate.toFixed(1);
  return rate.toPrecision(2);
}

/** The status to show: `silent` for a running run that has not sent data for a while. */
export function displayStatus(run) {
  return run.status === 'running' && run.silent ? 'silent' : run.status;
}
