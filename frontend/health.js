// The run's health in plain words, at the top of its page: `#health[data-level]` holds the
// sentences the server wrote (GET /api/runs/{id}/health), as text.

import { h, replaceChildren } from './dom.js';

const ICON = { ok: '✓', warning: '!', critical: '✕' };

export class HealthBanner {
  constructor() {
    this.el = h('section', { id: 'health', class: 'health', dataset: { level: 'unknown' },
                             'aria-live': 'polite', 'aria-label': 'run health' },
      h('span', { class: 'muted' }, 'Checking the run’s health…'));
  }

  /** Show a health verdict ({level, sentences}). */
  set({ level, sentences }) {
    this.el.dataset.level = level;
    replaceChildren(this.el,
      h('span', { class: 'health-icon', 'aria-hidden': 'true' }, ICON[level] ?? '?'),
      h('div', { class: 'health-text' }, sentences.map((s) => h('p', {}, s))));
  }

  /** Say that the verdict could not be fetched (keeps the last one otherwise). */
  failed(message) {
    if (this.el.dataset.level === 'unknown') replaceChildren(this.el, h('span', { class: 'muted' }, message));
  }
}
