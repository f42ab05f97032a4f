// The runs list: name, status, last step, open alerts by severity, start time.
// Rows: `#runs tr[data-run-id][data-status]`; the selected one has aria-current="true".

import { h, replaceChildren } from './dom.js';
import { formatFullTime, formatStep, formatTime } from './format.js';

const SEVERITIES = ['critical', 'warning'];

export class RunsList {
  /** @param {HTMLTableElement} table  @param {HTMLElement} emptyNote shown when there are no runs */
  constructor(table, emptyNote) {
    this.tbody = table.tBodies[0];
    this.emptyNote = emptyNote;
    this.runs = [];
    this.selectedId = null;
  }

  /** Replace the list with `runs` (as /api/runs returns them). */
  set(runs) {
    this.runs = runs;
    this.render();
  }

  byId(id) {
    return this.runs.find((r) => r.id === id) ?? null;
  }

  byName(name) {
    return this.runs.find((r) => r.name === name) ?? null;
  }

  select(id) {
    this.selectedId = id;
    for (const tr of this.tbody.rows) {
      if (Number(tr.dataset.runId) === id) tr.setAttribute('aria-current', 'true');
      else tr.removeAttribute('aria-current');
    }
  }

  /** Live progress of one run: raise its last step without a reload. */
  noteStep(runName, step) {
    const run = this.byName(runName);
    if (!run || (run.last_step !== null && run.last_step >= step)) return;
    run.last_step = step;
    const cell = this.tbody.querySelector(`tr[data-run-id="${run.id}"] td.step`);
    if (cell) cell.textContent = formatStep(step);
  }

  /** Open critical alerts over all runs (for the page title). */
  openCritical() {
    return this.runs.reduce((n, r) => n + (r.open_alerts?.critical ?? 0), 0);
  }

  render() {
    this.emptyNote.hidden = this.runs.length > 0;
    replaceChildren(this.tbody, this.runs.map((run) => this.row(run)));
    this.select(this.selectedId);
  }

  row(run) {
    const alerts = SEVERITIES.filter((s) => run.open_alerts?.[s]).map((s) =>
      h('span', { class: `badge sev-${s}`, dataset: { severity: s },
                  title: `${run.open_alerts[s]} open ${s} alert(s)` }, String(run.open_alerts[s])));
    return h('tr', { dataset: { runId: run.id, status: run.status } },
      h('td', { class: 'name' }, h('a', { href: `#run=${run.id}`, title: run.name }, run.name)),
      h('td', {}, h('span', { class: `status status-${run.status}`, title: run.reason || null },
                    run.status)),
      h('td', { class: 'num step' }, formatStep(run.last_step)),
      h('td', { class: 'alerts' }, alerts.length ? alerts : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'started', title: formatFullTime(run.first_time ?? run.created) },
        formatTime(run.first_time ?? run.created)),
    );
  }
}
