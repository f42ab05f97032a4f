// `window.trainvitals`: read-only hooks on the open view, for tests and for poking around in the
// console. The page (app.js) and the exported report (report.js) expose the same ones, so a
// test reads both the same way.

import { parseSeries } from './series.js';

/**
 * Define `window.trainvitals` over the view `currentView()` returns (or null), plus the
 * getters and functions of `extra` (kept as getters, not read once).
 */
export function exposeHooks(currentView, extra = {}) {
  const hooks = {
    /** Live step records applied to the open view since it was (re)loaded. */
    get pointsReceived() { return currentView()?.pointsReceived ?? 0; },
    /** Zoomed re-fetches the open view has drawn (only long, thinned runs re-fetch). */
    get refetches() { return currentView()?.refetches ?? 0; },
    /** Whether the open view's full range came downsampled by the server. */
    get downsampled() { return currentView()?.thinned ?? false; },
    /** {trace key: number of points} of chart `id` ('chart-loss', 'chart-grad', ...). */
    traceLengths: (id) => currentView()?.traceLengths(id) ?? {},
    /** Full redraws of chart `id` since the view was opened (reloads only; live data appends). */
    draws: (id) => currentView()?.draws(id) ?? 0,
    /** Live updates of chart `id` by path ({fast, full, refreshes}; charts.js), or null. */
    updates: (id) => currentView()?.updates?.(id) ?? null,
    /** Resolves once queued chart updates are drawn. */
    settled: () => currentView()?.settled() ?? Promise.resolve(),
    /** The page's series-name grammar (series.js), to hold it to Python's. */
    parseSeries,
  };
  Object.defineProperties(hooks, Object.getOwnPropertyDescriptors(extra));
  Object.defineProperty(window, 'trainvitals', { value: Object.freeze(hooks) });
}
