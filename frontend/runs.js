// The runs list: name, status (running / finished / crashed / silent), last step, steps per
// second, open incidents by severity (one per root cause, not one per alert), start time; a
// checkbox per run picks runs to compare.
// Rows: `#runs tr[data-run-id][data-status]`; the selected one has aria-current="true".

import { h, replaceChildren } from './dom.js';
import { displayStatus, formatFullTime, formatRate, formatStep, formatTimeParts } from './format.js';

const SEVERITIES = ['critical', 'warning'];

/** When a run started, short: the time of day, after the date on a line of its own if not today
 * (the column stays narrow, the name gets the room). */
function startedText(seconds) {
  const [date, time] = formatTimeParts(seconds);
  const at = h('span', { class: 'time' }, time);
  return date === null ? at : [h('span', { class: 'day' }, date), ' ', at];
}

/** A run name as text with line-break chances after each '_', '/', '.', ':' and '=' too (a
 * browser breaks after '-' by itself), so a long name wraps at its parts, not mid-word. */
export function breakable(name) {
  return String(name).split(/(?<=[_/.:=])/).flatMap((part, i) => (i ? [h('wbr'), part] : [part]));
}

export class RunsList {
  /**
   * @param {HTMLTableElement} table
   * @param {HTMLElement} emptyNote shown when there are no runs
   * @param {object} hooks onPick(ids) — the runs ticked for comparison changed
   */
  constructor(table, emptyNote, { onPick = () => {} } = {}) {
    this.tbody = table.tBodies[0];
    this.emptyNote = emptyNote;
    this.onPick = onPick;
    this.runs = [];
    this.selectedId = null;
    this.picked = new Set(); // run ids ticked for comparison, in ticking order
  }

  /** Replace the list with `runs` (as /api/runs returns them). */
  set(runs) {
    this.runs = runs;
    const ids = new Set(runs.map((r) => r.id));
    const before = this.picked.size;
    this.picked = new Set([...this.picked].filter((id) => ids.has(id)));
    this.render();
    if (this.picked.size !== before) this.onPick([...this.picked]);
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

  /** Tick exactly these runs for comparison (e.g. from a `#compare=` address). */
  pick(ids) {
    this.picked = new Set(ids);
    for (const box of this.tbody.querySelectorAll('input.pick')) {
      box.checked = this.picked.has(Number(box.closest('tr').dataset.runId));
    }
    this.onPick([...this.picked]);
  }

  /** Live progress of one run: raise its last step without a reload. */
  noteStep(runName, step) {
    const run = this.byName(runName);
    if (!run || (run.last_step !== null && run.last_step >= step)) return;
    run.last_step = step;
    this.cell(run, 'td.step').forEach((c) => { c.textContent = formatStep(step); });
  }

  /** A `progress` message: last step and speed of any run; data arrived, so not silent. */
  noteProgress({ run: name, last_step: step, steps_per_second: rate }) {
    const run = this.byName(name);
    if (!run) return false;
    this.noteStep(name, step);
    if (typeof rate === 'number' && rate > 0) {
      run.steps_per_second = rate;
      this.cell(run, 'td.rate').forEach((c) => { c.textContent = formatRate(rate); });
    }
    if (run.silent) {
      run.silent = false;
      this.updateStatus(run);
    }
    return true;
  }

  cell(run, selector) {
    return [...this.tbody.querySelectorAll(`tr[data-run-id="${run.id}"] ${selector}`)];
  }

  updateStatus(run) {
    const tr = this.tbody.querySelector(`tr[data-run-id="${run.id}"]`);
    if (!tr) return;
    const status = displayStatus(run);
    tr.dataset.status = status;
    const badge = tr.querySelector('td.status-cell .status');
    badge.className = `status status-${status}`;
    badge.textContent = status;
  }

  /** Open (or escalated) critical incidents over all runs (for the page title). */
  openCritical() {
    return this.runs.reduce((n, r) => n + (r.open_incidents?.critical ?? 0), 0);
  }

  render() {
    this.emptyNote.hidden = this.runs.length > 0;
    replaceChildren(this.tbody, this.runs.map((run) => this.row(run)));
    this.select(this.selectedId);
  }

  row(run) {
    const status = displayStatus(run);
    const open = run.open_incidents ?? {};
    const badges = SEVERITIES.filter((s) => open[s]).map((s) =>
      h('span', { class: `badge sev-${s}`, dataset: { severity: s },
                  title: `${open[s]} open ${s} incident(s)` }, String(open[s])));
    const resolved = (run.incidents ?? 0) - SEVERITIES.reduce((n, s) => n + (open[s] ?? 0), 0);
    const box = h('input', { type: 'checkbox', class: 'pick', 'aria-label': `compare ${run.name}`,
                             checked: this.picked.has(run.id),
                             onchange: () => this.toggle(run.id, box.checked) });
    const silentFor = status === 'silent' ? `no data since ${formatFullTime(run.updated)}` : null;
    return h('tr', { dataset: { runId: run.id, status } },
      h('td', { class: 'pick-cell' }, box),
      h('td', { class: 'name' }, h('a', { href: `#run=${run.id}`, title: run.name }, breakable(run.name))),
      h('td', { class: 'status-cell' }, h('span', { class: `status status-${status}`,
                                                    title: run.reason || silentFor }, status)),
      h('td', { class: 'num step' }, formatStep(run.last_step)),
      h('td', { class: 'num rate', title: 'steps per second (recent)' }, formatRate(run.steps_per_second)),
      h('td', { class: 'incidents' }, badges,
        resolved > 0 ? h('span', { class: 'muted resolved', title: `${resolved} resolved incident(s)` },
          `${resolved} resolved`) : null,
        badges.length || resolved > 0 ? null : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'started', title: formatFullTime(run.first_time ?? run.created) },
        startedText(run.first_time ?? run.created)),
    );
  }

  toggle(id, on) {
    if (on) this.picked.add(id);
    else this.picked.delete(id);
    this.onPick([...this.picked]);
  }
}
