// The y-scale switch of a loss chart (linear / log / symlog, scales.js), remembered per run
// (or per comparison) in localStorage: `#loss-scale button[data-scale][aria-pressed]`.
// A browser that keeps nothing (storage off, a sandboxed file) still switches; it just
// forgets on reload.

import { h } from './dom.js';
import { SCALES, SCALE_IDS } from './scales.js';

const PREFIX = 'trainvitals:loss-scale:';

/** The scale remembered under `key`, or null. */
export function rememberedScale(key) {
  try {
    const value = window.localStorage.getItem(PREFIX + key);
    return SCALE_IDS.includes(value) ? value : null;
  } catch {
    return null;
  }
}

function remember(key, scale) {
  try {
    window.localStorage.setItem(PREFIX + key, scale);
  } catch { /* nowhere to keep it: the choice lasts until the page goes */ }
}

export class ScaleToggle {
  /**
   * @param {string} key what the choice is remembered for (`run:<id>`, `compare:<ids>`)
   * @param {object} hooks onChange(scale) — the user picked another scale
   */
  constructor(key, { onChange = () => {} } = {}) {
    this.key = key;
    this.onChange = onChange;
    this.scale = rememberedScale(key) ?? 'linear';
    this.buttons = SCALES.map((s) => h('button', {
      type: 'button', class: 'scale-option', title: s.help, dataset: { scale: s.id },
      'aria-pressed': String(s.id === this.scale), onclick: () => this.pick(s.id) }, s.label));
    this.el = h('div', { id: 'loss-scale', class: 'scale-toggle', role: 'group',
                         'aria-label': 'y axis scale of the loss chart' },
    h('span', { class: 'scale-label' }, 'y:'), this.buttons);
  }

  /** The user picked `scale`: remember it for this run and redraw with it. */
  pick(scale) {
    if (scale === this.scale) return;
    this.scale = scale;
    remember(this.key, scale);
    for (const b of this.buttons) b.setAttribute('aria-pressed', String(b.dataset.scale === scale));
    this.onChange(scale);
  }
}
