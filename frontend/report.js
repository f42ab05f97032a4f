// The exported HTML report: the page's own run view, read-only, over the data the file carries.
// server/views/report.py writes the file (plotly.js, these modules and the run's data inline);
// report_loader.js turns the inlined modules into importable ones and imports this one.

import { ReportApi, inlineJson } from './api.js';
import { h, replaceChildren } from './dom.js';
import { formatFullTime } from './format.js';
import { exposeHooks } from './hooks.js';
import { RunView } from './run_view.js';

const api = new ReportApi(inlineJson('trainvitals-report'));
const errorEl = document.getElementById('error');

function showError(message) {
  errorEl.hidden = false;
  replaceChildren(errorEl, h('p', {}, message));
}

const view = new RunView(document.getElementById('run-view'), api, api.runId, {
  follow: async () => -1, // a file follows nothing live
  onError: showError,
});
exposeHooks(() => view);
document.title = `${api.data.detail.run.name} — trainvitals report`;
document.getElementById('report-made').textContent = `report made ${formatFullTime(api.data.made)}`;
if (!window.Plotly) showError('plotly.js did not load; charts cannot be drawn.');
view.load();
