// Alerts for a user looking at another run (or not at all): a toast in the corner for every
// newly opened alert, and — for critical ones, once the user allowed it — a desktop
// notification. `#toasts .toast[data-severity][data-rule]`; critical toasts stay until closed.

import { h } from './dom.js';

const TOAST_MS = 10000;
const MAX_TOASTS = 5;

export class Toasts {
  /** @param {HTMLElement} container  @param {object} hooks open(alert) — show its run */
  constructor(container, { open = () => {} } = {}) {
    this.container = container;
    this.open = open;
    this.shown = 0; // alerts toasted so far (tests read this)
    this.byKey = new Map(); // "run|severity" -> {toast, rules, count, timer} of a toast on screen
  }

  /**
   * Show a toast for a newly opened alert. Alerts of one run and severity that open while its
   * toast is up join that toast (one bad step often opens several at once). Returns whether a
   * new toast appeared.
   */
  show(alert) {
    this.shown += 1;
    const key = `${alert.run}\u0000${alert.severity}`;
    const open = this.byKey.get(key);
    if (open && open.toast.isConnected) {
      open.count += 1;
      open.rules.add(alert.rule);
      this.fill(open, alert);
      this.container.prepend(open.toast);
      return false;
    }
    const entry = { toast: null, rules: new Set([alert.rule]), count: 1, timer: null };
    const close = () => { entry.toast.remove(); this.byKey.delete(key); clearTimeout(entry.timer); };
    entry.rule = h('span', { class: 'toast-rule' });
    entry.message = h('p', { class: 'toast-message' });
    entry.toast = h('div', { class: `toast sev-${alert.severity}`, role: 'status',
                             dataset: { severity: alert.severity, rule: alert.rule, run: alert.run } },
      h('div', { class: 'toast-head' },
        h('span', { class: `badge sev-${alert.severity}` }, alert.severity), entry.rule,
        h('button', { type: 'button', class: 'toast-close', 'aria-label': 'dismiss', onclick: close }, '×')),
      h('button', { type: 'button', class: 'toast-run', title: 'Show this run',
                    onclick: () => { this.open(alert); close(); } }, alert.run),
      entry.message);
    this.fill(entry, alert);
    this.byKey.set(key, entry);
    this.container.prepend(entry.toast);
    while (this.container.children.length > MAX_TOASTS) this.container.lastElementChild.remove();
    if (alert.severity !== 'critical') entry.timer = setTimeout(close, TOAST_MS);
    return true;
  }

  fill(entry, alert) {
    entry.toast.dataset.count = String(entry.count);
    entry.rule.textContent = [...entry.rules].join(', ');
    entry.message.textContent = entry.count > 1
      ? `${alert.message} (+${entry.count - 1} more alert${entry.count > 2 ? 's' : ''})` : alert.message;
  }
}

/**
 * Desktop notifications for critical alerts. Permission is asked once, and only when the user
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

  /** Notify about a newly opened critical alert, if allowed and the page is not in view.
   * The caller sends one per toast, so one bad step makes one notification. */
  notify(alert) {
    if (this.permission !== 'granted' || alert.severity !== 'critical') return;
    if (document.visibilityState === 'visible' && document.hasFocus()) return; // the toast suffices
    try {
      const n = new window.Notification(`trainvitals: ${alert.run}`, {
        body: alert.message, tag: `${alert.run}|${alert.rank}|${alert.rule}|${alert.series}`,
      });
      n.onclick = () => { window.focus(); n.close(); };
      this.sent += 1;
    } catch (err) { // e.g. mobile browsers allow notifications from service workers only
      console.warn('trainvitals: could not show a notification', err);
    }
  }
}
