// Bootstrap: wires the runs list, the live socket, toasts and the view; routes by
// `#run=<id>` (one run) and `#compare=<id>,<id>,...` (runs overlaid).
//
// Freshness rules: the runs list reloads from REST on `run` messages and on incidents opening,
// escalating and resolving (debounced), on every (re)connect and every 10 s while visible;
// `progress` messages move every run's last step and speed in between. The open view reloads
// on `resync` and after a reconnect (messages may have been missed); otherwise live messages
// are applied in place.
//
// People are told about incidents, not alerts: one root cause fires many alerts at once (a NaN
// loss makes its components and the gradients NaN too), and the server groups them. The title
// counts open critical incidents over all runs; an incident of any run that opens or escalates
// shows a toast (and, when critical, a desktop notification if the user allowed it). The
// server sends alert messages only to the viewers of their run, so nothing here but the run
// view may rely on them.
//
// Conditions (the server's own trouble, a trainer's delivery trouble: conditions.js) are
// loaded on every (re)connect and follow `condition` messages: server ones as a banner above
// every view, a run's in its header.

import { Api, decodeAlert, decodeCondition, decodeIncident, decodeRecord } from './api.js';
import { CompareView } from './compare_view.js';
import { Conditions } from './conditions.js';
import { h, replaceChildren } from './dom.js';
import { exposeHooks } from './hooks.js';
import { Live } from './live.js';
import { RunView } from './run_view.js';
import { RunsList } from './runs.js';
import { Notifier, Toasts } from './toasts.js';

const RUNS_POLL_MS = 10000;
const RUNS_DEBOUNCE_MS = 500;
const FIRST_CONNECT_WAIT_MS = 2000;
const LIVE_TEXT = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…' };

/** The view an address asks for: {kind: 'run', ids: [id]}, {kind: 'compare', ids}, or null. */
function parseRoute(hash) {
  const run = /^#run=(\d+)$/.exec(hash);
  if (run) return { kind: 'run', ids: [Number(run[1])] };
  const compare = /^#compare=(\d+(?:,\d+)+)$/.exec(hash);
  if (compare) return { kind: 'compare', ids: [...new Set(compare[1].split(',').map(Number))] };
  return null;
}

class App {
  constructor() {
    this.api = new Api();
    this.compareButton = document.getElementById('compare');
    this.runs = new RunsList(document.getElementById('runs'), document.getElementById('runs-empty'),
      { onPick: (ids) => this.showPicked(ids) });
    this.viewRoot = document.getElementById('run-view');
    this.liveEl = document.getElementById('live-status');
    this.errorEl = document.getElementById('error');
    this.toasts = new Toasts(document.getElementById('toasts'), {
      open: (incident) => this.showRunNamed(incident.run),
    });
    this.notifier = new Notifier(document.getElementById('notify'));
    this.conditions = new Conditions(this.api).mount();
    this.errors = new Map();
    this.view = null;
    this.viewKey = null;
    this.runsTimer = null;
    this.live = new Live(() => this.api.openLive(), {
      onMessage: (msg) => this.onMessage(msg),
      onState: (state) => this.showLiveState(state),
      onOpen: (generation) => this.onOpen(generation),
    });
  }

  async start() {
    if (!window.Plotly) this.setError('plotly', 'plotly.js did not load (/static/vendor/plotly.min.js); charts cannot be drawn.');
    window.addEventListener('hashchange', () => this.route());
    this.compareButton.addEventListener('click', () => {
      window.location.hash = `#compare=${[...this.runs.picked].join(',')}`;
    });
    this.live.start();
    this.conditions.reload();
    await this.reloadRuns();
    this.route();
    setInterval(() => { if (!document.hidden) this.reloadRuns(); }, RUNS_POLL_MS);
  }

  /** Open run `name` (a toast's): live messages name runs, and the list may not hold a run
   * that just started, so it is reloaded first then. */
  async showRunNamed(name) {
    if (!this.runs.byName(name)) await this.reloadRuns();
    const run = this.runs.byName(name);
    if (run) window.location.hash = `#run=${run.id}`;
  }

  showPicked(ids) {
    this.compareButton.disabled = ids.length < 2;
    this.compareButton.textContent = ids.length >= 2 ? `Compare ${ids.length} runs` : 'Compare: tick 2+ runs';
  }

  route() {
    const route = parseRoute(window.location.hash);
    const key = route ? `${route.kind}:${route.ids.join(',')}` : null;
    if (this.view && this.viewKey === key) return;
    if (this.view) this.view.destroy();
    this.view = null;
    this.viewKey = key;
    this.setError('view', null);
    this.runs.select(route?.kind === 'run' ? route.ids[0] : null);
    if (route === null) {
      this.live.subscribe([]);
      this.viewRoot.dataset.state = 'empty';
      delete this.viewRoot.dataset.runId;
      replaceChildren(this.viewRoot, h('p', { class: 'empty placeholder' },
        'Select a run to see its vital signs, or tick two or more to compare them.'));
      return;
    }
    const hooks = { follow: (names) => this.follow(names), onError: (message) => this.setError('view', message),
                    conditionsLine: (name) => this.conditions.runLine(name) };
    if (route.kind === 'compare') {
      this.runs.pick(route.ids);
      this.view = new CompareView(this.viewRoot, this.api, route.ids, hooks);
    } else {
      this.view = new RunView(this.viewRoot, this.api, route.ids[0], hooks);
    }
    this.view.load();
  }

  /** Subscribe to these runs; resolves with the live generation (-1 if not connected yet). */
  async follow(names) {
    this.live.subscribe(names);
    const open = await this.live.whenOpen(FIRST_CONNECT_WAIT_MS);
    return open ? this.live.generation : -1;
  }

  onOpen(generation) {
    this.reloadRuns();
    this.conditions.reload(); // conditions may have changed unseen (or the server restarted)
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
        if (view && view.follows(msg.run)) view.onSteps(msg.run, records);
        return;
      }
      case 'progress':
        if (!this.runs.noteProgress(msg)) this.scheduleRunsReload(); // a run we do not list yet
        return;
      case 'alert': { // evidence, sent only to the viewers of its run
        const alert = decodeAlert(msg.alert);
        if (view && view.follows(alert.run)) view.onAlert(alert);
        return;
      }
      case 'incident': {
        const incident = decodeIncident(msg.incident);
        if (view && view.follows(incident.run)) view.onIncident(incident);
        if (msg.change === 'opened' || msg.change === 'escalated') {
          this.toasts.show(incident, msg.change);
          this.notifier.notify(incident); // critical ones only: an escalation is a failure now
        }
        // The runs list's open-incident counts change on all but `updated` (evidence, text).
        if (msg.change !== 'updated') this.scheduleRunsReload();
        return;
      }
      case 'condition': // server trouble (the banner) or a trainer's (its run's header)
        this.conditions.onMessage(msg.change, decodeCondition(msg.condition));
        return;
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
      const view = this.view;
      if (view instanceof RunView) view.showRun(this.runs.byId(view.runId));
      if (view instanceof CompareView) for (const id of view.runIds) view.showRun(this.runs.byId(id));
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

// Read-only hooks for tests and the console (hooks.js).
exposeHooks(() => app.view, {
  get liveState() { return app.liveEl.dataset.state; },
  get toasts() { return app.toasts.shown; },
  get notifications() { return app.notifier.sent; },
  get conditions() { return [...app.conditions.open.values()]; },
});

app.start();
