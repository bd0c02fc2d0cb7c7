/**
 * The server's composition root: opens the data directory (exclusive lock),
 * mounts the HTTP API, and stops gracefully: no new connections, in-flight
 * ingests finish and are durable, then a checkpoint and the lock is released.
 */
import type { Logger } from '../platform/log.js';
import { startHttp, type HttpService, type ServerLimits, type TlsOptions } from '../platform/http/server.js';
import { createApp, serverMetrics } from './http.js';
import { ServerStore } from './store.js';
import { backendName } from '../core/ed25519.js';
import { AccessStore } from './access.js';
import { AuditLog } from './audit.js';

export const SHUTDOWN_GRACE_MS = 60_000;

export interface ServerOptions {
  dataDir: string;
  host: string;
  port: number;
  log: Logger;
  /** Connection cap and timeouts (platform/http/server.ts has the defaults). */
  limits?: Partial<ServerLimits>;
  /** Seconds between live updates of the rollout pages. */
  refreshSec?: number;
  /** Serve HTTPS with this certificate and key; the UI's cookies are then Secure. */
  tls?: TlsOptions;
  /** Secure cookies over plain HTTP: a TLS-terminating proxy stands in front. */
  cookieSecure?: boolean;
}

export interface RunningServer {
  url: string;
  /** On the first start (no user yet): the password of the admin it created, shown once, never stored. */
  firstAdminPassword?: string;
  store: ServerStore;
  close(): Promise<void>;
}

export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const store = await ServerStore.open(o.dataDir, { log: o.log });
  const metrics = serverMetrics();
  const access = new AccessStore(o.dataDir);
  const audit = new AuditLog(o.dataDir);
  let firstAdminPassword: string | undefined;
  try {
    firstAdminPassword = await access.ensureAdmin();
    if (firstAdminPassword)
      await audit.append('server', 'user.created', { user: 'admin', role: 'admin', firstRun: true });
  } catch (e) {
    await store.close();
    throw e;
  }
  const app = createApp({
    store,
    log: o.log,
    metrics,
    access,
    audit,
    ...(o.refreshSec && { refreshSec: o.refreshSec }),
    ...((o.cookieSecure || o.tls) && { cookieSecure: true }),
  }).callback();
  let http: HttpService;
  try {
    http = await startHttp({
      host: o.host,
      port: o.port,
      handler: (req, res) => void app(req, res),
      log: o.log,
      metrics: { registry: metrics, prefix: 'ferry_server' },
      ...(o.limits && { limits: o.limits }),
      ...(o.tls && { tls: o.tls }),
    });
  } catch (e) {
    await store.close();
    throw e;
  }
  const { url } = http;
  o.log.info('server.started', {
    url,
    data: o.dataDir,
    serverKey: store.key.keyid,
    journalSeq: store.state.journalSeq,
    agents: Object.keys(store.state.agents).length,
    crypto: backendName(),
  });
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      o.log.info('server.stopping', {});
      await http.close(SHUTDOWN_GRACE_MS);
      await store.close();
      o.log.info('server.stopped', { journalSeq: store.state.journalSeq });
    })());
  return { url, store, close, ...(firstAdminPassword && { firstAdminPassword }) };
}
