/**
 * The server's composition root: opens the data directory (exclusive lock),
 * mounts the HTTP API, and stops gracefully: no new connections, in-flight
 * ingests finish and are durable, then a checkpoint and the lock is released.
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../platform/log.js';
import { trackConnections } from '../platform/drain.js';
import { createApp, serverMetrics } from './http.js';
import { ServerStore } from './store.js';
import { backendName } from '../core/ed25519.js';

export const SHUTDOWN_GRACE_MS = 60_000;

export interface ServerOptions {
  dataDir: string;
  host: string;
  port: number;
  log: Logger;
}

export interface RunningServer {
  url: string;
  store: ServerStore;
  close(): Promise<void>;
}

export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const store = await ServerStore.open(o.dataDir, { log: o.log });
  const metrics = serverMetrics();
  const server = createServer();
  const drainer = trackConnections(server);
  const handler = createApp({ store, log: o.log, metrics }).callback();
  server.on('request', (req, res) => void handler(req, res));
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 10 * 60_000;
  server.listen({ port: o.port, host: o.host });
  try {
    await once(server, 'listening');
  } catch (e) {
    await store.close();
    throw e;
  }
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
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
      await drainer.close(SHUTDOWN_GRACE_MS);
      await store.close();
      o.log.info('server.stopped', { journalSeq: store.state.journalSeq });
    })());
  return { url, store, close };
}
