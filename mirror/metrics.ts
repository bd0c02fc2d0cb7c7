import { Metrics } from '../platform/metrics.js';

export { Metrics };

/** The mirror's metric families. */
export function mirrorMetrics(): Metrics {
  const m = new Metrics();
  m.define('ferry_mirror_imports_total', 'counter', 'Bundle files imported (accepted), by resulting status.');
  m.define('ferry_mirror_refusals_total', 'counter', 'Bundle files refused, by reason code.');
  m.define('ferry_mirror_bytes_served_total', 'counter', 'Blob bytes sent to clients.');
  m.define('ferry_mirror_requests_total', 'counter', 'HTTP requests, by route and status.');
  m.define('ferry_mirror_active_sequence', 'gauge', 'Sequence of the active manifest (0 when none).');
  return m;
}
