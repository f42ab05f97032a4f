// The head of a comparison: how the compared runs differ, one column per run.
//
//   #compare-table table.compare-table
//     thead th.run[data-run-id]           colour swatch, full name (a link to the run), status
//     tbody tr.config-diff[data-key]      one row per config key whose values differ (nested
//                                         objects are compared key by key, as `a.b`); a key a
//                                         run lacks shows "not set"; tr.config-same when none
//     tbody tr.first-incident             td.first: the incident with the earliest onset (its
//                                         headline and onset step), or "none"
//     tbody tr.final-loss, tr.last-step   the raw loss at the last step drawn, the run's last step
//   each body cell is td[data-run-id].
//
// Every name, key, value and headline is the user's (or comes from it) and goes in as text.

import { h, replaceChildren } from './dom.js';
import { displayStatus, formatStep, formatValue } from './format.js';

/** `config` flattened: nested plain objects become dotted keys ({a: {b: 1}} → {'a.b': 1}). */
export function flatConfig(config, prefix = '') {
  const out = {};
  for (const [key, value] of Object.entries(config ?? {})) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (value && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length) {
      Object.assign(out, flatConfig(value, name));
    } else {
      out[name] = value;
    }
  }
  return out;
}

/** A config value as text (strings as they are, the rest as JSON). */
function valueText(value) {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/**
 * The config keys whose values differ between `configs` (one per run), sorted, each with its
 * values: [{key, values: [value or undefined (not set), ...]}].
 */
export function configDiff(configs) {
  const flat = configs.map((c) => flatConfig(c));
  const keys = [...new Set(flat.flatMap((c) => Object.keys(c)))].sort();
  const rows = [];
  for (const key of keys) {
    const values = flat.map((c) => (Object.hasOwn(c, key) ? c[key] : undefined));
    const texts = values.map((v) => (v === undefined ? undefined : JSON.stringify(v)));
    if (texts.some((t) => t !== texts[0])) rows.push({ key, values });
  }
  return rows;
}

/** The first incident of a run: the earliest onset (then the lowest number), or null. */
export function firstIncident(incidents) {
  let first = null;
  for (const i of incidents) {
    if (!first || i.onset_step < first.onset_step
        || (i.onset_step === first.onset_step && i.number < first.number)) first = i;
  }
  return first;
}

export class CompareTable {
  /** @param {string[]} colors one per run, in order (the charts' colours) */
  constructor(colors) {
    this.colors = colors;
    this.runs = [];
    this.incidents = new Map(); // run id -> Map(incident id -> incident)
    this.last = new Map(); // run id -> {step, value} of the raw loss at its last step drawn
    this.table = h('table', { class: 'compare-table' });
    this.el = h('section', { id: 'compare-table', class: 'card compare-summary', 'aria-label': 'How the runs differ' },
      h('div', { class: 'compare-scroll' }, this.table));
    this.frame = null;
  }

  /** The runs compared (REST rows, in column order). */
  setRuns(runs) {
    this.runs = runs;
    this.render();
  }

  /** Every incident of run `runId` (as /api/runs/{id}/incidents answers). */
  setIncidents(runId, incidents) {
    const live = this.incidents.get(runId) ?? new Map(); // what came live while it was fetched
    const known = new Map(incidents.map((i) => [i.id, i]));
    for (const [id, i] of live) if (!known.has(id) || known.get(id).last_step < i.last_step) known.set(id, i);
    this.incidents.set(runId, known);
    this.schedule();
  }

  /** An incident of run `runId` opened or changed (live). */
  upsertIncident(runId, incident) {
    if (!this.incidents.has(runId)) this.incidents.set(runId, new Map());
    this.incidents.get(runId).set(incident.id, incident);
    this.schedule();
  }

  /** Forget the drawn losses (the charts are being redrawn). */
  resetLosses() {
    this.last.clear();
  }

  /** The raw loss of run `runId` at `step` (rank 0): kept if it is the latest step so far. */
  noteLoss(runId, step, value) {
    const last = this.last.get(runId);
    if (last && last.step > step) return;
    this.last.set(runId, { step, value });
    this.schedule();
  }

  /** Render once per frame at most (live data arrives many records a second). */
  schedule() {
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  render() {
    const runs = this.runs;
    const cells = (cls, make) => runs.map((r, i) => h('td', { class: cls, dataset: { runId: r.id } }, make(r, i)));
    const diff = configDiff(runs.map((r) => r.config ?? {}));
    const configRows = diff.length ? diff.map(({ key, values }) => h('tr', { class: 'config-diff', dataset: { key } },
      h('th', { scope: 'row' }, h('span', { class: 'key' }, key)),
      runs.map((r, i) => h('td', { class: 'value', dataset: { runId: r.id } },
        values[i] === undefined ? h('span', { class: 'muted' }, 'not set') : valueText(values[i])))))
      : [h('tr', { class: 'config-same' }, h('th', { scope: 'row' }, 'Config'),
        h('td', { class: 'muted', colspan: Math.max(1, runs.length) },
          runs.some((r) => Object.keys(r.config ?? {}).length) ? 'the same for every run' : 'none given'))];
    replaceChildren(this.table,
      h('thead', {}, h('tr', {}, h('th', { scope: 'col', class: 'corner' }, 'Run'),
        runs.map((r, i) => h('th', { scope: 'col', class: 'run', dataset: { runId: r.id } },
          h('span', { class: 'swatch', style: `background:${this.colors[i % this.colors.length]}` }),
          h('a', { href: `#run=${r.id}`, title: r.name }, r.name), ' ',
          h('span', { class: `status status-${displayStatus(r)}` }, displayStatus(r)))))),
      h('tbody', {},
        configRows,
        h('tr', { class: 'first-incident' }, h('th', { scope: 'row' }, 'First incident'),
          cells('first', (r) => this.incidentCell(r))),
        h('tr', { class: 'final-loss' }, h('th', { scope: 'row' }, 'Final loss'),
          cells('num', (r) => {
            const last = this.last.get(r.id);
            return last ? [formatValue(last.value), h('span', { class: 'muted' }, ` at step ${formatStep(last.step)}`)]
              : h('span', { class: 'muted' }, '—');
          })),
        h('tr', { class: 'last-step' }, h('th', { scope: 'row' }, 'Last step'),
          cells('num', (r) => formatStep(r.last_step)))));
  }

  incidentCell(run) {
    const first = firstIncident([...(this.incidents.get(run.id)?.values() ?? [])]);
    if (!first) return h('span', { class: 'none muted' }, 'none');
    return [
      h('span', { class: `badge sev-${first.severity}` }, first.severity), ' ',
      h('span', { class: 'headline' }, first.headline), ' ',
      h('span', { class: 'onset muted', dataset: { step: first.onset_step } },
        `onset step ${formatStep(first.onset_step)}`),
      first.state === 'resolved' ? h('span', { class: 'muted' }, ' (resolved)') : null,
    ];
  }

  destroy() {
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    this.frame = null;
  }
}
