// The alerts of one run: severity, rule, message, first/last step, count, open/resolved.
// Items: `#alerts li[data-severity][data-state][data-rule][data-series][data-step]`, open ones
// first. Clicking one (or Enter on it) calls `onSelect(alert)`: the run view zooms to its step.

import { h, replaceChildren } from './dom.js';

const SEVERITY_ORDER = { critical: 0, warning: 1 };

/** One alert's identity: a (rank, rule, series) condition opened at one step. */
function alertKey(a) {
  return `${a.rank}\u0000${a.rule}\u0000${a.series}\u0000${a.opened_step}`;
}

/** Whether `b` is at least as recent a snapshot of the same alert as `a`. */
function newer(a, b) {
  if (a.state !== b.state) return b.state === 'resolved';
  return b.last_step > a.last_step || (b.last_step === a.last_step && b.count >= a.count);
}

export class AlertsPanel {
  /** @param {HTMLUListElement} list  @param {HTMLElement} emptyNote shown when there are none */
  constructor(list, emptyNote, { multiRank = false, onSelect = null } = {}) {
    this.list = list;
    this.emptyNote = emptyNote;
    this.multiRank = multiRank;
    this.onSelect = onSelect;
    this.selected = null; // key of the alert last clicked
    this.alerts = new Map();
  }

  /** Replace everything with `alerts` (as /api/alerts returns them). */
  set(alerts) {
    this.alerts.clear();
    for (const a of alerts) this.alerts.set(alertKey(a), a);
    this.render();
  }

  /** Add or update one alert (a live `alert` message); older snapshots are ignored. */
  upsert(alert) {
    const key = alertKey(alert);
    const old = this.alerts.get(key);
    if (old && !newer(old, alert)) return;
    this.alerts.set(key, alert);
    this.render();
  }

  sorted() {
    return [...this.alerts.values()].sort((a, b) =>
      (a.state === 'open' ? 0 : 1) - (b.state === 'open' ? 0 : 1)
      || (SEVERITY_ORDER[a.severity] ?? 9) - (SEVERITY_ORDER[b.severity] ?? 9)
      || b.last_step - a.last_step);
  }

  render() {
    const alerts = this.sorted();
    this.emptyNote.hidden = alerts.length > 0;
    replaceChildren(this.list, alerts.map((a) => this.item(a)));
  }

  item(a) {
    const steps = a.first_step === a.last_step ? `step ${a.first_step}`
      : `steps ${a.first_step}–${a.last_step}`;
    const state = a.state === 'open' ? 'open'
      : `resolved${a.resolved_step !== null && a.resolved_step !== undefined ? ` at step ${a.resolved_step}` : ''}`;
    const key = alertKey(a);
    const select = () => {
      this.selected = key;
      for (const li of this.list.children) li.removeAttribute('aria-current');
      item.setAttribute('aria-current', 'true');
      if (this.onSelect) this.onSelect(a);
    };
    const item = h('li', { class: `alert sev-${a.severity} state-${a.state}`, tabindex: 0,
                           title: 'Zoom all charts to this alert',
                           'aria-current': this.selected === key ? 'true' : null,
                           dataset: { severity: a.severity, state: a.state, rule: a.rule, series: a.series,
                                      step: a.first_step },
                           onclick: select,
                           onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); select(); } } },
      h('div', { class: 'alert-head' },
        h('span', { class: `badge sev-${a.severity}` }, a.severity),
        h('span', { class: 'rule' }, a.rule),
        h('span', { class: 'series' }, a.series),
        this.multiRank ? h('span', { class: 'rank' }, `rank ${a.rank}`) : null,
        h('span', { class: `state state-${a.state}` }, state)),
      h('p', { class: 'message' }, a.message),
      h('div', { class: 'alert-meta' },
        h('span', { class: 'steps' }, steps),
        h('span', { class: 'count', title: 'steps on which the condition held' }, `× ${a.count}`)),
    );
    return item;
  }
}
