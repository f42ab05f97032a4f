// Bootstrap: wires the runs list, the live socket and the run view; routes by `#run=<id>`.
//
// Freshness rules: the runs list reloads from REST on `run` messages and on alert openings and
// resolutions (debounced), on every (re)connect and every 10 s while visible; the open run
// reloads on `resync` and after a reconnect (messages may have been missed); otherwise live
// messages are applied in place. The title counts open critical alerts over all runs.

import { Api, decodeAlert, decodeRecord } from './api.js';
import { h, replaceChildren } from './dom.js';
import { Live } from './live.js';
import { RunView } from './run_view.js';
import { RunsList } from './runs.js';

const RUNS_POLL_MS = 10000;
const RUNS_DEBOUNCE_MS = 500;
const FIRST_CONNECT_WAIT_MS = 2000;
const LIVE_TEXT = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…' };

class App {
  constructor() {
    this.api = new Api();
    this.runs = new RunsList(document.getElementById('runs'), document.getElementById('runs-empty'));
    this.viewRoot = document.getElementById('run-view');
    this.liveEl = document.getElementById('live-status');
    this.errorEl = document.getElementById('error');
    this.errors = new Map();
    this.view = null;
    this.runsTimer = null;
    this.live = new Live(this.api.wsUrl('/ws/live'), {
      onMessage: (msg) => this.onMessage(msg),
      onState: (state) => this.showLiveState(state),
      onOpen: (generation) => this.onOpen(generation),
    });
  }

  async start() {
    if (!window.Plotly) this.setError('plotly', 'plotly.js did not load (/static/vendor/plotly.min.js); charts cannot be drawn.');
    window.addEventListener('hashchange', () => this.route());
    this.live.start();
    await this.reloadRuns();
    this.route();
    setInterval(() => { if (!document.hidden) this.reloadRuns(); }, RUNS_POLL_MS);
  }

  routeId() {
    const match = /^#run=(\d+)$/.exec(window.location.hash);
    return match ? Number(match[1]) : null;
  }

  route() {
    const id = this.routeId();
    if (this.view && this.view.runId === id) return;
    if (this.view) this.view.destroy();
    this.view = null;
    this.setError('view', null);
    this.runs.select(id);
    if (id === null) {
      this.live.subscribe([]);
      this.viewRoot.dataset.state = 'empty';
      delete this.viewRoot.dataset.runId;
      replaceChildren(this.viewRoot, h('p', { class: 'empty placeholder' }, 'Select a run to see its vital signs.'));
      return;
    }
    this.view = new RunView(this.viewRoot, this.api, id, {
      follow: (name) => this.follow(name),
      onError: (message) => this.setError('view', message),
    });
    this.view.load();
  }

  /** Subscribe to one run; resolves with the live generation (-1 if not connected yet). */
  async follow(name) {
    this.live.subscribe([name]);
    const open = await this.live.whenOpen(FIRST_CONNECT_WAIT_MS);
    return open ? this.live.generation : -1;
  }

  onOpen(generation) {
    this.reloadRuns();
    // A view loaded under another connection (or none) may have missed messages: reload it.
    const view = this.view;
    if (view && view.generation !== null && view.generation !== generation) view.load();
  }

  onMessage(msg) {
    const view = this.view;
    switch (msg.type) {
      case 'steps': {
        const records = (msg.records ?? []).map(decodeRecord);
        if (!records.length) return;
        this.runs.noteStep(msg.run, Math.max(...records.map((r) => r.step)));
        if (view && view.name === msg.run) view.onSteps(records);
        return;
      }
      case 'alert': {
        const alert = decodeAlert(msg.alert);
        if (view && view.name === alert.run) view.onAlert(alert);
        // Open-alert counts in the runs list change on openings and resolutions only.
        if (msg.change !== 'updated') this.scheduleRunsReload();
        return;
      }
      case 'run':
        this.scheduleRunsReload();
        return;
      case 'resync':
        this.reloadRuns();
        if (view) view.load();
        return;
      case 'error':
        console.warn('trainvitals: server said', msg.message);
        return;
      default:
    }
  }

  scheduleRunsReload() {
    if (this.runsTimer !== null) return;
    this.runsTimer = setTimeout(() => { this.runsTimer = null; this.reloadRuns(); }, RUNS_DEBOUNCE_MS);
  }

  async reloadRuns() {
    try {
      this.runs.set(await this.api.runs());
      this.setError('runs', null);
      if (this.view) this.view.showRun(this.runs.byId(this.view.runId));
    } catch (err) {
      this.setError('runs', err.status === 401
        ? 'This server needs a view token: open the dashboard as /?token=<view token>.'
        : `Could not load the runs: ${err.message ?? err}`);
    }
    this.updateTitle();
  }

  updateTitle() {
    const critical = this.runs.openCritical();
    document.title = critical > 0 ? `(${critical}) trainvitals` : 'trainvitals';
  }

  showLiveState(state) {
    this.liveEl.dataset.state = state;
    this.liveEl.textContent = LIVE_TEXT[state] ?? state;
  }

  /** Show (message) or clear (null) the error of one source; all shown ones are listed. */
  setError(source, message) {
    if (message) this.errors.set(source, message);
    else this.errors.delete(source);
    this.errorEl.hidden = this.errors.size === 0;
    replaceChildren(this.errorEl, [...this.errors.values()].map((m) => h('p', {}, m)));
  }
}

const app = new App();

// Read-only hooks for tests and for poking around in the console.
Object.defineProperty(window, 'trainvitals', {
  value: Object.freeze({
    /** Live step records applied to the open run since it was (re)loaded. */
    get pointsReceived() { return app.view?.pointsReceived ?? 0; },
    get liveState() { return app.liveEl.dataset.state; },
    /** {trace key: number of points} of chart `id` ('chart-loss', 'chart-grad'). */
    traceLengths: (id) => app.view?.traceLengths(id) ?? {},
    /** Full redraws of chart `id` since the run was opened (reloads only; live data appends). */
    draws: (id) => app.view?.draws(id) ?? 0,
    /** Resolves once queued chart updates are drawn. */
    settled: () => app.view?.settled() ?? Promise.resolve(),
  }),
});

app.start();
