// The incidents of one run, as cards at the top of its view: one per root cause, saying why in
// its headline, what to try, where it began, and the alerts behind it (its evidence).
// Cards: `#incidents article.incident[data-incident][data-kind][data-severity][data-state]
// [data-step]` (data-step: the onset), open and escalated ones first, resolved ones greyed
// after. Clicking a card (or Enter on it) calls `onSelect(incident)`: the run view zooms to
// its onset. The evidence is a <details> inside the card; opening it does not zoom.

import { h, replaceChildren } from './dom.js';
import { formatStep } from './format.js';

const STATE_ORDER = { open: 0, escalated: 1, resolved: 2 };

/** Whether `b` is at least as recent a snapshot of the same incident as `a`. An incident only
 * moves open → escalated → resolved (a cause that comes back is a new incident), and within
 * one state its last step only grows. */
function newer(a, b) {
  const [x, y] = [STATE_ORDER[a.state] ?? 0, STATE_ORDER[b.state] ?? 0];
  if (x !== y) return y > x;
  return b.last_step >= a.last_step;
}

export class IncidentsPanel {
  /** @param {object} options multiRank (show ranks), onSelect(incident) */
  constructor({ multiRank = false, onSelect = null } = {}) {
    this.multiRank = multiRank;
    this.onSelect = onSelect;
    this.selected = null; // id of the card last clicked
    this.incidents = new Map(); // id -> incident
    this.open = new Set(); // ids whose evidence the user opened (kept across re-renders)
    this.list = h('div', { class: 'incidents-list' });
    this.el = h('section', { id: 'incidents', class: 'incidents', hidden: true,
                             'aria-labelledby': 'incidents-heading' },
      h('h3', { id: 'incidents-heading', class: 'visually-hidden' }, 'Incidents'), this.list);
  }

  /** Replace everything with `incidents` (as /api/runs/{id}/incidents answers). */
  set(incidents) {
    this.incidents.clear();
    for (const i of incidents) this.incidents.set(i.id, i);
    this.render();
  }

  /** Add or update one incident (a live `incident` message); older snapshots are ignored. */
  upsert(incident) {
    const old = this.incidents.get(incident.id);
    if (old && !newer(old, incident)) return;
    this.incidents.set(incident.id, incident);
    this.render();
  }

  /** Active ones first (a resolved cause matters less than one still going on), each group
   * by onset. */
  sorted() {
    const resolved = (i) => (i.state === 'resolved' ? 1 : 0);
    return [...this.incidents.values()].sort((a, b) => resolved(a) - resolved(b)
      || a.onset_step - b.onset_step || a.number - b.number);
  }

  render() {
    const incidents = this.sorted();
    this.el.hidden = incidents.length === 0;
    replaceChildren(this.list, incidents.map((i) => this.card(i)));
  }

  card(i) {
    const select = () => {
      this.selected = i.id;
      for (const c of this.list.children) c.removeAttribute('aria-current');
      card.setAttribute('aria-current', 'true');
      if (this.onSelect) this.onSelect(i);
    };
    // The expander is inside the card: its clicks open the evidence, never zoom.
    const onclick = (ev) => { if (!ev.target.closest('details')) select(); };
    const onkeydown = (ev) => {
      if (ev.target === card && (ev.key === 'Enter' || ev.key === ' ')) { ev.preventDefault(); select(); }
    };
    const card = h('article', {
      class: `incident sev-${i.severity} state-${i.state}`, tabindex: 0,
      title: 'Zoom all charts to where this began',
      'aria-current': this.selected === i.id ? 'true' : null,
      dataset: { incident: i.id, kind: i.kind, severity: i.severity, state: i.state, step: i.onset_step },
      onclick, onkeydown },
    h('div', { class: 'incident-head' },
      h('span', { class: `badge sev-${i.severity}` }, i.severity),
      h('span', { class: 'incident-kind' }, i.kind.replace(/_/g, ' ')),
      h('span', { class: `incident-state state-${i.state}` }, this.stateText(i))),
    h('p', { class: 'incident-headline' }, i.headline),
    i.remedy ? h('p', { class: 'incident-remedy' }, 'Try: ', i.remedy) : null,
    h('p', { class: 'incident-meta' }, this.meta(i)),
    this.evidence(i));
    return card;
  }

  stateText(i) {
    if (i.state !== 'resolved') return i.state;
    return i.resolved_step === null || i.resolved_step === undefined ? 'resolved'
      : `resolved at step ${formatStep(i.resolved_step)}`;
  }

  /** Where it began (and, for a warning that became a failure, both steps) and on which ranks. */
  meta(i) {
    const escalated = i.escalated_step !== null && i.escalated_step !== undefined;
    const ranks = i.ranks?.length > 1 ? `ranks ${i.ranks.join(', ')}` : `rank ${i.rank}`;
    return [
      h('span', { class: 'onset' }, `onset step ${formatStep(i.onset_step)}`),
      escalated ? h('span', { class: 'escalation' },
        `warned at step ${formatStep(i.onset_step)}, failed at step ${formatStep(i.escalated_step)}`) : null,
      this.multiRank || i.ranks?.length > 1 ? h('span', { class: 'rank' }, ranks) : null,
    ];
  }

  /** The alerts behind the incident, root first (the server's order), behind an expander. */
  evidence(i) {
    const details = h('details', { class: 'incident-evidence', open: this.open.has(i.id),
                                   ontoggle: () => { if (details.open) this.open.add(i.id); else this.open.delete(i.id); } },
      h('summary', {}, 'Evidence: ', h('span', { class: 'evidence-count' }, String(i.evidence_count)),
        i.evidence_count === 1 ? ' alert' : ' alerts'),
      h('ul', { class: 'evidence-list' }, i.evidence.map((e) => h('li', {
        class: `evidence sev-${e.severity}`,
        dataset: { rule: e.rule, series: e.series, step: e.first_step, rank: e.rank } },
      h('span', { class: 'series' }, e.series), ' ',
      h('span', { class: 'rule' }, e.rule), ' ',
      h('span', { class: 'steps' }, `step ${formatStep(e.first_step)}`),
      this.multiRank ? h('span', { class: 'rank' }, ` rank ${e.rank}`) : null,
      h('p', { class: 'message' }, e.message)))));
    return details;
  }
}
