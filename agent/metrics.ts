/**
 * The agent's own figures, in Prometheus text: served on --metrics-listen
 * (loopback by default) or written each cycle to a node-exporter textfile.
 */
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { writeFileAtomic } from '../platform/fsx.js';
import { Metrics } from '../platform/metrics.js';

export function agentMetrics(): Metrics {
  const m = new Metrics();
  m.define(
    'ferry_agent_polls_total',
    'counter',
    'Sync cycles, by outcome (updated, unchanged, refused, unreachable).',
  );
  m.define(
    'ferry_agent_polls_failed_total',
    'counter',
    'Sync cycles that reached no mirror or were refused.',
  );
  m.define('ferry_agent_poll_duration_seconds', 'gauge', 'Duration of the last sync with the mirrors.');
  m.define('ferry_agent_scripts_total', 'counter', 'Script runs, by result (ok, failed, refused).');
  m.define('ferry_agent_bytes_fetched_total', 'counter', 'Blob bytes downloaded from mirrors.');
  m.define('ferry_agent_outbox_entries', 'gauge', 'Telemetry entries waiting in the outbox.');
  m.define(
    'ferry_agent_disconnected_seconds',
    'gauge',
    'Seconds since the last contact with any mirror (0 when connected).',
  );
  m.define('ferry_agent_active_sequence', 'gauge', 'Sequence of the active manifest (0 when none).');
  m.define(
    'ferry_agent_storage_full',
    'gauge',
    'Whether the last sync found the disk too full for what the manifest needs (1) or not (0).',
  );
  return m;
}

/** Serves `/metrics` on HOST:PORT; returns the server so the agent can close it. */
export async function serveMetrics(metrics: Metrics, host: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || req.url !== '/metrics') {
      res
        .writeHead(404, { 'Content-Type': 'application/json' })
        .end('{"code":"NOT_FOUND","message":"only /metrics"}');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' }).end(metrics.render());
  });
  server.listen(port, host);
  await once(server, 'listening');
  return server;
}

/** For node-exporter's textfile collector: written atomically, so it never reads half a file. */
export function writeMetricsFile(metrics: Metrics, path: string): Promise<void> {
  return writeFileAtomic(path, metrics.render());
}
