// Incidents for a user looking at another run (or not at all): a toast in the corner for every
// incident that opens or escalates, and — for critical ones, once the user allowed it — a
// desktop notification. One toast per incident, never per alert: the server has already
// grouped the alerts one cause fired. `#toasts .toast[data-incident][data-severity][data-kind]
// [data-run][data-change]`; critical toasts stay until closed.

import { h } from './dom.js';
import { formatStep } from './format.js';

const TOAST_MS = 10000;
const MAX_TOASTS = 5;

export class Toasts {
  /** @param {HTMLElement} container  @param {object} hooks open(incident) — show its run */
  constructor(container, { open = () => {} } = {}) {
    this.container = container;
    this.open = open;
    this.shown = 0; // incident openings and escalations toasted so far (tests read this)
    this.byId = new Map(); // incident id -> {toast, timer, ...} of a toast on screen
  }

  /**
   * Show a toast for an incident that `change`d ('opened' or 'escalated'). An incident whose
   * toast is still up (a warning that now failed) updates that toast rather than adding one.
   */
  show(incident, change = 'opened') {
    this.shown += 1;
    let entry = this.byId.get(incident.id);
    if (!entry || !entry.toast.isConnected) entry = this.make(incident);
    this.fill(entry, incident, change);
    this.container.prepend(entry.toast);
    while (this.container.children.length > MAX_TOASTS) this.container.lastElementChild.remove();
    clearTimeout(entry.timer);
    if (incident.severity !== 'critical') entry.timer = setTimeout(entry.close, TOAST_MS);
  }

  make(incident) {
    const entry = { toast: null, timer: null, current: incident };
    entry.close = () => {
      entry.toast.remove();
      clearTimeout(entry.timer);
      if (this.byId.get(incident.id) === entry) this.byId.delete(incident.id); // not a newer toast's
    };
    entry.badge = h('span', { class: 'badge' });
    entry.kind = h('span', { class: 'toast-rule' });
    entry.step = h('span', { class: 'toast-step muted' });
    entry.headline = h('p', { class: 'toast-message' });
    entry.toast = h('div', { class: 'toast', role: 'status' },
      h('div', { class: 'toast-head' }, entry.badge, entry.kind, entry.step,
        h('button', { type: 'button', class: 'toast-close', 'aria-label': 'dismiss', onclick: entry.close }, '×')),
      h('button', { type: 'button', class: 'toast-run', title: 'Show this run',
                    onclick: () => { this.open(entry.current); entry.close(); } }, incident.run),
      entry.headline);
    this.byId.set(incident.id, entry);
    return entry;
  }

  fill(entry, incident, change) {
    entry.current = incident;
    const { toast } = entry;
    toast.className = `toast sev-${incident.severity}`;
    Object.assign(toast.dataset, { incident: incident.id, severity: incident.severity,
                                   kind: incident.kind, run: incident.run, change });
    entry.badge.className = `badge sev-${incident.severity}`;
    entry.badge.textContent = incident.severity;
    entry.kind.textContent = incident.kind.replace(/_/g, ' ') + (change === 'escalated' ? ' (escalated)' : '');
    entry.step.textContent = `step ${formatStep(incident.escalated_step ?? incident.onset_step)}`;
    entry.headline.textContent = incident.headline;
  }
}

/**
 * Desktop notifications for critical incidents. Permission is asked once, and only when the user
 * clicks the button (`#notify`), never on page load; the button hides once answered.
 */
export class Notifier {
  /** @param {HTMLButtonElement} button */
  constructor(button) {
    this.button = button;
    this.sent = 0; // notifications created (tests read this)
    this.supported = typeof window.Notification === 'function';
    button.addEventListener('click', () => this.ask());
    this.sync();
  }

  get permission() {
    return this.supported ? window.Notification.permission : 'unsupported';
  }

  sync() {
    this.button.hidden = this.permission !== 'default';
  }

  async ask() {
    if (!this.supported) return;
    try {
      await window.Notification.requestPermission();
    } finally {
      this.sync();
    }
  }

  /** Notify about an incident that opened or escalated, if it is critical, allowed and the page
   * is not in view: at most one per incident, since a warning is told only once it fails
   * (escalates). Tagged with the incident, so the desktop never shows it twice. */
  notify(incident) {
    if (this.permission !== 'granted' || incident.severity !== 'critical') return;
    if (document.visibilityState === 'visible' && document.hasFocus()) return; // the toast suffices
    try {
      const n = new window.Notification(`trainvitals: ${incident.run}`, {
        body: incident.headline, tag: `incident|${incident.id}`,
      });
      n.onclick = () => { window.focus(); n.close(); };
      this.sent += 1;
    } catch (err) { // e.g. mobile browsers allow notifications from service workers only
      console.warn('trainvitals: could not show a notification', err);
    }
  }
}
