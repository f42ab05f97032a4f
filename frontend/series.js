// The series-name grammar, read from the contract the page shares with Python
// (protocol/contract.py → contract.json, loaded by api.js) instead of spelled out here.
// `parseSeries` mirrors `trainvitals.protocol.series.parse_series` exactly; a browser test holds
// the two to the same answers (tests/e2e/test_contract_browser.py).

import { CONTRACT } from './api.js';

const PREFIX = CONTRACT.prefixes; // {component: 'loss/', scalar: 'scalar/', tensor: 'tensor/'}
const TOP_LEVEL = new Set(CONTRACT.top_level);
const STATS = new Set(CONTRACT.tensor_stats);

/** Every statistic a `tensor/<name>/<stat>` series may carry, in the protocol's order. */
export const TENSOR_STATS = CONTRACT.tensor_stats;

/**
 * What series `series` names: {kind: 'top'|'component'|'scalar'|'tensor'|'other', name, stat}.
 * `name` is the part inside the prefix (the whole name for 'top' and 'other'); `stat` is set
 * for tensors only (else null). A tensor's name may itself hold '/': the stat is the last part,
 * and an unknown stat makes the series 'other'.
 */
export function parseSeries(series) {
  if (TOP_LEVEL.has(series)) return named('top', series);
  if (series.startsWith(PREFIX.component)) return named('component', series.slice(PREFIX.component.length));
  if (series.startsWith(PREFIX.scalar)) return named('scalar', series.slice(PREFIX.scalar.length));
  if (series.startsWith(PREFIX.tensor)) {
    const rest = series.slice(PREFIX.tensor.length);
    const cut = rest.lastIndexOf('/');
    const [tensor, stat] = [rest.slice(0, cut), rest.slice(cut + 1)];
    if (cut >= 0 && tensor && STATS.has(stat)) return named('tensor', tensor, stat);
  }
  return named('other', series);
}

function named(kind, name, stat = null) {
  return { kind, name, stat };
}

/** `tensor/<tensor>/<stat>`. */
export function tensorSeries(tensor, stat) {
  return `${PREFIX.tensor}${tensor}/${stat}`;
}
