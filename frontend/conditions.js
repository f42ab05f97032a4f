// Conditions: trouble of the server itself (its disk is full, its database does not answer, a
// replica lags) or of one trainer's delivery (its spool keeps growing, it drops records) —
// measured by the server, not judged from the training signal (docs/operations.md).
//
// Server-scope conditions show as a banner at the top of every view:
// `#conditions .condition[data-condition][data-kind][data-severity]`, each with its severity,
// headline and "Try: <remedy>". Run-scope ones show as a line in their run's header
// (`.run-conditions`, made by `runLine()`). All text goes in through `h()` (text nodes).
//
// Fed by `GET /api/conditions?state=open` (through api.js) on every (re)connect of the live
// socket, and in between by its `condition` messages ({change, condition}). A snapshot that
// arrives after live messages does not undo them: a condition resolved live stays resolved,
// one opened live since the request stays open. Condition ids are a server process's own, so
// what was learnt live is forgotten at each reconnect (the server may have restarted).

import { h, replaceChildren } from './dom.js';

const RANK = { critical: 0, warning: 1 };

/** Open conditions, critical first, then oldest first (the server's order). */
function ordered(conditions) {
  return [...conditions].sort((a, b) => (RANK[a.severity] ?? 2) - (RANK[b.severity] ?? 2)
    || a.opened_at - b.opened_at || a.number - b.number);
}

function line(c) {
  return h('div', { class: `condition sev-${c.severity}`, role: c.severity === 'critical' ? 'alert' : 'status',
                    dataset: { condition: c.id, kind: c.kind, severity: c.severity, scope: c.scope } },
    h('span', { class: `badge sev-${c.severity}` }, c.severity),
    h('span', { class: 'condition-kind' }, c.kind.replace(/_/g, ' ')),
    h('span', { class: 'condition-headline' }, c.headline),
    c.remedy ? h('span', { class: 'condition-remedy' }, 'Try: ', c.remedy) : null);
}

export class Conditions {
  /** @param {import('./api.js').Api} api */
  constructor(api) {
    this.api = api;
    this.open = new Map(); // id -> condition (open or escalated)
    this.resolvedLive = new Set(); // ids resolved by a live message since the last reconnect
    this.liveSince = new Map(); // id -> condition opened or changed live during a fetch
    this.fetching = 0; // fetches in flight
    this.lines = new Set(); // run lines to redraw
    this.banner = h('section', { id: 'conditions', class: 'conditions-banner', hidden: true,
                                 'aria-label': 'server conditions', 'aria-live': 'polite' });
  }

  /** Put the banner at the top of the page: after the top bar, above every view. */
  mount(doc = document) {
    const bar = doc.querySelector('.topbar');
    if (bar) bar.after(this.banner);
    else doc.body.prepend(this.banner);
    return this;
  }

  /** The live socket (re)connected: forget what was learnt live and fetch the open ones. */
  async reload() {
    this.resolvedLive.clear();
    this.liveSince.clear();
    this.fetching += 1;
    try {
      const fetched = await this.api.conditions({ state: 'open' });
      const open = new Map(fetched.filter((c) => !this.resolvedLive.has(c.id)).map((c) => [c.id, c]));
      for (const [id, c] of this.liveSince) {
        if (c.state === 'resolved') open.delete(id);
        else open.set(id, c);
      }
      this.open = open;
      this.render();
      return true;
    } catch (err) {
      console.warn('trainvitals: could not load the conditions:', err.message ?? err);
      return false;
    } finally {
      this.fetching -= 1;
      if (this.fetching === 0) this.liveSince.clear();
    }
  }

  /** A live `condition` message. */
  onMessage(change, c) {
    if (this.fetching) this.liveSince.set(c.id, c);
    if (change === 'resolved' || c.state === 'resolved') {
      this.resolvedLive.add(c.id);
      this.open.delete(c.id);
    } else {
      this.open.set(c.id, c);
    }
    this.render();
  }

  /** Open server-scope conditions, critical first. */
  server() {
    return ordered([...this.open.values()].filter((c) => c.scope === 'server'));
  }

  /** Open conditions of run `name`, critical first. */
  ofRun(name) {
    return name === null || name === undefined ? []
      : ordered([...this.open.values()].filter((c) => c.scope === 'run' && c.run === name));
  }

  /** A line for a run's header showing that run's open conditions; `name()` says which run
   * (null until known). `line.render()` redraws it (call it once the name is known);
   * `line.remove()` stops redrawing it. */
  runLine(name) {
    const el = h('div', { class: 'run-conditions', hidden: true, 'aria-live': 'polite' });
    const runLine = {
      el,
      render: () => {
        const found = this.ofRun(name());
        el.hidden = found.length === 0;
        replaceChildren(el, found.map(line));
      },
      remove: () => this.lines.delete(runLine),
    };
    this.lines.add(runLine);
    runLine.render();
    return runLine;
  }

  render() {
    const found = this.server();
    this.banner.hidden = found.length === 0;
    this.banner.dataset.severity = found[0]?.severity ?? '';
    replaceChildren(this.banner, found.map(line));
    for (const l of this.lines) l.render();
  }
}
