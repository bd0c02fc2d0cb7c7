/**
 * The mirror's composition root: opens the store, mounts the HTTP API, watches
 * the drop folder, and shuts down gracefully (in-flight downloads finish, the
 * import under way completes, nothing is half-written).
 */
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { FerryError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { watchDrop, type DropWatcher } from './drop.js';
import { agentsFor } from './agents.js';
import { trackConnections } from './drain.js';
import { createHandler } from './http/app.js';
import { importBundle, type ImportResult } from './import.js';
import { mirrorMetrics, type Metrics } from './metrics.js';
import { Store } from './store.js';

/** How long a stop waits for slow clients before cutting them off. */
export const SHUTDOWN_GRACE_MS = 5 * 60_000;

export interface MirrorOptions {
  dataDir: string;
  host: string;
  port: number;
  /** First start: pin this root and site (later starts check they agree). */
  trustPath?: string;
  site?: string;
  dropDir?: string;
  dropStableMs?: number;
  log: Logger;
}

export interface RunningMirror {
  url: string;
  store: Store;
  metrics: Metrics;
  importFile(path: string): Promise<ImportResult>;
  /** Stops accepting connections, lets in-flight requests and the current import finish. */
  close(): Promise<void>;
}

export async function startMirror(o: MirrorOptions): Promise<RunningMirror> {
  if (Boolean(o.trustPath) !== Boolean(o.site))
    throw new FerryError('USAGE', '--trust and --site go together');
  const init = o.trustPath && o.site ? { rootBytes: await readFile(o.trustPath), site: o.site } : undefined;
  const store = await Store.open(o.dataDir, init ? { init } : {});
  const metrics = mirrorMetrics();
  const log = o.log;

  const importFile = async (path: string): Promise<ImportResult> => {
    const r = await importBundle(store, path);
    if (r.ok) {
      metrics.inc('ferry_mirror_imports_total', { status: r.status });
      log.info('import.accepted', {
        file: r.file,
        publisher: r.publisher,
        sequence: r.sequence,
        status: r.status,
        changed: r.changed,
        missing: r.missing.length,
      });
    } else {
      metrics.inc('ferry_mirror_refusals_total', { code: r.code });
      log.warn('import.refused', { file: r.file, code: r.code, reason: r.message });
    }
    return r;
  };

  const server: Server = createServer();
  const drainer = trackConnections(server); // first, so it sees every request before the app does
  server.on('request', createHandler({ store, log, metrics }));
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 0; // a large blob over a slow link may take long; idle sockets still time out
  // A site's agents may all reconnect at once (after a mirror restart): a deep accept queue keeps
  // their SYNs from being dropped and retried a second later.
  server.listen({ port: o.port, host: o.host, backlog: 4096 });
  await once(server, 'listening');
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;

  let drop: DropWatcher | undefined;
  if (o.dropDir) {
    drop = watchDrop({
      dir: o.dropDir,
      importFile,
      log,
      ...(o.dropStableMs !== undefined && { stableMs: o.dropStableMs }),
    });
    await drop.ready;
  }
  const state = await store.readState();
  log.info('mirror.started', {
    url,
    site: state.site,
    drop: o.dropDir ?? null,
    active: state.active?.sequence ?? null,
  });

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      log.info('mirror.stopping', {});
      // Downloads in flight finish and flush; idle keep-alive connections are ended gracefully.
      const closed = drainer.close(SHUTDOWN_GRACE_MS);
      await drop?.close();
      await closed;
      await agentsFor(store).close(); // the telemetry log, after the last request that could append
      log.info('mirror.stopped', {});
    })());
  return { url, store, metrics, importFile, close };
}
